"""Checks for the exercises of lesson 06 (grouped-query attention and the KV cache).

Each ``check_*`` function takes the learner's function, calls it on fresh random inputs
(and on edge cases), compares what comes back with the reference in
:mod:`course_lib.attention` and :mod:`course_lib.kvcache`, with PyTorch's own
``scaled_dot_product_attention`` or with ``transformers``, and raises ``AssertionError``
with an explanation when something is off. ``seed`` reproduces a failing run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib import attention as ref
from course_lib import kvcache
from course_lib.checks.common import call, expect_int, expect_tensor, new_generator, randint
from course_lib.checks.guard import Rules, watched

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


# --------------------------------------------------------------------------- repeat_kv


def check_repeat_kv(repeat_kv, seed: int | None = None, n_cases: int = 10) -> None:
    """``repeat_kv(x, n_rep)``: ``(B, H_kv, S, D) -> (B, H_kv * n_rep, S, D)``, head ``h`` of the result is head ``h // n_rep``."""
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
    kind = randint(gen, 0, 3)
    if kind in (1, 3):
        config["num_key_value_heads"] = n_kv
    if kind in (2, 3):
        config["head_dim"] = 8 * randint(gen, 1, 32)  # may differ from hidden_size // num_attention_heads, as Gemma's
    return config


def _describe_config(config: dict) -> str:
    keys = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim")
    return "{" + ", ".join(f"{k!r}: {config[k]}" for k in keys if k in config) + "}"


def _call_with_config(fn, config: dict, *args, what: str):
    """Call ``fn(config, *args)``; a KeyError or TypeError becomes an AssertionError that says which key to look at."""
    try:
        return call(fn, dict(config), *args, what=what)
    except (KeyError, TypeError) as err:
        raise AssertionError(
            f"{what} raised {type(err).__name__}: {err}. A config may lack num_key_value_heads or head_dim, "
            "or hold None for them: then use num_attention_heads, and hidden_size // num_attention_heads"
        ) from err


def check_kv_cache_bytes_from_config(kv_cache_bytes_from_config, seed: int | None = None, n_cases: int = 16) -> None:
    """``kv_cache_bytes_from_config(config, seq_len, batch_size=1, bytes_per_value=2)`` on published and random configs."""
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
    """One step on random caches: the output ``(B, H, 1, D)`` and the grown caches ``(B, H_kv, T + 1, D)``."""
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
        got = _unpack_step(call(cached_attention_step, q, k_new, v_new, k_cache, v_cache, what=what), what)
        expected = reference_cached_attention_step(q, k_new, v_new, k_cache, v_cache)
        try:
            expect_tensor(got[0], expected[0], f"out returned by {what}")
        except AssertionError as err:
            raise AssertionError(str(err) + _diagnose(got[0], q, k_new, v_new, k_cache, v_cache)) from None
        for part, g, e in zip(("k_cache", "v_cache"), got[1:], expected[1:]):
            expect_tensor(g, e, f"{part} returned by {what}" + (" (append at the end: torch.cat([k_cache, k_new], dim=2))"
                                                              if type(g) is torch.Tensor and g.shape == e.shape else ""))


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
            expect_tensor(out, full[:, :, t : t + 1], what + ": the output should equal row t of full causal attention")
        expect_tensor(k_cache, k, f"the key cache after {n} steps ({kind}): every key, in order")
        expect_tensor(v_cache, v, f"the value cache after {n} steps ({kind}): every value, in order")
