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


def round_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` rounded to the grid and back: ``scale * (clamp(round(w / scale) + zero, 0, 2^bits - 1) - zero)``."""
    codes = torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)
    return scale * (codes - zero)


def rtn(w: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Round-to-nearest: every weight to its row's (or group's) grid, on its own. Returns ``w``'s shape and dtype."""
    _require_matrix("w", w)
    _require_bits(bits)
    _require_group(w, group_size)
    x = w.detach().double()
    out = torch.empty_like(x)
    step = group_size or x.shape[1]
    for start in range(0, x.shape[1], step):
        part = x[:, start:start + step]
        out[:, start:start + step] = round_to_grid(part, *grid(part, bits), bits)
    return out.to(w.dtype)


def _require_group(w: torch.Tensor, group_size) -> None:
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0
                                   or w.shape[1] % group_size):
        raise ValueError(f"group_size should be None or a positive int dividing the row length {w.shape[1]}, got {group_size!r}")


def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = None, act_order: bool = False,
         block_size: int = 128, damp: float = 0.01) -> torch.Tensor:
    """Quantize ``w`` (out, in) with GPTQ given ``hessian`` = ``2 X^T X / tokens`` (in, in); returns the dequantized
    weights (``w``'s shape and dtype), every row (or group) on its own ``bits``-bit grid.

    Without groups the grid of each row is fixed from the original weights first, as RTN's is,
    so the two differ only in where the weights land.
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
    scale, zero = grid(cols.T, bits)
    scale, zero = scale.reshape(-1), zero.reshape(-1)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block, u_block = cols[start:end].clone(), u[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            if group_size and (start + i) % group_size == 0:  # the group's grid, from the weights as they are now
                group = torch.cat([block[i:], cols[end:]])[:group_size]
                scale, zero = grid(group.T, bits)
                scale, zero = scale.reshape(-1), zero.reshape(-1)
            quantized = round_to_grid(block[i], scale, zero, bits)
            error = (block[i] - quantized) / u_block[i, i]
            block[i:] -= u_block[i, i:].reshape(-1, 1) * error.reshape(1, -1)
            block[i] = quantized
            errors[i] = error
        cols[start:end] = block
        cols[end:] -= u[start:end, end:].T @ errors
    return cols.T[:, torch.argsort(order)].to(w.dtype).contiguous()


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
