"""Checks for the exercises of lesson 10 (pruning, GPTQ, distillation, speculative decoding).

Each ``check_*`` function takes the learner's function, calls it on fresh random inputs and on
edge cases, compares what comes back with a float64 formula written here (or, for the 2:4 mask,
with the rule itself: any tie-break is right), and raises ``AssertionError`` with an explanation
when something is off. ``seed`` reproduces a failing run.
"""

from __future__ import annotations

import math

import torch

from course_lib.checks.common import (call, call_explained, call_with_gradients, expect_same_device, expect_tensor, new_generator,
                                      randint)
from course_lib.checks.guard import Rules, watched

MASK_2_4 = Rules(
    "mask_2_4",
    references=("course_lib.pruning:n_m_mask", "course_lib.pruning:magnitude_mask", "course_lib.pruning:wanda_mask",
                "course_lib.pruning:sparsegpt"),
    modules=("course_lib.pruning", "torch.sparse.semi_structured", "torch.sparse._semi_structured_conversions"),
    functions=("torch.sparse.to_sparse_semi_structured",),
    why="The exercise is to choose the 2 weights of each group of 4 yourself.",
)
WANDA_SCORES = Rules(
    "wanda_scores", references=("course_lib.pruning:wanda_scores", "course_lib.pruning:wanda_mask"), modules=("course_lib.pruning",),
    why="The exercise is to compute Wanda's scores yourself.",
)
GPTQ_COLUMN_STEP = Rules(
    "gptq_column_step",
    references=("course_lib.gptq:to_codes", "course_lib.gptq:round_to_grid", "course_lib.gptq:gptq", "course_lib.pruning:sparsegpt"),
    modules=("course_lib.gptq", "course_lib.int4"),
    why="The exercise is to round one column and spread its error yourself.",
)
DISTILLATION_LOSS = Rules(
    "distillation_loss", references=("course_lib.distill:distillation_loss",), modules=("course_lib.distill",),
    why="The exercise is to write Hinton's distillation loss yourself.",
)
ACCEPT_OR_RESAMPLE = Rules(
    "accept_or_resample", references=("course_lib.speculative:accept_or_resample",), modules=("course_lib.speculative",),
    why="The exercise is to write the speculative sampling rule yourself.",
)
_BY_KEYWORD = "; keep the parameter names of the signature in the docstring"


def _tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 1e-12, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}


def _expect_value_error(fn, args: tuple, what: str, why: str) -> None:
    """``fn(*args)`` must raise ValueError (the watch's AssertionError, a forbidden call, goes through as it is)."""
    try:
        got = call(fn, *args, what=what)
    except ValueError:
        return
    except AssertionError:
        raise
    except Exception as err:  # noqa: BLE001  (the answer's own error, reported as a failed check)
        raise AssertionError(f"{what} should raise ValueError ({why}), raised {type(err).__name__}: {err}") from None
    raise AssertionError(f"{what} should raise ValueError ({why}), returned {type(got).__name__}")


# --------------------------------------------------------------------------- the 2:4 mask


def _follows_rule(mask: torch.Tensor, scores: torch.Tensor, size: int, n: int) -> bool:
    """Whether ``mask`` keeps exactly ``n`` of every ``size`` consecutive entries of a row, none smaller than one dropped."""
    if mask.dim() != 2 or mask.shape[1] % size or mask.numel() == 0:
        return False
    groups = (mask.shape[0], mask.shape[1] // size, size)
    m, s = mask.reshape(groups), scores.reshape(groups)
    kept = torch.where(m, s, torch.full_like(s, math.inf)).amin(-1)
    dropped = torch.where(~m, s, torch.full_like(s, -math.inf)).amax(-1)
    return bool((m.sum(-1) == n).all() and (kept >= dropped).all())


def _mask_hint(mask: torch.Tensor, w: torch.Tensor) -> str:
    a, signed = w.double().abs(), w.double()
    wrong = [
        ("compare |w|, not w: a weight of -5 matters as much as one of 5", lambda: _follows_rule(mask, signed, 4, 2)),
        ("that keeps the 2 smallest |w| of each group; keep the 2 largest", lambda: _follows_rule(mask, -a, 4, 2)),
        ("a group is 4 consecutive weights of a row (along dim 1), not of a column",
         lambda: w.shape[0] % 4 == 0 and _follows_rule(mask.t(), a.t(), 4, 2)),
        ("keep 2 in every group of 4, not the largest half of the whole row",
         lambda: _follows_rule(mask, a, w.shape[1], w.shape[1] // 2)),
        ("keep 2 in every group of 4 (2:4 sparsity), not 1", lambda: _follows_rule(mask, a, 4, 1)),
    ]
    for text, matches in wrong:
        if matches():
            return f"\nHint: {text}."
    return ""


def _expect_mask(got, w: torch.Tensor, what: str) -> None:
    if type(got) is not torch.Tensor:
        raise AssertionError(f"{what} should return a torch.Tensor (a bool mask), got {type(got).__name__}")
    if got.dtype != torch.bool:
        raise AssertionError(f"{what} should return a bool tensor (True where the weight is kept), got dtype {got.dtype}; "
                             "make it with a comparison, or torch.zeros(..., dtype=torch.bool)")
    if tuple(got.shape) != tuple(w.shape):
        raise AssertionError(f"{what} should return w's shape {tuple(w.shape)}, got {tuple(got.shape)}")
    if got.device != w.device:
        raise AssertionError(f"{what} should return a tensor on {w.device}, got {got.device}")
    groups = (w.shape[0], w.shape[1] // 4, 4)
    a, m = w.double().abs().reshape(groups), got.reshape(groups)
    counts = m.sum(-1)
    kept = torch.where(m, a, torch.full_like(a, math.inf)).amin(-1)
    dropped = torch.where(~m, a, torch.full_like(a, -math.inf)).amax(-1)
    for bad, problem in ((counts != 2, "keeps {n} of its 4 weights, not 2: exactly 2 of every group of 4 consecutive weights of a row"),
                         (kept < dropped, "drops a weight of larger |w| than one it keeps: keep the 2 largest |w| of each group")):
        if bad.any():
            r, g = (int(v) for v in bad.nonzero()[0])
            raise AssertionError(
                f"{what}: row {r}, group {g} (columns {4 * g} to {4 * g + 3}) " + problem.format(n=int(counts[r, g]))
                + f".\nw[{r}, {4 * g}:{4 * g + 4}] = {w[r, 4 * g:4 * g + 4].tolist()}\nmask there = "
                f"{got[r, 4 * g:4 * g + 4].tolist()}" + _mask_hint(got, w))


def check_mask_2_4(mask_2_4, seed: int | None = None, n_cases: int = 12) -> None:
    """``mask_2_4(w)``: a bool mask of ``w``'s shape keeping the 2 largest ``|w|`` of every 4 consecutive weights of a row.

    Any tie-break is right: the mask is judged by the rule (exactly 2 kept per group, no dropped
    ``|w|`` larger than a kept one), not against one reference mask. Random layers in float32,
    float64, float16 and bfloat16, large negative weights, exact ties (small integers, whole rows of
    zeros), no rows at all, magnitudes near each dtype's largest and smallest (squaring would overflow), a
    non-contiguous ``w``, a single row, a 64 x 256 layer, a call by keyword, ``w`` left as it was
    and its device kept, and ``ValueError`` for a ``w`` that is not 2-D or whose rows are not a
    multiple of 4 long.
    """
    mask_2_4 = watched(mask_2_4, MASK_2_4)
    gen, seed = new_generator(seed)
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    cases = []
    for i in range(n_cases):
        dtype = dtypes[i % 4]
        out, n_in = randint(gen, 1, 8), 4 * randint(gen, 1, 6)
        if i % 3 == 1:
            w = torch.randint(-2, 3, (out, n_in), generator=gen).double()
            label = "small whole numbers (ties, zeros)"
        else:
            w = torch.randn(n_in, out, generator=gen, dtype=torch.float64).t() if i % 3 == 2 else \
                torch.randn(out, n_in, generator=gen, dtype=torch.float64)
            label = "non-contiguous (a transpose)" if i % 3 == 2 else "random"
        w = w.to(dtype)
        cases.append((w, f"a {out} x {n_in} {label} layer, {dtype}"))
    cases += [
        (torch.tensor([[-5.0, 1.0, 2.0, -0.1], [0.5, -3.0, -4.0, 1.0]]), "large negative weights"),
        (torch.tensor([[1.0, -1.0, 1.0, -1.0, 0.5, 0.5, -0.5, 2.0], [3.0, -3.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0]]),
         "exact ties (either choice is right)"),
        (torch.zeros(3, 8), "all-zero rows"),
        (torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, -2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]],
                      dtype=torch.float64), "zero groups next to nonzero ones"),
        (torch.tensor([[3e38, 2e38, -2.5e38, 1.0], [1e-40, -1e-39, 0.0, 1e-38]]),
         "float32 magnitudes near its largest and its smallest (squares overflow or vanish)"),
        (torch.tensor([[-65504.0, 1000.0, 65000.0, 6e-8]], dtype=torch.float16), "float16 near its largest"),
        (torch.randn(12, 5, generator=gen).t(), "a non-contiguous 5 x 12 layer (w.t() of a 12 x 5 tensor)"),
        (torch.randn(1, 4, generator=gen), "a single row of 4"),
        (torch.randn(1, 16, generator=gen, dtype=torch.float64), "a single row of 16"),
        (torch.randn(64, 256, generator=gen), "a 64 x 256 layer"),
        (torch.zeros(0, 8), "no rows (a 0 x 8 layer)"),
    ]
    for w, label in cases:
        what = f"mask_2_4(w) for {label} (seed {seed})"
        _expect_mask(call_explained(mask_2_4, w, what=what), w, what)
    w = cases[0][0]
    what = f"mask_2_4(w=...) by keyword (seed {seed})"
    _expect_mask(call_explained(mask_2_4, what=what, hint=_BY_KEYWORD, w=w), w, what)
    for bad, label in ((torch.randn(8, generator=gen), "a 1-D w of 8"), (torch.randn(2, 2, 4, generator=gen), "a 3-D w (2, 2, 4)"),
                       (torch.randn(3, 6, generator=gen), "rows of 6 (not a multiple of 4)"),
                       (torch.randn(2, 5, generator=gen), "rows of 5 (not a multiple of 4)")):
        _expect_value_error(mask_2_4, (bad,), f"mask_2_4(w) for {label} (seed {seed})",
                            "w should be (out, in) with in a multiple of 4")
    expect_same_device(mask_2_4, torch.randn(4, 8, generator=gen), what="mask_2_4 on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- Wanda's scores


def _norms64(x: torch.Tensor) -> torch.Tensor:
    return x.double().pow(2).sum(0).sqrt()


def _wanda_reference(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return w.double().abs() * _norms64(x)


def _wanda_hint(got, w, x) -> str:
    if type(got) is not torch.Tensor or got.shape != w.shape:
        return ""
    a, x64 = w.double().abs(), x.double()
    norms, tokens = _norms64(x), max(x.shape[0], 1)
    wrong = {
        "take the square root: the L2 norm is sqrt(sum_t x[t, j]^2), not the sum of squares": lambda: a * norms ** 2,
        "use |w|, not w: a large negative weight is as important as a large positive one": lambda: w.double() * norms,
        "the norm is over the tokens (dim 0 of x), one per input feature j": lambda: a * x64.pow(2).sum(1).sqrt()
        if x.shape[0] == w.shape[1] else None,
        "input feature j multiplies column j of w: broadcast the norms along rows (norms[None, :]), not columns":
            lambda: a * norms[:, None] if w.shape[0] == w.shape[1] else None,
        "the L2 norm sums over the tokens; sqrt(mean(x^2)) divides by their number": lambda: a * norms / math.sqrt(tokens),
        "the norm is of the inputs x, not of the weights": lambda: a * w.double().pow(2).sum(0).sqrt(),
        "the L2 norm squares the inputs: sqrt(sum_t x[t, j]^2), not sum_t |x[t, j]|": lambda: a * x64.abs().sum(0),
    }
    for text, candidate in wrong.items():
        c = candidate()
        if c is not None and torch.allclose(got.double(), c, rtol=1e-4, atol=1e-6) and not torch.allclose(c, _wanda_reference(w, x)):
            return f"\nHint: {text}."
    return ""


def check_wanda_scores(wanda_scores, seed: int | None = None, n_cases: int = 12) -> None:
    """``wanda_scores(w, x)``: ``|w[i, j]| * ||x[:, j]||_2``, (out, in) in ``w``'s dtype.

    Random layers and calibration inputs whose features differ in scale (as activations do),
    float32 and float64, square layers (a norm broadcast along the wrong axis has the right shape)
    and as many tokens as features (a norm over the wrong axis has the right shape), an input
    feature that is always zero (score 0), a single token, no output rows, an all-zero ``w``,
    non-contiguous ``w`` and ``x``, a call by keyword, the inputs left as they were and their
    device kept. No extreme magnitudes: ``torch.linalg.vector_norm`` itself squares without
    rescaling, so an input of 1e20 overflows float32 whoever writes the answer.
    """
    wanda_scores = watched(wanda_scores, WANDA_SCORES)
    gen, seed = new_generator(seed)
    cases = []
    for i in range(n_cases):
        dtype = (torch.float32, torch.float64)[i % 2]
        out, n_in, tokens = randint(gen, 1, 8), randint(gen, 2, 10), randint(gen, 2, 16)
        if i % 3 == 0:
            out = n_in
        elif i % 3 == 1:
            tokens = n_in
        feature_scale = torch.exp(torch.randn(n_in, generator=gen, dtype=torch.float64) * 1.5)
        x = torch.randn(tokens, n_in, generator=gen, dtype=torch.float64) * feature_scale
        if i % 4 == 3:
            x[:, randint(gen, 0, n_in - 1)] = 0
        w = torch.randn(out, n_in, generator=gen, dtype=torch.float64) * 0.05
        x, w = x.to(dtype), w.to(dtype)
        if i % 5 == 4:
            x, w = x.t().contiguous().t(), w.t().contiguous().t()
        cases.append((w, x, f"a {out} x {n_in} layer, {tokens} tokens, {dtype}" + (", non-contiguous" if i % 5 == 4 else "")))
    square = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    cases += [
        (torch.randn(3, 4, generator=gen), torch.tensor([[1.0, 2.0, 0.0, -1.0], [3.0, -2.0, 0.0, 0.5]]),
         "an input feature that is always zero (its scores are 0)"),
        (square, torch.randn(4, 4, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 100.0], dtype=torch.float64),
         "a square layer, 4 tokens, an outlier feature of magnitude 100"),
        (torch.randn(5, 3, generator=gen), torch.randn(1, 3, generator=gen), "a single calibration token"),
        (torch.zeros(0, 4), torch.randn(6, 4, generator=gen), "no output rows"),
        (torch.zeros(3, 5), torch.randn(7, 5, generator=gen), "an all-zero w"),
        (torch.randn(6, 5, generator=gen).t(), torch.randn(6, 8, generator=gen).t(), "w and x non-contiguous (transposes)"),
    ]
    for w, x, label in cases:
        what = f"wanda_scores(w, x) for {label} (seed {seed})"
        got = call_explained(wanda_scores, w, x, what=what)
        try:
            expect_tensor(got, _wanda_reference(w, x).to(w.dtype), what, **_tolerance(w.dtype))
        except AssertionError as err:
            raise AssertionError(str(err) + _wanda_hint(got, w, x)) from None
    w, x, _ = cases[0]
    what = f"wanda_scores(w=..., x=...) by keyword (seed {seed})"
    got = call_explained(wanda_scores, what=what, hint=_BY_KEYWORD, w=w, x=x)
    expect_tensor(got, _wanda_reference(w, x).to(w.dtype), what, **_tolerance(w.dtype))
    expect_same_device(wanda_scores, w, x, what="wanda_scores on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- one column of GPTQ


def _grid64(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's grid over ``[min(w, 0), max(w, 0)]`` (course_lib.gptq.grid's rule, written here), float64."""
    levels = 2 ** bits - 1
    low, high = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)
    scale = (high - low) / levels
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale, torch.round(-low / scale)


def _inverse_hessian_factor64(gen, n: int, magnitude: float) -> torch.Tensor:
    """The upper Cholesky factor of (H + damping)^-1 for H = 2 X^T X / tokens of correlated random inputs X, float64."""
    tokens = 4 * n
    mixing = torch.eye(n, dtype=torch.float64) + 0.5 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    x = torch.randn(tokens, n, generator=gen, dtype=torch.float64) @ mixing * magnitude
    h = 2 * x.T @ x / tokens
    h += 0.01 * torch.diag(h).mean() * torch.eye(n, dtype=torch.float64)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def _step64(w, u, i, scale, zero, bits, *, rounding=torch.round, clamp=True, divide=True, sign=-1.0, spread="row",
            with_zero=True, codes_out=False, replace=True):
    """One GPTQ column step in float64; the keyword arguments make the usual mistakes (for the hints)."""
    w, u, scale, zero = w.double().clone(), u.double(), scale.double(), zero.double()
    zero_used = zero if with_zero else torch.zeros_like(zero)
    codes = rounding(w[:, i:i + 1] / scale) + zero_used
    if clamp:
        codes = codes.clamp(0, 2 ** bits - 1)
    q = scale * (codes - zero_used)
    error = (w[:, i:i + 1] - q) / (u[i, i] if divide else 1.0)
    if spread == "row":
        w[:, i + 1:] += sign * error * u[i:i + 1, i + 1:]
    elif spread == "backwards":
        w[:, :i] += sign * error * u[:i, i][None, :]
    if replace:
        w[:, i:i + 1] = codes if codes_out else q
    return w


def _half_up(x):
    return torch.floor(x + 0.5)


def _step_hint(got, args) -> str:
    w = args[0]
    if type(got) is not torch.Tensor or got.shape != w.shape:
        return ""
    right = _step64(*args)
    wrong = {
        "clamp the codes to [0, 2^bits - 1]: a weight beyond its row's range lands on the grid's end": {"clamp": False},
        "round with torch.round, which sends exact halves to the even neighbour (2.5 -> 2, -1.5 -> -2); floor(x + 0.5) "
        "does not": {"rounding": _half_up},
        "divide the error by u[i, i]: err = (w[:, i] - q) / u[i, i]": {"divide": False},
        "torch.round sends exact halves to the even neighbour (2.5 -> 2, 0.5 -> 0), not away from zero":
            {"rounding": lambda x: torch.sign(x) * torch.floor(x.abs() + 0.5)},
        "the later columns move by -err * u[i, j]: subtract, do not add": {"sign": 1.0},
        "the columns after i did not move: compute err = (w[:, i] - q) / u[i, i] before you overwrite column i, and "
        "subtract err * u[i, j] (row i of u; its column is zero below the diagonal) from every column j > i": {"spread": None},
        "only the columns after i move, through row i of u (u[i, j] for j > i); the columns before i are already "
        "rounded": {"spread": "backwards"},
        "code = round(w / scale) + zero and value = scale * (code - zero): the zero point is missing": {"with_zero": False},
        "column i should hold the rounded weight scale * (code - zero), not the integer code": {"codes_out": True},
        "replace column i with its rounded value q": {"replace": False},
    }
    tol = 1e-4 * (_largest(args[3]) + _largest(w))
    for text, mistake in wrong.items():
        candidate = _step64(*args, **mistake)
        if not torch.allclose(candidate, right, atol=tol, rtol=0) and torch.allclose(got.double(), candidate, atol=tol, rtol=1e-4):
            return f"\nHint: {text}."
    return ""


def _largest(t: torch.Tensor) -> float:
    return float(t.double().abs().max()) if t.numel() else 0.0


def _step_tolerance(w: torch.Tensor, scale: torch.Tensor) -> dict:
    size = _largest(scale) + _largest(w)
    return {"atol": 1e-12 * size, "rtol": 1e-10} if w.dtype == torch.float64 else {"atol": 1e-5 * size, "rtol": 1e-5}


def _away_from_ties(w: torch.Tensor, i: int, scale: torch.Tensor) -> torch.Tensor:
    """``w`` with column i moved off the rounding boundaries, so that float32 and float64 round it alike."""
    t = w[:, i:i + 1] / scale
    near = ((t - torch.floor(t)) - 0.5).abs() < 1e-3
    w = w.clone()
    w[:, i:i + 1] += torch.where(near, 0.01 * scale, torch.zeros_like(scale))
    return w


def _round_columns_before(w, i, scale, zero, bits):
    """The columns before i on the grid, as GPTQ leaves them."""
    w = w.clone()
    w[:, :i] = scale * ((torch.round(w[:, :i] / scale) + zero).clamp(0, 2 ** bits - 1) - zero)
    return w


def _gptq_case(gen, out, n, i, bits, magnitude, shrink, dtype, non_contiguous=False):
    w = torch.randn(out, n, generator=gen, dtype=torch.float64) * magnitude
    u = _inverse_hessian_factor64(gen, n, (0.3, 1.0, 5.0)[randint(gen, 0, 2)])
    scale, zero = _grid64(w * shrink, bits)
    w = _away_from_ties(_round_columns_before(w, i, scale, zero, bits), i, scale)
    w = w.to(dtype)
    if non_contiguous:
        w = w.t().contiguous().t()
    return w, u.to(dtype), i, scale.to(dtype), zero.to(dtype), bits


def _expect_step(gptq_column_step, args, label, seed):
    w = args[0]
    what = f"gptq_column_step(w, u, i={args[2]}, scale, zero, bits={args[5]}) for {label} (seed {seed})"
    got = call_explained(gptq_column_step, *args, what=what)
    try:
        expect_tensor(got, _step64(*args).to(w.dtype), what, **_step_tolerance(w, args[3]))
    except AssertionError as err:
        raise AssertionError(str(err) + _step_hint(got, args)) from None


def _tie_case(dtype):
    """Column 2 of w lies exactly half-way between two grid points in every row (scales are powers of two)."""
    scale = torch.tensor([[0.125], [0.25], [0.5], [0.0625]], dtype=torch.float64)
    zero = torch.full((4, 1), 8.0, dtype=torch.float64)
    halves = torch.tensor([[2.5], [-1.5], [0.5], [4.5]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(10)
    w = torch.randn(4, 6, generator=gen, dtype=torch.float64) * scale * 4
    w = _round_columns_before(w, 2, scale, zero, 4)
    w[:, 2:3] = halves * scale
    u = _inverse_hessian_factor64(gen, 6, 1.0)
    return w.to(dtype), u.to(dtype), 2, scale.to(dtype), zero.to(dtype), 4


def _clamp_case(dtype):
    """A 2-bit grid over [-0.1, 0.2] and weights far beyond it in column 1."""
    gen = torch.Generator().manual_seed(11)
    scale, zero = torch.full((3, 1), 0.1, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64)
    w = torch.rand(3, 5, generator=gen, dtype=torch.float64) * 0.3 - 0.1
    w = _round_columns_before(w, 1, scale, zero, 2)
    w[:, 1] = torch.tensor([1.03, -0.97, 0.07], dtype=torch.float64)
    u = _inverse_hessian_factor64(gen, 5, 2.0)
    return w.to(dtype), u.to(dtype), 1, scale.to(dtype), zero.to(dtype), 2


def _zero_row_case(dtype):
    """Row 1 of w is all zeros: its grid has scale 1 and zero point 0, its error is 0."""
    gen = torch.Generator().manual_seed(12)
    w = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    w[1] = 0
    scale, zero = _grid64(w, 3)
    w = _away_from_ties(_round_columns_before(w, 2, scale, zero, 3), 2, scale)
    w[1] = 0
    u = _inverse_hessian_factor64(gen, 6, 1.0)
    return w.to(dtype), u.to(dtype), 2, scale.to(dtype), zero.to(dtype), 3


def _gptq_whole_layer(gptq_column_step, gen, seed, bits: int = 4) -> None:
    """Applying the step for i = 0, 1, ..., in - 1 is GPTQ: course_lib.gptq.gptq's result, column after column."""
    from course_lib import gptq, pruning

    out, n = 8, 16
    for _ in range(20):  # a layer none of whose steps rounds within 1e-3 of a tie (float32 and float64 then agree)
        w = torch.randn(out, n, generator=gen)
        x = torch.randn(4 * n, n, generator=gen, dtype=torch.float64) @ (
            torch.eye(n, dtype=torch.float64) + 0.5 * torch.randn(n, n, generator=gen, dtype=torch.float64))
        hessian = 2 * x.T @ x / x.shape[0]
        scale, zero = gptq.grid(w, bits)
        u = pruning.inverse_hessian_factor(hessian, 0.01)
        w64, closest = w.double(), 1.0
        for i in range(n):
            t = w64[:, i:i + 1] / scale.double()
            closest = min(closest, float(((t - torch.floor(t)) - 0.5).abs().min()))
            w64 = _step64(w64, u, i, scale.double(), zero.double(), bits)
        if closest > 1e-3:
            break
    u = u.float()
    expected = gptq.gptq(w, hessian, bits, block_size=128, damp=0.01)
    current = w
    for i in range(n):
        what = (f"gptq_column_step(w, u, i={i}, scale, zero, bits={bits}), step {i + 1} of {n} of a whole {out} x {n} layer "
                f"(seed {seed})")
        got = call_explained(gptq_column_step, current, u, i, scale, zero, bits, what=what)
        if type(got) is not torch.Tensor or got.shape != w.shape or got.dtype != w.dtype:
            expect_tensor(got, w, what)
        current = got
    what = (f"the {out} x {n} layer after gptq_column_step for i = 0, 1, ..., {n - 1} (seed {seed}), compared with "
            "GPTQ (course_lib.gptq.gptq with the same Hessian)")
    expect_tensor(current, expected, what, atol=1e-4 * float(scale.max()), rtol=1e-5)


def check_gptq_column_step(gptq_column_step, seed: int | None = None, n_cases: int = 12) -> None:
    """``gptq_column_step(w, u, i, scale, zero, bits)``: column i rounded to its row's grid, its error spread over the
    columns after it through row i of ``u``; a new tensor.

    ``u`` is the upper Cholesky factor of a damped inverse Hessian of correlated random inputs
    (``u[i, i]`` is not 1), ``scale`` and ``zero`` each row's grid, the columns before i already on
    it. Random layers of weights from 0.02 to 30 in float32 and float64, 2, 3, 4 and 8 bits, the
    first, the last and a middle column, grids narrower than the weights (the clamp matters),
    exact rounding ties (torch.round sends halves to the even neighbour), a non-contiguous ``w``,
    a call by keyword, the inputs left as they were and their device kept; then a whole 8 x 16
    layer rounded step by step, which must give GPTQ's result (``course_lib.gptq.gptq``).
    """
    gptq_column_step = watched(gptq_column_step, GPTQ_COLUMN_STEP)
    gen, seed = new_generator(seed)
    cases = []
    for k in range(n_cases):
        dtype = (torch.float32, torch.float64)[k % 2]
        bits = (2, 3, 4, 8)[(k // 2) % 4]
        out, n = randint(gen, 1, 8), randint(gen, 2, 12)
        i = (0, n - 1, randint(gen, 1, max(n - 2, 1)))[k % 3]
        magnitude = (0.02, 1.0, 30.0)[(k // 3) % 3]
        shrink = 0.5 if k % 4 == 1 else 1.0
        args = _gptq_case(gen, out, n, i, bits, magnitude, shrink, dtype, non_contiguous=k % 5 == 3)
        cases.append((args, f"a {out} x {n} layer of weights around {magnitude:g}, {dtype}"
                      + (", a grid over half the weights' range" if shrink < 1 else "")
                      + (", w non-contiguous" if k % 5 == 3 else "")))
    for dtype in (torch.float32, torch.float64):
        cases.append((_tie_case(dtype), f"column 2 exactly half-way between grid points (w / scale = 2.5, -1.5, 0.5, 4.5), {dtype}"))
        cases.append((_clamp_case(dtype), f"weights of +1 and -1 on a 2-bit grid over [-0.1, 0.2], {dtype}"))
    cases.append((_zero_row_case(torch.float32), "a row of zeros (its grid: scale 1, zero point 0)"))
    cases.append(((torch.zeros(0, 5), _inverse_hessian_factor64(gen, 5, 1.0).float(), 2, torch.ones(0, 1), torch.zeros(0, 1), 4),
                  "no output rows"))
    for args, label in cases:
        _expect_step(gptq_column_step, args, label, seed)
    w, u, i, scale, zero, bits = cases[0][0]
    what = f"gptq_column_step(w=..., u=..., i=..., scale=..., zero=..., bits=...) by keyword (seed {seed})"
    got = call_explained(gptq_column_step, what=what, hint=_BY_KEYWORD, w=w, u=u, i=i, scale=scale, zero=zero, bits=bits)
    expect_tensor(got, _step64(w, u, i, scale, zero, bits).to(w.dtype), what, **_step_tolerance(w, scale))
    expect_same_device(gptq_column_step, w, u, i, scale, zero, bits,
                       what="gptq_column_step on the meta device (standing in for a GPU)")
    _gptq_whole_layer(gptq_column_step, gen, seed)


# --------------------------------------------------------------------------- the distillation loss


def _distill64(student, teacher, labels, temperature, alpha, *, t_squared=True, reverse=False, soften_teacher=True,
               soften_ce=False, drop_ignored=True, reduce="mean", swap_alpha=False, kl_over_vocab=False):
    """Hinton's loss in float64; the keyword arguments make the usual mistakes (for the hints)."""
    vocab = student.shape[-1]
    s, t, y = student.double().reshape(-1, vocab), teacher.double().reshape(-1, vocab), labels.reshape(-1)
    keep = y != -100
    if drop_ignored:
        s, t, y = s[keep], t[keep], y[keep]
    log_s = torch.log_softmax(s / temperature, dim=-1)
    log_t = torch.log_softmax(t / (temperature if soften_teacher else 1.0), dim=-1)
    kl = ((log_s.exp() * (log_s - log_t)) if reverse else (log_t.exp() * (log_t - log_s))).sum(-1)
    log_ce = torch.log_softmax(s / (temperature if soften_ce else 1.0), dim=-1)
    ce = -log_ce.gather(-1, y.clamp(min=0)[:, None])[:, 0]
    if not drop_ignored:
        ce = torch.where(keep, ce, torch.zeros_like(ce))
    if kl_over_vocab:
        kl = kl / vocab
    soft, hard = (kl.sum(), ce.sum()) if reduce == "sum" else (kl.mean(), ce.mean())
    a_soft, a_hard = (1 - alpha, alpha) if swap_alpha else (alpha, 1 - alpha)
    return a_soft * (temperature ** 2 if t_squared else 1.0) * soft + a_hard * hard


def _distill_hint(got, student, teacher, labels, temperature, alpha) -> str:
    if type(got) is not torch.Tensor or got.numel() != 1:
        return ""
    if not torch.isfinite(got).all():
        return ("\nHint: take logarithms with F.log_softmax: log(softmax(x)) is log(0) = -inf once a probability "
                "underflows (logits in the thousands, a near-certain teacher), and 0 * log(0) is nan.")
    args = (student, teacher, labels, temperature, alpha)
    right = float(_distill64(*args))
    wrong = {
        "multiply the KL term by T^2 (it keeps the soft gradients' size as T grows)": {"t_squared": False},
        "the KL divergence is KL(teacher || student): sum p_teacher * (log p_teacher - log p_student)": {"reverse": True},
        "divide the teacher's logits by T too: both distributions are softened": {"soften_teacher": False},
        "the cross-entropy with the labels uses the student's plain logits, not logits / T": {"soften_ce": True},
        "average over the positions whose label is not -100 only: drop the others from both terms": {"drop_ignored": False},
        "average over the positions, do not sum": {"reduce": "sum"},
        "alpha weighs the soft (KL) term and 1 - alpha the cross-entropy, not the other way round": {"swap_alpha": True},
        "sum the KL over the vocabulary and average over positions: F.kl_div(..., reduction='mean') also divides by "
        "the vocabulary size (use reduction='batchmean')": {"kl_over_vocab": True},
    }
    for text, mistake in wrong.items():
        candidate = float(_distill64(*args, **mistake))
        if not math.isclose(candidate, right, rel_tol=1e-4, abs_tol=1e-6) and \
                math.isclose(float(got), candidate, rel_tol=1e-4, abs_tol=1e-6):
            return f"\nHint: {text}."
    return ""


def _distill_tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 1e-10, "rtol": 1e-9} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 2e-5}


def _some_ignored(gen, shape, vocab: int, share: float) -> torch.Tensor:
    labels = torch.randint(0, vocab, shape, generator=gen)
    ignored = torch.rand(shape, generator=gen) < share
    ignored.view(-1)[randint(gen, 0, labels.numel() - 1)] = False  # at least one position counts
    return torch.where(ignored, torch.full_like(labels, -100), labels)


def check_distillation_loss(distillation_loss, seed: int | None = None, n_cases: int = 12) -> None:
    """``distillation_loss(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5)``:
    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``, averaged over the positions
    whose label is not -100; a scalar in the student's dtype.

    Random (N, V) and (B, T, V) logits of a student close to its teacher, float32 and float64,
    some positions ignored (their logits huge, so that counting them shows), T of 0.5, 1, 2 and 4,
    alpha of 0, 1 and in between, logits in the thousands and a teacher sure of one token (finite,
    no nan), a single position counted, the student's gradient, the defaults (three arguments; then
    alpha's alone), a call by keyword, the inputs left as they were and their device kept.
    """
    distillation_loss = watched(distillation_loss, DISTILLATION_LOSS)
    gen, seed = new_generator(seed)
    cases = []
    for k in range(n_cases):
        dtype = (torch.float32, torch.float64)[k % 2]
        shape = (randint(gen, 1, 12),) if k % 3 == 0 else (randint(gen, 1, 3), randint(gen, 1, 6))
        vocab = randint(gen, 2, 50)
        temperature, alpha = (1.0, 2.0, 4.0, 0.5)[k % 4], (0.5, 0.0, 1.0, 0.3, 0.9)[k % 5]
        scale = (1.0, 4.0, 15.0)[(k // 2) % 3]
        teacher = torch.randn(*shape, vocab, generator=gen, dtype=torch.float64) * scale
        student = 0.7 * teacher + torch.randn(*shape, vocab, generator=gen, dtype=torch.float64) * scale * 0.5
        labels = _some_ignored(gen, shape, vocab, 0.3)
        student[labels == -100] *= 50  # an ignored position counted would show
        cases.append((student.to(dtype), teacher.to(dtype), labels, temperature, alpha,
                      f"logits {tuple(student.shape)} of scale {scale:g}, {int((labels == -100).sum())} positions ignored, "
                      f"T={temperature}, alpha={alpha}, {dtype}"))
    thousands = [torch.randn(2, 3, 7, generator=gen, dtype=torch.float64) * 3000 for _ in range(2)]
    sure = torch.zeros(4, 6, dtype=torch.float64)
    sure[torch.arange(4), torch.tensor([0, 5, 2, 2])] = 200.0
    one = torch.full((5,), -100)
    one[3] = 2
    cases += [
        (thousands[0].float(), thousands[1].float(), _some_ignored(gen, (2, 3), 7, 0.2), 2.0, 0.5,
         "logits in the thousands, float32 (the loss must stay finite)"),
        (thousands[1], thousands[0], _some_ignored(gen, (2, 3), 7, 0.2), 1.0, 0.8, "logits in the thousands, float64"),
        (torch.randn(4, 6, generator=gen), sure.float(), torch.tensor([0, 5, 1, -100]), 1.0, 0.7,
         "a teacher sure of one token (a gap of 200 in its logits: its other probabilities are 0 in float32)"),
        (torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, 4, generator=gen, dtype=torch.float64), one, 2.0, 0.5,
         "one position counted, four ignored"),
        (torch.zeros(3, 5), torch.zeros(3, 5), torch.tensor([1, 2, 3]), 2.0, 0.5,
         "all-zero logits (both uniform: KL 0, cross-entropy log 5)"),
        (torch.randn(6, 4, generator=gen).t(), torch.randn(6, 4, generator=gen).t(), torch.tensor([0, 5, -100, 2]), 2.0, 0.5,
         "non-contiguous logits (transposes of (vocab, positions) tensors)"),
    ]
    for student, teacher, labels, temperature, alpha, label in cases:
        what = (f"distillation_loss(student_logits, teacher_logits, labels, temperature={temperature}, alpha={alpha}) for "
                f"{label} (seed {seed})")
        got = call_explained(distillation_loss, student, teacher, labels, temperature, alpha, what=what)
        try:
            expect_tensor(got, _distill64(student, teacher, labels, temperature, alpha).to(student.dtype), what,
                          **_distill_tolerance(student.dtype))
        except AssertionError as err:
            raise AssertionError(str(err) + _distill_hint(got, student, teacher, labels, temperature, alpha)) from None
    student, teacher = torch.randn(2, 4, 9, generator=gen), torch.randn(2, 4, 9, generator=gen) * 2
    labels = _some_ignored(gen, (2, 4), 9, 0.3)
    calls = [("distillation_loss(student_logits, teacher_logits, labels): temperature=2.0 and alpha=0.5 by default",
              (student, teacher, labels), {}, (2.0, 0.5)),
             ("distillation_loss(student_logits, teacher_logits, labels, 4.0): alpha=0.5 by default",
              (student, teacher, labels, 4.0), {}, (4.0, 0.5)),
             ("distillation_loss(student_logits=..., teacher_logits=..., labels=..., temperature=3.0, alpha=0.25) by keyword",
              (), {"student_logits": student, "teacher_logits": teacher, "labels": labels, "temperature": 3.0, "alpha": 0.25},
              (3.0, 0.25))]
    for described, args, kwargs, (temperature, alpha) in calls:
        what = f"{described} (seed {seed})"
        got = call_explained(distillation_loss, *args, what=what, hint=_BY_KEYWORD, **kwargs)
        try:
            expect_tensor(got, _distill64(student, teacher, labels, temperature, alpha).float(), what,
                          **_distill_tolerance(torch.float32))
        except AssertionError as err:
            raise AssertionError(str(err) + _distill_hint(got, student, teacher, labels, temperature, alpha)) from None
    _expect_student_gradient(distillation_loss, student, teacher, labels, 3.0, 0.7, seed)
    expect_same_device(distillation_loss, student, teacher, labels, 2.0, 0.5,
                       what="distillation_loss on the meta device (standing in for a GPU)")


def _expect_student_gradient(distillation_loss, student, teacher, labels, temperature, alpha, seed) -> None:
    """The loss must be differentiable with respect to the student's logits, with the reference's gradient."""
    what = f"distillation_loss's gradient with respect to student_logits, temperature={temperature}, alpha={alpha} (seed {seed})"
    report = call_with_gradients(distillation_loss, [student], what, (teacher, labels, temperature, alpha))
    if not isinstance(report, dict) or report.get("type") != "Tensor" or not report.get("requires_grad"):
        raise AssertionError(f"{what}: distillation_loss should return a tensor that gradients flow through (a training "
                             "loss); do not detach it or convert it to a number")
    leaf = student.detach().double().requires_grad_(True)
    _distill64(leaf, teacher, labels, temperature, alpha).backward()
    grads = report.get("grads")
    got = grads[0] if isinstance(grads, list) and grads else None
    if type(got) is not torch.Tensor or got.shape != leaf.shape or not torch.allclose(got.double(), leaf.grad, rtol=1e-4, atol=1e-6):
        raise AssertionError(f"{what} is wrong (expected {leaf.grad.tolist()}, got {got.tolist() if type(got) is torch.Tensor else got})")


# --------------------------------------------------------------------------- speculative sampling: accept or resample


def _accept_reference(p, q, token, u):
    """``(accepted, distribution)`` in float64: accept when u * q[token] < p[token] (u < p / q without dividing)."""
    p64, q64 = p.double(), q.double()
    if u * float(q64[token]) < float(p64[token]):
        return True, torch.nn.functional.one_hot(torch.tensor(token), p.shape[0]).double()
    residual = (p64 - q64).clamp(min=0)
    return False, residual / residual.sum()


def _accept_hint(accepted, distribution, p, q, token, u) -> str:
    p64, q64 = p.double(), q.double()
    if accepted is not None:
        if u * float(q64[token]) == float(p64[token]):
            return ("\nHint: u exactly equal to p[token] / q[token] is rejected: accept when u < p / q, strictly "
                    "(u is uniform on [0, 1), so u < r happens with probability exactly r).")
        if accepted == (float(p64[token]) >= float(q64[token])):
            return "\nHint: a token the target likes less than the draft (p < q) is still accepted when u < p / q: use u."
        if accepted == (u * float(p64[token]) < float(q64[token])):
            return "\nHint: the ratio is p[token] / q[token] (target over draft), not q / p."
        return ""
    if type(distribution) is not torch.Tensor or distribution.shape != p.shape or distribution.dtype != p.dtype:
        return ""
    if u * float(q64[token]) < float(p64[token]):
        return "\nHint: an accepted token comes out as it is: the distribution is a one-hot at token."
    wrong = {
        "the residual is max(p - q, 0) (where the target wants more than the draft gave), not max(q - p, 0)":
            (q64 - p64).clamp(min=0) / (q64 - p64).clamp(min=0).sum(),
        "normalise the residual max(p - q, 0) to sum to 1": (p64 - q64).clamp(min=0),
        "on a rejection, resample from max(p - q, 0) normalised, not from p itself: p would count twice the tokens the "
        "draft already proposes": p64,
        "on a rejection, return the whole distribution max(p - q, 0) / sum (the token is drawn from it), not a one-hot at "
        "its most likely token": torch.nn.functional.one_hot((p64 - q64).argmax(), p.shape[0]).double(),
    }
    for text, candidate in wrong.items():
        if torch.allclose(distribution.double(), candidate, rtol=1e-4, atol=1e-6):
            return f"\nHint: {text}."
    return ""


def _expect_accept(got, p, q, token, u, what) -> None:
    accepted, distribution = _accept_reference(p, q, token, u)
    if not isinstance(got, tuple) or len(got) != 2:
        raise AssertionError(f"{what} should return a tuple (accepted, distribution), got {type(got).__name__}")
    if type(got[0]) is not bool:
        raise AssertionError(f"{what} should return accepted as a Python bool (True or False), got {type(got[0]).__name__}; "
                             "try bool(...)")
    if got[0] != accepted:
        relation = "<" if accepted else ">="
        raise AssertionError(
            f"{what}: accepted should be {accepted} (u * q[token] = {u} * {float(q[token])!r} {relation} p[token] = "
            f"{float(p[token])!r}), got {got[0]}" + _accept_hint(got[0], None, p, q, token, u))
    try:
        expect_tensor(got[1], distribution.to(p.dtype), f"{what}, the distribution", **_tolerance(p.dtype))
    except AssertionError as err:
        raise AssertionError(f"{err}\n(accepted={accepted}; p={p.tolist()}, q={q.tolist()})"
                             + _accept_hint(None, got[1], p, q, token, u)) from None


def check_accept_or_resample(accept_or_resample, seed: int | None = None, n_cases: int = 12) -> None:
    """``accept_or_resample(p, q, token, u)`` -> ``(accepted, distribution)``: accept the drafted token when
    ``u < p[token] / q[token]``; the distribution is a one-hot at token then, else ``max(p - q, 0)`` normalised.

    Random target and draft distributions over 2 to 50 tokens (some drafts close to the target),
    float32 and float64, the token drawn from q and u drawn away from the threshold; then a token
    the target prefers (accepted even for u = 0.999), a token the target never says (rejected even
    for u = 0), p equal to q, u exactly at p / q (rejected: the test is strict), u = 0, u close to
    1, a token the target likes less accepted and rejected, the first and the last token, a call by
    keyword, the inputs left as they were and their device kept.
    """
    accept_or_resample = watched(accept_or_resample, ACCEPT_OR_RESAMPLE)
    gen, seed = new_generator(seed)
    cases = []
    for k in range(n_cases):
        dtype = (torch.float32, torch.float64)[k % 2]
        vocab, sharpness = randint(gen, 2, 50), (1.0, 3.0)[k % 2]
        logits = torch.randn(vocab, generator=gen, dtype=torch.float64) * sharpness
        p = torch.softmax(logits, 0)
        drift = 0.3 if k % 4 == 1 else 1.0
        q = torch.softmax(logits * (1 - drift) + drift * torch.randn(vocab, generator=gen, dtype=torch.float64) * sharpness, 0)
        p, q = p.to(dtype), q.to(dtype)
        token = int(torch.multinomial(q.double(), 1, generator=gen))
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        if abs(u * float(q[token]) - float(p[token])) < 1e-4 * float(p[token]):  # away from the threshold
            u = (u + 0.37) % 1.0
        cases.append((p, q, token, u, f"{vocab} tokens, {dtype}" + (", a draft close to the target" if drift < 1 else "")))
    random_p = torch.softmax(torch.randn(7, generator=gen, dtype=torch.float64), 0)
    t = torch.tensor
    cases += [
        (t([0.1, 0.6, 0.3]), t([0.3, 0.3, 0.4]), 1, 0.999, "p[token] > q[token] (accepted whatever u), u=0.999"),
        (t([0.0, 0.5, 0.5]), t([0.5, 0.25, 0.25]), 0, 0.0, "p[token] = 0 (rejected even for u = 0)"),
        (random_p, random_p.clone(), randint(gen, 0, 6), 0.9, "p equal to q (always accepted), float64"),
        (t([0.25, 0.5, 0.25]), t([0.5, 0.25, 0.25]), 0, 0.5, "u exactly p[token] / q[token] = 0.5 (rejected: u < p / q is strict)"),
        (t([0.25, 0.5, 0.25], dtype=torch.float64), t([0.5, 0.25, 0.25], dtype=torch.float64), 0, 0.5,
         "u exactly p[token] / q[token] = 0.5, float64"),
        (t([0.2, 0.8]), t([0.9, 0.1]), 0, 0.0, "u = 0 (accepted when p[token] > 0)"),
        (t([0.49, 0.51]), t([0.5, 0.5]), 0, 0.9999, "u = 0.9999 and p[token] just below q[token] (rejected)"),
        (t([0.3, 0.7]), t([0.6, 0.4]), 0, 0.2, "p[token] < q[token] and u < p / q (accepted)"),
        (t([0.3, 0.7], dtype=torch.float64), t([0.6, 0.4], dtype=torch.float64), 0, 0.8, "p[token] < q[token] and u > p / q (rejected)"),
        (t([0.1, 0.4, 0.3, 0.2]), t([0.7, 0.1, 0.1, 0.1]), 0, 0.5, "the first token rejected, a residual over three tokens"),
        (t([0.3, 0.3, 0.2, 0.15, 0.05]), t([0.1, 0.1, 0.1, 0.2, 0.5]), 4, 0.3, "the last token rejected"),
        (t([0.3, 0.3, 0.2, 0.15, 0.05], dtype=torch.float64), t([0.1, 0.1, 0.1, 0.2, 0.5], dtype=torch.float64), 4, 0.05,
         "the last token accepted, float64"),
        (t([1e-30, 1.0]), t([0.5, 0.5]), 0, 1e-31, "p[token] = 1e-30 and u = 1e-31 (accepted)"),
        (t([1e-30, 1.0]), t([0.5, 0.5]), 0, 0.01, "p[token] = 1e-30 and u = 0.01 (rejected)"),
        (t([0.5, 0.5]), t([1e-30, 1.0]), 0, 0.999, "q[token] = 1e-30 (p / q = 5e29: accepted)"),
        (t([0.1, 9.0, 0.6, 9.0, 0.3, 9.0])[::2], t([0.3, 9.0, 0.4, 9.0, 0.3, 9.0])[::2], 0, 0.5,
         "p and q non-contiguous (every other entry of a longer tensor)"),
    ]
    for p, q, token, u, label in cases:
        what = f"accept_or_resample(p, q, token={token}, u={u}) for {label} (seed {seed})"
        _expect_accept(call_explained(accept_or_resample, p, q, token, u, what=what), p, q, token, u, what)
    p, q, token, u, _ = cases[0]
    what = f"accept_or_resample(p=..., q=..., token=..., u=...) by keyword (seed {seed})"
    _expect_accept(call_explained(accept_or_resample, what=what, hint=_BY_KEYWORD, p=p, q=q, token=token, u=u), p, q, token, u, what)

    def distribution_only(*args):
        return accept_or_resample(*args)[1]

    expect_same_device(distribution_only, p, q, token, u, what="accept_or_resample on the meta device (standing in for a GPU)")


# --------------------------------------------------------------------------- the capstone: a 3-bit course-lm

QUANTIZE_LAYER = Rules(
    "quantize_layer",
    references=("course_lib.gptq:gptq", "course_lib.gptq:gptq_codes", "course_lib.gptq:quantize_model",
                "course_lib.pruning:sparsegpt"),
    modules=("course_lib.gptq", "course_lib.int4", "gptqmodel", "auto_gptq", "llmcompressor", "optimum"),
    why="The capstone is to quantize each layer with your own code (your gptq_column_step, for example).",
)
MODEL_BITS = 3
PERPLEXITY_BOUND = 2.318  # dense course-lm 2.287; round-to-nearest at 3 bits 2.327; GPTQ at 3 bits 2.298 to 2.310 (11 seeds)
CALIBRATION = (4, 8, 128)  # batches of (8, 128) windows of the training text


def _levels_per_row(w: torch.Tensor) -> torch.Tensor:
    """How many distinct values each row of ``w`` (out, in) holds, (out,) int64."""
    ordered = w.sort(dim=1).values
    return 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(1)


def _expect_quantized(got, w: torch.Tensor, bits: int, what: str) -> None:
    """``got`` must be a finite float32 tensor of ``w``'s shape with at most ``2^bits`` distinct values in each row."""
    if type(got) is not torch.Tensor or got.shape != w.shape or got.dtype != torch.float32:
        described = f"{type(got).__name__} {tuple(got.shape)} {got.dtype}" if isinstance(got, torch.Tensor) else type(got).__name__
        raise AssertionError(f"{what} should return a float32 tensor of shape {tuple(w.shape)} (the weights, rounded), "
                             f"got {described}")
    if not torch.isfinite(got).all():
        raise AssertionError(f"{what} returned weights that are not all finite")
    levels = _levels_per_row(got.detach())
    if int(levels.max()) > 2 ** bits:
        row = int(levels.argmax())
        raise AssertionError(f"{what}: row {row} holds {int(levels[row])} distinct values; {bits} bits allow at most "
                             f"{2 ** bits}. Round every weight of a row to that row's grid (and return the rounded "
                             "values, not the codes).")


def _output_error(w: torch.Tensor, new_w: torch.Tensor, x: torch.Tensor) -> float:
    """``||x w^T - x new_w^T||^2`` summed over every token and output, float64."""
    return float((x @ (w.double() - new_w.double()).T).pow(2).sum())


def _correlated_layer(gen, out: int, n: int, tokens: int):
    """A random layer (out, n) float32 and ``tokens`` inputs (tokens, n) float64 whose features are correlated."""
    mixing = torch.eye(n, dtype=torch.float64) + torch.randn(n, n, generator=gen, dtype=torch.float64)
    scales = torch.rand(n, generator=gen, dtype=torch.float64) * 2 + 0.1
    x = torch.randn(tokens, n, generator=gen, dtype=torch.float64) @ mixing * scales
    return torch.randn(out, n, generator=gen) * 0.1, x


def _rtn64(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Round to nearest on each row's grid (course_lib.gptq.rtn's rule, written here), float64."""
    w = w.double()
    scale, zero = _grid64(w, bits)
    return scale * (torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1) - zero)


def check_quantize_layer(quantize_layer, seed: int | None = None, n_cases: int = 6, ratio: float = 0.75) -> None:
    """``quantize_layer(w, hessian, bits)``: ``w`` (out, in) rounded to at most ``2^bits`` values per row, chosen with the Hessian.

    Random layers whose inputs are correlated (so that spreading each rounding error helps), 3 and 4
    bits: the result must be a finite float32 tensor of ``w``'s shape with at most ``2^bits``
    distinct values in each row, and its output error ``||X w^T - X q^T||^2`` on the calibration
    inputs at most ``ratio`` times round-to-nearest's (GPTQ gets about 0.4). Also: an input that is
    always zero (a zero row and column of the Hessian), a layer of zeros, ``w`` and ``hessian`` left
    as they were, and ``ValueError`` for a ``w`` that is not 2-D, a ``hessian`` that is not
    (in, in) and ``bits`` outside 2 to 8.
    """
    quantize_layer = watched(quantize_layer, QUANTIZE_LAYER)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        bits = 3 + case % 2
        out, n = randint(gen, 32, 64), 8 * randint(gen, 8, 12)
        w, x = _correlated_layer(gen, out, n, 4 * n)
        hessian = 2 * x.T @ x / x.shape[0]
        what = f"quantize_layer(w, hessian, bits={bits}) for a {out} x {n} layer with correlated inputs (seed {seed})"
        got = call_explained(quantize_layer, w, hessian, bits, what=what)
        _expect_quantized(got, w, bits, what)
        mine, nearest = _output_error(w, got, x), _output_error(w, _rtn64(w, bits), x)
        if not mine <= ratio * nearest:
            raise AssertionError(
                f"{what}: the layer's output error ||X w^T - X q^T||^2 on the calibration inputs is {mine / nearest:.2f} times "
                f"round-to-nearest's; at most {ratio} is needed (GPTQ gets about 0.4). Round the columns one at a time and "
                "spread each column's rounding error over the columns not yet rounded (your gptq_column_step), with the "
                "upper Cholesky factor of the damped inverse Hessian.")
    n = 32
    w, x = _correlated_layer(gen, 16, n, 4 * n)
    x[:, 5] = 0  # an input that is always zero: the Hessian is singular without damping of its own
    hessian = 2 * x.T @ x / x.shape[0]
    what = f"quantize_layer(w, hessian, bits=4) with an input that is always zero (a zero row and column of the Hessian; seed {seed})"
    got = call_explained(quantize_layer, w, hessian, 4, what=what,
                         hint="; give a zero on the Hessian's diagonal a 1 before damping it, as the lesson does")
    _expect_quantized(got, w, 4, what)
    zeros = torch.zeros(6, n)
    what = f"quantize_layer(w, hessian, bits=3) for a layer of zeros (seed {seed})"
    got = call_explained(quantize_layer, zeros, hessian, 3, what=what)
    _expect_quantized(got, zeros, 3, what)
    if got.abs().max() != 0:
        raise AssertionError(f"{what} should stay all zeros (zero is on every row's grid), got up to {float(got.abs().max()):.3g}")
    for args, label, why in (((w[0], hessian, 4), "a 1-D w", "w should be (out, in)"),
                             ((w, hessian[:-1, :-1], 4), f"a hessian of ({n - 1}, {n - 1}) for w (16, {n})",
                              "hessian should be (in, in)"),
                             ((w, hessian, 1), "bits=1", "bits should be from 2 to 8"),
                             ((w, hessian, 9), "bits=9", "bits should be from 2 to 8")):
        _expect_value_error(quantize_layer, args, f"quantize_layer(w, hessian, bits) for {label} (seed {seed})", why)


def check_quantized_model(quantize_layer, seed: int | None = 0, bits: int = MODEL_BITS, bound: float = PERPLEXITY_BOUND) -> float:
    """Quantize every linear layer of every block of ``course-lm`` with ``quantize_layer`` and measure it.

    Blocks are done one after another; each layer gets its weight (out, in) float32 and the Hessian
    ``2 X^T X / tokens`` (in, in) float64 of its inputs, measured on 4 batches of 8 random windows
    of 128 tokens of the training text (drawn with ``seed``) with the blocks before it already
    quantized. Every returned weight must hold at most ``2^bits`` distinct values per row; the
    quantized model's perplexity on every held-out text must be at most ``bound`` (dense course-lm:
    2.287; round-to-nearest at 3 bits: 2.327). Returns that perplexity.
    """
    from course_lib.evaluation import perplexity
    from course_lib.models import load_pretrained
    from course_lib.pretrain import training_data
    from course_lib.pruning import compress_blocks, decoder_blocks, linear_layers
    from course_lib.train import random_windows

    quantize_layer = watched(quantize_layer, QUANTIZE_LAYER)
    _, seed = new_generator(seed)
    corpus, tokenizer, stream, _ = training_data(8, 128)
    gen = torch.Generator().manual_seed(seed)
    n_batches, batch, length = CALIBRATION
    batches = [random_windows(stream, batch, length, gen) for _ in range(n_batches)]

    model = load_pretrained("course-lm")
    per_block = len(linear_layers(decoder_blocks(model)[0]))
    done = []

    def new_weight(name: str, layer: torch.nn.Linear, stats: dict) -> torch.Tensor:
        where = f"blocks.{len(done) // per_block}.{name}"
        done.append(where)
        what = f"quantize_layer(w, hessian, bits={bits}) for {where} ({layer.out_features} x {layer.in_features}) of course-lm"
        w = layer.weight.data.clone()
        got = call_explained(quantize_layer, w, stats["hessian"].clone(), bits, what=what)
        _expect_quantized(got, w, bits, what)
        return got.detach().clone()

    with torch.no_grad():
        model = compress_blocks(model, new_weight, batches)
    score = perplexity(model, tokenizer, corpus.heldout_texts)
    if not score <= bound:
        raise AssertionError(
            f"course-lm with every block's layers quantized to {bits} bits by quantize_layer (calibration seed {seed}) has a "
            f"held-out perplexity of {score:.4f}; at most {bound} is needed (dense: 2.287; round-to-nearest: 2.327). "
            "Round to nearest is not enough at 3 bits: spread each column's rounding error over the columns not yet rounded.")
    return score
