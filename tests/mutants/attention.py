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


def _stable_softmax(x, dim):
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = torch.exp(x - m)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def softmax_default_dim_one(x, dim=1):
    """Right, but the default is dim=1, which is the last dimension only for 2-D inputs."""
    return _stable_softmax(x, dim)


def softmax_in_float32(x, dim=-1):
    """Computes in float32 and casts back: a float64 input loses precision (and overflows beyond 3.4e38)."""
    return _stable_softmax(x.float(), dim).to(x.dtype)


def softmax_zeros_on_the_cpu(x, dim=-1):
    """Replaces a -inf maximum by torch.zeros(shape), which is made on the CPU whatever x's device."""
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros(m.shape, dtype=x.dtype), m)
    e = torch.exp(x - m)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def softmax_rows_with_view(x, dim=-1):
    """Moves dim last and flattens to rows with .view, which fails on a transposed (non-contiguous) input."""
    moved = x.movedim(dim, -1)
    if dim % x.dim() != x.dim() - 1:
        moved = moved.contiguous()
    rows = moved.view(-1, moved.shape[-1])
    return _stable_softmax(rows, -1).view(moved.shape).movedim(-1, dim)


def softmax_clamped_max(x, dim=-1):
    """Clamps the maximum at -1e4 to keep -inf out: a row of very negative (finite) scores comes out all zeros."""
    m = x.amax(dim=dim, keepdim=True).clamp(min=-1e4)
    e = torch.exp(x - m)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def softmax_log_sum_exp_without_max(x, dim=-1):
    """exp(x - log(sum(exp(x)))): the log-sum-exp without the max overflows for large scores."""
    out = torch.exp(x - torch.log(torch.exp(x).sum(dim=dim, keepdim=True)))
    return torch.nan_to_num(out, nan=0.0)


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


def _stable_weights(scores):
    m = scores.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = torch.exp(scores - m)
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def _right_attention(q, k, v, attn_mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return _stable_weights(scores) @ v


def attention_in_float32(q, k, v, attn_mask=None):
    """Computes in float32 and casts back: float64 inputs lose precision."""
    return _right_attention(q.float(), k.float(), v.float(), attn_mask).to(q.dtype)


def attention_additive_mask_on_the_cpu(q, k, v, attn_mask=None):
    """Turns the boolean mask into an additive one made with torch.zeros(shape): on the CPU whatever q's device."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores + torch.zeros(attn_mask.shape, dtype=q.dtype).masked_fill(~attn_mask, float("-inf"))
    return _stable_weights(scores) @ v


def attention_bmm_with_view(q, k, v, attn_mask=None):
    """Flattens the batch dimensions with .view for torch.bmm: fails on transposed (non-contiguous) inputs."""
    *batch, n_q, e = q.shape
    n_k, ev = k.shape[-2], v.shape[-1]
    q3, k3, v3 = q.view(-1, n_q, e), k.view(-1, n_k, e), v.view(-1, n_k, ev)
    scores = torch.bmm(q3, k3.transpose(1, 2)).view(*batch, n_q, n_k) / math.sqrt(e)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = _stable_weights(scores).reshape(-1, n_q, n_k)
    return torch.bmm(weights, v3).view(*batch, n_q, ev)


def attention_mask_keyword_only(q, k, v, *, attn_mask=None):
    """Makes attn_mask keyword-only: a call with the mask as fourth positional argument fails."""
    return _right_attention(q, k, v, attn_mask)


def attention_exp_in_float64(q, k, v, attn_mask=None):
    """Upcasts the scores to float64 and skips the max: survives float32 scores up to ~700 but overflows beyond."""
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).double()
    e = torch.exp(scores)
    if attn_mask is not None:
        e = e * attn_mask
    total = e.sum(-1, keepdim=True)
    return (e / torch.where(total == 0, torch.ones_like(total), total)).to(q.dtype) @ v


def attention_scale_from_a_float32_tensor(q, k, v, attn_mask=None):
    """Divides by torch.sqrt(torch.tensor(E)), a float32 number: float64 scores are scaled by a rounded sqrt(E)."""
    scores = q @ k.transpose(-2, -1) / torch.sqrt(torch.tensor(q.shape[-1]))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return _stable_weights(scores) @ v


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


def causal_mask_other_names(seq_q, seq_k):
    """Right mask, but its parameters are not named n_q and n_k: a call by keyword fails."""
    return torch.ones(seq_q, seq_k, dtype=torch.bool).tril()


_BLOCK = torch.ones(1024, 1024, dtype=torch.bool).tril()


def causal_mask_from_a_precomputed_block(n_q, n_k):
    """Slices a precomputed 1024 x 1024 mask (as nanoGPT's buffer): too small for longer sequences."""
    return _BLOCK[:n_q, :n_k].clone()


def causal_mask_half_precision_positions(n_q, n_k):
    """Compares positions held in float16: above 2048 neighbouring positions round to the same number."""
    i = torch.arange(n_q, dtype=torch.float16).unsqueeze(1)
    j = torch.arange(n_k, dtype=torch.float16).unsqueeze(0)
    return j <= i


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


def _split(t, n_heads):
    b, s, d = t.shape
    return t.reshape(b, s, n_heads, d // n_heads).transpose(1, 2)


def _merge(o):
    b, h, s, hd = o.shape
    return o.transpose(1, 2).reshape(b, s, h * hd)


def mha_causal_by_default(x, w_q, w_k, w_v, w_o, n_heads, is_causal=True):
    """Right computation, but is_causal defaults to True."""
    return _merge(_sdpa(_split(x @ w_q.T, n_heads), _split(x @ w_k.T, n_heads), _split(x @ w_v.T, n_heads), is_causal)) @ w_o.T


def mha_is_causal_keyword_only(x, w_q, w_k, w_v, w_o, n_heads, *, is_causal=False):
    """Makes is_causal keyword-only: a call with it as seventh positional argument fails."""
    return _merge(_sdpa(_split(x @ w_q.T, n_heads), _split(x @ w_k.T, n_heads), _split(x @ w_v.T, n_heads), is_causal)) @ w_o.T


def mha_in_float32(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    """Computes in float32 and casts back: float64 inputs lose precision."""
    x32, (q, k, v, o) = x.float(), (w.float() for w in (w_q, w_k, w_v, w_o))
    return (_merge(_sdpa(_split(x32 @ q.T, n_heads), _split(x32 @ k.T, n_heads), _split(x32 @ v.T, n_heads), is_causal)) @ o.T).to(x.dtype)


def mha_causal_mask_on_the_cpu(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    """Builds the causal mask with torch.ones(s, s): on the CPU whatever x's device."""
    s = x.shape[1]
    mask = torch.ones(s, s, dtype=torch.bool).tril() if is_causal else None
    q, k, v = _split(x @ w_q.T, n_heads), _split(x @ w_k.T, n_heads), _split(x @ w_v.T, n_heads)
    return _merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) @ w_o.T


def mha_flattens_x_with_view(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    """Flattens x to (batch * seq, d_model) with .view: fails on a transposed (non-contiguous) x."""
    b, s, d = x.shape
    flat = x.view(b * s, d)
    q, k, v = ((flat @ w.T).view(b, s, d) for w in (w_q, w_k, w_v))
    return _merge(_sdpa(_split(q, n_heads), _split(k, n_heads), _split(v, n_heads), is_causal)) @ w_o.T



# --------------------------------------------------------------------------- predictions


def predict_weights_uniform_percent():
    return 12.5       # a percentage, not a weight


def predict_weights_one():
    return 1          # every weight 1: forgets to divide by the sum


def predict_weights_exp_score():
    return 1 / 4      # the n of the four-word sentence, not of the eight scores


def predict_weights_bool():
    return True


def predict_growth_linear():
    return 2          # doubling the tokens doubles the scores: forgets the pairs


def predict_growth_cubic():
    return 8


def predict_growth_off_diagonal():
    return 56 / 12    # (2n)(2n-1) / n(n-1): leaves out each token with itself


def predict_growth_bool():
    return True


MUTANTS = {
    "test_predict_equal_weights": {
        f.__name__: f for f in (predict_weights_uniform_percent, predict_weights_one, predict_weights_exp_score, predict_weights_bool)
    },
    "test_predict_score_growth": {
        f.__name__: f for f in (predict_growth_linear, predict_growth_cubic, predict_growth_off_diagonal, predict_growth_bool)
    },
    "test_softmax": {
        f.__name__: f
        for f in (softmax_naive, softmax_last_dim_always, softmax_global_sum, softmax_in_place, softmax_float32,
                  softmax_nan_for_masked_rows, softmax_subtracts_min, softmax_default_dim_one, softmax_in_float32,
                  softmax_zeros_on_the_cpu, softmax_rows_with_view, softmax_clamped_max, softmax_log_sum_exp_without_max)
    },
    "test_scaled_dot_product_attention": {
        f.__name__: f
        for f in (attention_unscaled, attention_scaled_by_d, attention_scaled_by_value_dim, attention_softmax_over_queries,
                  attention_mask_inverted, attention_mask_after_softmax, attention_big_negative_instead_of_inf,
                  attention_unstable_softmax, attention_in_float32, attention_additive_mask_on_the_cpu, attention_bmm_with_view,
                  attention_mask_keyword_only, attention_exp_in_float64, attention_scale_from_a_float32_tensor)
    },
    "test_causal_mask": {
        f.__name__: f
        for f in (causal_mask_strict, causal_mask_future, causal_mask_float, causal_mask_additive, causal_mask_bottom_right,
                  causal_mask_square, causal_mask_other_names, causal_mask_from_a_precomputed_block,
                  causal_mask_half_precision_positions)
    },
    "test_multi_head_attention": {
        f.__name__: f
        for f in (mha_no_transpose, mha_merge_without_transpose, mha_no_output_projection, mha_weights_not_transposed,
                  mha_scaled_by_d_model, mha_ignores_causal, mha_single_head, mha_causal_by_default, mha_is_causal_keyword_only,
                  mha_in_float32, mha_causal_mask_on_the_cpu, mha_flattens_x_with_view)
    },
}
