"""Attention, from the softmax up to multi-head attention (lesson 01).

Shapes follow PyTorch's ``torch.nn.functional.scaled_dot_product_attention``:

- queries ``q``: ``(..., L, E)``  (L query positions, E features per head)
- keys    ``k``: ``(..., S, E)``  (S key positions)
- values  ``v``: ``(..., S, Ev)``
- output      : ``(..., L, Ev)``

where ``...`` is usually ``(batch, heads)``. Masks follow PyTorch too: a boolean mask
is ``True`` where a query *may* attend to a key; a float mask is *added* to the scores.
"""

from __future__ import annotations

import math

import torch
from torch import nn


# --------------------------------------------------------------------------- checks


def _require_tensor(name: str, x, min_dim: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}")


def _require_float(name: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype (float16/bfloat16/float32/float64), got {x.dtype}")


# --------------------------------------------------------------------------- softmax


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``dim``: ``exp(x_i) / sum_j exp(x_j)``.

    Subtracting the row maximum first changes nothing mathematically (the factor
    ``exp(-max)`` cancels) but keeps ``exp`` from overflowing: rows such as
    ``[1e4, -1e4]`` give ``[1, 0]`` instead of ``nan``.

    A row whose entries are all ``-inf`` (a query that may attend to nothing) gives
    all zeros, not ``nan`` as ``torch.softmax`` does; this is also what
    ``torch.nn.functional.scaled_dot_product_attention`` returns for such rows.

    Args:
        x: floating-point tensor of any shape (at least 1-D).
        dim: the dimension that sums to one.
    Returns:
        tensor of the same shape and dtype as ``x``.

    Defined in lesson 01.
    """
    _require_tensor("x", x)
    _require_float("x", x)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be in [{-x.dim()}, {x.dim() - 1}] for x of shape {tuple(x.shape)}, got {dim}")
    row_max = x.amax(dim=dim, keepdim=True)
    # a fully masked row has max -inf; use 0 there so that exp(-inf - 0) = 0 (not nan)
    row_max = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)
    e = torch.exp(x - row_max)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


# --------------------------------------------------------------------------- masks


def causal_mask(n_q: int, n_k: int, offset: int = 0, device=None) -> torch.Tensor:
    """Boolean causal mask of shape ``(n_q, n_k)``: query ``i`` may attend to key ``j`` iff ``j <= i + offset``.

    With ``offset=0`` this is PyTorch's ``is_causal=True`` (aligned to the top left, as
    ``torch.ones(n_q, n_k).tril()``). When the queries are the *last* ``n_q`` of ``n_k``
    positions (decoding with a KV cache), use ``offset = n_k - n_q``.

    Returns a ``torch.bool`` tensor, ``True`` where attending is allowed.

    Defined in lesson 01.
    """
    for name, value in (("n_q", n_q), ("n_k", n_k), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if n_q < 0 or n_k < 0:
        raise ValueError(f"n_q and n_k must be >= 0, got n_q={n_q}, n_k={n_k}")
    i = torch.arange(n_q, device=device).unsqueeze(1)
    j = torch.arange(n_k, device=device).unsqueeze(0)
    return j <= i + offset


def padding_mask(lengths: torch.Tensor, n_k: int) -> torch.Tensor:
    """Boolean key-padding mask of shape ``(batch, 1, 1, n_k)`` from the true lengths ``(batch,)``.

    Key ``j`` of sequence ``b`` may be attended to iff ``j < lengths[b]``; the mask
    broadcasts over heads and query positions. Defined in lesson 01.
    """
    _require_tensor("lengths", lengths)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor (batch,), got shape {tuple(lengths.shape)} and dtype {lengths.dtype}")
    j = torch.arange(n_k, device=lengths.device)
    return (j.unsqueeze(0) < lengths.unsqueeze(1))[:, None, None, :]


# --------------------------------------------------------------------------- attention


def _check_qkv(q, k, v, attn_mask, is_causal, enable_gqa):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _require_tensor(name, t, min_dim=2)
        _require_float(name, t)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size E (last dim): q {tuple(q.shape)}, k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions S (dim -2): k {tuple(k.shape)}, v {tuple(v.shape)}")
    if enable_gqa:
        if q.dim() < 3 or k.dim() < 3 or k.shape[-3] != v.shape[-3] or q.shape[-3] % k.shape[-3] != 0:
            raise ValueError(
                "with enable_gqa the head dim (-3) of q must be a multiple of that of k and v, "
                f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
    if attn_mask is not None:
        _require_tensor("attn_mask", attn_mask)
        if is_causal:
            raise ValueError("pass either attn_mask or is_causal=True, not both")
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            raise ValueError(f"attn_mask must be torch.bool or the dtype of q ({q.dtype}), got {attn_mask.dtype}")


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head ``n_rep`` times along dim -3: ``(..., H_kv, S, E) -> (..., H_kv * n_rep, S, E)``.

    Head ``h`` of the result is head ``h // n_rep`` of ``x``, so that a group of
    ``n_rep`` consecutive query heads shares one key/value head (grouped-query
    attention). Defined in lesson 01, used again in lesson 06.
    """
    _require_tensor("x", x, min_dim=3)
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=-3)


def mean_pool_kv_heads(weight: torch.Tensor, n_kv_heads: int, new_n_kv_heads: int) -> torch.Tensor:
    """Merge a key (or value) projection's heads into fewer heads by averaging each group.

    ``weight`` is an ``nn.Linear`` weight ``(n_kv_heads * head_dim, d_model)``: rows
    ``h * head_dim .. (h + 1) * head_dim - 1`` produce head ``h``. The result
    ``(new_n_kv_heads * head_dim, d_model)`` has, as its head ``g``, the mean of the
    original heads ``g * r .. (g + 1) * r - 1`` with ``r = n_kv_heads // new_n_kv_heads``:
    the consecutive query heads that share key/value head ``g`` after conversion (see
    :func:`repeat_kv`) are exactly those that used heads ``g * r ..`` before. This is how the
    GQA paper (Ainslie et al., 2023) initialises a GQA model from an MHA checkpoint before
    uptraining it. Works for a bias ``(n_kv_heads * head_dim,)`` too. Defined in lesson 06.
    """
    _require_tensor("weight", weight)
    _require_float("weight", weight)
    for name, n in (("n_kv_heads", n_kv_heads), ("new_n_kv_heads", new_n_kv_heads)):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    if n_kv_heads % new_n_kv_heads != 0:
        raise ValueError(f"n_kv_heads={n_kv_heads} must be a multiple of new_n_kv_heads={new_n_kv_heads}")
    if weight.dim() not in (1, 2) or weight.shape[0] % n_kv_heads != 0:
        raise ValueError(
            f"weight must be (n_kv_heads * head_dim, d_model) or a bias (n_kv_heads * head_dim,) with n_kv_heads={n_kv_heads}, "
            f"got {tuple(weight.shape)}"
        )
    head_dim = weight.shape[0] // n_kv_heads
    group = n_kv_heads // new_n_kv_heads
    heads = weight.reshape(new_n_kv_heads, group, head_dim, *weight.shape[1:])   # (new, group, head_dim, d_model)
    return heads.mean(dim=1).reshape(new_n_kv_heads * head_dim, *weight.shape[1:])


def attention_with_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention that also returns the attention weights.

    Returns ``(output, weights)`` with output ``(..., L, Ev)`` and weights ``(..., L, S)``
    (each row sums to one, or is all zeros where the mask allows no key).
    See :func:`scaled_dot_product_attention` for the arguments. Defined in lesson 01.
    """
    _check_qkv(q, k, v, attn_mask, is_causal, enable_gqa)
    n_q, n_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    group = q.shape[-3] // k.shape[-3] if enable_gqa else 1
    if group > 1:
        # GQA without copying K and V: the G query heads of a group become G * L rows against
        # their one key/value head, (..., H_kv, G * L, E) @ (..., H_kv, E, S). Same result as
        # repeat_kv, but each cached key and value is read once, not G times (lesson 06).
        batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3])
        q_rows = q.expand(*batch, *q.shape[-3:]).reshape(*batch, k.shape[-3], group * n_q, q.shape[-1])
        scores = ((q_rows @ k.transpose(-2, -1)) * scale).reshape(*batch, q.shape[-3], n_q, n_k)
    else:
        scores = (q @ k.transpose(-2, -1)) * scale                   # (..., L, S) compatibility scores
    if is_causal:
        attn_mask = causal_mask(n_q, n_k, device=q.device)
    if attn_mask is not None:
        try:
            torch.broadcast_shapes(attn_mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the scores' shape {tuple(scores.shape)} (..., L, S)"
            ) from None
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = softmax(scores, dim=-1)
    if group > 1:
        out = weights.reshape(*batch, k.shape[-3], group * n_q, n_k) @ v     # (..., H_kv, G * L, Ev)
        return out.reshape(*batch, q.shape[-3], n_q, v.shape[-1]), weights
    return weights @ v, weights


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``softmax(q @ k^T * scale + mask) @ v``, as ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        q: ``(..., L, E)`` queries; k: ``(..., S, E)`` keys; v: ``(..., S, Ev)`` values;
            one floating-point dtype for all three.
        attn_mask: ``None``, a boolean mask (``True`` = may attend) or a float mask of
            q's dtype that is added to the scores; broadcastable to ``(..., L, S)``.
        is_causal: apply :func:`causal_mask` (top-left aligned, like PyTorch).
        scale: factor on the scores; default ``1 / sqrt(E)``.
        enable_gqa: allow fewer key/value heads (dim -3) than query heads; each key/value
            head then serves a group of consecutive query heads.
    Returns:
        ``(..., L, Ev)`` tensor of q's dtype.

    Defined in lesson 01.
    """
    return attention_with_weights(q, k, v, attn_mask, is_causal, scale, enable_gqa)[0]


# --------------------------------------------------------------------------- multi-head attention


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``(batch, seq, n_heads * head_dim) -> (batch, n_heads, seq, head_dim)``. Defined in lesson 01."""
    _require_tensor("x", x, min_dim=3)
    b, s, d = x.shape
    if d % n_heads != 0:
        raise ValueError(f"last dim {d} is not divisible by n_heads={n_heads}")
    return x.view(b, s, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(batch, n_heads, seq, head_dim) -> (batch, seq, n_heads * head_dim)``. Defined in lesson 01."""
    _require_tensor("x", x, min_dim=4)
    b, h, s, e = x.shape
    return x.transpose(1, 2).reshape(b, s, h * e)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``n_kv_heads`` key/value heads: MHA, GQA or MQA.

    - ``n_kv_heads = n_heads`` (the default): multi-head attention (MHA);
    - ``1 < n_kv_heads < n_heads``: grouped-query attention (GQA), each group of
      ``n_heads // n_kv_heads`` query heads shares one key and one value head;
    - ``n_kv_heads = 1``: multi-query attention (MQA).

    The queries, keys and values are *learned* projections of the input:
    ``q = x W_Q^T (+ b)``, ``k = x W_K^T``, ``v = x W_V^T`` (``nn.Linear``), split into heads,
    attended, merged and projected back by ``W_O``. After each forward pass,
    ``attention_weights`` holds the weights ``(batch, n_heads, L, S)`` for plotting.

    Defined in lesson 01; lesson 06 converts MHA into GQA.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = False):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model <= 0 or n_heads <= 0 or n_kv_heads <= 0:
            raise ValueError(f"d_model, n_heads and n_kv_heads must be positive, got {d_model}, {n_heads}, {n_kv_heads}")
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_heads={n_heads} must be divisible by n_kv_heads={n_kv_heads}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.attention_weights: torch.Tensor | None = None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Attend from ``x`` ``(batch, L, d_model)`` to ``context`` ``(batch, S, d_model)``.

        ``context=None`` means self-attention (``context = x``); otherwise it is
        cross-attention (the decoder of an encoder-decoder model attends to the encoder).
        ``attn_mask`` broadcasts to ``(batch, n_heads, L, S)``. Returns ``(batch, L, d_model)``.
        """
        context = x if context is None else context
        for name, t in (("x", x), ("context", context)):
            _require_tensor(name, t)
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"{name} must have shape (batch, seq, d_model={self.d_model}), got {tuple(t.shape)}")
            _require_float(name, t)
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"x and context must have the same batch size, got {x.shape[0]} and {context.shape[0]}")
        q = split_heads(self.q_proj(x), self.n_heads)              # (B, H,    L, hd)
        k = split_heads(self.k_proj(context), self.n_kv_heads)     # (B, Hkv,  S, hd)
        v = split_heads(self.v_proj(context), self.n_kv_heads)
        out, weights = attention_with_weights(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=self.n_kv_heads != self.n_heads
        )
        self.attention_weights = weights.detach()
        return self.o_proj(merge_heads(out))
