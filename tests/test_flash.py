"""course_lib.flash (lesson 05): FlashAttention in plain PyTorch against PyTorch's own attention."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import flash
from course_lib.attention import scaled_dot_product_attention as naive_attention
from course_lib.flash import (
    FlashAttentionFunction,
    causal_tile_needs_mask,
    causal_tile_skip,
    flash_attention,
    flash_attention_backward,
    flash_attention_forward,
    online_softmax_update,
    peak_allocated_bytes,
)

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    return dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-8)


def random_qkv(lead, n_q, n_k, e, ev, dtype, device="cpu", requires_grad=False):
    q = torch.randn(*lead, n_q, e, dtype=dtype, device=device)
    k = torch.randn(*lead, n_k, e, dtype=dtype, device=device)
    v = torch.randn(*lead, n_k, ev, dtype=dtype, device=device)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


# (leading dims, L, S, E, Ev, block_q, block_k): lengths that are and are not multiples of the tiles,
# L != S both ways, a single query, tiles larger than the sequence
CASES = [
    ((2, 3), 37, 37, 16, 16, 16, 16),
    ((1, 2), 64, 64, 8, 8, 16, 32),
    ((2,), 23, 50, 8, 4, 8, 16),
    ((3, 1), 50, 21, 16, 8, 16, 8),
    ((), 19, 19, 4, 4, 32, 32),
    ((2, 2, 2), 1, 9, 8, 8, 4, 4),
]


# --------------------------------------------------------------------------- forward and backward against SDPA


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("lead,n_q,n_k,e,ev,block_q,block_k", CASES)
def test_flash_attention_matches_sdpa_outputs_and_gradients(device, dtype, is_causal, lead, n_q, n_k, e, ev, block_q, block_k):
    q, k, v = random_qkv(lead, n_q, n_k, e, ev, dtype, device, requires_grad=True)
    out = flash_attention(q, k, v, is_causal=is_causal, block_q=block_q, block_k=block_k)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    assert out.shape == expected.shape and out.dtype == dtype and out.device == q.device
    torch.testing.assert_close(out, expected, **tol(dtype))
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad_out)
    theirs = torch.autograd.grad(expected, (q, k, v), grad_out)
    for name, a, b in zip("qkv", ours, theirs):
        assert a.shape == b.shape and a.dtype == dtype, name
        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("scale", [0.05, 1.0, 2.5])
def test_flash_attention_custom_scale(scale):
    q, k, v = random_qkv((2, 2), 13, 17, 8, 8, torch.float64, requires_grad=True)
    out = flash_attention(q, k, v, scale=scale, block_q=4, block_k=8)
    expected = F.scaled_dot_product_attention(q, k, v, scale=scale)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), q), torch.autograd.grad(expected.sum(), q))


def test_default_tiles_on_a_longer_sequence():
    q, k, v = random_qkv((1, 2), 200, 200, 32, 32, torch.float32, requires_grad=True)
    out = flash_attention(q, k, v, is_causal=True)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected, **tol(torch.float32))
    for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(expected.sum(), (q, k, v))):
        torch.testing.assert_close(a, b, **tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_accumulated_in_float32(dtype):
    q, k, v = random_qkv((2, 2), 40, 40, 16, 16, torch.float64)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    o, lse = flash_attention_forward(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True, block_q=16, block_k=16)
    assert o.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(o.double(), exact, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("is_causal", [False, True])
def test_lse_is_the_logsumexp_of_the_scaled_scores(is_causal):
    q, k, v = random_qkv((2, 3), 21, 30, 8, 8, torch.float64)
    _, lse = flash_attention_forward(q, k, v, is_causal=is_causal, block_q=8, block_k=8)
    scores = q @ k.transpose(-2, -1) / math.sqrt(8)
    if is_causal:
        scores = scores.masked_fill(torch.ones(21, 30, dtype=torch.bool).tril().logical_not(), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1))


def test_backward_function_alone_matches_autograd_of_sdpa():
    q, k, v = random_qkv((2,), 30, 20, 8, 6, torch.float64, requires_grad=True)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    do = torch.randn_like(expected)
    o, lse = flash_attention_forward(q.detach(), k.detach(), v.detach(), is_causal=True, block_q=8, block_k=16)
    ours = flash_attention_backward(q.detach(), k.detach(), v.detach(), o, lse, do, is_causal=True, block_q=8, block_k=16)
    for a, b in zip(ours, torch.autograd.grad(expected, (q, k, v), do)):
        torch.testing.assert_close(a, b)


def test_gradcheck():
    q, k, v = random_qkv((1, 2), 7, 9, 4, 3, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: flash_attention(q, k, v, is_causal=True, block_q=3, block_k=4), (q, k, v))


# --------------------------------------------------------------------------- what backward saves


def test_backward_saves_only_q_k_v_o_and_lse():
    n_q, n_k = 48, 40
    q, k, v = random_qkv((2, 3), n_q, n_k, 8, 8, torch.float32, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = flash_attention(q, k, v, is_causal=True, block_q=16, block_k=16)
    assert out.grad_fn is not None and type(out.grad_fn).__name__ == "FlashAttentionFunctionBackward"
    assert len(saved) == 5, [tuple(t.shape) for t in saved]
    assert all(t.numel() < n_q * n_k * 6 for t in saved), "a saved tensor has L x S elements per (batch, head)"
    assert all(t.shape[-2:] != (n_q, n_k) for t in saved)
    saved_q, saved_k, saved_v, saved_o, saved_lse = saved
    for got, expected in ((saved_q, q), (saved_k, k), (saved_v, v), (saved_o, out)):
        assert got.shape == expected.shape and got.data_ptr() == expected.data_ptr()
    _, lse = flash_attention_forward(q.detach(), k.detach(), v.detach(), is_causal=True, block_q=16, block_k=16)
    assert saved_lse.shape == (2, 3, n_q)
    torch.testing.assert_close(saved_lse, lse)
    out.sum().backward()  # backward works from these five alone
    assert q.grad is not None and k.grad is not None and v.grad is not None


def test_autograd_function_can_be_called_directly():
    q, k, v = random_qkv((2,), 5, 6, 4, 4, torch.float64, requires_grad=True)
    out = FlashAttentionFunction.apply(q, k, v, False, None, 2, 4)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


# --------------------------------------------------------------------------- the online softmax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile_sizes", [[10], [3, 3, 4], [1] * 10, [7, 2, 1]])
def test_online_softmax_update_equals_a_full_softmax(dtype, tile_sizes):
    scores = torch.randn(2, 3, 5, 10, dtype=dtype) * 8
    v = torch.randn(2, 3, 10, 4, dtype=dtype)
    m = torch.full((2, 3, 5), float("-inf"), dtype=dtype)
    l = torch.zeros(2, 3, 5, dtype=dtype)
    acc = torch.zeros(2, 3, 5, 4, dtype=dtype)
    start = 0
    for size in tile_sizes:
        m, l, acc = online_softmax_update(m, l, acc, scores[..., start:start + size], v[..., start:start + size, :])
        start += size
    assert m.shape == l.shape == (2, 3, 5) and acc.shape == (2, 3, 5, 4) and acc.dtype == dtype
    torch.testing.assert_close(m, scores.amax(-1))
    torch.testing.assert_close(l, torch.exp(scores - scores.amax(-1, keepdim=True)).sum(-1), **tol(dtype))
    torch.testing.assert_close(acc / l.unsqueeze(-1), torch.softmax(scores, -1) @ v, **tol(dtype))
    torch.testing.assert_close(m + torch.log(l), torch.logsumexp(scores, -1), **tol(dtype))


def test_online_softmax_update_rescales_by_exp_of_the_old_minus_the_new_max():
    m, l, acc = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([[3.0]])
    m_new, l_new, acc_new = online_softmax_update(m, l, acc, torch.tensor([[4.0]]), torch.tensor([[5.0]]))
    alpha = math.exp(1.0 - 4.0)
    assert m_new.item() == 4.0
    assert l_new.item() == pytest.approx(2.0 * alpha + 1.0)
    assert acc_new.item() == pytest.approx(3.0 * alpha + 5.0)


def test_online_softmax_update_survives_fully_masked_tiles():
    inf = float("-inf")
    m, l, acc = torch.full((2,), inf), torch.zeros(2), torch.zeros(2, 3)
    v = torch.randn(2, 3)
    m, l, acc = online_softmax_update(m, l, acc, torch.tensor([[inf, inf], [inf, 0.5]]), v)
    assert not torch.isnan(acc).any() and not torch.isnan(l).any()
    assert torch.isneginf(m[0]) and l[0] == 0 and torch.equal(acc[0], torch.zeros(3))
    m, l, acc = online_softmax_update(m, l, acc, torch.tensor([[0.0, 1.0], [inf, inf]]), v)
    torch.testing.assert_close(acc / l.unsqueeze(-1), torch.stack([torch.softmax(torch.tensor([0.0, 1.0]), 0) @ v, v[1]]))


# --------------------------------------------------------------------------- causal tiles


def brute_force_skippable(q_start, q_end, k_start, k_end):
    return all(j > i for i in range(q_start, q_end) for j in range(k_start, k_end))


def brute_force_needs_mask(q_start, q_end, k_start, k_end):
    return any(j > i for i in range(q_start, q_end) for j in range(k_start, k_end))


def test_causal_tile_rules_match_brute_force():
    for q_start, q_len, k_start, k_len in itertools.product(range(10), range(1, 6), range(12), range(1, 6)):
        q_end, k_end = q_start + q_len, k_start + k_len
        where = f"queries [{q_start}, {q_end}), keys [{k_start}, {k_end})"
        assert causal_tile_skip(q_start, q_end, k_start) == brute_force_skippable(q_start, q_end, k_start, k_end), where
        assert causal_tile_needs_mask(q_start, k_end) == brute_force_needs_mask(q_start, q_end, k_start, k_end), where


def count_tile_steps(monkeypatch, name):
    calls = {"masked": 0, "unmasked": 0}
    original = getattr(flash, name)

    def counting(*args):
        calls["unmasked" if args[-1] is None else "masked"] += 1
        return original(*args)

    monkeypatch.setattr(flash, name, counting)
    return calls


@pytest.mark.parametrize("is_causal,masked,unmasked", [(False, 0, 16), (True, 4, 6)])
def test_causal_forward_and_backward_skip_tiles_above_the_diagonal(monkeypatch, is_causal, masked, unmasked):
    forward = count_tile_steps(monkeypatch, "forward_tile_step")
    backward = count_tile_steps(monkeypatch, "backward_tile_step")
    q, k, v = random_qkv((1,), 128, 128, 4, 4, torch.float64, requires_grad=True)
    flash_attention(q, k, v, is_causal=is_causal, block_q=32, block_k=32).sum().backward()
    # 4 x 4 tiles: causal computes the 4 diagonal tiles (masked) and the 6 below them (no mask)
    assert forward == {"masked": masked, "unmasked": unmasked}
    assert backward == {"masked": masked, "unmasked": unmasked}


# --------------------------------------------------------------------------- memory


def test_peak_allocated_bytes_counts_live_tensors():
    x = torch.zeros(1000)  # exists before: not counted

    def two_alive_then_one():
        a = torch.empty(1000)        # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)  # 4000 bytes, both alive: 8000
        del a, b
        c = torch.empty(250)         # 1000 bytes
        c.add_(1.0)                  # in place: nothing new
        return c[:10]                # a view: nothing new

    assert peak_allocated_bytes(two_alive_then_one) == 8000
    assert peak_allocated_bytes(lambda: x * 2) == 4000
    assert peak_allocated_bytes(lambda: x.view(10, 100).t()) == 0


def test_memory_naive_grows_quadratically_and_tiled_linearly():
    lengths = (256, 512, 1024)
    naive, tiled = [], []
    with torch.no_grad():
        for n in lengths:
            q, k, v = random_qkv((1, 1), n, n, 16, 16, torch.float32)
            naive.append(peak_allocated_bytes(lambda: naive_attention(q, k, v)))
            tiled.append(peak_allocated_bytes(lambda: flash_attention_forward(q, k, v, block_q=64, block_k=64)))
    for i in (1, 2):
        assert 3.5 < naive[i] / naive[i - 1] < 4.5, naive     # 2x longer: 4x the memory
        assert 1.0 < tiled[i] / tiled[i - 1] < 2.2, tiled     # 2x longer: at most 2x
    # the extra memory of the tiled pass is linear: each doubling adds twice what the last one did
    assert (tiled[2] - tiled[1]) == pytest.approx(2 * (tiled[1] - tiled[0]), rel=0.05)
    # the score matrix alone: L * S * 4 bytes, at least once
    assert naive[2] >= 1024 * 1024 * 4
    assert naive[2] / tiled[2] > 50


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "shapes,kwargs,match",
    [
        (((2, 4, 8), (3, 5, 8), (3, 5, 8)), {}, "same leading"),
        (((2, 4, 8), (2, 5, 6), (2, 5, 8)), {}, "same feature size E"),
        (((2, 4, 8), (2, 5, 8), (2, 6, 8)), {}, "same number of positions S"),
        (((2, 4, 8), (2, 0, 8), (2, 0, 8)), {}, "at least one key"),
        (((4, 8), (5, 8), (5, 8)), {"block_q": 0}, "block_q must be a positive int"),
        (((4, 8), (5, 8), (5, 8)), {"block_k": 2.0}, "block_k must be a positive int"),
        (((4, 8), (5, 8), (5, 8)), {"scale": "0.1"}, "scale must be None or a number"),
        (((8,), (5, 8), (5, 8)), {}, "at least 2 dimension"),
    ],
)
def test_rejects_bad_inputs_with_clear_errors(shapes, kwargs, match):
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v, **kwargs)
    with pytest.raises(ValueError, match=match):
        flash_attention_forward(q, k, v, **kwargs)


def test_rejects_mixed_dtypes():
    q = torch.randn(4, 8)
    with pytest.raises(ValueError, match="share one dtype"):
        flash_attention(q, q.double(), q)
