"""GPTQ: post-training quantization that corrects each rounding error with the weights still to come (lesson 10).

The source text says

    “GPTQ最早在论文(GPTQ: Accurate Post-Training Quantization for Generative Pre-Trained
    Transformers, arXiv, 2023)中提出,分析模型的每一层并以有助于减少量化中会出现的精度损失的方式来近似权重。”
    ("GPTQ was first proposed in the paper ... (arXiv, 2023); it analyses each layer of the model
    and approximates the weights in a way that helps reduce the accuracy lost in quantization.")

The description is right; the date is not: the paper appeared on arXiv (2210.17323) in
October 2022 and at ICLR in 2023.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ (Frantar et al., 2022) rounds
the columns of ``W`` (out, in) one at a time, left to right, and after each moves the columns
not yet rounded so that the layer's *output* on calibration inputs ``X`` changes as little
as possible: the update is the rounding error divided by ``U[i, i]`` times row ``i`` of ``U``,
the upper Cholesky factor of ``(2 X^T X + λI)^-1`` (:func:`course_lib.pruning.inverse_hessian_factor`,
the same factor SparseGPT uses to prune). Updates are applied to the rest of the matrix once per
block of columns ("lazy batches"); ``act_order`` visits the columns with the largest Hessian
diagonal (the inputs with the most energy) first; ``group_size`` gives each group of columns
its own scale and zero point, computed from the weights as updated when the group is reached.

Both use the same grid (:func:`grid`): ``2^bits`` levels, asymmetric, per output row (or group),
spanning ``[min(w, 0), max(w, 0)]`` (lesson 04's zero-point quantization).

:func:`rtn` and :func:`gptq` return the dequantized weights, to measure what rounding costs;
:func:`rtn_codes` and :func:`gptq_codes` return what is stored instead: the integer codes with
each group's scale and zero point (:mod:`course_lib.int4` packs 4-bit codes two to a byte).
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.pruning import _require_matrix, compress_blocks, inverse_hessian_factor


def _require_bits(bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits should be an int from 2 to 8, got {bits!r}")


def grid(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``w`` (rows, cols): ``(scale, zero)``, each (rows, 1), for ``2^bits`` levels over ``[min(w,0), max(w,0)]``.

    ``scale = (max - min) / (2^bits - 1)``, ``zero = round(-min / scale)``; a row of zeros gets scale 1.
    """
    _require_matrix("w", w)
    _require_bits(bits)
    levels = 2 ** bits - 1
    low = w.detach().amin(dim=1, keepdim=True).clamp(max=0)
    high = w.detach().amax(dim=1, keepdim=True).clamp(min=0)
    scale = (high - low) / levels
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale, torch.round(-low / scale)


def to_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """The integer code of each weight, ``clamp(round(w / scale) + zero, 0, 2^bits - 1)``, as a float tensor of ``w``'s shape."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)


def round_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` rounded to the grid and back: ``scale * (clamp(round(w / scale) + zero, 0, 2^bits - 1) - zero)``."""
    return scale * (to_codes(w, scale, zero, bits) - zero)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Weights from codes: ``scale * (codes - zero)``, every group of columns with its own scale and zero.

    ``codes`` (out, in), any dtype; ``scale`` and ``zero`` (out, groups) with ``groups`` dividing
    ``in``: group ``g`` is columns ``g * in/groups`` to ``(g + 1) * in/groups - 1``. Returns
    (out, in) in ``scale``'s dtype.
    """
    group_size = codes.shape[1] // scale.shape[1]
    return _dequantize(codes, scale, zero, torch.arange(codes.shape[1], device=codes.device) // group_size)


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """``scale * (codes - zero)`` where column ``c`` takes the scale and zero of group ``g_idx[c]``."""
    return scale[:, g_idx] * (codes.to(scale.dtype) - zero[:, g_idx])


def rtn_codes(w: torch.Tensor, bits: int, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest as codes: ``(codes, scale, zero)``, with ``rtn(w) == dequantize(codes, scale, zero)``.

    ``codes`` uint8 (out, in) in ``[0, 2^bits - 1]``; ``scale`` and ``zero`` float64 (out, in / group_size),
    one column per group (one in all without groups). ``zero`` holds whole numbers.
    """
    _require_matrix("w", w)
    _require_bits(bits)
    _require_group(w, group_size)
    x = w.detach().double()
    step = group_size or x.shape[1]
    codes, scales, zeros = [], [], []
    for start in range(0, x.shape[1], step):
        part = x[:, start:start + step]
        scale, zero = grid(part, bits)
        codes.append(to_codes(part, scale, zero, bits))
        scales.append(scale)
        zeros.append(zero)
    return torch.cat(codes, dim=1).to(torch.uint8), torch.cat(scales, dim=1), torch.cat(zeros, dim=1)


def rtn(w: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Round-to-nearest: every weight to its row's (or group's) grid, on its own. Returns ``w``'s shape and dtype."""
    return dequantize(*rtn_codes(w, bits, group_size)).to(w.dtype)


def _require_group(w: torch.Tensor, group_size) -> None:
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0
                                   or w.shape[1] % group_size):
        raise ValueError(f"group_size should be None or a positive int dividing the row length {w.shape[1]}, got {group_size!r}")


def _gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None, act_order: bool,
          block_size: int, damp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ itself: ``(codes, scale, zero, g_idx)``, codes uint8 (out, in) in the original column order.

    ``scale`` and ``zero`` float32 (out, groups): one column per group, the groups numbered in the
    order they were reached; ``g_idx`` (in,) int64: the group of each original column. Without
    ``act_order`` that is ``column // group_size``; with it, the groups are runs of ``group_size``
    columns of the *permuted* order (the paper's), so ``g_idx`` is no longer sorted.
    """
    _require_matrix("w", w)
    _require_bits(bits)
    _require_group(w, group_size)
    columns = w.shape[1]
    if tuple(hessian.shape) != (columns, columns):
        raise ValueError(f"hessian should have shape ({columns}, {columns}) for w of shape {tuple(w.shape)}, got {tuple(hessian.shape)}")
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(columns)
    u = inverse_hessian_factor(h[order][:, order], damp).float()
    # columns as rows (in, out), contiguous, in float32 as the paper's code: one column is rounded at a time
    cols = w.detach().float().clone()
    cols[:, dead] = 0  # an input that is always zero: its weights do nothing
    cols = cols[:, order].T.contiguous()
    codes = torch.empty_like(cols)
    scales, zeros = [], []  # one (out,) entry per group, in the order the groups are reached
    if not group_size:  # one grid per row, from the original weights
        scale, zero = grid(cols.T, bits)
        scales.append(scale.reshape(-1))
        zeros.append(zero.reshape(-1))
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block, u_block = cols[start:end].clone(), u[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            if group_size and (start + i) % group_size == 0:  # the group's grid, from the weights as they are now
                group = torch.cat([block[i:], cols[end:]])[:group_size]
                scale, zero = grid(group.T, bits)
                scales.append(scale.reshape(-1))
                zeros.append(zero.reshape(-1))
            scale, zero = scales[-1], zeros[-1]
            codes[start + i] = to_codes(block[i], scale, zero, bits)
            quantized = scale * (codes[start + i] - zero)
            error = (block[i] - quantized) / u_block[i, i]
            block[i:] -= u_block[i, i:].reshape(-1, 1) * error.reshape(1, -1)
            block[i] = quantized
            errors[i] = error
        cols[start:end] = block
        cols[end:] -= u[start:end, end:].T @ errors
    position = torch.argsort(order)  # where each original column was visited
    g_idx = position // group_size if group_size else torch.zeros_like(position)
    return codes.T[:, position].to(torch.uint8).contiguous(), torch.stack(scales, 1), torch.stack(zeros, 1), g_idx


def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = None, act_order: bool = False,
         block_size: int = 128, damp: float = 0.01) -> torch.Tensor:
    """Quantize ``w`` (out, in) with GPTQ given ``hessian`` = ``2 X^T X / tokens`` (in, in); returns the dequantized
    weights (``w``'s shape and dtype), every row (or group) on its own ``bits``-bit grid.

    Without groups the grid of each row is fixed from the original weights first, as RTN's is,
    so the two differ only in where the weights land. :func:`gptq_codes` returns the codes instead.
    """
    codes, scale, zero, g_idx = _gptq(w, hessian, bits, group_size, act_order, block_size, damp)
    return _dequantize(codes, scale, zero, g_idx).to(w.dtype)


def gptq_codes(w: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = None,
               act_order: bool = False, block_size: int = 128, damp: float = 0.01
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ as codes: ``(codes, scale, zero)``, with ``gptq(w, ...) == dequantize(codes, scale, zero)``.

    ``codes`` uint8 (out, in) in ``[0, 2^bits - 1]``, in the original column order; ``scale`` and
    ``zero`` float32 (out, in / group_size), group ``g`` being columns ``g * group_size`` to
    ``(g + 1) * group_size - 1`` (one group in all without ``group_size``). ``zero`` holds whole numbers.

    ``act_order`` together with ``group_size`` raises ``ValueError``: the paper's groups are then
    runs of columns in the *permuted* order, so a group is no longer a run of original columns and
    a packed format would need the group of every column (the reference code's ``g_idx``).
    ``act_order`` alone is fine: it changes the order of the work, not the per-row grid.
    """
    if act_order and group_size:
        raise ValueError("act_order with group_size gives groups of the permuted columns, which are not runs of "
                         "columns of w: use act_order without group_size, or group_size without act_order")
    codes, scale, zero, _ = _gptq(w, hessian, bits, group_size, act_order, block_size, damp)
    return codes, scale, zero


def quantize_model(model: nn.Module, method: str, bits: int, batches: list[torch.Tensor] | None = None,
                   group_size: int | None = None, act_order: bool = False, progress: bool = False) -> nn.Module:
    """A copy of a course DecoderLM whose block linear layers hold ``bits``-bit weights (dequantized, float32).

    ``method`` is ``"rtn"`` (no data) or ``"gptq"`` (calibration ``batches`` of token ids; each
    block's inputs come from the model with the blocks before it already quantized, as in the
    paper). Embeddings and the output head stay as they were.
    """
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method should be 'rtn' or 'gptq', got {method!r}")
    if method == "gptq" and not batches:
        raise ValueError("gptq needs calibration batches of token ids")

    def quantize(name: str, layer: nn.Linear, stats: dict) -> torch.Tensor:
        w = layer.weight.data
        return gptq(w, stats["hessian"], bits, group_size, act_order) if method == "gptq" else rtn(w, bits, group_size)

    return compress_blocks(model, quantize, batches if method == "gptq" else None, f"{method} {bits}-bit", progress)
