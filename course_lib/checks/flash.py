"""Checks for the exercises of lesson 05 (FlashAttention).

Each ``check_*`` function takes the learner's function, calls it on fresh random inputs
(and on edge cases), compares with the reference in :mod:`course_lib.flash`, with
``torch.softmax`` or with PyTorch's ``scaled_dot_product_attention``, and raises
``AssertionError`` with an explanation when something is off. ``seed`` reproduces a
failing run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from course_lib import flash as ref
from course_lib.attention import causal_mask
from course_lib.checks.common import beside_answer, call, call_explained, expect_same_device, expect_tensor, new_generator, on_meta, randint
from course_lib.checks.guard import Rules, watched

_DTYPES = (torch.float32, torch.float64)
_NEG_INF = float("-inf")


_FLASH = ("course_lib.flash", "course_lib.kernels")
ONLINE_SOFTMAX_UPDATE = Rules(
    "online_softmax_update", modules=_FLASH,
    why="The exercise is to write the update of (m, l, acc) yourself, without course_lib.flash.",
)
CAUSAL_TILE_SKIP = Rules("causal_tile_skip", modules=_FLASH, why="The exercise is to write the test yourself, without course_lib.flash.")


def _tolerances(dtype: torch.dtype, loose: bool = False) -> dict:
    """Room for a different order of the same operations; in float64 too tight for a detour through float32."""
    if dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-12}
    return {"rtol": 1e-4, "atol": 1e-4} if loose else {"rtol": 1e-5, "atol": 1e-5}


def _expect_triple(got, what: str) -> tuple:
    """``got`` must be a tuple (not a list) of three values, as the exercise's docstring says."""
    if type(got) is not tuple or len(got) != 3:
        size = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise AssertionError(f"{what} should return a tuple (m_new, l_new, acc_new) of three tensors, got {type(got).__name__}{size}")
    return got


def _expect_state(got, expected, what: str, **tol) -> None:
    """``got`` must be a tuple ``(m, l, acc)`` of tensors equal to ``expected``."""
    for name, g, e in zip(("m_new", "l_new", "acc_new"), _expect_triple(got, what), expected):
        expect_tensor(g, e, f"{what}, its {name}", **tol)


_BY_KEYWORD = "; keep the parameter names of the signature in the docstring"
_ANY_LAYOUT = "; an input may be a non-contiguous view: use reshape (not view), or .contiguous() first"


def _non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: every other element of a buffer whose dims are stored in reverse order.

    An answer that flattens its inputs with ``.view`` (instead of ``reshape``) fails on it, as it
    would on a transposed or sliced tensor in a real model.
    """
    dims = tuple(reversed(range(t.dim())))
    buffer = torch.zeros([2 * n for n in reversed(t.shape)], dtype=t.dtype)
    view = buffer[tuple(slice(None, None, 2) for _ in dims)].permute(dims)
    view.copy_(t)
    return view


def _expanded(t: torch.Tensor) -> torch.Tensor:
    """``t``'s first element broadcast to ``t``'s shape without copying (stride 0), as ``torch.full(()).expand(...)`` makes."""
    return t.reshape(-1)[:1].reshape(()).expand(t.shape)


def _initial_state(batch_shape, n_q, ev, dtype):
    """The state before the first tile: ``m = -inf``, ``l = 0``, ``acc = 0``."""
    m = torch.full((*batch_shape, n_q), _NEG_INF, dtype=dtype)
    return m, torch.zeros(*batch_shape, n_q, dtype=dtype), torch.zeros(*batch_shape, n_q, ev, dtype=dtype)


def _random_scores(gen, shape, dtype, masked_fraction: float = 0.0, spread: float | None = None, offset: float = 0.0):
    """Random scores with a random spread; a fraction of them ``-inf`` (masked)."""
    if spread is None:
        spread = float(torch.empty(1, dtype=torch.float64).uniform_(0.5, 20.0, generator=gen))
    scores = torch.randn(shape, generator=gen, dtype=torch.float64) * spread + offset
    if masked_fraction > 0:
        scores = scores.masked_fill(torch.rand(shape, generator=gen, dtype=torch.float64) < masked_fraction, _NEG_INF)
    return scores.to(dtype)


def _randn(gen, *shape, dtype):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _random_state(gen, batch_shape, n_q, ev, dtype):
    """A running state as after one earlier tile (computed by the reference); some rows may still be empty."""
    n_k = randint(gen, 1, 5)
    scores = _random_scores(gen, (*batch_shape, n_q, n_k), dtype, masked_fraction=0.2)
    v = _randn(gen, *batch_shape, n_k, ev, dtype=dtype)
    return ref.online_softmax_update(*_initial_state(batch_shape, n_q, ev, dtype), scores, v)


# --------------------------------------------------------------------------- online softmax


def check_online_softmax_update(online_softmax_update, seed: int | None = None, n_cases: int = 12) -> None:
    """``online_softmax_update(m, l, acc, scores, v)`` against the reference, then folded over many tiles.

    Random batch shapes, float32 and float64, the first tile (``m = -inf``) and later
    tiles, tiles that raise the running maximum and tiles that do not, masked (``-inf``)
    scores. Then the tiles of random score matrices are folded one after the other from
    the empty state: ``acc / l`` must equal ``softmax(scores) @ v``. Last, arguments by
    keyword, non-contiguous and expanded inputs, and inputs on another device (meta).
    """
    online_softmax_update = watched(online_softmax_update, ONLINE_SOFTMAX_UPDATE)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        dtype = _DTYPES[case % 2]
        batch_shape = tuple(randint(gen, 1, 3) for _ in range(randint(gen, 0, 2)))
        n_q, n_k, ev = randint(gen, 1, 6), randint(gen, 1, 6), randint(gen, 1, 5)
        first = case % 3 == 0
        state = _initial_state(batch_shape, n_q, ev, dtype) if first else _random_state(gen, batch_shape, n_q, ev, dtype)
        offset = float(torch.empty(1, dtype=torch.float64).uniform_(-10.0, 10.0, generator=gen))  # new max above or below
        scores = _random_scores(gen, (*batch_shape, n_q, n_k), dtype, masked_fraction=0.25 if case % 2 else 0.0, offset=offset)
        if first and case % 2:
            scores[..., randint(gen, 0, n_q - 1), :] = _NEG_INF  # a query that sees no key yet: no nan
        v = _randn(gen, *batch_shape, n_k, ev, dtype=dtype)
        what = (
            f"online_softmax_update(m, l, acc, scores, v) with scores {tuple(scores.shape)}, v {tuple(v.shape)}, {dtype}, "
            f"{'the first tile (m = -inf, l = 0, acc = 0)' if first else 'a later tile'} (seed {seed})"
        )
        got = call(online_softmax_update, *state, scores, v, what=what)
        _expect_state(got, ref.online_softmax_update(*state, scores, v), what, **_tolerances(dtype))
    for case in range(4):
        _check_folding(online_softmax_update, gen, seed, _DTYPES[case % 2])
    for dtype in _DTYPES:
        _check_online_conventions(online_softmax_update, gen, seed, dtype)


def _check_online_conventions(online_softmax_update, gen, seed, dtype) -> None:
    """Arguments by keyword, non-contiguous and expanded inputs, and the input's device kept (meta stands in for a GPU)."""
    batch_shape, n_q, n_k, ev = (randint(gen, 2, 3), randint(gen, 2, 3)), randint(gen, 2, 5), randint(gen, 2, 5), randint(gen, 2, 4)
    state = _random_state(gen, batch_shape, n_q, ev, dtype)
    scores = _random_scores(gen, (*batch_shape, n_q, n_k), dtype, masked_fraction=0.2)
    v = _randn(gen, *batch_shape, n_k, ev, dtype=dtype)
    shapes = f"scores {tuple(scores.shape)}, v {tuple(v.shape)}, {dtype} (seed {seed})"
    expected = ref.online_softmax_update(*state, scores, v)
    what = f"online_softmax_update(m=m, l=l, acc=acc, scores=scores, v=v), every argument by keyword, with {shapes}"
    kwargs = dict(zip(("m", "l", "acc", "scores", "v"), (*state, scores, v)))
    _expect_state(call_explained(online_softmax_update, what=what, hint=_BY_KEYWORD, **kwargs), expected, what, **_tolerances(dtype))
    what = f"online_softmax_update(m, l, acc, scores, v) with every input non-contiguous (strided, dims stored in reverse order), {shapes}"
    got = call_explained(online_softmax_update, *(_non_contiguous(t) for t in (*state, scores, v)), what=what, hint=_ANY_LAYOUT)
    _expect_state(got, expected, what, **_tolerances(dtype))
    first = _initial_state(batch_shape, n_q, ev, dtype)
    what = f"online_softmax_update on the first tile, m, l and acc given as expanded views (torch.full((), -inf).expand(...)), {shapes}"
    got = call_explained(online_softmax_update, *(_expanded(t) for t in first), scores, v, what=what, hint=_ANY_LAYOUT)
    _expect_state(got, ref.online_softmax_update(*first, scores, v), what, **_tolerances(dtype))
    what = f"online_softmax_update(m, l, acc, scores, v) with inputs on the meta device (standing in for a GPU), {shapes}"
    expect_same_device(online_softmax_update, *on_meta(*state, scores, v), what=what)


def _check_folding(online_softmax_update, gen, seed, dtype) -> None:
    """Fold random tiles of one score matrix from the empty state; compare with softmax(scores) @ v."""
    batch_shape = (randint(gen, 1, 2),)
    n_q, n_k, ev = randint(gen, 1, 5), randint(gen, 2, 17), randint(gen, 1, 4)
    scores = _random_scores(gen, (*batch_shape, n_q, n_k), dtype, masked_fraction=0.2)
    scores[..., 0] = _random_scores(gen, (*batch_shape, n_q), dtype)  # every row sees key 0: softmax is defined
    v = _randn(gen, *batch_shape, n_k, ev, dtype=dtype)
    cuts, start = [], 0
    while start < n_k:
        cuts.append((start, min(n_k, start + randint(gen, 1, 5))))
        start = cuts[-1][1]
    what = (
        f"online_softmax_update folded over the key tiles {cuts} of scores {tuple(scores.shape)}, {dtype}, "
        f"starting from m = -inf, l = 0, acc = 0 (seed {seed})"
    )
    state = _initial_state(batch_shape, n_q, ev, dtype)
    for k_start, k_end in cuts:
        got = call(online_softmax_update, *state, scores[..., k_start:k_end], v[..., k_start:k_end, :], what=what)
        state = _expect_triple(got, what)
    m, l, acc = state
    expect_tensor(m, scores.amax(dim=-1), f"{what}: the final m (the row maximum of all scores)", **_tolerances(dtype))
    expected_l = torch.exp(scores - scores.amax(dim=-1, keepdim=True)).sum(dim=-1)
    expect_tensor(l, expected_l, f"{what}: the final l", **_tolerances(dtype, loose=True))
    expect_tensor(acc, torch.softmax(scores, dim=-1) @ v * expected_l.unsqueeze(-1), f"{what}: the final acc", **_tolerances(dtype, loose=True))
    expect_tensor(acc / l.unsqueeze(-1), torch.softmax(scores, dim=-1) @ v,
                  f"{what}: acc / l at the end (should be softmax(scores) @ v)", **_tolerances(dtype, loose=True))


def check_online_softmax_update_edge_cases(online_softmax_update) -> None:
    """Huge scores, a fully masked row before and after the first tile, a one-key tile, a row of one query.

    Also: a running maximum in the thousands, a first tile far below zero, all-zero and tiny
    scores, and a chain of tiles (all ``-inf``, thousands, all ``-inf``, lower) in both dtypes.
    """
    online_softmax_update = watched(online_softmax_update, ONLINE_SOFTMAX_UPDATE)
    inf = _NEG_INF
    m0, l0, acc0 = _initial_state((), 2, 2, torch.float32)
    v = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    cases = [
        ("scores in the thousands on the first tile", (m0, l0, acc0), torch.tensor([[1000.0, 999.0], [-1000.0, -1001.0]]), v),
        ("a fully masked row on the first tile (it must stay m = -inf, l = 0, acc = 0, not nan)",
         (m0, l0, acc0), torch.tensor([[inf, inf], [0.5, inf]]), v),
        ("a fully masked row after a finite state (nothing may change)",
         (torch.tensor([2.0, -1.0]), torch.tensor([1.5, 1.0]), torch.tensor([[1.0, 1.0], [0.0, 2.0]])), torch.tensor([[inf, inf], [inf, inf]]), v),
        ("a tile that raises the maximum by 50 (the old state must shrink by exp(-50))",
         (torch.tensor([0.0, 0.0]), torch.tensor([2.0, 3.0]), torch.tensor([[1.0, -1.0], [2.0, 2.0]])), torch.tensor([[50.0, 49.0], [50.0, inf]]), v),
        ("a tile whose scores are all below the running maximum (no rescaling of the state)",
         (torch.tensor([5.0, 7.0]), torch.tensor([1.0, 2.0]), torch.tensor([[0.5, 0.5], [1.0, -1.0]])), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), v),
        ("a tile of a single key", (m0, l0, acc0), torch.tensor([[0.3], [-2.0]]), v[:1]),
        ("huge scores in float64", tuple(t.double() for t in (m0, l0, acc0)), torch.tensor([[800.0, -800.0], [700.0, 710.0]], dtype=torch.float64), v.double()),
        ("a later tile while the running maximum is in the thousands (exp(m) alone overflows)",
         (torch.tensor([1000.0, 1005.0]), torch.tensor([1.5, 2.0]), torch.tensor([[1.0, -1.0], [0.5, 2.0]])),
         torch.tensor([[1003.0, 990.0], [1001.0, 1004.0]]), v),
        ("a later tile while the running maximum is in the thousands, float64",
         (torch.tensor([3000.0, -3000.0], dtype=torch.float64), torch.tensor([1.5, 2.0], dtype=torch.float64),
          torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)),
         torch.tensor([[3004.0, 2990.0], [-2990.0, -3010.0]], dtype=torch.float64), v.double()),
        ("a first tile whose scores are all far below zero, float64 (exp(-m_new) alone overflows)",
         tuple(t.double() for t in (m0, l0, acc0)), torch.tensor([[-1e4, -1e4 - 1.0], [-2000.0, -2003.0]], dtype=torch.float64), v.double()),
        ("all-zero scores and values on the first tile", (m0, l0, acc0), torch.zeros(2, 2), torch.zeros(2, 2)),
        ("scores of 1e-30 (a tiny spread)", (m0, l0, acc0), torch.tensor([[1e-30, -1e-30], [0.0, 2e-30]]), v),
    ]
    for name, state, scores, values in cases:
        what = f"online_softmax_update on {name}: m={state[0].tolist()}, l={state[1].tolist()}, scores={scores.tolist()}"
        got = call(online_softmax_update, *state, scores, values, what=what)
        _expect_state(got, ref.online_softmax_update(*state, scores, values), what)
    # one query row, three tiles of two keys, folded one after the other
    m, l, acc = _initial_state((1,), 1, 1, torch.float64)
    scores = torch.tensor([[[3.0, -1.0, 2.0, 8.0, 0.0, 1.0]]], dtype=torch.float64)
    values = torch.arange(6, dtype=torch.float64).reshape(1, 6, 1)
    for k_start in range(0, 6, 2):
        tile, tile_v = scores[..., k_start:k_start + 2], values[:, k_start:k_start + 2]
        what = f"online_softmax_update on one query row, the tile of keys {k_start} and {k_start + 1} of scores {scores.tolist()}"
        got = call(online_softmax_update, m, l, acc, tile, tile_v, what=what)
        _expect_state(got, ref.online_softmax_update(m, l, acc, tile, tile_v), what)
        m, l, acc = ref.online_softmax_update(m, l, acc, tile, tile_v)
    for dtype in _DTYPES:
        _check_masked_and_huge_tiles(online_softmax_update, dtype)


def _check_masked_and_huge_tiles(online_softmax_update, dtype) -> None:
    """Four tiles folded one after the other: all ``-inf``, then scores in the thousands, then all ``-inf``, then lower scores."""
    inf = _NEG_INF
    tiles = [[[inf, inf], [inf, inf]], [[2000.0, 1999.0], [inf, -1500.0]], [[inf, inf], [inf, inf]], [[-5.0, 3.0], [-1000.0, -2000.0]]]
    values = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=dtype)
    state = _initial_state((), 2, 2, dtype)
    for i, tile in enumerate(tiles):
        scores = torch.tensor(tile, dtype=dtype)
        what = (f"online_softmax_update on tile {i + 1} of {tiles} ({dtype}), folded from m = -inf, l = 0, acc = 0: "
                f"m={state[0].tolist()}, l={state[1].tolist()}, scores={tile}")
        got = call(online_softmax_update, *state, scores, values, what=what)
        expected = ref.online_softmax_update(*state, scores, values)
        _expect_state(got, expected, what, **_tolerances(dtype))
        state = expected


# --------------------------------------------------------------------------- causal tile skipping


def _brute_force_skip(q_start: int, q_end: int, k_start: int, k_end: int) -> bool:
    """True iff no query i in [q_start, q_end) may see any key j in [k_start, k_end) (j <= i)."""
    return not any(j <= i for i in range(q_start, q_end) for j in range(k_start, k_end))


def _type_name(value) -> str:
    """``int``, or ``numpy.bool`` for a type outside Python's builtins (numpy's bool is also named ``bool``)."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__name__
    if kind.__module__ == "sandbox":  # a stand-in for what the grading sandbox could not send as data
        return f"a {kind.__name__} that is not Python's"
    return f"{kind.__module__}.{kind.__name__}"


def _expect_bool(got, expected: bool, what: str) -> None:
    if type(got) is not bool:
        raise AssertionError(f"{what} should return a Python bool (True or False), got {_type_name(got)} ({got!r}); try bool(...)")
    if got != expected:
        reason = "no query of the tile may see any of its keys" if expected else "some query of the tile may see one of its keys"
        raise AssertionError(f"{what} should be {expected}: {reason}, got {got}")


def check_causal_tile_skip(causal_tile_skip, seed: int | None = None) -> None:
    """``causal_tile_skip(q_start, q_end, k_start)`` on every small tile, then on random long-sequence tiles.

    Compared with the definition: skip iff there is no pair ``(i, j)`` with
    ``q_start <= i < q_end``, ``k_start <= j < k_end`` and ``j <= i`` (the answer does not
    depend on ``k_end > k_start``, which is why the function does not take it).
    """
    causal_tile_skip = watched(causal_tile_skip, CAUSAL_TILE_SKIP)
    gen, seed = new_generator(seed)
    for q_start in range(0, 9):
        for q_end in range(q_start + 1, q_start + 7):
            for k_start in range(0, 17):
                k_end = k_start + randint(gen, 1, 6)
                what = f"causal_tile_skip(q_start={q_start}, q_end={q_end}, k_start={k_start}) for keys {k_start}..{k_end - 1}"
                _expect_bool(causal_tile_skip(q_start, q_end, k_start), _brute_force_skip(q_start, q_end, k_start, k_end), what)
    for _ in range(40):
        block_q, block_k = 2 ** randint(gen, 4, 7), 2 ** randint(gen, 4, 7)
        q_start = block_q * randint(gen, 0, 200)
        q_end = q_start + block_q
        k_start = max(0, q_end - block_k * randint(gen, -2, 3))
        k_end = k_start + block_k
        what = f"causal_tile_skip(q_start={q_start}, q_end={q_end}, k_start={k_start}) for keys {k_start}..{k_end - 1} (seed {seed})"
        _expect_bool(causal_tile_skip(q_start, q_end, k_start), _brute_force_skip(q_start, q_end, k_start, k_end), what)
    for q_start, q_end, k_start in ((0, 4, 4), (0, 4, 3), (8, 12, 11), (8, 12, 12), (16, 17, 16)):
        what = f"causal_tile_skip(k_start={k_start}, q_end={q_end}, q_start={q_start}), called by keyword"
        got = call_explained(causal_tile_skip, k_start=k_start, q_end=q_end, q_start=q_start, what=what, hint=_BY_KEYWORD)
        _expect_bool(got, _brute_force_skip(q_start, q_end, k_start, k_start + 1), what)


def check_causal_tile_skip_in_attention(causal_tile_skip, seed: int | None = None, n_cases: int = 6) -> None:
    """Causal attention tile by tile, skipping the tiles the function says: SDPA's result, and no needless tile.

    Over-skipping changes the output; under-skipping leaves the output right but computes
    tiles that every query is masked from: both fail.
    """
    causal_tile_skip = watched(causal_tile_skip, CAUSAL_TILE_SKIP)
    gen, seed = new_generator(seed)
    for _ in range(n_cases):
        n = randint(gen, 5, 40)
        block_q, block_k = randint(gen, 1, 9), randint(gen, 1, 9)
        q, k, v = (_randn(gen, 1, 2, n, 4, dtype=torch.float64) for _ in range(3))
        what = f"causal attention of length {n} in tiles of {block_q} queries x {block_k} keys, skipping where causal_tile_skip says (seed {seed})"
        computed, needed, rows = 0, 0, []
        for q_start in range(0, n, block_q):
            q_end = min(n, q_start + block_q)
            state = _initial_state((1, 2), q_end - q_start, 4, torch.float64)
            for k_start in range(0, n, block_k):
                k_end = min(n, k_start + block_k)
                needed += not _brute_force_skip(q_start, q_end, k_start, k_end)
                skip = causal_tile_skip(q_start, q_end, k_start)
                _expect_bool(skip, _brute_force_skip(q_start, q_end, k_start, k_end), f"causal_tile_skip({q_start}, {q_end}, {k_start}) in {what}")
                if skip:
                    continue
                computed += 1
                mask = causal_mask(q_end - q_start, k_end - k_start, offset=q_start - k_start)
                state = ref.forward_tile_step(q[..., q_start:q_end, :], k[..., k_start:k_end, :], v[..., k_start:k_end, :], *state, 0.5, mask)
            m, l, acc = state
            rows.append(acc / l.unsqueeze(-1))
        if computed != needed:
            raise AssertionError(f"{what}: computed {computed} tiles, but only {needed} hold a pair that is not masked")
        expect_tensor(torch.cat(rows, dim=-2), F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5), what)


# --------------------------------------------------------------------------- capstone: the whole forward pass


FLASH_FORWARD = Rules(
    "flash_forward", modules=_FLASH,
    functions=("torch.nn.functional.scaled_dot_product_attention", "torch.softmax", "torch.Tensor.softmax",
               "torch.nn.functional.softmax", "torch.special.softmax", "torch.logsumexp", "torch.Tensor.logsumexp",
               "torch.special.logsumexp"),
    ops=("aten._scaled_dot_product*", "aten._softmax", "aten._log_softmax", "aten._safe_softmax", "aten.logsumexp"),
    allowed=("course_lib.checks.flash:_ScoreTiles",),
    why=("The exercise is to write the tiled loop and its online softmax yourself, without course_lib.flash, "
         "F.scaled_dot_product_attention, a softmax or logsumexp over whole rows."),
)

_CONTRACTIONS = {"mm": 0, "bmm": 0, "mv": 0, "dot": 0, "addmm": 1, "baddbmm": 1, "addbmm": 1, "addmv": 1}


class _ScoreTiles(TorchDispatchMode):
    """Records every matrix product whose inner dimension is the head dim ``e``: the score tiles ``Q_i K_j^T``.

    The products ``P V`` sum over the keys of a tile instead, and the checks choose ``e`` larger
    than any key tile, so they are never mistaken for scores. ``scores`` counts the scores made
    (over every batch and head); ``largest`` is the largest tile of scores made by one product.
    """

    def __init__(self, e: int):
        super().__init__()
        self.e, self.scores, self.products, self.largest = e, 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        position = _CONTRACTIONS.get(func.overloadpacket.__name__)
        if position is not None and isinstance(out, torch.Tensor) and len(args) > position:
            left = args[position]
            if isinstance(left, torch.Tensor) and left.dim() >= 1 and left.shape[-1] == self.e:
                self.scores += out.numel()
                self.products += 1
                self.largest = max(self.largest, out.shape[-2] * out.shape[-1] if out.dim() >= 2 else out.numel())
        return out


def _expected_score_pairs(n_q: int, n_k: int, block_q: int, block_k: int, causal: bool) -> tuple[int, int]:
    """(query, key) scores a tiled forward pass computes, and how many tiles: causal tiles above the diagonal are skipped."""
    pairs = tiles = 0
    for q_start in range(0, n_q, block_q):
        q_end = min(n_q, q_start + block_q)
        for k_start in range(0, n_k, block_k):
            if causal and k_start > q_end - 1:
                break
            pairs += (q_end - q_start) * (min(n_k, k_start + block_k) - k_start)
            tiles += 1
    return pairs, tiles


def _exact_attention(q, k, v, causal: bool):
    """The output (SDPA) and the log-sum-exp of the scaled scores (in float64), for comparison."""
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    scores = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2]), _NEG_INF)
    return o, torch.logsumexp(scores, dim=-1).to(q.dtype)


def _expect_forward(got, q, k, v, causal: bool, what: str) -> None:
    if type(got) is not tuple or len(got) != 2:
        size = f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""
        raise AssertionError(f"{what} should return a tuple (o, lse) of two tensors, got {type(got).__name__}{size}")
    o, lse = _exact_attention(q, k, v, causal)
    tol = _tolerances(q.dtype, loose=True)
    expect_tensor(got[0], o, f"{what}: its output o (compared with F.scaled_dot_product_attention)", **tol)
    expect_tensor(got[1], lse, f"{what}: its lse (compared with torch.logsumexp of the scaled scores, m + log(l))", **tol)


def _forward_case(gen, dtype, causal: bool, block_q: int | None = None, block_k: int | None = None, same_length: bool = True):
    lead = tuple(randint(gen, 1, 3) for _ in range(randint(gen, 0, 2)))
    n_q = randint(gen, 1, 24)
    n_k = n_q if same_length else randint(gen, 1, 24)
    e, ev = randint(gen, 1, 9), randint(gen, 1, 6)
    q, k = _randn(gen, *lead, n_q, e, dtype=dtype) * 2, _randn(gen, *lead, n_k, e, dtype=dtype) * 2
    v = _randn(gen, *lead, n_k, ev, dtype=dtype)
    pick = lambda n: (1 if n <= 10 else randint(gen, 3, 6), randint(gen, 2, 9), n + randint(gen, 0, 5))[randint(gen, 0, 2)]  # noqa: E731
    return q, k, v, block_q or pick(n_q), block_k or pick(n_k)


def check_flash_forward(flash_forward, seed: int | None = None, n_cases: int = 10) -> None:
    """``flash_forward(q, k, v, block_q=64, block_k=64, causal=False)`` against SDPA and logsumexp, then its tiles counted.

    Random leading dims, lengths that are not multiples of the tiles, tiles of 1 and tiles
    longer than the sequence, queries and keys of different lengths, causal and not, float32
    and float64, arguments by keyword, non-contiguous inputs; the inputs must not change.
    Then the matrix products are watched: no product may make more than one tile of scores,
    and a causal pass must compute exactly the tiles on or below the diagonal (the ``break``).
    """
    flash_forward = watched(flash_forward, FLASH_FORWARD)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        dtype, causal = _DTYPES[case % 2], case % 4 >= 2
        q, k, v, block_q, block_k = _forward_case(gen, dtype, causal, same_length=case % 3 != 2)
        what = (f"flash_forward(q, k, v, block_q={block_q}, block_k={block_k}, causal={causal}) with q {tuple(q.shape)}, "
                f"k {tuple(k.shape)}, v {tuple(v.shape)}, {dtype} (seed {seed})")
        got = call_explained(flash_forward, q, k, v, block_q, block_k, causal, what=what,
                             hint="; the order is (q, k, v, block_q=64, block_k=64, causal=False)")
        _expect_forward(got, q, k, v, causal, what)
    for dtype in _DTYPES:
        q, k, v, block_q, block_k = _forward_case(gen, dtype, True, same_length=False)
        shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, {dtype}, block_q={block_q}, block_k={block_k} (seed {seed})"
        what = f"flash_forward(q=q, k=k, v=v, block_q=..., block_k=..., causal=True), every argument by keyword, with {shapes}"
        got = call_explained(flash_forward, q=q, k=k, v=v, block_q=block_q, block_k=block_k, causal=True, what=what, hint=_BY_KEYWORD)
        _expect_forward(got, q, k, v, True, what)
        what = f"flash_forward(q, k, v, block_q, block_k, causal=True) with q, k, v non-contiguous (strided, dims stored in reverse order), {shapes}"
        got = call_explained(flash_forward, *(_non_contiguous(t) for t in (q, k, v)), block_q, block_k, causal=True, what=what, hint=_ANY_LAYOUT)
        _expect_forward(got, q, k, v, True, what)
    q, k, v, _, _ = _forward_case(gen, torch.float64, False)
    what = f"flash_forward(q, k, v) with the default tiles and causal=False, q {tuple(q.shape)} (seed {seed})"
    _expect_forward(call_explained(flash_forward, q, k, v, what=what), q, k, v, False, what)
    check_flash_forward_tiles(flash_forward, seed=seed)


def check_flash_forward_tiles(flash_forward, seed: int | None = None) -> None:
    """Counts the score tiles ``flash_forward`` computes: one tile per product, and none above a causal diagonal.

    Output right is not enough: a pass that computes every tile and masks the ones above the
    diagonal gives the right numbers for twice the work. Every matrix product over the head
    dim (a tile of scores ``Q_i K_j^T``) is recorded while the function runs.
    """
    flash_forward = watched(flash_forward, FLASH_FORWARD)
    gen, seed = new_generator(seed)
    cases = [(29, 29, 8, 8, True), (20, 20, 6, 4, True), (12, 20, 5, 3, True), (20, 11, 4, 6, True), (7, 7, 1, 1, True),
             (17, 17, 7, 5, False), (130, 130, None, None, True)]
    for n_q, n_k, block_q, block_k, causal in cases:
        bq, bk = block_q or 64, block_k or 64
        e = min(bk, n_k) + randint(gen, 1, 3)            # longer than any key tile: a score product sums over e
        q, k = _randn(gen, 1, 2, n_q, e, dtype=torch.float64), _randn(gen, 1, 2, n_k, e, dtype=torch.float64)
        v = _randn(gen, 1, 2, n_k, 3, dtype=torch.float64)
        tiles_arg = {} if block_q is None else {"block_q": block_q, "block_k": block_k}
        call_text = ", ".join(f"{name}={value}" for name, value in tiles_arg.items()) or "the default tiles of 64"
        what = f"flash_forward(q, k, v, {call_text}, causal={causal}) with q {tuple(q.shape)}, k {tuple(k.shape)} (seed {seed})"
        counted = beside_answer(flash_forward, score_tiles_driver, e, [q.clone(), k.clone(), v.clone()], {"causal": causal, **tiles_arg},
                                what=what)
        if not isinstance(counted, dict) or any(type(counted.get(key)) is not int for key in ("scores", "products", "largest")):
            raise AssertionError(f"{what}: the count of score tiles did not come back from the sandbox")
        _expect_forward(counted["value"], q, k, v, causal, what)
        pairs, tiles = _expected_score_pairs(n_q, n_k, bq, bk, causal)
        products, largest, seen_pairs = counted["products"], counted["largest"], counted["scores"] // q.shape[:-2].numel()
        if products == 0:
            raise AssertionError(f"{what}: no matrix product over the head dim was seen; compute each tile of scores with @ (q_tile @ k_tile^T)")
        if largest > bq * bk:
            raise AssertionError(f"{what}: one product made {largest} scores at once, more than a tile of {bq} x {bk}; "
                                 "compute the scores one (query tile, key tile) pair at a time")
        if seen_pairs != pairs:
            extra = (" Tiles above the diagonal must be skipped (break out of the loop over key tiles), not computed and masked."
                     if causal and seen_pairs > pairs else "")
            raise AssertionError(f"{what}: computed {seen_pairs} (query, key) scores per (batch, head) in {products} products; "
                                 f"the tiles {'on or below the diagonal' if causal else 'of the grid'} hold {pairs} ({tiles} tiles).{extra}")


def score_tiles_driver(flash_forward, e: int, args: list, kwargs: dict) -> dict:
    """Call ``flash_forward(*args, **kwargs)`` under a :class:`_ScoreTiles` counter; report the output and the counts.

    A driver (:func:`course_lib.checks.common.beside_answer`): in grading it runs in the sandbox, next to the answer.
    """
    counter = _ScoreTiles(e)
    with counter:
        got = flash_forward(*args, **kwargs)
    return {"value": got, "scores": counter.scores, "products": counter.products, "largest": counter.largest}


# --------------------------------------------------------------------------- predict, then run

PREDICT_CAUSAL_SKIPPED_FRACTION = Rules(
    "predict_causal_skipped_fraction", modules=_FLASH,
    why="A prediction is a number you reason out, not one course_lib.flash computes for you.",
)


def causal_skipped_fraction(n: int = 512, block: int = 64) -> float:
    """The share of the (query tile, key tile) pairs of causal attention that ``course_lib.flash.causal_tile_skip`` skips."""
    starts = range(0, n, block)
    skipped = sum(ref.causal_tile_skip(a, min(n, a + block), b) for a in starts for b in starts)
    return skipped / len(starts) ** 2


def check_predict_causal_skipped_fraction(predict_causal_skipped_fraction) -> None:
    """The prediction: the share of the tiles causal attention skips at N = 512 in tiles of 64 x 64, within 0.01."""
    expected = causal_skipped_fraction(512, 64)
    got = watched(predict_causal_skipped_fraction, PREDICT_CAUSAL_SKIPPED_FRACTION)()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"predict_causal_skipped_fraction() should return a number (an int or a float), got {type(got).__name__} ({got!r})")
    if not abs(got - expected) <= 0.01:
        raise AssertionError(f"predict_causal_skipped_fraction() returned {got}, not within 0.01 of the share the lesson counts: "
                             "a fraction between 0 and 1; count the tiles of an 8 x 8 grid that lie entirely above the diagonal")
