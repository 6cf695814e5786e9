"""Wrong answers to lesson 01's exercises: softmax, attention, causal mask, multi-head attention."""

import math

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- softmax


def softmax_naive(x, dim=-1):
    """No max subtraction: exp overflows for large scores."""
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def softmax_last_dim_always(x, dim=-1):
    """Ignores ``dim``."""
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def softmax_global_sum(x, dim=-1):
    """Normalises by the sum over the whole tensor, not per row."""
    e = torch.exp(x - x.max())
    return e / e.sum()


def softmax_in_place(x, dim=-1):
    """Right values, but subtracts the max in place, changing the caller's tensor."""
    x -= x.amax(dim=dim, keepdim=True)
    x.exp_()
    return x / x.sum(dim=dim, keepdim=True)


def softmax_float32(x, dim=-1):
    """Always returns float32."""
    x = x.float()
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def softmax_nan_for_masked_rows(x, dim=-1):
    """Stable, but a fully masked row (all -inf) gives nan."""
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def softmax_subtracts_min(x, dim=-1):
    """Subtracts the minimum: exp still overflows."""
    e = torch.exp(x - x.amin(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


# --------------------------------------------------------------------------- attention


def _masked_softmax(scores, attn_mask):
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


def attention_unscaled(q, k, v, attn_mask=None):
    """Forgets 1/sqrt(d)."""
    return _masked_softmax(q @ k.transpose(-2, -1), attn_mask) @ v


def attention_scaled_by_d(q, k, v, attn_mask=None):
    """Divides by d instead of sqrt(d)."""
    return _masked_softmax(q @ k.transpose(-2, -1) / q.shape[-1], attn_mask) @ v


def attention_scaled_by_value_dim(q, k, v, attn_mask=None):
    """Uses the value size Ev for the scale."""
    return _masked_softmax(q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1]), attn_mask) @ v


def attention_softmax_over_queries(q, k, v, attn_mask=None):
    """Normalises over the queries (dim -2) instead of the keys."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-2), nan=0.0) @ v


def attention_mask_inverted(q, k, v, attn_mask=None):
    """Treats True as 'blocked' (the convention of nn.MultiheadAttention, not of SDPA)."""
    return _masked_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), None if attn_mask is None else ~attn_mask) @ v


def attention_mask_after_softmax(q, k, v, attn_mask=None):
    """Zeroes masked weights after the softmax, without renormalising."""
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if attn_mask is not None:
        w = w * attn_mask
    return w @ v


def attention_big_negative_instead_of_inf(q, k, v, attn_mask=None):
    """Masks with -1e9: a query with no allowed key then averages all values instead of giving zeros."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -1e9)
    return torch.softmax(scores, dim=-1) @ v


def attention_unstable_softmax(q, k, v, attn_mask=None):
    """Writes the softmax as exp / sum without subtracting the max: overflows on large scores."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    e = torch.exp(scores)
    if attn_mask is not None:
        e = e * attn_mask
    s = e.sum(-1, keepdim=True)
    return (e / torch.where(s == 0, torch.ones_like(s), s)) @ v


# --------------------------------------------------------------------------- causal mask


def causal_mask_strict(n_q, n_k):
    """A token may not attend to itself."""
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=-1)


def causal_mask_future(n_q, n_k):
    """Upper triangle: attends to the future."""
    return torch.ones(n_q, n_k, dtype=torch.bool).triu()


def causal_mask_float(n_q, n_k):
    """0/1 floats instead of booleans."""
    return torch.ones(n_q, n_k).tril()


def causal_mask_additive(n_q, n_k):
    """An additive mask (0 / -inf): a valid mask for SDPA, but not the boolean mask asked for."""
    return torch.zeros(n_q, n_k).masked_fill(~torch.ones(n_q, n_k, dtype=torch.bool).tril(), float("-inf"))


def causal_mask_bottom_right(n_q, n_k):
    """Aligned to the bottom right (right for decoding with a cache, not PyTorch's is_causal)."""
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)


def causal_mask_square(n_q, n_k):
    """Ignores n_k."""
    return torch.ones(n_q, n_q, dtype=torch.bool).tril()


# --------------------------------------------------------------------------- multi-head attention


def _sdpa(q, k, v, is_causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def mha_no_transpose(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    """Reshapes (b, s, d) straight to (b, h, s, hd) without the transpose: heads mix positions."""
    b, s, d = x.shape
    split = lambda t: t.reshape(b, n_heads, s, d // n_heads)
    o = _sdpa(split(x @ w_q.T), split(x @ w_k.T), split(x @ w_v.T), is_causal)
    return o.reshape(b, s, d) @ w_o.T


def mha_merge_without_transpose(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    """Splits right, but merges (b, h, s, hd) back with a plain reshape."""
    b, s, d = x.shape
    split = lambda t: t.view(b, s, n_heads, d // n_heads).transpose(1, 2)
    o = _sdpa(split(x @ w_q.T), split(x @ w_k.T), split(x @ w_v.T), is_causal)
    return o.reshape(b, s, d) @ w_o.T


def mha_no_output_projection(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    b, s, d = x.shape
    split = lambda t: t.view(b, s, n_heads, d // n_heads).transpose(1, 2)
    o = _sdpa(split(x @ w_q.T), split(x @ w_k.T), split(x @ w_v.T), is_causal)
    return o.transpose(1, 2).reshape(b, s, d)


def mha_weights_not_transposed(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    """Uses x @ W instead of nn.Linear's x @ W.T."""
    b, s, d = x.shape
    split = lambda t: t.view(b, s, n_heads, d // n_heads).transpose(1, 2)
    o = _sdpa(split(x @ w_q), split(x @ w_k), split(x @ w_v), is_causal)
    return o.transpose(1, 2).reshape(b, s, d) @ w_o


def mha_scaled_by_d_model(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    """Scales the scores by 1/sqrt(d_model) instead of 1/sqrt(head_dim)."""
    b, s, d = x.shape
    split = lambda t: t.view(b, s, n_heads, d // n_heads).transpose(1, 2)
    o = F.scaled_dot_product_attention(split(x @ w_q.T), split(x @ w_k.T), split(x @ w_v.T), is_causal=is_causal, scale=1 / math.sqrt(d))
    return o.transpose(1, 2).reshape(b, s, d) @ w_o.T


def mha_ignores_causal(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    b, s, d = x.shape
    split = lambda t: t.view(b, s, n_heads, d // n_heads).transpose(1, 2)
    o = _sdpa(split(x @ w_q.T), split(x @ w_k.T), split(x @ w_v.T), False)
    return o.transpose(1, 2).reshape(b, s, d) @ w_o.T


def mha_single_head(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    """Attends with one big head (no split)."""
    o = _sdpa(x @ w_q.T, x @ w_k.T, x @ w_v.T, is_causal)
    return o @ w_o.T


MUTANTS = {
    "test_softmax": {
        f.__name__: f
        for f in (softmax_naive, softmax_last_dim_always, softmax_global_sum, softmax_in_place, softmax_float32,
                  softmax_nan_for_masked_rows, softmax_subtracts_min)
    },
    "test_scaled_dot_product_attention": {
        f.__name__: f
        for f in (attention_unscaled, attention_scaled_by_d, attention_scaled_by_value_dim, attention_softmax_over_queries,
                  attention_mask_inverted, attention_mask_after_softmax, attention_big_negative_instead_of_inf,
                  attention_unstable_softmax)
    },
    "test_causal_mask": {
        f.__name__: f
        for f in (causal_mask_strict, causal_mask_future, causal_mask_float, causal_mask_additive, causal_mask_bottom_right,
                  causal_mask_square)
    },
    "test_multi_head_attention": {
        f.__name__: f
        for f in (mha_no_transpose, mha_merge_without_transpose, mha_no_output_projection, mha_weights_not_transposed,
                  mha_scaled_by_d_model, mha_ignores_causal, mha_single_head)
    },
}
