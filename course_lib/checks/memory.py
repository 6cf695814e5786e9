"""Checks for lesson 03's memory exercises: a block's parameters, model-state bytes, KV-cache bytes."""

from __future__ import annotations

import torch

from course_lib import memory
from course_lib.checks.common import call_explained, expect_int, new_generator, randint
from course_lib.checks.guard import Rules, watched


_ARITHMETIC = "The exercise is to count it yourself from the shapes, with arithmetic."
LLAMA_BLOCK_PARAMS = Rules("llama_block_params", modules=("course_lib.memory", "transformers"), why=_ARITHMETIC)
MODEL_STATE_BYTES = Rules("model_state_bytes", modules=("course_lib.memory",), why=_ARITHMETIC)
KV_CACHE_BYTES = Rules("kv_cache_bytes", modules=("course_lib.memory", "course_lib.kvcache", "transformers"), why=_ARITHMETIC)


def _llama_shape(d_model: int, n_heads: int, n_kv_heads: int, d_ff: int) -> memory.ModelShape:
    return memory.ModelShape(vocab_size=1000, d_model=d_model, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff)


def _call_text(name: str, args: tuple, kwargs: dict) -> str:
    """How a call looks in a message: ``kv_cache_bytes(32, 32, 8, 128, 4096, bytes_per_element=1)``."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _split_call(gen, names: tuple[str, ...], values: tuple, required: int, cut: int | None = None) -> tuple[tuple, dict]:
    """The arguments of one call: the first ``cut`` (at random when None) positional, the others by keyword.

    The first ``required`` always go in; an optional one that is None in ``values`` is left
    out, so the answer's own default is used.
    """
    cut = randint(gen, 0, len(names)) if cut is None else cut
    args, kwargs = [], {}
    for i, (name, value) in enumerate(zip(names, values)):
        if value is None and i >= required:
            cut = min(cut, i)
            continue
        if i < cut:
            args.append(value)
        else:
            kwargs[name] = value
    return tuple(args), kwargs


# Real models (d_model, n_heads, n_kv_heads, d_ff), and shapes whose count is beyond 2**53, where
# an answer that computes in floats (d_model / n_heads, 2.0 * ...) and converts with int() is off.
LLAMA_SHAPES = {
    "Llama-2-70B": (8192, 64, 8, 28672),
    "Llama-3.1-405B": (16384, 128, 8, 53248),
    "a block beyond 2**53 parameters": (3 * (2**25 + 1), 3, 1, 2**28 + 3),
    "another block beyond 2**53 parameters": (5 * (2**24 + 3), 5, 1, 3 * 2**27 + 5),
}
_BLOCK_ARGS = ("d_model", "n_heads", "n_kv_heads", "d_ff")


def _random_llama_shape(gen, grouped: bool) -> tuple[int, int, int, int]:
    """d_model, n_heads, n_kv_heads, d_ff with any head_dim (odd ones too) and any d_ff; ``grouped``: n_heads > n_kv_heads."""
    head_dim = randint(gen, 1, 160)
    n_kv = randint(gen, 1, 8)
    n_heads = n_kv * randint(gen, 2 if grouped else 1, 8)
    return n_heads * head_dim, n_heads, n_kv, randint(gen, 1, 30000)


def check_llama_block_params(llama_block_params, seed: int | None = None, n_cases: int = 12) -> None:
    """``llama_block_params(d_model, n_heads, n_kv_heads, d_ff)`` against the count of real Llama blocks.

    Random shapes (GQA among them, any head_dim and d_ff), then real models' shapes and
    counts beyond 2**53; the result must be a Python int.
    """
    llama_block_params = watched(llama_block_params, LLAMA_BLOCK_PARAMS)
    gen, seed = new_generator(seed)
    cases = [(f"seed {seed}", _random_llama_shape(gen, grouped=i % 2 == 0)) for i in range(n_cases)]
    for label, shape in [*cases, *LLAMA_SHAPES.items()]:
        args, kwargs = _split_call(gen, _BLOCK_ARGS, shape, required=4, cut=4)  # positional, as the lesson calls it
        what = f"{_call_text('llama_block_params', args, kwargs)} ({label})"
        expect_int(call_explained(llama_block_params, *args, **kwargs, what=what), memory.block_params(_llama_shape(*shape)), what)


def check_llama_block_params_against_transformers(llama_block_params) -> None:
    """The count equals ``sum(p.numel())`` of ``transformers``' own ``LlamaDecoderLayer``, and of Llama-3-8B's block."""
    llama_block_params = watched(llama_block_params, LLAMA_BLOCK_PARAMS)
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    for d_model, n_heads, n_kv, d_ff in ((64, 4, 4, 176), (96, 6, 2, 256), (128, 8, 1, 344)):
        config = LlamaConfig(hidden_size=d_model, num_attention_heads=n_heads, num_key_value_heads=n_kv, intermediate_size=d_ff, vocab_size=100)
        real = sum(p.numel() for p in LlamaDecoderLayer(config, layer_idx=0).parameters())
        expect_int(llama_block_params(d_model, n_heads, n_kv, d_ff), real, f"llama_block_params({d_model}, {n_heads}, {n_kv}, {d_ff}) vs LlamaDecoderLayer")
    # Llama-3-8B: 32 layers of this block, plus embeddings, output layer and final norm = 8,030,261,248
    block = llama_block_params(4096, 32, 8, 14336)
    expect_int(32 * block + 2 * 128256 * 4096 + 4096, 8_030_261_248, "32 Llama-3-8B blocks + embeddings + output layer + final norm")


PRECISIONS = ("fp32", "bf16", "bf16-mixed")
OPTIMIZERS = ("sgd", "sgd-momentum", "adamw")


def _reference_states(n_params: int, optimizer: str, precision: str) -> dict[str, int]:
    w = memory.precision_bytes(precision)[0]
    return {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": memory.optimizer_state_bytes(n_params, optimizer, precision)}


def _expect_states(got, expected: dict[str, int], what: str) -> None:
    if type(got) is not dict or set(got) != set(expected):
        raise AssertionError(f"{what} should return a dict with keys {sorted(expected)}, got {got!r}")
    for key, value in expected.items():
        expect_int(got[key], value, f"{what}[{key!r}]")


def check_model_state_bytes(model_state_bytes, seed: int | None = None) -> None:
    """``model_state_bytes(n_params, optimizer, precision)`` for every optimizer and precision.

    Random sizes up to a trillion parameters, then sizes beyond 2**53 (where an answer that
    computes in floats and converts with int() is off), passed positionally or by keyword.
    """
    model_state_bytes = watched(model_state_bytes, MODEL_STATE_BYTES)
    gen, seed = new_generator(seed)
    for optimizer in OPTIMIZERS:
        for precision in PRECISIONS:
            huge = 2**53 + 2 * randint(gen, 0, 2**40) + 1  # odd: n * 4 needs 55 bits
            for n, label in ((randint(gen, 1, 10**6) * randint(gen, 1, 10**6), f"seed {seed}"), (huge, "beyond 2**53")):
                args, kwargs = _split_call(gen, ("n_params", "optimizer", "precision"), (n, optimizer, precision), required=3)
                what = f"{_call_text('model_state_bytes', args, kwargs)} ({label})"
                _expect_states(call_explained(model_state_bytes, *args, **kwargs, what=what), _reference_states(n, optimizer, precision), what)


def check_model_state_bytes_against_measurement(model_state_bytes) -> None:
    """Agrees with what PyTorch really allocates for a small model after one AdamW step, and with 16 bytes/param for 1B in fp32."""
    model_state_bytes = watched(model_state_bytes, MODEL_STATE_BYTES)
    torch.manual_seed(0)
    for precision in ("fp32", "bf16"):
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        n = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
        model(torch.randn(8, 64, dtype=next(model.parameters()).dtype)).float().pow(2).mean().backward()
        optimizer.step()
        states = [t for s in optimizer.state.values() for k, t in s.items() if k != "step"]
        measured = {
            "weights": sum(memory.tensor_bytes(p) for p in model.parameters()),
            "gradients": sum(memory.tensor_bytes(p.grad) for p in model.parameters()),
            "optimizer_states": sum(memory.tensor_bytes(t) for t in states),
        }
        _expect_states(model_state_bytes(n, "adamw", precision), measured, f"model_state_bytes({n}, 'adamw', {precision!r}) vs PyTorch's tensors")
    total = sum(model_state_bytes(10**9, "adamw", "fp32").values())
    expect_int(total, 16 * 10**9, "the model states of 1B parameters, fp32 AdamW (16 bytes per parameter)")


_KV_ARGS = ("n_layers", "n_heads", "n_kv_heads", "head_dim", "seq_len", "batch_size", "bytes_per_element")
# (n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_element): Llama-3-70B at
# 128k tokens, and a cache beyond 2**53 bytes, where an answer computing in floats is off.
KV_SHAPES = {
    "Llama-3-70B, 128k tokens, batch 64": (80, 64, 8, 128, 131072, 64, 2),
    "a cache beyond 2**53 bytes": (125, 15, 5, 255, 1_000_003, 999_983, 1),
}


def _random_kv_shape(gen) -> tuple:
    """Random arguments with n_heads > n_kv_heads, any head_dim; batch_size and bytes_per_element None (the default) at times."""
    n_kv = randint(gen, 1, 16)
    batch = (None, randint(gen, 2, 64))[randint(gen, 0, 1)]
    nbytes = (None, 1, 4, 8)[randint(gen, 0, 3)]
    return (randint(gen, 1, 128), n_kv * randint(gen, 2, 8), n_kv, randint(gen, 1, 256), randint(gen, 1, 131072), batch, nbytes)


def check_kv_cache_bytes(kv_cache_bytes, seed: int | None = None, n_cases: int = 12) -> None:
    """``kv_cache_bytes(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2)``.

    Random arguments passed positionally or by keyword, the defaults (batch_size=1,
    bytes_per_element=2) left out at times, then real and beyond-2**53 sizes; a Python int.
    """
    kv_cache_bytes = watched(kv_cache_bytes, KV_CACHE_BYTES)
    gen, seed = new_generator(seed)
    cases = [(f"seed {seed}", _random_kv_shape(gen), None) for _ in range(n_cases)]
    cases += [(f"{label}, seed {seed}", (*_random_kv_shape(gen)[:5], batch, nbytes), 7) for label, batch, nbytes in (
        ("the defaults batch_size=1 and bytes_per_element=2", None, None),
        ("batch_size given positionally, the default bytes_per_element=2", randint(gen, 3, 64), None),
        ("bytes_per_element by keyword, the default batch_size=1", None, (1, 4)[randint(gen, 0, 1)]),
    )]
    for label, values, cut in [*cases, *((label, values, None) for label, values in KV_SHAPES.items())]:
        args, kwargs = _split_call(gen, _KV_ARGS, values, required=5, cut=cut)
        n_layers, _, n_kv, head_dim, seq, batch, nbytes = values
        expected = memory.kv_cache_bytes(n_layers, n_kv, head_dim, seq, 1 if batch is None else batch, 2 if nbytes is None else nbytes)
        what = f"{_call_text('kv_cache_bytes', args, kwargs)} ({label})"
        expect_int(call_explained(kv_cache_bytes, *args, **kwargs, what=what), expected, what)


def check_kv_cache_bytes_against_a_real_cache(kv_cache_bytes) -> None:
    """Equals the bytes a real ``KVCache`` holds after a forward pass, and the ANCHORS table (32k context)."""
    kv_cache_bytes = watched(kv_cache_bytes, KV_CACHE_BYTES)
    from course_lib.kvcache import KVCache
    from course_lib.models import DecoderConfig, DecoderLM

    for n_heads, n_kv in ((4, 4), (4, 2), (4, 1)):
        config = DecoderConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=n_heads, n_kv_heads=n_kv, d_ff=64, max_seq_len=64)
        model, cache = DecoderLM(config), KVCache(3)
        with torch.no_grad():
            model(torch.randint(0, 50, (2, 20)), cache=cache)
        expect_int(kv_cache_bytes(3, n_heads, n_kv, 8, 20, 2, 4), cache.nbytes(), f"kv_cache_bytes for a real cache with {n_kv} of {n_heads} kv heads (float32)")
    gib = 2**30
    for n_kv, expected_gib in ((32, 128), (8, 32), (1, 4)):
        expect_int(kv_cache_bytes(32, 32, n_kv, 128, 32 * 1024, 8, 2), expected_gib * gib, f"32 layers, {n_kv} kv heads, 32k tokens, batch 8, bf16")


# --------------------------------------------------------------------------- capstone: activation bytes

ACTIVATION_BYTES = Rules(
    "activation_bytes",
    references=tuple(f"course_lib.memory:{name}" for name in (
        "estimate_training_memory", "activation_memory", "activation_bytes_per_layer", "measure_training_memory",
        "record_saved_tensors", "saved_activation_bytes", "attention_kernel", "korthikanti_activation_bytes",
        "precision_bytes", "_peak", "_norm_bytes", "_attention_bytes", "_mlp_bytes", "_add")),
    modules=("transformers", "course_lib.kvcache"),
    why="The exercise is to count the saved tensors yourself from the shape, with arithmetic (the check measures them).",
)
#: How far the answer may be from the bytes measured on a CPU (relative).
ACTIVATION_TOLERANCE = 0.02


def reference_activation_bytes(shape: memory.ModelShape, batch_size: int, seq_len: int, attention: str = "eager",
                               checkpointing: bool = False) -> int:
    """The course's estimate in fp32 on a CPU: what the forward pass saves, plus one block recomputed with checkpointing."""
    total = sum(memory.activation_memory(shape, batch_size, seq_len, "fp32", attention, checkpointing, "cpu").values())
    if checkpointing:
        total += sum(memory.activation_bytes_per_layer(shape, seq_len, batch_size, "fp32", attention, "cpu").values())
    return int(total)


def _random_activation_shape(gen, grouped: bool) -> memory.ModelShape:
    n_kv = randint(gen, 1, 4)
    n_heads = n_kv * randint(gen, 2 if grouped else 1, 4)
    head_dim = randint(gen, 1, 64)
    explicit = randint(gen, 0, 3) == 0  # head_dim given, not d_model // n_heads
    d_model = n_heads * head_dim if not explicit else randint(gen, 8, 512)
    return memory.ModelShape(vocab_size=randint(gen, 2, 50000), d_model=d_model, n_layers=randint(gen, 1, 48),
                             n_heads=n_heads, n_kv_heads=n_kv, d_ff=randint(gen, 1, 20000),
                             head_dim=head_dim if explicit else None)


def _shape_text(shape: memory.ModelShape) -> str:
    return (f"ModelShape(vocab_size={shape.vocab_size}, d_model={shape.d_model}, n_layers={shape.n_layers}, "
            f"n_heads={shape.n_heads}, n_kv_heads={shape.n_kv_heads}, d_ff={shape.d_ff}, head_dim={shape.head_dim})")


def check_activation_bytes(activation_bytes, seed: int | None = None, n_cases: int = 8) -> None:
    """``activation_bytes(shape, batch_size, seq_len, attention="eager", checkpointing=False)``.

    Random Llama shapes (GQA, explicit head_dim), batches and sequences, both attentions, with
    and without checkpointing, against the course's estimate; a Python int; bad sizes raise
    ValueError.
    """
    activation_bytes = watched(activation_bytes, ACTIVATION_BYTES)
    gen, seed = new_generator(seed)
    cases = []
    for i in range(n_cases):
        shape = _random_activation_shape(gen, grouped=i % 2 == 0)
        for attention in ("eager", "sdpa"):
            for checkpointing in (False, True):
                cases.append((shape, randint(gen, 2, 16), randint(gen, 2, 4096), attention, checkpointing))
    for shape, b, s, attention, checkpointing in cases:
        what = f"activation_bytes({_shape_text(shape)}, {b}, {s}, attention={attention!r}, checkpointing={checkpointing}) (seed {seed})"
        got = call_explained(activation_bytes, shape, b, s, attention=attention, checkpointing=checkpointing, what=what)
        expect_int(got, reference_activation_bytes(shape, b, s, attention, checkpointing), what)
    # the defaults: eager attention, no checkpointing
    shape = _random_activation_shape(gen, grouped=True)
    what = f"activation_bytes({_shape_text(shape)}, 3, 100) (the defaults, seed {seed})"
    expect_int(call_explained(activation_bytes, shape, 3, 100, what=what), reference_activation_bytes(shape, 3, 100), what)
    for label, b, s in (("batch_size 0", 0, 16), ("seq_len 0", 2, 0), ("a negative batch_size", -2, 16),
                        ("a negative seq_len", 2, -16), ("batch_size True", True, 16), ("seq_len True", 2, True),
                        ("a float batch_size", 2.0, 16)):
        try:
            activation_bytes(shape, b, s)
        except ValueError:
            continue
        except Exception as err:  # noqa: BLE001
            raise AssertionError(f"activation_bytes(shape, {b!r}, {s!r}) ({label}) should raise ValueError, "
                                 f"got {type(err).__name__}: {err}") from None
        raise AssertionError(f"activation_bytes(shape, {b!r}, {s!r}) ({label}) should raise ValueError")


def _measured_activations(shape: memory.ModelShape, batch_size: int, seq_len: int, attention: str, checkpointing: bool) -> int:
    import warnings

    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(shape.to_hf_config(attn_implementation=attention, use_cache=False))
    if checkpointing:
        model.activation_checkpointing_enable()
    ids = torch.randint(0, shape.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memory.measure_training_memory(model, ids, optimizer_name="sgd").activations


# tiny Llamas measured by the check: (vocab, d_model, layers, heads, kv heads, d_ff), batch, sequence, attention
MEASURED_CONFIGS = (
    ((256, 64, 2, 4, 2, 160), 2, 48, "eager"),
    ((300, 96, 2, 6, 1, 200), 3, 32, "sdpa"),
    ((128, 64, 2, 4, 4, 128), 2, 40, "eager"),
)


def check_activation_bytes_against_measurement(activation_bytes) -> None:
    """Within ``ACTIVATION_TOLERANCE`` of the bytes autograd really saves in tiny ``transformers`` Llamas on the CPU.

    With checkpointing, the measured bytes saved by the forward pass plus one block's
    worth, measured as the difference between a two-block and a one-block model.
    """
    activation_bytes = watched(activation_bytes, ACTIVATION_BYTES)
    for (vocab, d, layers, heads, kv, ff), b, s, attention in MEASURED_CONFIGS:
        shape = memory.ModelShape(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv, d_ff=ff,
                                  max_positions=256)
        one = memory.ModelShape(vocab_size=vocab, d_model=d, n_layers=1, n_heads=heads, n_kv_heads=kv, d_ff=ff, max_positions=256)
        plain = _measured_activations(shape, b, s, attention, False)
        block = plain - _measured_activations(one, b, s, attention, False)
        for checkpointing, measured in ((False, plain), (True, _measured_activations(shape, b, s, attention, True) + block)):
            what = f"activation_bytes({_shape_text(shape)}, {b}, {s}, attention={attention!r}, checkpointing={checkpointing})"
            got = call_explained(activation_bytes, shape, b, s, attention=attention, checkpointing=checkpointing, what=what)
            if type(got) is not int:
                raise AssertionError(f"{what} should return a Python int, got {type(got).__name__} ({got!r})")
            if abs(got / measured - 1) > ACTIVATION_TOLERANCE:
                raise AssertionError(f"{what} is {got:,} bytes, but a transformers LlamaForCausalLM of this shape saves "
                                     f"{measured:,} bytes for backward on the CPU (more than {ACTIVATION_TOLERANCE:.0%} apart)")


# --------------------------------------------------------------------------- predictions

_PREDICTION = "A prediction is a number you work out before running the lesson's cells, not computed with the course's code."
PREDICT_ADAMW_BYTES_PER_PARAM = Rules("predict_adamw_bytes_per_param", modules=("course_lib.memory", "transformers"), why=_PREDICTION)
PREDICT_PROBS_GROWTH = Rules("predict_probs_growth", modules=("course_lib.memory", "transformers"), why=_PREDICTION)
#: The small Llama of section 2.2, whose eager attention probabilities the second prediction is about.
SMALL_LLAMA = dict(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=344, max_positions=1024)


def _prediction(fn, rules: Rules, name: str):
    got = watched(fn, rules)()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"{name}() should return a number (an int or a float), got {type(got).__name__} ({got!r})")
    return got


def check_predict_adamw_bytes_per_param(predict_adamw_bytes_per_param) -> None:
    """The prediction: bytes per parameter of fp32 AdamW's model states, within 0.5 of the course's estimate."""
    ref = memory.reference_1b_config()
    expected = memory.estimate_training_memory(ref, 1, 512, "adamw", "fp32").model_states / memory.count_params(ref)
    got = _prediction(predict_adamw_bytes_per_param, PREDICT_ADAMW_BYTES_PER_PARAM, "predict_adamw_bytes_per_param")
    if not abs(got - expected) <= 0.5:
        raise AssertionError(f"predict_adamw_bytes_per_param() returned {got}, not within 0.5 of the bytes per parameter "
                             "that fp32 AdamW keeps before activations: add up weights, gradients and both Adam states")


def check_predict_probs_growth(predict_probs_growth) -> None:
    """The prediction: how many times eager attention's probabilities grow when the sequence doubles, within 1%."""
    shape = memory.ModelShape(**SMALL_LLAMA)
    probs = [memory.activation_memory(shape, 2, s, "fp32", "eager", device="cpu")["attention_probs"] for s in (128, 256)]
    expected = probs[1] / probs[0]
    got = _prediction(predict_probs_growth, PREDICT_PROBS_GROWTH, "predict_probs_growth")
    if not abs(got - expected) <= 0.01 * expected:
        raise AssertionError(f"predict_probs_growth() returned {got}, not within 1% of how many times the attention "
                             "probabilities grow when the sequence doubles: how do they depend on s, per sequence?")
