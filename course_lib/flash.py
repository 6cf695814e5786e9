"""FlashAttention in plain PyTorch: tiles, the online softmax and recomputation (lesson 05).

Standard attention writes the whole ``(L, S)`` score matrix to memory, then its softmax,
then multiplies by the values: memory grows with ``L * S``. FlashAttention computes the
*same* result tile by tile. For one tile of queries it walks over the key/value tiles,
keeping three running quantities per query row:

- ``m``: the largest score seen so far (for a stable softmax);
- ``l``: the sum of ``exp(score - m)`` seen so far (the softmax denominator);
- ``acc``: the sum of ``exp(score - m) * value`` seen so far (the unnormalised output).

When a new tile raises the maximum from ``m_old`` to ``m_new``, everything accumulated so
far was computed against the old maximum, so it is rescaled by ``exp(m_old - m_new)``:
the *online softmax*. At the end, ``output = acc / l`` and the log-sum-exp
``lse = m + log(l)`` is kept for the backward pass, which recomputes each tile of
probabilities as ``exp(score - lse)`` instead of storing them (FlashAttention-2).

Shapes follow :mod:`course_lib.attention` and PyTorch's
``torch.nn.functional.scaled_dot_product_attention``:

- queries ``q``: ``(..., L, E)``, keys ``k``: ``(..., S, E)``, values ``v``: ``(..., S, Ev)``
- output ``o``: ``(..., L, Ev)``, log-sum-exp ``lse``: ``(..., L)``

with the same leading dims ``...`` (usually ``(batch, heads)``) for all of them. Causal
attention is aligned to the top left, like PyTorch's ``is_causal=True``: query ``i`` sees
keys ``j <= i``.

This code runs anywhere PyTorch runs; it shows the algorithm, it is not fast (the tiles
are Python loops). :mod:`course_lib.kernels` runs the same forward pass as a Triton kernel.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from course_lib.attention import _check_qkv, causal_mask


# --------------------------------------------------------------------------- checks


def _check_inputs(q, k, v, is_causal, scale, block_q, block_k) -> None:
    _check_qkv(q, k, v, None, is_causal, False)
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(
            "q, k and v must have the same leading (batch, head) dims, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[-2] == 0:
        raise ValueError(f"k and v must hold at least one key position (S >= 1), got k {tuple(k.shape)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise ValueError(f"scale must be None or a number, got {type(scale).__name__}")
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 and bfloat16 are accumulated in float32 (as GPU kernels do); float32/64 as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _default_scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


# --------------------------------------------------------------------------- the online softmax


def online_softmax_update(
    m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor, scores: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the online softmax: fold a tile of scores and values into the running state.

    Args:
        m: ``(..., Lq)`` running maximum of the scores seen so far (``-inf`` before the first tile).
        l: ``(..., Lq)`` running sum of ``exp(score - m)`` (0 before the first tile).
        acc: ``(..., Lq, Ev)`` running sum of ``exp(score - m) * value``, the output before
            dividing by ``l`` (0 before the first tile).
        scores: ``(..., Lq, Bk)`` the scaled scores of this tile; ``-inf`` where masked.
        v: ``(..., Bk, Ev)`` the values of this tile.
        All floating point, of one dtype.
    Returns:
        ``(m_new, l_new, acc_new)`` of the shapes of ``m``, ``l`` and ``acc``:

        - ``m_new = max(m, max_j scores_j)``
        - ``l_new = l * exp(m - m_new) + sum_j exp(scores_j - m_new)``
        - ``acc_new = acc * exp(m - m_new) + exp(scores - m_new) @ v``

    The factor ``exp(m - m_new)`` (at most 1) rescales what was summed against the old
    maximum to the new one; it is 1 when the maximum did not change. After the last tile,
    ``acc / l`` is exactly ``softmax(all scores) @ all values``.

    A row whose scores are all ``-inf`` so far keeps ``m = -inf``, ``l = 0``, ``acc = 0``
    (no ``nan``): the exponents use 0 in place of an infinite maximum.

    Defined in lesson 05.
    """
    m_new = torch.maximum(m, scores.amax(dim=-1))
    m_safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    rescale = torch.exp(m - m_safe)                       # exp(m_old - m_new), (..., Lq)
    p = torch.exp(scores - m_safe.unsqueeze(-1))          # unnormalised probabilities of this tile
    l_new = l * rescale + p.sum(dim=-1)
    acc_new = acc * rescale.unsqueeze(-1) + p @ v
    return m_new, l_new, acc_new


# --------------------------------------------------------------------------- causal tiles


def causal_tile_skip(q_start: int, q_end: int, k_start: int) -> bool:
    """Whether a causal tile can be skipped entirely: no query in it may see any key in it.

    The tile holds queries ``q_start <= i < q_end`` and keys ``k_start <= j < k_end``. Query
    ``i`` may see key ``j`` iff ``j <= i`` (top-left causal). Every pair is masked iff even
    the first key lies after the last query: ``k_start > q_end - 1``. Such tiles are never
    computed, which halves the work of causal attention on long sequences.

    Defined in lesson 05.
    """
    return k_start > q_end - 1


def causal_tile_needs_mask(q_start: int, k_end: int) -> bool:
    """Whether a causal tile straddles the diagonal and so needs a mask.

    A tile lies fully below the diagonal (every query sees every key, no mask needed) iff
    its last key comes no later than its first query: ``k_end - 1 <= q_start``.
    Defined in lesson 05.
    """
    return k_end - 1 > q_start


def _tile_mask(q_start: int, q_end: int, k_start: int, k_end: int, is_causal: bool, device) -> torch.Tensor | None:
    """The causal mask of one tile, ``True`` where allowed; ``None`` when nothing is masked."""
    if not is_causal or not causal_tile_needs_mask(q_start, k_end):
        return None
    # key k_start + b may be seen by query q_start + a iff b <= a + (q_start - k_start)
    return causal_mask(q_end - q_start, k_end - k_start, offset=q_start - k_start, device=device)


def _scores(q_tile, k_tile, scale, mask):
    scores = (q_tile @ k_tile.transpose(-2, -1)) * scale
    return scores if mask is None else scores.masked_fill(~mask, float("-inf"))


# --------------------------------------------------------------------------- forward


def forward_tile_step(q_tile, k_tile, v_tile, m, l, acc, scale: float, mask: torch.Tensor | None = None):
    """One tile step of the forward pass: scores of a query tile against a key tile, then the online softmax.

    Args:
        q_tile: ``(..., Bq, E)``; k_tile: ``(..., Bk, E)``; v_tile: ``(..., Bk, Ev)``.
        m, l, acc: the running state of :func:`online_softmax_update` for the ``Bq`` queries.
        scale: factor on the scores (``1 / sqrt(E)`` by default in attention).
        mask: ``None`` or a boolean ``(Bq, Bk)`` mask, ``True`` where a query may see a key.
    Returns:
        the updated ``(m, l, acc)``.

    Defined in lesson 05.
    """
    return online_softmax_update(m, l, acc, _scores(q_tile, k_tile, scale, mask), v_tile)


def flash_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention computed tile by tile, never holding more than a ``(block_q, block_k)`` tile of scores.

    For each tile of ``block_q`` queries, walk over the tiles of ``block_k`` keys and values
    with :func:`forward_tile_step`, then normalise. Lengths need not be multiples of the
    tiles (the last tile is shorter). With ``is_causal``, key tiles that start after the
    tile's last query are skipped (:func:`causal_tile_skip`), and only tiles on the
    diagonal are masked (:func:`causal_tile_needs_mask`).

    Args:
        q: ``(..., L, E)``; k: ``(..., S, E)``; v: ``(..., S, Ev)``; one floating-point
            dtype, the same leading dims, ``S >= 1``.
        is_causal: query ``i`` sees keys ``j <= i`` (top left, as PyTorch).
        scale: factor on the scores; default ``1 / sqrt(E)``.
        block_q, block_k: tile sizes along the queries and the keys.
    Returns:
        ``(o, lse)``: the output ``(..., L, Ev)`` in q's dtype and the log-sum-exp of each
        query's scaled scores ``(..., L)`` (float32 for float16/bfloat16 inputs).

    Defined in lesson 05.
    """
    _check_inputs(q, k, v, is_causal, scale, block_q, block_k)
    scale = _default_scale(q, scale)
    dtype, work = q.dtype, _work_dtype(q.dtype)
    q, k, v = q.to(work), k.to(work), v.to(work)
    n_q, n_k = q.shape[-2], k.shape[-2]
    o = q.new_empty(*q.shape[:-1], v.shape[-1])
    lse = q.new_empty(q.shape[:-1])
    for q_start in range(0, n_q, block_q):
        q_end = min(q_start + block_q, n_q)
        q_tile = q[..., q_start:q_end, :]
        m = q.new_full(q_tile.shape[:-1], float("-inf"))
        l = q.new_zeros(q_tile.shape[:-1])
        acc = q.new_zeros(*q_tile.shape[:-1], v.shape[-1])
        for k_start in range(0, n_k, block_k):
            if is_causal and causal_tile_skip(q_start, q_end, k_start):
                break                                          # every later key tile starts even later
            k_end = min(k_start + block_k, n_k)
            mask = _tile_mask(q_start, q_end, k_start, k_end, is_causal, q.device)
            m, l, acc = forward_tile_step(
                q_tile, k[..., k_start:k_end, :], v[..., k_start:k_end, :], m, l, acc, scale, mask
            )
        o[..., q_start:q_end, :] = acc / l.unsqueeze(-1)
        lse[..., q_start:q_end] = m + torch.log(l)
    return o.to(dtype), lse


# --------------------------------------------------------------------------- backward


def backward_tile_step(q_tile, k_tile, v_tile, do_tile, lse_tile, delta_tile, scale: float, mask=None):
    """Gradient contributions of one (query tile, key tile) pair, recomputing the probabilities.

    Args:
        q_tile: ``(..., Bq, E)``; k_tile: ``(..., Bk, E)``; v_tile: ``(..., Bk, Ev)``.
        do_tile: ``(..., Bq, Ev)`` gradient of the loss with respect to the output rows.
        lse_tile: ``(..., Bq)`` log-sum-exp saved by the forward pass.
        delta_tile: ``(..., Bq)`` ``D = rowsum(dO * O)`` for these rows.
        scale, mask: as in :func:`forward_tile_step`.
    Returns:
        ``(dq, dk, dv)``: this tile's parts of the gradients, shaped like the three tiles.

    With ``P = exp(scores - lse)`` (exactly the softmax, recomputed), ``dV = P^T dO``,
    ``dP = dO V^T`` and, by the softmax's Jacobian, ``dS = P * (dP - D)`` since
    ``rowsum(P * dP) = rowsum(dO * O) = D``. Then ``dQ = dS K * scale`` and ``dK = dS^T Q * scale``.
    Defined in lesson 05.
    """
    p = torch.exp(_scores(q_tile, k_tile, scale, mask) - lse_tile.unsqueeze(-1))   # (..., Bq, Bk)
    dv = p.transpose(-2, -1) @ do_tile
    dp = do_tile @ v_tile.transpose(-2, -1)
    ds = p * (dp - delta_tile.unsqueeze(-1))
    dq = (ds @ k_tile) * scale
    dk = (ds.transpose(-2, -1) @ q_tile) * scale
    return dq, dk, dv


def flash_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` of attention, tile by tile, from ``q, k, v, o, lse`` alone (FlashAttention-2).

    The outer loop runs over key/value tiles, so that the gradients of one key tile are
    summed in place while the query tiles stream past; ``dq`` collects its parts from every
    key tile. Causal tiles are skipped by the same rule as in the forward pass.

    Args:
        q, k, v, is_causal, scale, block_q, block_k: as in :func:`flash_attention_forward`.
        o: ``(..., L, Ev)`` and lse: ``(..., L)``, what the forward pass returned.
        do: ``(..., L, Ev)`` the gradient of the loss with respect to ``o``.
    Returns:
        ``(dq, dk, dv)`` shaped and typed like ``q``, ``k`` and ``v``.

    Defined in lesson 05.
    """
    _check_inputs(q, k, v, is_causal, scale, block_q, block_k)
    scale = _default_scale(q, scale)
    dtype, work = q.dtype, _work_dtype(q.dtype)
    q, k, v, o, do, lse = (t.to(work) for t in (q, k, v, o, do, lse))
    n_q, n_k = q.shape[-2], k.shape[-2]
    delta = (do * o).sum(dim=-1)                               # D = rowsum(dO * O), (..., L)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for k_start in range(0, n_k, block_k):
        k_end = min(k_start + block_k, n_k)
        k_tile, v_tile = k[..., k_start:k_end, :], v[..., k_start:k_end, :]
        for q_start in range(0, n_q, block_q):
            q_end = min(q_start + block_q, n_q)
            if is_causal and causal_tile_skip(q_start, q_end, k_start):
                continue                                       # later query tiles may still see this key tile
            rows = slice(q_start, q_end)
            mask = _tile_mask(q_start, q_end, k_start, k_end, is_causal, q.device)
            dq_part, dk_part, dv_part = backward_tile_step(
                q[..., rows, :], k_tile, v_tile, do[..., rows, :], lse[..., rows], delta[..., rows], scale, mask
            )
            dq[..., rows, :] += dq_part
            dk[..., k_start:k_end, :] += dk_part
            dv[..., k_start:k_end, :] += dv_part
    return dq.to(dtype), dk.to(dtype), dv.to(dtype)


class FlashAttentionFunction(torch.autograd.Function):
    """Attention whose backward pass recomputes the probabilities tile by tile.

    ``forward`` saves exactly ``q, k, v, o`` and the log-sum-exp ``lse`` (``(..., L)``):
    memory linear in the sequence length, no ``(L, S)`` matrix. ``backward`` calls
    :func:`flash_attention_backward`. Defined in lesson 05.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False, scale=None, block_q=64, block_k=64):
        o, lse = flash_attention_forward(q, k, v, is_causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.options = (is_causal, scale, block_q, block_k)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, *ctx.options)
        return dq, dk, dv, None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """``softmax(q @ k^T * scale) @ v`` by FlashAttention: tiled forward, recomputing backward.

    The same result (and gradients) as ``torch.nn.functional.scaled_dot_product_attention``
    without a mask, for ``q`` ``(..., L, E)``, ``k`` ``(..., S, E)``, ``v`` ``(..., S, Ev)``;
    returns ``(..., L, Ev)`` in q's dtype. See :func:`flash_attention_forward` for the arguments.

    Defined in lesson 05.
    """
    _check_inputs(q, k, v, is_causal, scale, block_q, block_k)
    return FlashAttentionFunction.apply(q, k, v, is_causal, scale, block_q, block_k)


# --------------------------------------------------------------------------- measured memory


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages created while active, and the highest total alive."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, weakref.ref] = {}

    def _forget(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._tracked.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._tracked or key in inputs:   # a view, or an op writing into its input
                continue
            nbytes = storage.nbytes()
            self.live += nbytes
            self._tracked[key] = weakref.ref(storage, lambda _, key=key, nbytes=nbytes: self._forget(key, nbytes))
        self.peak = max(self.peak, self.live)
        return out


def peak_allocated_bytes(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` and return the peak bytes of the tensors it allocated that were alive at once.

    Works on any device, the CPU included (``torch.cuda.max_memory_allocated`` needs a GPU).
    A ``TorchDispatchMode`` sees every tensor operation; each new storage an operation
    returns is counted while it is alive (a weak reference tells when it is freed); views
    and in-place results share a storage and add nothing. The peak is read after each
    operation, so it counts every tensor ``fn`` creates, including its result, but neither
    the tensors that existed before (the inputs) nor scratch memory inside a single
    operation's kernel. Run ``fn`` under ``torch.no_grad()`` to leave out what autograd saves.

    Defined in lesson 05.
    """
    with _LiveTensorBytes() as counter:
        result = fn()
    del result
    return counter.peak
