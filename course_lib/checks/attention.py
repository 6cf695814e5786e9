"""Checks for the exercises of lesson 01 (attention).

Each ``check_*`` function takes the learner's function, calls it on fresh random inputs
(and on edge cases), compares with the reference in :mod:`course_lib.attention` or with
PyTorch's own ``scaled_dot_product_attention``, and raises ``AssertionError`` with an
explanation when something is off. ``seed`` reproduces a failing run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib import attention as ref
from course_lib.checks.common import call, expect_same_device, expect_tensor, new_generator, on_meta, randint
from course_lib.checks.guard import Rules, watched

_DTYPES = (torch.float32, torch.float64)
_ON_META = "on another device (PyTorch's meta device stands in for a GPU)"


def _tolerance(dtype: torch.dtype) -> dict:
    """``expect_tensor``'s tolerances: float64 results must be as exact as float64 allows, so computing in float32 fails."""
    return {"atol": 1e-12, "rtol": 1e-9} if dtype == torch.float64 else {}


def _transposed_layout(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous view: laid out in memory as ``t.transpose(0, -1)`` (strided for 1-D)."""
    if t.dim() < 2:
        return torch.stack([t, t], dim=-1)[..., 0]
    return t.transpose(0, -1).contiguous().transpose(0, -1)


def _layout(t: torch.Tensor) -> str:
    return "" if t.is_contiguous() else ", non-contiguous"


SOFTMAX = Rules(
    "softmax", references=("course_lib.attention:softmax",),
    functions=("torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax", "torch.special.softmax",
               "torch.log_softmax", "torch.Tensor.log_softmax", "torch.nn.functional.log_softmax"),
    ops=("aten._softmax", "aten._log_softmax", "aten._safe_softmax"),
    why="The exercise is to write softmax from exp, a maximum and a sum, without torch.softmax or F.softmax.",
)
CAUSAL_MASK = Rules("causal_mask", references=("course_lib.attention:causal_mask",))
SCALED_DOT_PRODUCT_ATTENTION = Rules(
    "scaled_dot_product_attention",
    references=("course_lib.attention:scaled_dot_product_attention", "course_lib.attention:MultiHeadAttention"),
    functions=("torch.nn.functional.scaled_dot_product_attention", "torch.nn.functional.multi_head_attention_forward"),
    ops=("aten._scaled_dot_product*", "aten.scaled_dot_product_attention", "aten._fused_sdp_choice"),
    why="The exercise is to compute the scores, the masked softmax and the weighted sum yourself, "
        "without F.scaled_dot_product_attention.",
)
MULTI_HEAD_ATTENTION = Rules(
    "multi_head_attention",
    references=("course_lib.attention:MultiHeadAttention", "torch.nn.modules.activation:MultiheadAttention",
                "course_lib.models:RotarySelfAttention"),
    functions=("torch.nn.functional.multi_head_attention_forward",),
    ops=("aten._native_multi_head_attention",),
    why="The exercise is to project, split the heads, attend and merge yourself (F.scaled_dot_product_attention may do step 3).",
)


# --------------------------------------------------------------------------- softmax


def check_softmax(softmax, seed: int | None = None, n_cases: int = 12) -> None:
    """``softmax(x, dim=-1)`` on random tensors of 1 to 4 dims, float32 and float64, every ``dim``, contiguous or not.

    Also the default ``dim`` and ``dim`` given by position.
    """
    softmax = watched(softmax, SOFTMAX)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        n_dims = randint(gen, 1, 4)
        shape = tuple(randint(gen, 1, 6) for _ in range(n_dims))
        dtype = _DTYPES[case % 2]
        spread = float(torch.empty(1).uniform_(0.1, 30.0, generator=gen))
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * spread).to(dtype)
        if case % 3 == 1:
            x = _transposed_layout(x)
        dim = randint(gen, -n_dims, n_dims - 1)
        what = f"softmax(x, dim={dim}) for x of shape {shape} and dtype {dtype}{_layout(x)} (seed {seed})"
        got = call(softmax, x, dim=dim, what=what)
        expect_tensor(got, ref.softmax(x, dim=dim), what, **_tolerance(dtype))
    x = torch.randn(2, 3, 5, generator=gen)
    what = "softmax(x) with the default dim (-1) for x of shape (2, 3, 5)"
    expect_tensor(call(softmax, x, what=what), ref.softmax(x), what)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    what = "softmax(x, 0) with dim given by position, x of shape (4, 3) float64"
    expect_tensor(call(softmax, x, 0, what=what), ref.softmax(x, 0), what, **_tolerance(x.dtype))


def check_softmax_edge_cases(softmax) -> None:
    """Large and very negative scores, ``-inf`` scores, fully masked rows, float64 beyond float32, non-contiguous inputs,
    and an input on another device."""
    softmax = watched(softmax, SOFTMAX)
    cases = [
        ("scores far apart", torch.tensor([[1e4, -1e4, 0.0]]), -1),
        ("large equal scores", torch.tensor([[1000.0, 1000.0], [-1000.0, -1000.0]]), -1),
        ("large scores in float64", torch.tensor([[800.0, 799.0, -5.0]], dtype=torch.float64), -1),
        ("a masked score (-inf)", torch.tensor([[0.0, float("-inf"), 1.0]]), -1),
        ("a fully masked row", torch.tensor([[float("-inf"), float("-inf")], [0.0, 0.0]]), -1),
        ("large scores along dim 0", torch.tensor([[500.0, 1.0], [-500.0, 2.0], [499.0, 3.0]]), 0),
        ("a single element", torch.tensor([7.0]), -1),
        ("very negative scores", torch.tensor([[-1e6, -1e6 - 1.0, -1e6 - 2.0]]), -1),
        ("scores near float32's lowest", torch.tensor([[-3e38, -3e38], [-3e38, 0.0]]), -1),
        ("tiny scores", torch.tensor([[1e-40, 0.0, -1e-40]]), -1),
        ("all-zero scores", torch.zeros(2, 4), -1),
        ("float64 scores beyond float32's range", torch.tensor([[1e300, 0.0, -1e300]], dtype=torch.float64), -1),
        ("float64 scores a millionth apart", torch.tensor([[0.0, 1e-6, 2e-6]], dtype=torch.float64), -1),
        ("a transposed input x.t()", torch.tensor([[1.0, 2.0, 3.0], [400.0, 0.0, -400.0]]).t(), -1),
        ("a permuted input x.permute(2, 1, 0)", torch.arange(24.0).view(2, 3, 4).permute(2, 1, 0) * 10, -1),
        ("an expanded input (rows that share memory)", torch.tensor([[1.0, 5.0, -2.0]]).expand(3, 3), -1),
        ("an expanded input along dim 0", torch.tensor([[1.0, 5.0, -2.0]]).expand(3, 3), 0),
    ]
    for name, x, dim in cases:
        what = f"softmax on {name}: x={x.tolist()}, dim={dim}"
        expect_tensor(call(softmax, x, dim=dim, what=what), ref.softmax(x, dim=dim), what, **_tolerance(x.dtype))
    (x,) = on_meta(torch.empty(3, 4))
    expect_same_device(softmax, x, dim=0, what=f"softmax(x, dim=0) for x {_ON_META}")


# --------------------------------------------------------------------------- causal mask


def check_causal_mask(causal_mask, seed: int | None = None) -> None:
    """``causal_mask(n_q, n_k)``: boolean ``(n_q, n_k)``, ``True`` where query i may see key j (j <= i)."""
    causal_mask = watched(causal_mask, CAUSAL_MASK)
    gen, seed = new_generator(seed)
    sizes = [(1, 1), (4, 4), (3, 5), (5, 3), (2100, 2060)]  # longer than a precomputed 1024 block; 2049 != 2048 in float16
    sizes += [(randint(gen, 1, 9), randint(gen, 1, 9)) for _ in range(6)]
    for n_q, n_k in sizes:
        what = f"causal_mask({n_q}, {n_k}) (seed {seed})"
        expect_tensor(call(causal_mask, n_q, n_k, what=what), ref.causal_mask(n_q, n_k), what)
    n_q, n_k = sizes[-1]
    what = f"causal_mask(n_q={n_q}, n_k={n_k}) called with keyword arguments"
    expect_tensor(call(causal_mask, n_q=n_q, n_k=n_k, what=what), ref.causal_mask(n_q, n_k), what)


def check_causal_mask_against_torch(causal_mask) -> None:
    """The mask gives PyTorch's ``is_causal=True`` attention, also for ``n_q != n_k``."""
    causal_mask = watched(causal_mask, CAUSAL_MASK)
    gen, _ = new_generator(0)
    for n_q, n_k in [(6, 6), (2, 7), (7, 2), (1, 1)]:
        q = torch.randn(2, n_q, 8, generator=gen, dtype=torch.float64)
        k = torch.randn(2, n_k, 8, generator=gen, dtype=torch.float64)
        v = torch.randn(2, n_k, 8, generator=gen, dtype=torch.float64)
        mask = call(causal_mask, n_q, n_k, what=f"causal_mask({n_q}, {n_k})")
        expect_tensor(mask, ref.causal_mask(n_q, n_k), f"causal_mask({n_q}, {n_k})")
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        expect_tensor(got, F.scaled_dot_product_attention(q, k, v, is_causal=True), f"attention with causal_mask({n_q}, {n_k})")


# --------------------------------------------------------------------------- scaled dot-product attention


def _random_qkv(gen, batch_shape, n_q, n_k, e, ev, dtype):
    q = torch.randn(*batch_shape, n_q, e, generator=gen, dtype=torch.float64).to(dtype)
    k = torch.randn(*batch_shape, n_k, e, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(*batch_shape, n_k, ev, generator=gen, dtype=torch.float64).to(dtype)
    return q, k, v


def check_scaled_dot_product_attention(attention, seed: int | None = None, n_cases: int = 10) -> None:
    """``attention(q, k, v, attn_mask=None)`` against ``torch.nn.functional.scaled_dot_product_attention``.

    Random batch shapes, query length != key length, E != Ev, float32 and float64,
    contiguous or not, with no mask and with boolean masks of shape ``(L, S)``; the mask
    given by keyword, by position, or left out; inputs on another device.
    """
    attention = watched(attention, SCALED_DOT_PRODUCT_ATTENTION)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        batch_shape = tuple(randint(gen, 1, 3) for _ in range(randint(gen, 0, 2)))
        n_q, n_k = randint(gen, 1, 7), randint(gen, 1, 7)
        e, ev = randint(gen, 2, 16), randint(gen, 1, 9)
        dtype = _DTYPES[case % 2]
        q, k, v = _random_qkv(gen, batch_shape, n_q, n_k, e, ev, dtype)
        if case % 3 == 1:
            q, k, v = (_transposed_layout(t) for t in (q, k, v))
        mask = None
        if case % 3 != 0:
            mask = torch.rand(n_q, n_k, generator=gen) < 0.7
            mask[:, 0] = True  # every query may see at least one key here
        what = (
            f"attention(q, k, v, attn_mask) with q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"{dtype}{_layout(q)}, mask {'None' if mask is None else tuple(mask.shape)} (seed {seed})"
        )
        got = call(attention, q, k, v, attn_mask=mask, what=what)
        expect_tensor(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), what, **_tolerance(dtype))
    q, k, v = _random_qkv(gen, (2,), 3, 4, 5, 6, torch.float32)
    what = "attention(q, k, v) called without attn_mask"
    expect_tensor(call(attention, q, k, v, what=what), F.scaled_dot_product_attention(q, k, v), what)
    mask = torch.tensor([[True, False, True, True], [True, True, False, False], [False, True, True, True]])
    what = "attention(q, k, v, attn_mask) with the mask given by position"
    expect_tensor(call(attention, q, k, v, mask, what=what), F.scaled_dot_product_attention(q, k, v, attn_mask=mask), what)
    expect_same_device(attention, *on_meta(q, k, v), attn_mask=on_meta(mask)[0],
                       what=f"attention(q, k, v, attn_mask=mask) for q, k, v and mask {_ON_META}")


def check_scaled_dot_product_attention_edge_cases(attention) -> None:
    """Broadcast padding masks, a fully masked query (all-zero output), large scores, float64 precision, views."""
    attention = watched(attention, SCALED_DOT_PRODUCT_ATTENTION)
    gen, _ = new_generator(1)
    q, k, v = _random_qkv(gen, (2, 3), 4, 5, 8, 6, torch.float64)
    pad = ref.padding_mask(torch.tensor([5, 2]), 5)  # (2, 1, 1, 5)
    what = "attention with a padding mask of shape (batch, 1, 1, S)"
    expect_tensor(call(attention, q, k, v, attn_mask=pad, what=what), F.scaled_dot_product_attention(q, k, v, attn_mask=pad), what)

    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2] = False  # query 2 may attend to nothing
    what = "attention where query 2 may attend to no key (its output row must be all zeros)"
    expect_tensor(call(attention, q, k, v, attn_mask=mask, what=what), F.scaled_dot_product_attention(q, k, v, attn_mask=mask), what)

    q, k, v = _random_qkv(gen, (1,), 3, 3, 4, 4, torch.float32)
    q, k = q * 40, k * 40  # scores in the thousands: needs a stable softmax
    what = "attention with very large scores (|q.k| in the thousands)"
    expect_tensor(call(attention, q, k, v, what=what), F.scaled_dot_product_attention(q, k, v), what)

    q, k, v = _random_qkv(gen, (), 2, 3, 64, 3, torch.float64)
    what = "attention with head size 64 (the scale is 1/sqrt(64) = 1/8)"
    expect_tensor(call(attention, q, k, v, what=what), F.scaled_dot_product_attention(q, k, v), what, **_tolerance(q.dtype))

    q, k, v = _random_qkv(gen, (2,), 3, 4, 10, 3, torch.float64)
    what = "attention in float64 with head size 10 (1/sqrt(10) to float64 precision)"
    expect_tensor(call(attention, q, k, v, what=what), F.scaled_dot_product_attention(q, k, v), what, **_tolerance(q.dtype))

    q, k, v = _random_qkv(gen, (1,), 3, 3, 4, 4, torch.float64)
    q, k = q * 60, k * 60  # scores in the thousands: exp overflows even in float64 without the max
    what = "attention in float64 with very large scores (|q.k| in the thousands)"
    expect_tensor(call(attention, q, k, v, what=what), F.scaled_dot_product_attention(q, k, v), what, **_tolerance(q.dtype))

    q, k, v = _random_qkv(gen, (2,), 3, 5, 4, 2, torch.float32)
    pad = torch.tensor([True, True, False, True, False])
    what = "attention with a one-dimensional mask of shape (S,) (the same keys hidden from every query)"
    expect_tensor(call(attention, q, k, v, attn_mask=pad, what=what), F.scaled_dot_product_attention(q, k, v, attn_mask=pad), what)

    batch, heads, n_q, n_k, e = 2, 3, 4, 5, 6
    q = torch.randn(batch, n_q, heads, e, generator=gen, dtype=torch.float64).transpose(1, 2)
    k = torch.randn(batch, n_k, 1, e, generator=gen, dtype=torch.float64).transpose(1, 2).expand(batch, heads, n_k, e)
    v = torch.randn(batch, n_k, 1, e, generator=gen, dtype=torch.float64).transpose(1, 2).expand(batch, heads, n_k, e)
    what = ("attention on views, as inside multi-head attention: q of shape (2, 3, 4, 6) split into heads by "
            ".transpose(1, 2), k and v shared by the heads with .expand")
    expect_tensor(call(attention, q, k, v, what=what), F.scaled_dot_product_attention(q, k, v), what, **_tolerance(q.dtype))


# --------------------------------------------------------------------------- multi-head attention


def reference_multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    """The exercise's function computed by :class:`course_lib.attention.MultiHeadAttention` with the given weights."""
    mha = ref.MultiHeadAttention(w_q.shape[0], n_heads).to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        for lin, w in ((mha.q_proj, w_q), (mha.k_proj, w_k), (mha.v_proj, w_v), (mha.o_proj, w_o)):
            lin.weight.copy_(w)
        return mha(x, is_causal=is_causal)


def check_multi_head_attention(mha, seed: int | None = None, n_cases: int = 8) -> None:
    """``mha(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False)`` against :class:`course_lib.attention.MultiHeadAttention`.

    ``x`` is ``(batch, seq, d_model)``; the four weights are ``(d_model, d_model)`` in
    ``nn.Linear``'s layout (``q = x @ w_q.T``). Contiguous or not; ``is_causal`` given by
    keyword, by position, or left out; inputs on another device.
    """
    mha = watched(mha, MULTI_HEAD_ATTENTION)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        n_heads = randint(gen, 1, 4)
        head_dim = randint(gen, 2, 6)
        d_model = n_heads * head_dim
        batch, seq = randint(gen, 1, 3), randint(gen, 1, 7)
        dtype = _DTYPES[case % 2]
        x = torch.randn(batch, seq, d_model, generator=gen, dtype=torch.float64).to(dtype)
        ws = [(torch.randn(d_model, d_model, generator=gen, dtype=torch.float64) / math.sqrt(d_model)).to(dtype) for _ in range(4)]
        if case % 3 == 1:
            x, ws = _transposed_layout(x), [_transposed_layout(w) for w in ws]
        is_causal = case % 2 == 1
        what = (
            f"mha(x, w_q, w_k, w_v, w_o, n_heads={n_heads}, is_causal={is_causal}) with x {tuple(x.shape)}, "
            f"{dtype}{_layout(x)} (seed {seed})"
        )
        got = call(mha, x, *ws, n_heads, is_causal=is_causal, what=what)
        expect_tensor(got, reference_multi_head_attention(x, *ws, n_heads, is_causal), what, **_tolerance(dtype))
    x = torch.randn(5, 2, 8, generator=gen, dtype=torch.float64).transpose(0, 1)  # (batch, seq, d_model), not contiguous
    ws = [torch.randn(8, 8, generator=gen, dtype=torch.float64) / math.sqrt(8) for _ in range(4)]
    what = "mha(x, w_q, w_k, w_v, w_o, 2) without is_causal (its default is False), x = a (seq, batch, d_model) tensor .transpose(0, 1)"
    expect_tensor(call(mha, x, *ws, 2, what=what), reference_multi_head_attention(x, *ws, 2, False), what, **_tolerance(x.dtype))
    what = "mha(x, w_q, w_k, w_v, w_o, 2, True) with is_causal given by position"
    expect_tensor(call(mha, x, *ws, 2, True, what=what), reference_multi_head_attention(x, *ws, 2, True), what, **_tolerance(x.dtype))
    expect_same_device(mha, *on_meta(x, *ws), 2, is_causal=True, what=f"mha(x, w_q, w_k, w_v, w_o, 2, is_causal=True) for x and weights {_ON_META}")


def check_multi_head_attention_against_torch(mha) -> None:
    """The same computation as ``torch.nn.MultiheadAttention`` (no biases), with many heads and a longer sequence."""
    mha = watched(mha, MULTI_HEAD_ATTENTION)
    gen, _ = new_generator(2)
    d_model, n_heads = 32, 8
    torch_mha = torch.nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for p in torch_mha.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(d_model))
    w_q, w_k, w_v = torch_mha.in_proj_weight.detach().chunk(3)
    w_o = torch_mha.out_proj.weight.detach()
    x = torch.randn(2, 11, d_model, generator=gen, dtype=torch.float64)
    for is_causal in (False, True):
        mask = ~ref.causal_mask(11, 11) if is_causal else None  # torch's own convention: True = blocked
        with torch.no_grad():
            expected, _ = torch_mha(x, x, x, attn_mask=mask, need_weights=False)
        what = f"mha with d_model=32, n_heads=8, seq 11, is_causal={is_causal}, against torch.nn.MultiheadAttention"
        expect_tensor(call(mha, x, w_q, w_k, w_v, w_o, n_heads, is_causal=is_causal, what=what), expected, what)


# --------------------------------------------------------------------------- predictions


def _expect_prediction(name: str, got, expected: float, rel: float, advice: str) -> None:
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"{name}() should return a number (an int or a float), got {type(got).__name__} ({got!r})")
    if not math.isfinite(got) or not abs(got - expected) <= rel * abs(expected):
        raise AssertionError(f"{name}() returned {got}, not within {rel:.0%} of the value the lesson computes: {advice}")


PREDICT_EQUAL_WEIGHTS = Rules(
    "predict_equal_weights", modules=("course_lib.attention",),
    functions=("torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax", "torch.special.softmax"),
    why="A prediction is a number you work out before running the lesson's cells, not computed with a softmax.",
)


def check_predict_equal_weights(predict_equal_weights) -> None:
    """The prediction: the weight softmax gives each of 8 equal scores, within 1%."""
    expected = float(ref.softmax(torch.full((8,), 2.5, dtype=torch.float64))[0])
    got = watched(predict_equal_weights, PREDICT_EQUAL_WEIGHTS)()
    _expect_prediction("predict_equal_weights", got, expected, 0.01,
                       "equal scores give equal exponentials; what fraction of their sum is each one?")


PREDICT_SCORE_GROWTH = Rules(
    "predict_score_growth", modules=("course_lib.attention",),
    why="A prediction is a number you work out before running the lesson's cells, not computed with the course's code.",
)


def check_predict_score_growth(predict_score_growth) -> None:
    """The prediction: how many times the self-attention weight matrix grows when the sentence doubles, within 1%."""
    def n_scores(n):
        x = torch.zeros(n, 2)
        return ref.attention_with_weights(x, x, x)[1].numel()

    expected = n_scores(8) / n_scores(4)
    got = watched(predict_score_growth, PREDICT_SCORE_GROWTH)()
    _expect_prediction("predict_score_growth", got, expected, 0.01,
                       "self-attention scores every ordered pair of tokens (each with itself too); count the pairs for n and 2n")
