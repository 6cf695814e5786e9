"""Checks for the exercises of lesson 08 (fine-tuning, LoRA).

Each ``check_*`` function takes the learner's function, calls it on fresh random inputs and on
edge cases, compares what comes back with the course's reference (:mod:`course_lib.finetune`,
:mod:`course_lib.lora`, or a float64 formula), and raises ``AssertionError`` with an
explanation when something is off. ``seed`` reproduces a failing run.

The capstone, :func:`check_reverse_adapter`, trains nothing itself: it gives the learner's
function training pairs, loads the adapter that comes back onto a fresh ``course-lm-small``
and asks it lists it has never seen.
"""

from __future__ import annotations

import math
import numbers

import torch

from course_lib import finetune as ref
from course_lib import lora as ref_lora
from course_lib.checks.common import call_explained, expect_int, expect_same_device, expect_tensor, new_generator, randint
from course_lib.checks.guard import Rules, watched

MASK_PROMPT = Rules(
    "mask_prompt", references=("course_lib.finetune:mask_prompt", "course_lib.finetune:collate"),
    modules=("course_lib.finetune",),
    why="The exercise is to build the labels yourself from the lengths.",
)
LORA_FORWARD = Rules(
    "lora_forward", references=("course_lib.lora:LoRALinear",), modules=("course_lib.lora", "peft"),
    why="The exercise is to compute the LoRA layer's output yourself, without course_lib.lora or peft.",
)
MERGE_LORA = Rules(
    "merge_lora_weight", references=("course_lib.lora:LoRALinear", "course_lib.lora:merge_lora"),
    modules=("course_lib.lora", "peft"),
    why="The exercise is to compute the merged weight yourself, without course_lib.lora or peft.",
)
LORA_PARAMETERS = Rules(
    "lora_trainable_parameters",
    references=("course_lib.lora:lora_parameter_count", "course_lib.finetune:projection_shapes"),
    modules=("course_lib.lora", "course_lib.finetune", "peft"),
    why="The exercise is to count the adapters' numbers yourself.",
)

_BY_KEYWORD = "; keep the parameter names of the signature in the docstring"
_ANY_LAYOUT = "; an input may be a non-contiguous view: use reshape (not view), or .contiguous() first"


# --------------------------------------------------------------------------- mask_prompt


def _mask_case(gen, batch: int, seq: int):
    """Random ids (pad id 0 and -100 lookalikes avoided nowhere: token 0 may sit inside a response) and lengths."""
    ids = torch.randint(0, 1024, (batch, seq), generator=gen)
    lengths = torch.randint(0, seq + 1, (batch,), generator=gen)
    prompts = (torch.rand(batch, generator=gen) * (lengths + 1)).long().clamp(max=lengths)
    return ids, prompts, lengths


def _expect_labels(mask_prompt, ids, prompts, lengths, what: str, hint: str = "") -> None:
    got = call_explained(mask_prompt, ids, prompts, lengths, what=what, hint=hint)
    expected = ref.mask_prompt(ids, prompts, lengths)
    try:
        expect_tensor(got, expected, what)
    except AssertionError as err:
        raise AssertionError(f"{err}\ninput_ids:\n{ids}\nprompt_lengths: {prompts.tolist()}\nlengths: {lengths.tolist()}"
                             + _mask_hint(got, ids, prompts, lengths)) from None


def _mask_hint(got, ids, prompts, lengths) -> str:
    if type(got) is not torch.Tensor or got.shape != ids.shape:
        return ""
    off_by_one = ref.mask_prompt(ids, (prompts - 1).clamp(min=0), lengths)
    if torch.equal(got, off_by_one) or torch.equal(got, ref.mask_prompt(ids, prompts + 1, lengths)):
        return "\nHint: position t is a response token when prompt_length <= t: the first response token is at prompt_length."
    by_id = torch.where(ids == 0, torch.full_like(ids, -100), got)
    if torch.equal(by_id, got) and (ids == 0).any():
        return "\nHint: the padding is where t >= length; a real token may have the same id as <pad>."
    return ""


def check_mask_prompt(mask_prompt, seed: int | None = None, n_cases: int = 12) -> None:
    """``mask_prompt(input_ids, prompt_lengths, lengths)``: the ids where ``prompt_length <= t < length``, else -100.

    Also: a row with no response (prompt_length = length), a row that is all response
    (prompt_length 0), a row without padding, an all-padding row (length 0), a batch of one, a
    response holding the id of ``<pad>``, non-contiguous ids, a call by keyword, the inputs left as
    they were and their device kept (meta stands in for a GPU).
    """
    mask_prompt = watched(mask_prompt, MASK_PROMPT)
    gen, seed = new_generator(seed)
    ids = torch.tensor([[1, 5, 6, 7, 0, 2, 0], [1, 5, 9, 2, 0, 0, 0], [1, 4, 4, 4, 4, 4, 2], [0, 0, 0, 0, 0, 0, 0]])
    cases = [(ids, torch.tensor([3, 4, 0, 0]), torch.tensor([6, 4, 7, 0]),
              "rows: a response holding token 0, no response at all, all response and no padding, all padding")]
    one = torch.tensor([[1, 8, 9, 2]])
    cases.append((one, torch.tensor([1]), torch.tensor([4]), "a batch of one row"))
    for i in range(n_cases):
        batch, seq = randint(gen, 1, 6), randint(gen, 1, 20)
        cases.append((*_mask_case(gen, batch, seq), f"random case {i}"))
    for ids, prompts, lengths, label in cases:
        _expect_labels(mask_prompt, ids, prompts, lengths, f"mask_prompt(input_ids, prompt_lengths, lengths) for {label} (seed {seed})")
    ids, prompts, lengths = _mask_case(gen, 4, 12)
    strided = torch.randint(0, 1024, (12, 4), generator=gen).t()  # the same values stored column by column
    _expect_labels(mask_prompt, strided, prompts, lengths,
                   f"mask_prompt for non-contiguous input_ids (a transposed tensor) (seed {seed})", _ANY_LAYOUT)
    what = f"mask_prompt(input_ids=..., prompt_lengths=..., lengths=...) called by keyword (seed {seed})"
    got = call_explained(mask_prompt, what=what, hint=_BY_KEYWORD, input_ids=ids, prompt_lengths=prompts, lengths=lengths)
    expect_tensor(got, ref.mask_prompt(ids, prompts, lengths), what)
    expect_same_device(mask_prompt, ids, prompts, lengths, what="mask_prompt on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- lora_forward and merge_lora_weight


def _lora_reference(x, weight, bias, a, b, alpha):
    """``x W^T + bias + (alpha / r) (x A^T) B^T`` in float64."""
    r = a.shape[0]
    y = x.double() @ weight.double().t() + (alpha / r) * ((x.double() @ a.double().t()) @ b.double().t())
    return y if bias is None else y + bias.double()


def _lora_inputs(gen, dtype, batch_shape, d_in, d_out, r, bias=True, scale=1.0):
    x = (torch.randn(*batch_shape, d_in, generator=gen, dtype=torch.float64) * scale).to(dtype)
    weight = (torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) / math.sqrt(d_in)).to(dtype)
    b_ = (torch.randn(d_out, generator=gen, dtype=torch.float64)).to(dtype) if bias else None
    a = (torch.randn(r, d_in, generator=gen, dtype=torch.float64) / math.sqrt(d_in)).to(dtype)
    b = (torch.randn(d_out, r, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    return x, weight, b_, a, b


def _tolerance(dtype: torch.dtype, expected: torch.Tensor) -> dict:
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    eps = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    return {"atol": eps * max(scale, 1.0), "rtol": eps}


def _lora_hint(got, x, weight, bias, a, b, alpha) -> str:
    if type(got) is not torch.Tensor:
        return ""
    r = a.shape[0]
    base = _lora_reference(x, weight, bias, a, b * 0, alpha)
    wrong = {
        "the update is not scaled by alpha / r": _lora_reference(x, weight, bias, a, b, float(r)),
        "the update is scaled by alpha alone; divide by r as well": _lora_reference(x, weight, bias, a, b, alpha * r),
        "the update is scaled by r / alpha; it is alpha / r": _lora_reference(x, weight, bias, a, b, r * r / alpha),
        "the frozen layer's output (x W^T + bias) is missing": _lora_reference(x, weight * 0, None, a, b, alpha),
        "the update is missing: only the frozen layer's output came back": base,
    }
    for text, candidate in wrong.items():
        if got.shape == candidate.shape and torch.allclose(got.double(), candidate, rtol=1e-3, atol=1e-3):
            return f"\nHint: {text}."
    return ""


def check_lora_forward(lora_forward, seed: int | None = None, n_cases: int = 12) -> None:
    """``lora_forward(x, weight, bias, lora_A, lora_B, alpha)``: ``x W^T + bias + (alpha / r) (x A^T) B^T``, r = A's rows.

    Random shapes and ranks (r = 1 included), any number of leading batch dimensions, float32,
    float64 and bfloat16 (the result in x's dtype), no bias, B = 0 (the base alone), large inputs,
    non-contiguous inputs, a call by keyword, the inputs left as they were and their device kept.
    """
    lora_forward = watched(lora_forward, LORA_FORWARD)
    gen, seed = new_generator(seed)
    dtypes = (torch.float32, torch.float64, torch.bfloat16)
    cases = []
    for i in range(n_cases):
        dtype = dtypes[i % 3]
        batch = tuple(randint(gen, 1, 4) for _ in range(randint(gen, 0, 2)))
        d_in, d_out, r = randint(gen, 1, 24), randint(gen, 1, 24), randint(gen, 1, 6)
        alpha = float((1, 2, 8, 16, 0.5)[randint(gen, 0, 4)])
        cases.append((_lora_inputs(gen, dtype, batch, d_in, d_out, r, bias=i % 4 != 3), alpha,
                      f"x {tuple(batch) + (d_in,)}, W ({d_out}, {d_in}), r={r}, alpha={alpha}, {dtype}"
                      + ("" if i % 4 != 3 else ", bias None")))
    x, weight, bias, a, b = _lora_inputs(gen, torch.float32, (3,), 10, 7, 1, scale=1e4)
    cases.append(((x, weight, bias, a, b), 4.0, "r = 1 and inputs of magnitude 1e4"))
    x, weight, bias, a, b = _lora_inputs(gen, torch.float32, (2, 3), 8, 5, 2)
    cases.append(((x, weight, bias, a, b * 0), 16.0, "B = 0 (a fresh adapter: the output is the frozen layer's)"))
    for (x, weight, bias, a, b), alpha, label in cases:
        what = f"lora_forward(x, weight, bias, lora_A, lora_B, alpha) for {label} (seed {seed})"
        got = call_explained(lora_forward, x, weight, bias, a, b, alpha, what=what)
        expected = _lora_reference(x, weight, bias, a, b, alpha)
        try:
            expect_tensor(got, expected.to(x.dtype), what, **_tolerance(x.dtype, expected))
        except AssertionError as err:
            raise AssertionError(str(err) + _lora_hint(got, x, weight, bias, a, b, alpha)) from None
    x, weight, bias, a, b = _lora_inputs(gen, torch.float32, (4,), 6, 5, 3)
    xt, wt = x.t().contiguous().t(), weight.t().contiguous().t()
    what = f"lora_forward for non-contiguous x and weight (transposed storage) (seed {seed})"
    expected = _lora_reference(x, weight, bias, a, b, 6.0)
    expect_tensor(call_explained(lora_forward, xt, wt, bias, a, b, 6.0, what=what, hint=_ANY_LAYOUT), expected.float(), what,
                  **_tolerance(torch.float32, expected))
    what = f"lora_forward(x=..., weight=..., bias=..., lora_A=..., lora_B=..., alpha=...) by keyword (seed {seed})"
    got = call_explained(lora_forward, what=what, hint=_BY_KEYWORD, x=x, weight=weight, bias=bias, lora_A=a, lora_B=b, alpha=6.0)
    expect_tensor(got, expected.float(), what, **_tolerance(torch.float32, expected))
    expect_same_device(lora_forward, x, weight, bias, a, b, 6.0, what="lora_forward on the meta device (standing in for a GPU)")


def check_merge_lora_weight(merge_lora_weight, seed: int | None = None, n_cases: int = 12) -> None:
    """``merge_lora_weight(weight, lora_A, lora_B, alpha)``: a new ``W + (alpha / r) B A`` in W's dtype; W unchanged.

    The merged layer must compute what the un-merged one does; random shapes, r = 1, float32,
    float64 and bfloat16, a non-contiguous weight, a call by keyword, the device kept.
    """
    merge_lora_weight = watched(merge_lora_weight, MERGE_LORA)
    gen, seed = new_generator(seed)
    dtypes = (torch.float32, torch.float64, torch.bfloat16)
    for i in range(n_cases + 1):
        dtype = dtypes[i % 3]
        d_in, d_out, r = randint(gen, 1, 24), randint(gen, 1, 24), 1 if i == n_cases else randint(gen, 1, 6)
        alpha = float((1, 2, 8, 16, 0.5)[randint(gen, 0, 4)])
        x, weight, _, a, b = _lora_inputs(gen, dtype, (3,), d_in, d_out, r, bias=False)
        what = f"merge_lora_weight(weight ({d_out}, {d_in}), lora_A ({r}, {d_in}), lora_B ({d_out}, {r}), alpha={alpha}), {dtype} (seed {seed})"
        got = call_explained(merge_lora_weight, weight, a, b, alpha, what=what)
        expected = weight.double() + (alpha / r) * (b.double() @ a.double())
        try:
            expect_tensor(got, expected.to(dtype), what, **_tolerance(dtype, expected))
        except AssertionError as err:
            hint = ""
            if type(got) is torch.Tensor and got.shape == expected.shape:
                for text, candidate in (("not scaled by alpha / r", weight.double() + b.double() @ a.double()),
                                        ("scaled by alpha alone; divide by r as well", weight.double() + alpha * (b.double() @ a.double())),
                                        ("scaled by r / alpha; it is alpha / r", weight.double() + (r / alpha) * (b.double() @ a.double()))):
                    if torch.allclose(got.double(), candidate, rtol=1e-2, atol=1e-2):
                        hint = f"\nHint: the update is {text}."
            raise AssertionError(str(err) + hint) from None
        if dtype != torch.bfloat16:  # the merged layer computes what LoRA computes
            merged = x.double() @ got.double().t()
            if not torch.allclose(merged, _lora_reference(x, weight, None, a, b, alpha), rtol=1e-4, atol=1e-5):
                raise AssertionError(f"{what}: x @ merged.T differs from the un-merged LoRA layer's output")
    x, weight, _, a, b = _lora_inputs(gen, torch.float32, (2,), 7, 5, 2, bias=False)
    expected = (weight.double() + 4.0 * (b.double() @ a.double())).float()
    what = f"merge_lora_weight for a non-contiguous weight (transposed storage) (seed {seed})"
    expect_tensor(call_explained(merge_lora_weight, weight.t().contiguous().t(), a, b, 8.0, what=what, hint=_ANY_LAYOUT),
                  expected, what, **_tolerance(torch.float32, expected))
    what = f"merge_lora_weight(weight=..., lora_A=..., lora_B=..., alpha=8.0) by keyword (seed {seed})"
    expect_tensor(call_explained(merge_lora_weight, what=what, hint=_BY_KEYWORD, weight=weight, lora_A=a, lora_B=b, alpha=8.0),
                  expected, what, **_tolerance(torch.float32, expected))
    expect_same_device(merge_lora_weight, weight, a, b, 8.0, what="merge_lora_weight on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- lora_trainable_parameters


def _count_expected(config: dict, r: int, targets) -> int:
    from course_lib.memory import ModelShape

    shape = ModelShape(vocab_size=1000, d_model=config["d_model"], n_layers=config["n_layers"], n_heads=config["n_heads"],
                       n_kv_heads=config["n_kv_heads"], d_ff=config["d_ff"])
    return ref_lora.lora_parameter_count(ref.projection_shapes(shape, tuple(targets)), r)


def _random_config(gen) -> dict:
    head_dim = (8, 16, 32, 64, 128)[randint(gen, 0, 4)]
    n_kv = (1, 2, 4, 8)[randint(gen, 0, 3)]
    n_heads = n_kv * (1, 2, 4)[randint(gen, 0, 2)]
    return {"d_model": head_dim * n_heads, "n_layers": randint(gen, 1, 80), "n_heads": n_heads, "n_kv_heads": n_kv,
            "d_ff": 64 * randint(gen, 1, 400)}


def check_lora_trainable_parameters(lora_trainable_parameters, seed: int | None = None, n_cases: int = 40) -> None:
    """``lora_trainable_parameters(config, r, targets)``: the numbers a LoRA of rank r on ``targets`` trains.

    The source's count on LLaMA-7B's q_proj and v_proj (r = 8: 4,194,304), random Llama shapes
    with grouped-query attention (k_proj and v_proj are narrower than q_proj), every subset of the
    seven projections, no target at all (0), the config and targets left as they were.
    """
    lora_trainable_parameters = watched(lora_trainable_parameters, LORA_PARAMETERS)
    gen, seed = new_generator(seed)
    llama_7b = {"d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "d_ff": 11008}
    calls = [(llama_7b, 8, ["q_proj", "v_proj"], "LLaMA-7B, r=8 on q_proj and v_proj (the LoRA paper's choice)"),
             (llama_7b, 16, list(ref.PROJECTIONS), "LLaMA-7B, r=16 on all seven projections"),
             ({"d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "d_ff": 14336}, 8, ["k_proj", "v_proj"],
              "Llama-3-8B (8 key/value heads of 32), r=8 on k_proj and v_proj"),
             (llama_7b, 4, [], "no target at all")]
    for i in range(n_cases):
        mask = randint(gen, 1, 127)
        targets = [t for j, t in enumerate(ref.PROJECTIONS) if mask >> j & 1]
        calls.append((_random_config(gen), randint(gen, 1, 64), targets, f"random case {i}"))
    for config, r, targets, label in calls:
        what = f"lora_trainable_parameters({config}, r={r}, targets={targets}) ({label}, seed {seed})"
        got = call_explained(lora_trainable_parameters, dict(config), r, list(targets), what=what)
        expected = _count_expected(config, r, targets)
        try:
            expect_int(got, expected, what)
        except AssertionError as err:
            hint = ""
            full = {"d_model": config["d_model"], "n_layers": config["n_layers"], "n_heads": config["n_heads"],
                    "n_kv_heads": config["n_heads"], "d_ff": config["d_ff"]}
            if isinstance(got, int) and got == _count_expected(full, r, targets) != expected:
                hint = ("\nHint: with grouped-query attention k_proj and v_proj have n_kv_heads * head_dim outputs, "
                        "head_dim = d_model // n_heads.")
            raise AssertionError(str(err) + hint) from None
    what = "lora_trainable_parameters(config=..., r=..., targets=...) by keyword"
    expect_int(call_explained(lora_trainable_parameters, what=what, hint=_BY_KEYWORD, config=dict(llama_7b), r=8,
                              targets=["q_proj", "v_proj"]), 4_194_304, what)


# --------------------------------------------------------------------------- the capstone: train_reverse_adapter

MAX_RANK = 16


def _adapter_model(adapter, what: str):
    """A fresh course-lm-small with the learner's adapter loaded, or an AssertionError that says what is wrong."""
    from course_lib.models import load_pretrained

    if not isinstance(adapter, dict) or set(adapter) != {"r", "alpha", "targets", "state"}:
        got = sorted(adapter) if isinstance(adapter, dict) else type(adapter).__name__
        raise AssertionError(f"{what} should return a dict with the keys 'r', 'alpha', 'targets' and 'state', got {got}")
    r, alpha, targets, state = adapter["r"], adapter["alpha"], adapter["targets"], adapter["state"]
    if type(r) is not int or not 1 <= r <= MAX_RANK:
        raise AssertionError(f"{what}: 'r' should be an int from 1 to {MAX_RANK}, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < float(alpha) < 1e4:
        raise AssertionError(f"{what}: 'alpha' should be a positive number, got {alpha!r}")
    if not isinstance(targets, (list, tuple)) or not targets or any(t not in ref_lora.LLAMA_TARGETS for t in targets) \
            or len(set(targets)) != len(targets):
        raise AssertionError(f"{what}: 'targets' should be a non-empty list of distinct names from {list(ref_lora.LLAMA_TARGETS)}, "
                             f"got {targets!r}")
    if not isinstance(state, dict) or any(type(v) is not torch.Tensor for v in state.values()):
        raise AssertionError(f"{what}: 'state' should be a dict of tensors (course_lib.lora.adapter_state_dict), got {type(state).__name__}")
    for name, value in state.items():
        if value.dtype != torch.float32 or not torch.isfinite(value).all():
            raise AssertionError(f"{what}: state[{name!r}] should be a finite float32 tensor, got {value.dtype}")
    model = load_pretrained("course-lm-small")
    ref_lora.inject_lora(model, r=r, alpha=float(alpha), targets=tuple(targets))
    try:
        ref_lora.load_adapter_state_dict(model, state)
    except ValueError as err:
        raise AssertionError(f"{what}: the adapter does not fit course-lm-small with r={r} on {list(targets)}: {err}") from None
    return model.eval()


def _reverse_accuracy(model, pairs) -> float:
    from course_lib.tokenizer import course_tokenizer

    return ref.task_accuracy(model, course_tokenizer(0), pairs)


def _expect_accuracy(accuracy: float, pairs, threshold: float, what: str) -> None:
    if not accuracy >= threshold:
        instruction, answer = pairs[0]
        raise AssertionError(
            f"{what}: the adapter reverses {accuracy:.0%} of {len(pairs)} new lists exactly; at least {threshold:.0%} is needed "
            f"(for example {instruction!r} should give {answer!r}). Train longer, raise the learning rate or the rank, or put "
            "adapters on more projections.")


def check_reverse_adapter(train_reverse_adapter, seed: int | None = 0, n_heldout: int = 100, threshold: float = 0.6) -> dict:
    """``train_reverse_adapter(pairs) -> {"r", "alpha", "targets", "state"}``: a LoRA adapter that reverses lists.

    ``pairs`` are 1,000 ``("Reverse: 5 3 9", "9 3 5")`` pairs drawn from ``seed``; the adapter (rank
    at most 16, on projections of ``course-lm-small``) is loaded onto a fresh ``course-lm-small``
    and asked ``n_heldout`` other lists in the chat format. It passes with an exact-match accuracy
    of at least ``threshold``. Returns the adapter, for :func:`check_reverse_adapter_on_new_lists`.
    """
    # Not watched: the capstone may use the whole library (course_lib.lora and course_lib.finetune are meant for it),
    # so there is nothing to forbid, and the watch would triple the time of its training.
    _, seed = new_generator(seed)
    pairs = ref.reverse_pairs(1000, f"check/{seed}")
    heldout = ref.reverse_pairs(n_heldout, f"check/{seed}/heldout", exclude={i for i, _ in pairs})
    what = f"train_reverse_adapter(pairs) (1,000 pairs drawn with seed {seed})"
    adapter = call_explained(train_reverse_adapter, [tuple(p) for p in pairs], what=what)
    model = _adapter_model(adapter, what)
    _expect_accuracy(_reverse_accuracy(model, heldout), heldout, threshold, what)
    return adapter


def check_reverse_adapter_on_new_lists(adapter, seed: int | None = None, n_heldout: int = 200, threshold: float = 0.6) -> float:
    """The adapter that :func:`check_reverse_adapter` returned, asked ``n_heldout`` lists drawn now (fresh with ``seed=None``).

    Passes with an exact-match accuracy of at least ``threshold``; returns the accuracy.
    """
    _, seed = new_generator(seed)
    what = f"the adapter of train_reverse_adapter, on {n_heldout} lists drawn with seed {seed}"
    model = _adapter_model(adapter, what)
    pairs = ref.reverse_pairs(n_heldout, f"check/new/{seed}")
    accuracy = _reverse_accuracy(model, pairs)
    _expect_accuracy(accuracy, pairs, threshold, what)
    return accuracy
