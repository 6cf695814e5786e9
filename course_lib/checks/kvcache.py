"""Checks for the exercises of lesson 06 (grouped-query attention and the KV cache).

Each ``check_*`` function takes the learner's function, calls it on fresh random inputs
(and on edge cases), compares what comes back with the reference in
:mod:`course_lib.attention` and :mod:`course_lib.kvcache`, with PyTorch's own
``scaled_dot_product_attention`` or with ``transformers``, and raises ``AssertionError``
with an explanation when something is off. ``seed`` reproduces a failing run.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from course_lib import attention as ref
from course_lib import kvcache
from course_lib.checks.common import beside_answer, call, call_explained, expect_int, expect_same_device, expect_tensor, new_generator, on_meta, randint
from course_lib.checks.guard import Rules, watched
from torch.utils._python_dispatch import TorchDispatchMode

_DTYPES = (torch.float32, torch.float64)


REPEAT_KV = Rules(
    "repeat_kv", references=("course_lib.attention:repeat_kv",), modules=("transformers",),
    why="The exercise is to write repeat_kv yourself, without the course's or transformers' repeat_kv.",
)
KV_CACHE_BYTES_FROM_CONFIG = Rules(
    "kv_cache_bytes_from_config", modules=("course_lib.kvcache", "course_lib.memory", "transformers"),
    why="The exercise is to read the config and count the bytes yourself.",
)
CACHED_ATTENTION_STEP = Rules(
    "cached_attention_step", modules=("course_lib.kvcache", "course_lib.models", "transformers"),
    why="The exercise is to append to the caches and attend yourself, without course_lib.kvcache or course_lib.models.",
)


def _randn(gen: torch.Generator, shape, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


_BY_KEYWORD = "; keep the parameter names of the signature in the docstring"
_ANY_LAYOUT = "; an input may be a non-contiguous view: use reshape (not view), or .contiguous() first"


def _cache_layouts(gen: torch.Generator, shape, dtype) -> dict[str, torch.Tensor]:
    """Random ``(B, H, S, D)`` tensors in the non-contiguous layouts real caches come in, by description."""
    b, h, s, d = shape
    return {
        "stored as (B, S, H, D) and transposed": _randn(gen, (b, s, h, d), dtype).transpose(1, 2),
        "stored as (B, H, D, S) and transposed": _randn(gen, (b, h, d, s), dtype).transpose(-2, -1),
        "a slice [:, :, :S] of a longer preallocated cache": _randn(gen, (b, h, s + 3, d), dtype)[:, :, :s],
        "one batch row expanded to B rows (stride 0)": _randn(gen, (1, h, s, d), dtype).expand(b, h, s, d),
    }


# --------------------------------------------------------------------------- repeat_kv


def check_repeat_kv(repeat_kv, seed: int | None = None, n_cases: int = 10) -> None:
    """``repeat_kv(x, n_rep)``: ``(B, H_kv, S, D) -> (B, H_kv * n_rep, S, D)``, head ``h`` of the result is head ``h // n_rep``.

    Also: float16 and bfloat16, an empty cache (S = 0), non-contiguous layouts, a call by
    keyword, and inputs on another device (meta).
    """
    repeat_kv = watched(repeat_kv, REPEAT_KV)
    x = torch.arange(3.0).reshape(1, 3, 1, 1)  # kv heads holding 0, 1, 2
    what = "repeat_kv(x, 2) for x with kv heads [0, 1, 2] (expected query heads [0, 0, 1, 1, 2, 2], not [0, 1, 2, 0, 1, 2])"
    expect_tensor(call(repeat_kv, x, 2, what=what), torch.tensor([0.0, 0, 1, 1, 2, 2]).reshape(1, 6, 1, 1), what)
    gen, seed = new_generator(seed)
    # always: several kv heads shared by several query heads (tiling and interleaving differ there), and n_rep = 1
    cases = [((2, 3, 4, 5), 2), ((1, 2, 3, 4), 4), ((2, 4, 3, 2), 1)]
    cases += [((randint(gen, 1, 3), randint(gen, 1, 4), randint(gen, 1, 6), randint(gen, 1, 8)), randint(gen, 1, 4))
              for _ in range(n_cases)]
    for i, (shape, n_rep) in enumerate(cases):
        dtype = _DTYPES[i % 2]
        x = _randn(gen, shape, dtype)
        what = f"repeat_kv(x, n_rep={n_rep}) for x of shape {shape} and dtype {dtype} (seed {seed})"
        expect_tensor(call(repeat_kv, x, n_rep, what=what), ref.repeat_kv(x, n_rep), what)
    _check_repeat_kv_inputs(repeat_kv, gen, seed)


def _check_repeat_kv_inputs(repeat_kv, gen, seed) -> None:
    """Half-precision dtypes, an empty cache (S = 0), non-contiguous layouts, a call by keyword, and the device kept."""
    shape, n_rep = (randint(gen, 2, 3), randint(gen, 2, 3), randint(gen, 2, 5), randint(gen, 2, 6)), randint(gen, 2, 3)
    for dtype in (torch.float16, torch.bfloat16):
        x = _randn(gen, shape, dtype)
        what = f"repeat_kv(x, {n_rep}) for x of shape {shape} and dtype {dtype} (the result keeps x's dtype) (seed {seed})"
        expect_tensor(call(repeat_kv, x, n_rep, what=what), ref.repeat_kv(x, n_rep), what)
    empty = _randn(gen, (shape[0], shape[1], 0, shape[3]), torch.float32)
    what = f"repeat_kv(x, {n_rep}) for an empty cache x of shape {tuple(empty.shape)} (no position yet) (seed {seed})"
    expect_tensor(call_explained(repeat_kv, empty, n_rep, what=what, hint="; a dim of size 0 leaves reshape(..., -1) undetermined"),
                  ref.repeat_kv(empty, n_rep), what)
    for name, x in _cache_layouts(gen, shape, _DTYPES[randint(gen, 0, 1)]).items():
        what = f"repeat_kv(x, {n_rep}) for x of shape {shape}, {x.dtype}, {name} (seed {seed})"
        expect_tensor(call_explained(repeat_kv, x, n_rep, what=what, hint=_ANY_LAYOUT), ref.repeat_kv(x, n_rep), what)
    x = _randn(gen, shape, torch.float32)
    what = f"repeat_kv(x=x, n_rep={n_rep}) called by keyword, x of shape {shape} (seed {seed})"
    expect_tensor(call_explained(repeat_kv, x=x, n_rep=n_rep, what=what, hint=_BY_KEYWORD), ref.repeat_kv(x, n_rep), what)
    for rep_ in (n_rep, 1):
        what = f"repeat_kv(x, {rep_}) for x of shape {shape} on the meta device (standing in for a GPU)"
        expect_same_device(repeat_kv, *on_meta(x), rep_, what=what)


def check_repeat_kv_against_transformers(repeat_kv) -> None:
    """The same tensor as ``transformers``' own ``repeat_kv`` (Llama), which uses ``expand`` and ``reshape``."""
    repeat_kv = watched(repeat_kv, REPEAT_KV)
    from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

    gen, _ = new_generator(6)
    for shape, n_rep in (((2, 8, 7, 16), 4), ((1, 1, 9, 8), 8), ((3, 2, 5, 4), 1), ((1, 4, 1, 64), 2)):
        x = torch.randn(shape, generator=gen)
        what = f"repeat_kv(x, {n_rep}) for x of shape {shape}, against transformers' repeat_kv"
        expect_tensor(call(repeat_kv, x, n_rep, what=what), hf_repeat_kv(x, n_rep), what)
    # a GQA layer computed with repeat_kv equals PyTorch's grouped attention
    q = torch.randn(2, 8, 5, 16, generator=gen)
    k, v = torch.randn(2, 2, 5, 16, generator=gen), torch.randn(2, 2, 5, 16, generator=gen)
    what = "F.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4)) with 8 query heads and 2 kv heads"
    got = F.scaled_dot_product_attention(q, call(repeat_kv, k, 4, what=what), call(repeat_kv, v, 4, what=what), is_causal=True)
    expect_tensor(got, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), what)


# --------------------------------------------------------------------------- kv_cache_bytes_from_config


def _random_config(gen: torch.Generator) -> dict:
    n_kv = randint(gen, 1, 8)
    n_heads = n_kv * randint(gen, 1, 6)
    head_dim = 8 * randint(gen, 1, 32)
    config = {"num_hidden_layers": randint(gen, 1, 96), "num_attention_heads": n_heads, "hidden_size": n_heads * head_dim,
              "intermediate_size": 4 * n_heads * head_dim, "vocab_size": 32000}
    # each optional key: missing, set, or None (as a config.json's null); a set head_dim may differ from
    # hidden_size // num_attention_heads, as Gemma's
    for key, value in (("num_key_value_heads", n_kv), ("head_dim", 8 * randint(gen, 1, 32))):
        kind = randint(gen, 0, 2)
        if kind:
            config[key] = value if kind == 1 else None
    return config


def _describe_config(config: dict) -> str:
    keys = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim")
    return "{" + ", ".join(f"{k!r}: {config[k]}" for k in keys if k in config) + "}"


_OPTIONAL_KEYS = (". A config may lack num_key_value_heads or head_dim, or hold None for them: "
                  "then use num_attention_heads, and hidden_size // num_attention_heads")


def _call_with_config(fn, config: dict, *args, what: str, by_keyword: bool = False, **kwargs):
    """Call ``fn(config, *args, **kwargs)`` (``fn(*args, config=config, **kwargs)`` when ``by_keyword``) on a copy of
    ``config``; fail if it raised a KeyError or TypeError, or changed the config (``common.call`` compares it)."""
    given = copy.deepcopy(config)
    try:
        return call(fn, *args, what=what, config=given, **kwargs) if by_keyword else call(fn, given, *args, what=what, **kwargs)
    except (KeyError, TypeError) as err:
        hint = _BY_KEYWORD if isinstance(err, TypeError) and "argument" in str(err) else _OPTIONAL_KEYS
        raise AssertionError(f"{what} raised {type(err).__name__}: {err}{hint}") from err
    except AssertionError as err:
        if "in place" not in str(err):
            raise
        raise AssertionError(f"{err}: the config dict is only read (config.get(key)), never filled in or emptied") from None


def check_kv_cache_bytes_from_config(kv_cache_bytes_from_config, seed: int | None = None, n_cases: int = 16) -> None:
    """``kv_cache_bytes_from_config(config, seq_len, batch_size=1, bytes_per_value=2)`` on published and random configs.

    Optional keys missing, set or None; each default alone; every argument by keyword; 0.5 bytes
    per value; and the config dict the answer is given must be left as it was.
    """
    kv_cache_bytes_from_config = watched(kv_cache_bytes_from_config, KV_CACHE_BYTES_FROM_CONFIG)
    gen, seed = new_generator(seed)
    for name, config in kvcache.PUBLISHED_CONFIGS.items():
        seq, batch, nbytes = 1024 * randint(gen, 1, 128), randint(gen, 1, 16), (1, 2, 4)[randint(gen, 0, 2)]
        what = f"kv_cache_bytes_from_config({name}'s config {_describe_config(config)}, {seq}, {batch}, {nbytes}) (seed {seed})"
        got = _call_with_config(kv_cache_bytes_from_config, config, seq, batch, nbytes, what=what)
        expect_int(got, kvcache.kv_cache_bytes_from_config(config, seq, batch, nbytes), what)
    fixed = [{"num_hidden_layers": 12, "num_attention_heads": 12, "hidden_size": 768},  # no kv heads, no head_dim: MHA
             {"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 256, "head_dim": 64}]
    for config in fixed + [_random_config(gen) for _ in range(n_cases)]:
        seq, batch, nbytes = randint(gen, 1, 8192), randint(gen, 1, 8), (1, 2, 4)[randint(gen, 0, 2)]
        what = f"kv_cache_bytes_from_config({_describe_config(config)}, {seq}, {batch}, {nbytes}) (seed {seed})"
        got = _call_with_config(kv_cache_bytes_from_config, config, seq, batch, nbytes, what=what)
        expect_int(got, kvcache.kv_cache_bytes_from_config(config, seq, batch, nbytes), what)
    config = kvcache.PUBLISHED_CONFIGS["Llama-3-8B"]
    what = "kv_cache_bytes_from_config(Llama-3-8B's config, 4096) with the defaults batch_size=1, bytes_per_value=2"
    expect_int(_call_with_config(kv_cache_bytes_from_config, config, 4096, what=what), 512 * 2**20, what)
    _check_config_calls(kv_cache_bytes_from_config, gen, seed)


def _check_config_calls(kv_cache_bytes_from_config, gen, seed) -> None:
    """One default at a time, every argument by keyword, and 0.5 bytes per value (4-bit) still giving an int."""
    config = _random_config(gen)
    seq, batch = randint(gen, 1, 8192), randint(gen, 2, 8)
    described = f"{_describe_config(config)}, seq_len={seq}"
    calls = [  # (how it is called, arguments after config, keyword arguments, batch_size and bytes_per_value meant)
        (f"kv_cache_bytes_from_config(config, {seq}, {batch}): bytes_per_value defaults to 2", (seq, batch), {}, batch, 2),
        (f"kv_cache_bytes_from_config(config, {seq}, bytes_per_value=4): batch_size defaults to 1", (seq,), {"bytes_per_value": 4}, 1, 4),
        (f"kv_cache_bytes_from_config(config=config, seq_len={seq}, batch_size={batch}, bytes_per_value=1), every argument by keyword",
         (), {"by_keyword": True, "seq_len": seq, "batch_size": batch, "bytes_per_value": 1}, batch, 1),
        (f"kv_cache_bytes_from_config(config, {seq}, {batch}, 0.5) for a 4-bit cache (half a byte per value)", (seq, batch, 0.5), {}, batch, 0.5),
    ]
    for how, args, kwargs, batch_size, nbytes in calls:
        what = f"{how}, config {described} (seed {seed})"
        got = _call_with_config(kv_cache_bytes_from_config, config, *args, what=what, **kwargs)
        expect_int(got, kvcache.kv_cache_bytes_from_config(config, seq, batch_size, nbytes), what)


def check_kv_cache_bytes_from_config_against_transformers(kv_cache_bytes_from_config) -> None:
    """Equals the bytes ``transformers``' Llama really allocates for its cache, and the H200 table of the course."""
    kv_cache_bytes_from_config = watched(kv_cache_bytes_from_config, KV_CACHE_BYTES_FROM_CONFIG)
    import transformers

    for extra in ({}, {"num_key_value_heads": 2}, {"num_key_value_heads": 1, "head_dim": 24},
                  {"num_key_value_heads": None, "head_dim": None}):
        config = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96,
                  "vocab_size": 50, **extra}
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
        with torch.no_grad():
            out = model(torch.zeros(2, 11, dtype=torch.long), use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]  # the name changed in transformers 5
        allocated = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        what = f"kv_cache_bytes_from_config({config}, seq_len=11, batch_size=2, bytes_per_value=4) (a key that is None counts as missing)"
        expect_int(_call_with_config(kv_cache_bytes_from_config, config, 11, 2, 4, what=what), allocated,
                   what + ": what transformers' LlamaForCausalLM allocates")
    gib = 2**30
    for n_kv, expected in ((32, 128), (8, 32), (1, 4)):
        config = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": n_kv}
        what = f"kv_cache_bytes_from_config(32 layers, 32 heads, {n_kv} kv heads, head dim 128; 32k tokens, batch 8, bf16)"
        expect_int(_call_with_config(kv_cache_bytes_from_config, config, 32 * 1024, 8, 2, what=what), expected * gib, what)


# --------------------------------------------------------------------------- cached_attention_step


def reference_cached_attention_step(q, k_new, v_new, k_cache, v_cache):
    """The exercise's function: append at the end of the cache, attend the one query to every position."""
    k_cache = torch.cat([k_cache, k_new], dim=2)
    v_cache = torch.cat([v_cache, v_new], dim=2)
    out = ref.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=q.shape[1] != k_cache.shape[1])
    return out, k_cache, v_cache


def _diagnose(out, q, k_new, v_new, k_cache, v_cache) -> str:
    """A hint when ``out`` equals what a common mistake computes, else ''."""
    if type(out) is not torch.Tensor or out.shape != q.shape or out.dtype != q.dtype:
        return ""
    group = q.shape[1] // k_cache.shape[1]
    k_all, v_all = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    tiled = lambda t: t.repeat(1, group, 1, 1)  # noqa: E731
    mistakes = {
        "Only the first key was attended to: is_causal=True aligns PyTorch's mask to the top left, so a single "
        "query sees only key 0. The new token is the last position and may see every key: use no mask.":
            ref.repeat_kv(v_all[:, :, :1], group),
        "The scores were not divided by sqrt(head_dim).":
            ref.scaled_dot_product_attention(q, k_all, v_all, scale=1.0, enable_gqa=True),
        "The query heads were grouped by tiling (x.repeat): query head h must use kv head h // G, as repeat_kv.":
            F.scaled_dot_product_attention(q, tiled(k_all), tiled(v_all)),
    }
    if k_cache.shape[2] > 0:
        mistakes["The new token did not attend to itself: append k_new and v_new to the caches before attending."] = \
            ref.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True)
    for hint, wrong in mistakes.items():
        if torch.allclose(out, wrong, atol=1e-5, rtol=1e-4):
            return "\nHint: " + hint
    return ""


def _unpack_step(result, what: str):
    if not isinstance(result, tuple) or len(result) != 3:
        got = type(result).__name__ + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        raise AssertionError(f"{what} should return a tuple (out, k_cache, v_cache), got {got}")
    return result


def check_cached_attention_step(cached_attention_step, seed: int | None = None, n_cases: int = 10) -> None:
    """One step on random caches: the output ``(B, H, 1, D)`` and the grown caches ``(B, H_kv, T + 1, D)``.

    Also: scores in the thousands (an unstable softmax overflows), an all-zero query, non-contiguous
    inputs, every argument by keyword, and inputs on another device (meta), empty caches among them.
    """
    cached_attention_step = watched(cached_attention_step, CACHED_ATTENTION_STEP)
    gen, seed = new_generator(seed)
    # always: MHA, GQA with several kv heads (tiling and interleaving differ), MQA, and an empty cache
    cases = [(2, 2, 2, 4, 3), (1, 4, 1, 8, 5), (2, 1, 3, 4, 0), (1, 3, 2, 16, 1)]
    cases += [(randint(gen, 1, 3), randint(gen, 1, 3), randint(gen, 1, 3), randint(gen, 1, 16), randint(gen, 0, 9))
              for _ in range(n_cases)]
    for i, (b, h_kv, group, d, t) in enumerate(cases):
        dtype = _DTYPES[i % 2]
        h = h_kv * group
        q = _randn(gen, (b, h, 1, d), dtype)
        k_new, v_new = _randn(gen, (b, h_kv, 1, d), dtype), _randn(gen, (b, h_kv, 1, d), dtype)
        k_cache, v_cache = _randn(gen, (b, h_kv, t, d), dtype), _randn(gen, (b, h_kv, t, d), dtype)
        what = (f"cached_attention_step with q {tuple(q.shape)}, k_new {tuple(k_new.shape)}, caches {tuple(k_cache.shape)} "
                f"({h} query heads, {h_kv} kv heads), {dtype} (seed {seed})")
        got = call(cached_attention_step, q, k_new, v_new, k_cache, v_cache, what=what)
        _expect_step(got, (q, k_new, v_new, k_cache, v_cache), what)
    _check_step_extremes(cached_attention_step, gen, seed)
    _check_step_inputs(cached_attention_step, gen, seed)


def _tolerances(dtype: torch.dtype) -> dict:
    """``assert_close``'s defaults, but in float64 too tight for a detour through float32 (softmax in float32)."""
    return {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {}


def _expect_step(got, inputs: tuple, what: str) -> None:
    """``got`` must be the tuple ``(out, k_cache, v_cache)`` that the reference computes from ``inputs``."""
    got = _unpack_step(got, what)
    expected = reference_cached_attention_step(*inputs)
    try:
        expect_tensor(got[0], expected[0], f"out returned by {what}", **_tolerances(expected[0].dtype))
    except AssertionError as err:
        raise AssertionError(str(err) + _diagnose(got[0], *inputs)) from None
    for part, g, e in zip(("k_cache", "v_cache"), got[1:], expected[1:]):
        expect_tensor(g, e, f"{part} returned by {what}" + (" (append at the end: torch.cat([k_cache, k_new], dim=2))"
                                                          if type(g) is torch.Tensor and g.shape == e.shape else ""))


def _integer_valued(gen: torch.Generator, shape, low: int, high: int, dtype) -> torch.Tensor:
    """Whole numbers in ``[low, high]``: their dot products and the scale 1/4 are exact, whatever the order of operations."""
    return torch.randint(low, high + 1, shape, generator=gen).to(dtype)


def _check_step_extremes(cached_attention_step, gen, seed) -> None:
    """Scores in the thousands, of both signs (an unstable softmax overflows), an empty cache among them; all-zero queries."""
    for dtype in _DTYPES:
        for t in (0, 5):
            b, h_kv, group, d = 2, 2, 2, 16  # d = 16: the scale 1/sqrt(d) = 1/4 is exact
            q = _integer_valued(gen, (b, h_kv * group, 1, d), -60, 60, dtype)
            k_new, k_cache = _integer_valued(gen, (b, h_kv, 1, d), -60, 60, dtype), _integer_valued(gen, (b, h_kv, t, d), -60, 60, dtype)
            v_new, v_cache = _randn(gen, (b, h_kv, 1, d), dtype), _randn(gen, (b, h_kv, t, d), dtype)
            what = (f"cached_attention_step with scores in the thousands (q and k whole numbers up to 60, head_dim 16; "
                    f"subtract the maximum before exp), q {tuple(q.shape)}, caches {tuple(k_cache.shape)}, {dtype} (seed {seed})")
            _expect_step(call(cached_attention_step, q, k_new, v_new, k_cache, v_cache, what=what), (q, k_new, v_new, k_cache, v_cache), what)
    inputs = (torch.zeros(1, 4, 1, 8), *(_randn(gen, (1, 2, n, 8), torch.float32) for n in (1, 1, 3, 3)))
    what = f"cached_attention_step with an all-zero query (equal weights on the 4 positions) (seed {seed})"
    _expect_step(call(cached_attention_step, *inputs, what=what), inputs, what)


def _check_step_inputs(cached_attention_step, gen, seed) -> None:
    """Non-contiguous inputs, every argument by keyword, and the input's device kept (meta stands in for a GPU)."""
    b, h_kv, group, d, t = randint(gen, 2, 3), randint(gen, 2, 3), randint(gen, 2, 3), randint(gen, 2, 8), randint(gen, 2, 6)
    dtype = _DTYPES[randint(gen, 0, 1)]
    h = h_kv * group
    caches = list(_cache_layouts(gen, (b, h_kv, t, d), dtype).items())
    news = list(_cache_layouts(gen, (b, h_kv, 1, d), dtype).values())
    queries = list(_cache_layouts(gen, (b, h, 1, d), dtype).values())
    for i, (layout, k_cache) in enumerate(caches):
        inputs = (queries[i], news[i], news[(i + 1) % len(news)], k_cache, caches[(i + 1) % len(caches)][1])
        what = (f"cached_attention_step with non-contiguous inputs (k_cache {layout}, v_cache {caches[(i + 1) % len(caches)][0]}), "
                f"q {(b, h, 1, d)}, caches {(b, h_kv, t, d)}, {dtype} (seed {seed})")
        _expect_step(call_explained(cached_attention_step, *inputs, what=what, hint=_ANY_LAYOUT), inputs, what)
    inputs = (_randn(gen, (b, h, 1, d), dtype), *(_randn(gen, (b, h_kv, n, d), dtype) for n in (1, 1, t, t)))
    what = f"cached_attention_step(q=q, k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache), every argument by keyword (seed {seed})"
    _expect_step(call_explained(cached_attention_step, what=what, hint=_BY_KEYWORD, **dict(zip(("q", "k_new", "v_new", "k_cache", "v_cache"), inputs))),
                 inputs, what)
    for n in (t, 0):
        what = f"cached_attention_step with q {(b, h, 1, d)} and caches {(b, h_kv, n, d)} on the meta device (standing in for a GPU)"
        expect_same_device(cached_attention_step, *on_meta(*inputs[:3], *(x[:, :, :n] for x in inputs[3:])), what=what)


def check_cached_attention_step_decodes_like_full_attention(cached_attention_step, seed: int | None = None) -> None:
    """Feeding a sequence one token at a time, from an empty cache, gives full causal attention row by row."""
    cached_attention_step = watched(cached_attention_step, CACHED_ATTENTION_STEP)
    gen, seed = new_generator(seed)
    for b, h, h_kv, n, d, dtype in ((2, 4, 4, 7, 8, torch.float64), (1, 8, 2, 9, 16, torch.float32),
                                    (2, 6, 1, 6, 4, torch.float64), (1, 6, 3, 5, 8, torch.float32)):
        q, k, v = _randn(gen, (b, h, n, d), dtype), _randn(gen, (b, h_kv, n, d), dtype), _randn(gen, (b, h_kv, n, d), dtype)
        full = F.scaled_dot_product_attention(q, ref.repeat_kv(k, h // h_kv), ref.repeat_kv(v, h // h_kv), is_causal=True)
        k_cache, v_cache = k[:, :, :0], v[:, :, :0]
        kind = "MHA" if h == h_kv else "MQA" if h_kv == 1 else "GQA"
        for t in range(n):
            what = (f"cached_attention_step at position {t} of a {n}-token sequence, starting from an empty cache "
                    f"({kind}: {h} query heads, {h_kv} kv heads, {dtype}) (seed {seed})")
            out, k_cache, v_cache = _unpack_step(
                call(cached_attention_step, q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], k_cache, v_cache, what=what),
                what)
            expect_tensor(out, full[:, :, t : t + 1], what + ": the output should equal row t of full causal attention", **_tolerances(dtype))
        expect_tensor(k_cache, k, f"the key cache after {n} steps ({kind}): every key, in order")
        expect_tensor(v_cache, v, f"the value cache after {n} steps ({kind}): every value, in order")


# --------------------------------------------------------------------------- generate_with_static_cache (the capstone)


GENERATE_WITH_STATIC_CACHE = Rules(
    "generate_with_static_cache",
    references=("course_lib.kvcache:generate", "course_lib.kvcache:decode_step", "course_lib.kvcache:KVCache",
                "course_lib.models:DecoderLM.forward", "course_lib.models:DecoderLM.forward_embeddings",
                "course_lib.models:DecoderLM.hidden_states", "course_lib.models:DecoderBlock.forward",
                "course_lib.models:RotarySelfAttention.forward"),
    modules=("transformers",),
    allowed=("course_lib.checks.kvcache:_CacheWatch", "course_lib.checks.kvcache:_TokenCounter"),
    why="The exercise is to write the decode loop and its preallocated cache yourself: run the blocks with "
        "kvcache.layer_qkv and kvcache.layer_output, not with the model's forward, course_lib.kvcache.generate or transformers.",
)

_FACTORIES = {"zeros", "empty", "full", "ones", "new_zeros", "new_empty", "new_full", "new_ones", "zeros_like",
              "empty_like", "full_like", "ones_like", "empty_strided", "new_empty_strided"}
_GROWERS = {"cat", "stack", "constant_pad_nd", "pad"}


class _CacheWatch(TorchDispatchMode):
    """Sees every big floating-point tensor of 4 or more dimensions allocated (a cache), and every concatenation along a sequence axis."""

    def __init__(self, big: int):
        super().__init__()
        self.big, self.allocations, self.grown = big, 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if (name in _FACTORIES and isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() >= 4
                and out.numel() >= self.big):
            self.allocations += 1
        if name in _GROWERS and isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() >= 4:
            if name != "cat":
                self.grown.append(f"{name} -> {tuple(out.shape)}")
            else:
                dim = args[1] if len(args) > 1 else (kwargs or {}).get("dim", 0)
                if dim % out.dim() == out.dim() - 2:                           # the sequence axis of (.., S, D)
                    self.grown.append(f"cat along the sequence axis -> {tuple(out.shape)}")
        return out


class _TokenCounter:
    """Counts the token rows that go into every layer's key projection."""

    def __init__(self, model):
        self.rows, self.handles = 0, []
        for block in model.blocks:
            self.handles.append(block.attn.k_proj.register_forward_hook(self._hook))

    def _hook(self, module, inputs, output):
        self.rows += inputs[0].shape[:-1].numel()

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _tiny_decoder(gen: torch.Generator, n_heads: int, n_kv_heads: int, n_layers: int = 2):
    from course_lib import models

    head_dim = 2 * randint(gen, 3, 6)
    config = models.DecoderConfig(vocab_size=randint(gen, 40, 90), d_model=n_heads * head_dim, n_layers=n_layers,
                                  n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=48, max_seq_len=64, init_std=0.3)
    state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = models.DecoderLM(config).double().eval()
    torch.random.set_rng_state(state)
    return model


def _describe_model(model) -> str:
    c = model.config
    return f"a DecoderLM with {c.n_layers} layers, {c.n_heads} query heads, {c.n_kv_heads} kv heads of size {c.head_dim}"


def generate_watched_driver(fn, model, ids, n_new: int) -> dict:
    """Run ``fn(model, ids, n_new)`` under a :class:`_CacheWatch` and a :class:`_TokenCounter`; report the tokens and what they saw.

    A driver (:func:`course_lib.checks.common.beside_answer`): in grading it runs in the sandbox, next to the
    answer and its copy of the model.
    """
    c = model.config
    counter = _TokenCounter(model)
    watch = _CacheWatch(big=max(1, ids.shape[0] * c.n_kv_heads * ids.shape[1] * c.head_dim))
    try:
        with watch, torch.no_grad():
            got = fn(model, ids, n_new)
    finally:
        counter.remove()
    return {"value": got, "grown": list(watch.grown), "allocations": watch.allocations, "rows": counter.rows}


def _run_generate(fn, model, ids, n_new, what):
    c = model.config
    report = beside_answer(fn, generate_watched_driver, model, ids.clone(), n_new, what=what)
    if (not isinstance(report, dict) or type(report.get("allocations")) is not int or type(report.get("rows")) is not int
            or not isinstance(report.get("grown"), list)):
        raise AssertionError(f"{what}: what the watch saw did not come back from the sandbox")

    grown, allocations, fed = report["grown"], report["allocations"], report["rows"] // c.n_layers
    if grown:
        raise AssertionError(f"{what} grew a cache by concatenation ({grown[0]}): a static cache is allocated "
                             "once, for prompt + new tokens, and each step writes its key and value into its slot t")
    if allocations > 2 * c.n_layers:
        raise AssertionError(f"{what} allocated {allocations} cache-sized tensors: allocate the key and value "
                             f"buffers once, before the loop (at most 2 per layer, {2 * c.n_layers} here)")
    most = ids.shape[0] * (ids.shape[1] + n_new)
    if fed > most:
        raise AssertionError(f"{what} fed {fed // ids.shape[0]} tokens per sequence through the layers, more than the "
                             f"{ids.shape[1]} of the prompt plus the {n_new} new ones: feed the prompt once (prefill), "
                             "then only the newest token, and read everything older from the cache")
    return report["value"]


def _expect_tokens(got, expected: torch.Tensor, what: str) -> None:
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what} should return a tensor of token ids, got {type(got).__name__}")
    if got.dtype != torch.long or tuple(got.shape) != tuple(expected.shape):
        raise AssertionError(f"{what} should return a torch.long tensor of shape {tuple(expected.shape)} (the prompt and "
                             f"the new tokens), got {_describe_tensor(got)}")
    if not torch.equal(got, expected):
        where = (got != expected).nonzero()[0].tolist()
        raise AssertionError(f"{what}: token {where[1]} of sequence {where[0]} should be {expected[tuple(where)].item()} "
                             f"(greedy decoding), got {got[tuple(where)].item()}; whole sequence expected "
                             f"{expected[where[0]].tolist()}, got {got[where[0]].tolist()}")


def _describe_tensor(x) -> str:
    return f"shape {tuple(x.shape)} and dtype {x.dtype}"


def check_generate_with_static_cache(generate_with_static_cache, seed: int | None = None) -> None:
    """``generate_with_static_cache(model, input_ids, max_new_tokens)`` gives greedy decoding's tokens, doing a static cache's work.

    Tiny random DecoderLMs (MHA, GQA, MQA), batches of equal-length prompts, 0, 1 and several new
    tokens; the tokens must equal :func:`course_lib.kvcache.generate`'s, the cache must be
    allocated once and never grown by concatenation, and no token may go through the layers twice.
    """
    gen, seed = new_generator(seed)
    fn = watched(generate_with_static_cache, GENERATE_WITH_STATIC_CACHE)
    cases = [(4, 2, 7), (4, 1, 5), (6, 3, 6), (4, 4, 3), (8, 2, 1), (4, 2, 0)]
    for n_heads, n_kv_heads, n_new in cases:
        model = _tiny_decoder(gen, n_heads, n_kv_heads)
        batch, prompt_len = randint(gen, 1, 3), randint(gen, 1, 6)
        ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=gen)
        what = (f"generate_with_static_cache({_describe_model(model)}, {batch} prompts of {prompt_len} tokens, "
                f"max_new_tokens={n_new}) (seed {seed})")
        expected = kvcache.generate(model, ids, n_new, strategy="greedy")
        _expect_tokens(_run_generate(fn, model, ids, n_new, what), expected, what)


def check_generate_with_static_cache_against_transformers(generate_with_static_cache, seed: int | None = None) -> None:
    """The same tokens as ``transformers``' greedy ``generate`` on the model converted to ``LlamaForCausalLM``."""
    from course_lib import models

    gen, seed = new_generator(seed)
    model = _tiny_decoder(gen, 4, 2, n_layers=3)
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=gen)
    hf = models.to_hf_llama(model).double().eval()
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=9, min_new_tokens=9,
                               do_sample=False, pad_token_id=0, eos_token_id=None)
    what = f"generate_with_static_cache({_describe_model(model)}, 2 prompts of 5 tokens, 9) against transformers (seed {seed})"
    _expect_tokens(_run_generate(watched(generate_with_static_cache, GENERATE_WITH_STATIC_CACHE), model, ids, 9, what),
                   expected, what)


# --------------------------------------------------------------------------- predictions


PREDICT_GQA8_CACHE_SHRINK = Rules(
    "predict_gqa8_cache_shrink", modules=("course_lib.kvcache", "course_lib.memory", "transformers"),
    why="A prediction is a number you work out before running the lesson's cells, not computed with the course's code.",
)


def check_predict_gqa8_cache_shrink(predict_gqa8_cache_shrink) -> None:
    """The prediction: how many times GQA-8 shrinks Llama-3-8B's KV cache against MHA, within 1%."""
    config = kvcache.PUBLISHED_CONFIGS["Llama-3-8B"]
    mha_twin = {**config, "num_key_value_heads": config["num_attention_heads"]}
    expected = kvcache.kv_cache_bytes_from_config(mha_twin, 1) / kvcache.kv_cache_bytes_from_config(config, 1)
    got = watched(predict_gqa8_cache_shrink, PREDICT_GQA8_CACHE_SHRINK)()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"predict_gqa8_cache_shrink() should return a number (an int or a float), got {type(got).__name__} ({got!r})")
    if not abs(got - expected) <= 0.01 * expected:
        raise AssertionError(f"predict_gqa8_cache_shrink() returned {got}, not within 1% of the ratio the formula gives: "
                             "compare the only factor of the KV-cache formula that differs between MHA and GQA-8")
