"""Pruning: setting weights to zero, choosing which, and what it saves (lesson 10).

The source text says of pruning

    “去掉模型中冗余或不重要的参数,减小模型体积和计算次数: 实操中通常是消除哪些值为0或接近0的权重;
    实际上有的模型只有很少一部分权重为0; sparseGPT是一种针对语言的生成式基础模型的训练后剪枝方法”
    ("Remove redundant or unimportant parameters to shrink the model and its computation: in
    practice, remove the weights that are 0 or near 0; in fact some models have only a small share
    of zero weights; SparseGPT is a post-training pruning method for generative language models.")

This module measures each part of that:

- :func:`weight_statistics`: how many weights are exactly zero, or below a threshold, per layer
  (trained weights are almost never exactly zero: "a small share" is close to none);
- four ways to choose the weights to remove, each returning a boolean *keep mask* of the
  weight's shape: :func:`magnitude_mask` (smallest ``|w|`` in the layer),
  :func:`global_magnitude_masks` (smallest ``|w|`` across layers), :func:`n_m_mask` (the 2:4
  pattern GPUs can run: 2 kept in every 4 consecutive weights of a row), :func:`wanda_mask`
  (``|w|`` times the norm of the input it multiplies), and :func:`sparsegpt`, which also
  *updates the weights that stay* to make up for those removed (optimal brain surgeon, one row
  of the inverse Hessian at a time, in lazy blocks);
- :func:`calibrate` and :func:`prune_model`: the whole model, one decoder block after another,
  each block's inputs taken from the model pruned so far;
- storage (:func:`dense_bytes`, :func:`csr_bytes`, :func:`n_m_bytes`, :func:`tensor_bytes`):
  a zero in a dense tensor takes as many bytes as any other number, and a sparse format pays
  for its indices.

Weights are ``nn.Linear`` weights, shape ``(out_features, in_features)``; "a row" is one output.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

# --------------------------------------------------------------------------- input checks


def _require_matrix(name: str, w) -> None:
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{name} should be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"{name} should be a 2-D floating-point tensor (out_features, in_features), "
                         f"got shape {tuple(w.shape)} and dtype {w.dtype}")


def _require_sparsity(sparsity) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity should be a number in [0, 1) (the share of weights removed), got {sparsity!r}")


def _n_pruned(numel: int, sparsity: float) -> int:
    return int(round(numel * sparsity))


# --------------------------------------------------------------------------- how many weights are (near) zero


def zero_shares(w: torch.Tensor, thresholds: tuple[float, ...] = (1e-3, 1e-2)) -> dict[str, float]:
    """Share of exact zeros in ``w`` and of ``|w|`` below each threshold (any shape, floating point)."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ValueError(f"w should be a floating-point torch.Tensor, got {type(w).__name__}")
    a = w.detach().abs().float()
    shares = {"zero": float((a == 0).float().mean())}
    for t in thresholds:
        shares[f"|w|<{t:g}"] = float((a < t).float().mean())
    return shares


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of ``model`` by name, the output head (``lm_head``) left out: it is not pruned."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module (a model or one of its blocks), got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.endswith("lm_head")}


def weight_statistics(model: nn.Module, thresholds: tuple[float, ...] = (1e-3, 1e-2)) -> list[dict]:
    """Per linear layer: its name, weight count, share of exact zeros and of ``|w|`` below each threshold."""
    rows = []
    for name, layer in linear_layers(model).items():
        rows.append({"layer": name, "weights": layer.weight.numel(), **zero_shares(layer.weight, thresholds)})
    return rows


# --------------------------------------------------------------------------- choosing what to remove


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask (bool, ``w``'s shape) that removes the ``round(sparsity * w.numel())`` smallest ``|w|`` of ``w``."""
    _require_matrix("w", w)
    _require_sparsity(sparsity)
    return _keep_largest(w.detach().abs(), _n_pruned(w.numel(), sparsity))


def _keep_largest(scores: torch.Tensor, n_pruned: int) -> torch.Tensor:
    """True everywhere but at the ``n_pruned`` smallest ``scores`` (the whole tensor compared at once)."""
    flat = scores.reshape(-1)
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=scores.device)
    if n_pruned > 0:
        mask[torch.topk(flat, n_pruned, largest=False).indices] = False
    return mask.reshape(scores.shape)


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold for all ``weights`` together: the smallest ``|w|`` of the whole set are removed.

    Layers whose weights are small lose more than ``sparsity`` of them, others less; the total
    removed is ``round(sparsity * total)``.
    """
    _require_sparsity(sparsity)
    for name, w in weights.items():
        _require_matrix(f"weights[{name!r}]", w)
    flat = torch.cat([w.detach().abs().reshape(-1).float() for w in weights.values()])
    keep = _keep_largest(flat, _n_pruned(flat.numel(), sparsity))
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return masks


def n_m_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive ``scores`` along each row (the last dimension).

    ``scores`` (out, in) with ``in`` a multiple of ``m``; pass ``w.abs()`` for magnitude 2:4 pruning
    or :func:`wanda_scores` for Wanda 2:4. Returns a bool mask of the same shape, ``n / m`` of it True.
    """
    _require_matrix("scores", scores)
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"n and m should be ints with 0 < n < m (2 and 4 for 2:4), got {n!r} and {m!r}")
    if scores.shape[1] % m:
        raise ValueError(f"the rows' length should be a multiple of m={m}, got shape {tuple(scores.shape)}")
    groups = scores.detach().reshape(scores.shape[0], scores.shape[1] // m, m)
    kept = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, kept, True)
    return mask.reshape(scores.shape)


def wanda_scores(w: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's importance ``|W_ij| * ||X_j||_2``: shape (out, in), from ``input_norms`` (in,), the L2 norm of each
    input feature over the calibration tokens (Sun et al., 2023)."""
    _require_matrix("w", w)
    if not isinstance(input_norms, torch.Tensor) or tuple(input_norms.shape) != (w.shape[1],):
        raise ValueError(f"input_norms should have shape ({w.shape[1]},), one per input feature of w, got "
                         f"{tuple(input_norms.shape) if isinstance(input_norms, torch.Tensor) else type(input_norms).__name__}")
    return w.detach().abs() * input_norms.to(w.dtype).reshape(1, -1)


def wanda_mask(w: torch.Tensor, input_norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask removing, in every row of ``w``, the ``round(sparsity * in)`` weights of lowest Wanda score.

    Wanda compares weights within one output row, not across the layer: each output keeps the
    same number of inputs.
    """
    _require_sparsity(sparsity)
    scores = wanda_scores(w, input_norms)
    n_pruned = _n_pruned(w.shape[1], sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if n_pruned > 0:
        mask.scatter_(1, torch.topk(scores, n_pruned, dim=1, largest=False).indices, False)
    return mask


# --------------------------------------------------------------------------- SparseGPT


def inverse_hessian_factor(hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(H + λI)^-1`` (float64), ``λ = damp * mean(diag H)``.

    ``H = 2 X^T X / n`` (in, in) is the Hessian of the layer's squared output error. Row ``i`` of
    ``U`` divided by ``U[i, i]`` is how the weights after column ``i`` should move when column
    ``i`` changes, once columns before it are fixed; SparseGPT and GPTQ both read it row by row.
    A dead input (a zero on the diagonal) gets a 1 there, so it stays invertible.
    """
    if not isinstance(hessian, torch.Tensor) or hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"hessian should be a square (in, in) tensor, got "
                         f"{tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__}")
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def sparsegpt(w: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.5, n: int = 0, m: int = 0,
              block_size: int = 128, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``w`` (out, in) with SparseGPT (Frantar & Alistarh, 2023); returns ``(new_w, keep_mask)``.

    Columns are visited left to right. In each block of ``block_size`` columns the mask is chosen
    first: the smallest ``w^2 / U[j, j]^2`` (the error each removal would cause) across the block,
    ``sparsity`` of them; with ``n:m`` given, the ``m - n`` smallest of every ``m`` columns of each
    row instead, chosen when the group is reached. Then, one column at a time, the removed weights are set to zero and the error is
    spread over the columns still to come through the row of the inverse-Hessian factor ``U``
    (:func:`inverse_hessian_factor`); the rest of the matrix gets the block's error at once at
    its end (the "lazy batch" update). ``new_w`` has ``w``'s dtype; zeros exactly where the mask is False.
    """
    _require_matrix("w", w)
    _require_sparsity(sparsity)
    if tuple(hessian.shape) != (w.shape[1], w.shape[1]):
        raise ValueError(f"hessian should have shape ({w.shape[1]}, {w.shape[1]}) for w of shape {tuple(w.shape)}, "
                         f"got {tuple(hessian.shape)}")
    if n or m:
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m and block_size % m == 0 and w.shape[1] % m == 0):
            raise ValueError(f"n:m should be ints with 0 < n < m, m dividing block_size ({block_size}) and the row "
                             f"length ({w.shape[1]}), got {n!r}:{m!r}")
    u = inverse_hessian_factor(hessian, damp)
    weights = w.detach().double().clone()
    keep = torch.ones_like(weights, dtype=torch.bool)
    columns = weights.shape[1]
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block, u_block = weights[:, start:end].clone(), u[start:end, start:end]
        errors = torch.zeros_like(block)
        diag = torch.diag(u_block)
        if not (n or m):
            block_keep = _keep_largest(block ** 2 / diag.reshape(1, -1) ** 2, _n_pruned(block.numel(), sparsity))
        else:
            block_keep = torch.ones_like(block, dtype=torch.bool)
        for i in range(end - start):
            if m and i % m == 0:  # n:m: each group's mask is chosen from the weights as updated so far
                group = block[:, i:i + m] ** 2 / diag[i:i + m].reshape(1, -1) ** 2
                block_keep[:, i:i + m] = n_m_mask(group, n, m)
            column = block[:, i]
            pruned = torch.where(block_keep[:, i], column, torch.zeros_like(column))
            error = (column - pruned) / diag[i]
            block[:, i:] -= error.reshape(-1, 1) * u_block[i, i:].reshape(1, -1)
            block[:, i] = pruned  # exactly zero where removed
            errors[:, i] = error
        weights[:, start:end] = block
        keep[:, start:end] = block_keep
        weights[:, end:] -= errors @ u[start:end, end:]
    return weights.to(w.dtype), keep


def output_error(w: torch.Tensor, new_w: torch.Tensor, x: torch.Tensor) -> float:
    """``||x W^T - x W'^T||^2 / ||x W^T||^2``: the layer's relative squared output error on inputs ``x`` (tokens, in)."""
    _require_matrix("w", w)
    _require_matrix("new_w", new_w)
    if new_w.shape != w.shape or x.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"need new_w of shape {tuple(w.shape)} and x of shape (tokens, {w.shape[1]}), got "
                         f"{tuple(new_w.shape)} and {tuple(x.shape)}")
    x = x.double()
    reference = x @ w.double().T
    return float(((reference - x @ new_w.double().T) ** 2).sum() / (reference ** 2).sum())


# --------------------------------------------------------------------------- the whole model


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's decoder blocks in order (``model.blocks`` of a course DecoderLM)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"expected a course DecoderLM (with .blocks), got {type(model).__name__}")
    return list(blocks)


@torch.no_grad()
def calibrate(model: nn.Module, layers: dict[str, nn.Linear], batches: list[torch.Tensor]) -> dict[str, dict]:
    """Run ``batches`` of token ids (each (batch, seq), long) through ``model`` and collect, per layer of ``layers``,
    what its inputs look like: ``{"hessian": 2 X^T X / tokens (float64), "norms": ||X_j||_2 (float64), "tokens"}``.

    Padding is not excluded: pass batches of real text of one length.
    """
    stats = {name: {"hessian": torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64),
                    "sq": torch.zeros(layer.in_features, dtype=torch.float64), "tokens": 0}
             for name, layer in layers.items()}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            stats[name]["hessian"] += 2 * x.T @ x
            stats[name]["sq"] += (x ** 2).sum(0)
            stats[name]["tokens"] += x.shape[0]
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        model.eval()
        for ids in batches:
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return {name: {"hessian": s["hessian"] / max(s["tokens"], 1), "norms": s["sq"].sqrt(), "tokens": s["tokens"]}
            for name, s in stats.items()}


METHODS = ("magnitude", "wanda", "sparsegpt")


def prune_model(model: nn.Module, method: str, sparsity: float, batches: list[torch.Tensor] | None = None,
                pattern: tuple[int, int] | None = None, progress: bool = False) -> nn.Module:
    """A pruned copy of a course DecoderLM: every linear layer of every block (not the embeddings or the head).

    ``method``: ``"magnitude"`` (per layer, no data), ``"wanda"`` or ``"sparsegpt"`` (both need
    calibration ``batches`` of token ids). ``pattern=(2, 4)`` prunes to 2:4 instead of
    ``sparsity``. Blocks are pruned one after another; the calibration inputs of a block are taken
    from the model with the blocks before it already pruned, as in both papers.
    """
    if method not in METHODS:
        raise ValueError(f"method should be one of {METHODS}, got {method!r}")
    if pattern is None:
        _require_sparsity(sparsity)
    elif not (isinstance(pattern, tuple) and len(pattern) == 2):
        raise ValueError(f"pattern should be (n, m), for example (2, 4), got {pattern!r}")
    if method != "magnitude" and not batches:
        raise ValueError(f"{method} needs calibration batches of token ids")

    def prune(name: str, layer: nn.Linear, stats: dict) -> torch.Tensor:
        w = layer.weight.data
        if method == "sparsegpt":
            n, m = pattern or (0, 0)
            return sparsegpt(w, stats["hessian"], 0.0 if pattern else sparsity, n, m, block_size=_block_for(w.shape[1], m))[0]
        if method == "magnitude":
            mask = n_m_mask(w.abs(), *pattern) if pattern else magnitude_mask(w, sparsity)
        else:
            mask = n_m_mask(wanda_scores(w, stats["norms"]), *pattern) if pattern else wanda_mask(w, stats["norms"], sparsity)
        return w * mask

    return compress_blocks(model, prune, batches if method != "magnitude" else None, f"{method} pruning", progress)


def compress_blocks(model: nn.Module, new_weight, batches: list[torch.Tensor] | None = None, desc: str = "",
                    progress: bool = False) -> nn.Module:
    """A copy of a course DecoderLM with ``new_weight(name, layer, stats)`` as the weight of every linear layer of
    every block, one block after another (the embeddings and the head are left alone).

    With calibration ``batches``, ``stats`` is what :func:`calibrate` measured of that layer's
    inputs in the copy as changed so far (the blocks before it already done); otherwise ``{}``.
    Used by :func:`prune_model` and :func:`course_lib.gptq.quantize_model`.
    """
    changed = copy.deepcopy(model).eval()
    for block in tqdm(decoder_blocks(changed), desc=desc, disable=not progress):
        layers = linear_layers(block)
        stats = calibrate(changed, layers, batches) if batches else {}
        for name, layer in layers.items():
            layer.weight.data = new_weight(name, layer, stats.get(name, {}))
    return changed


def _block_for(columns: int, m: int) -> int:
    """SparseGPT's lazy-batch width: 128 columns, or the whole row if shorter (a multiple of ``m``)."""
    return min(128, columns) if not m else max(m, (min(128, columns) // m) * m)


def sparsity_of(model: nn.Module) -> float:
    """Share of exact zeros over the weights of every linear layer of the blocks (what prune_model set)."""
    zeros = total = 0
    for block in decoder_blocks(model):
        for layer in linear_layers(block).values():
            zeros += int((layer.weight == 0).sum())
            total += layer.weight.numel()
    return zeros / total


# --------------------------------------------------------------------------- what it saves


def dense_bytes(shape: tuple[int, int], value_bytes: int = 2) -> int:
    """A dense (out, in) matrix: every weight, zero or not, ``value_bytes`` bytes (2 for fp16)."""
    return math.prod(shape) * value_bytes


def csr_bytes(shape: tuple[int, int], nonzeros: int, value_bytes: int = 2, index_bytes: int = 4) -> int:
    """Compressed sparse rows: each nonzero's value and column index, plus ``rows + 1`` row offsets."""
    return nonzeros * (value_bytes + index_bytes) + (shape[0] + 1) * index_bytes


def n_m_bytes(shape: tuple[int, int], value_bytes: int = 2, n: int = 2, m: int = 4) -> int:
    """n:m semi-structured: the ``n/m`` kept values, plus for each its position in its group
    (``log2(m)`` bits: 2 bits for 2:4; the GPU's metadata)."""
    rows, cols = shape
    kept = rows * cols * n // m
    return kept * value_bytes + math.ceil(kept * math.log2(m) / 8)


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes the tensors' elements take (what a real format stores: values, indices, metadata)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def to_csr(w: torch.Tensor, value_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """``w`` as a real PyTorch CSR tensor with int32 indices and ``value_dtype`` values."""
    _require_matrix("w", w)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the storage is what is measured here
        warnings.simplefilter("ignore", UserWarning)
        csr = w.detach().to(value_dtype).to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), size=csr.shape,
                                       check_invariants=True)


def csr_tensor_bytes(csr: torch.Tensor) -> int:
    """Bytes of a CSR tensor: its values, column indices and row offsets."""
    return tensor_bytes(csr.values(), csr.col_indices(), csr.crow_indices())
