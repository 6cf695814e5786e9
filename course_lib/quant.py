"""Quantization: absmax and zero-point int8/int4, LLM.int8() and NF4 (lesson 04, used again in lesson 10).

The source text describes quantization as

    “量化是一个将一组高精度浮点数映射到一组低精度目标数的过程。使用源范围和目标范围,
    量化机制首先计算一个缩放因子,然后进行映射”
    ("Quantization maps a set of high-precision floating-point numbers to a set of
    low-precision target numbers. From the source range and the target range it first
    computes a scale factor, then maps.")

and that is exactly what both schemes here do:

- absmax (symmetric): source range ``[-max|w|, max|w|]``, target range ``[-Q, Q]`` with
  ``Q = 2^(bits-1) - 1`` (127 for int8, 7 for int4), so ``scale = max|w| / Q`` and
  ``q = round(w / scale)``; back: ``w ≈ q * scale``.
- zero-point (asymmetric, affine): source range ``[min, max]``, target range
  ``[0, 2^bits - 1]``, so ``scale = (max - min) / (2^bits - 1)``,
  ``zero_point = round(-min / scale)`` and ``q = round(w / scale) + zero_point``;
  back: ``w ≈ (q - zero_point) * scale``.

Granularity: one scale for the whole tensor (``dim=None``), one per channel (``dim=0``:
per row, i.e. per output channel of an ``nn.Linear`` weight ``(out, in)``), or one per
block of ``block_size`` consecutive values of the flattened tensor (``block_size=64``:
blocks run along the last dim). Rounding is ``torch.round`` (ties to even). Integer codes
are stored one per byte: int8 tensors for absmax, uint8 for zero-point, also for 4 bits
(:func:`pack_int4` puts two 4-bit codes in one byte). Scales are float32 (float64 for
float64 input). A group whose values are all zero gets scale 0 and codes 0: nothing is
divided by zero, and it dequantizes to exact zeros.
"""

from __future__ import annotations

import math

import torch


# --------------------------------------------------------------------------- checks


def _require_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _require_float(name: str, x: torch.Tensor) -> None:
    _require_tensor(name, x)
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype (float16/bfloat16/float32/float64), got {x.dtype}")


def _require_int(name: str, x: torch.Tensor) -> None:
    _require_tensor(name, x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype (int8/uint8/...), got {x.dtype}")


def _check_weights(w) -> None:
    _require_float("w", w)
    if w.numel() == 0:
        raise ValueError(f"w must have at least one element, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("w must contain only finite values (no inf or nan)")


def _check_bits(bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")


def _check_block_size(block_size) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")


def _check_granularity(w: torch.Tensor, dim, block_size) -> None:
    if dim is not None and block_size is not None:
        raise ValueError("pass dim (per-channel) or block_size (per-block), not both")
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not -w.dim() <= dim < w.dim():
            raise ValueError(f"dim must be an int in [{-w.dim()}, {w.dim() - 1}] for w of shape {tuple(w.shape)}, got {dim!r}")
    if block_size is not None:
        _check_block_size(block_size)


def _check_broadcast(q: torch.Tensor, scale: torch.Tensor) -> None:
    if scale.dim() > q.dim() or any(s not in (1, n) for s, n in zip(reversed(scale.shape), reversed(q.shape))):
        raise ValueError(f"scale of shape {tuple(scale.shape)} does not broadcast to q's shape {tuple(q.shape)}")


def _check_one_per_block(scale: torch.Tensor, rows: torch.Tensor, block_size: int, name: str = "scale") -> None:
    if scale.dim() != 1 or scale.numel() != rows.shape[0]:
        raise ValueError(f"{name} must have shape ({rows.shape[0]},): one per block of {block_size}, got {tuple(scale.shape)}")


def _compute_dtype(w: torch.Tensor) -> torch.dtype:
    """float32 for 16- and 32-bit input, float64 for float64."""
    return torch.promote_types(w.dtype, torch.float32)


# --------------------------------------------------------------------------- groups that share a scale


def _rows(w: torch.Tensor, dim: int | None, block_size: int | None) -> torch.Tensor:
    """``w`` rearranged to ``(groups, group_size)``: each row is one group that shares a scale.

    Per block, the flattened tensor is padded with zeros to a multiple of ``block_size``.
    Zeros never change a block's absmax, nor its range (which always includes 0).
    """
    if block_size is not None:
        flat = w.reshape(-1)
        pad = (-flat.numel()) % block_size
        flat = torch.cat([flat, flat.new_zeros(pad)])
        return flat.reshape(-1, block_size)
    if dim is not None:
        return w.movedim(dim, 0).reshape(w.shape[dim], -1)
    return w.reshape(1, -1)


def _unrows(rows: torch.Tensor, shape: torch.Size, dim: int | None, block_size: int | None) -> torch.Tensor:
    """The inverse of :func:`_rows`: back to ``shape``, padding cut off."""
    if block_size is not None:
        return rows.reshape(-1)[: math.prod(shape)].reshape(shape)
    if dim is not None:
        moved = [shape[dim]] + [s for i, s in enumerate(shape) if i != dim % len(shape)]
        return rows.reshape(moved).movedim(0, dim)
    return rows.reshape(shape)


def _per_group(stat: torch.Tensor, shape: torch.Size, dim: int | None, block_size: int | None) -> torch.Tensor:
    """A per-row statistic ``(groups, 1)`` in the shape it is returned in.

    Per tensor: a 0-d tensor. Per channel: ``shape`` with 1 everywhere but ``dim``, so that
    it broadcasts against ``w``. Per block: ``(n_blocks,)``.
    """
    if block_size is not None:
        return stat.reshape(-1)
    if dim is not None:
        broadcast = [1] * len(shape)
        broadcast[dim] = shape[dim]
        return stat.reshape(broadcast)
    return stat.reshape(())


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` with zeros replaced by ones: the divisor for groups that are all zeros."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


# --------------------------------------------------------------------------- absmax (symmetric)


def absmax_quantize(
    w: torch.Tensor, bits: int = 8, dim: int | None = None, block_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric (absmax) quantization: ``scale = max|w| / Q``, ``q = round(w / scale)``.

    ``Q = 2^(bits-1) - 1``: 127 for int8, 7 for int4, so codes lie in ``[-Q, Q]`` and 0
    maps to 0 exactly. (-128 / -8 are left unused, which keeps the grid symmetric.)

    Args:
        w: floating-point tensor, any shape, finite.
        bits: 2..8.
        dim: ``None`` for one scale for the whole tensor; an int for one scale per index
            of that dim (``dim=0``: per row / output channel).
        block_size: one scale per ``block_size`` consecutive values of the flattened
            tensor (zero-padded at the end). Not together with ``dim``.
    Returns:
        ``(q, scale)``: ``q`` int8 of w's shape with values in ``[-Q, Q]``; ``scale`` float32
        (float64 for float64 w), a 0-d tensor per tensor, ``w``'s shape with 1s except at
        ``dim`` per channel (e.g. ``(out, 1)``), ``(n_blocks,)`` per block.
        Every value comes back within half a step: ``|w - q * scale| <= scale / 2``.

    Defined in lesson 04.
    """
    _check_weights(w)
    _check_bits(bits)
    _check_granularity(w, dim, block_size)
    q_max = 2 ** (bits - 1) - 1
    rows = _rows(w.detach().to(_compute_dtype(w)), dim, block_size)
    scale = rows.abs().amax(dim=1, keepdim=True) / q_max          # source range / target range
    q = torch.round(rows / _nonzero(scale)).clamp(-q_max, q_max).to(torch.int8)
    return _unrows(q, w.shape, dim, block_size), _per_group(scale, w.shape, dim, block_size)


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
    """``q * scale``: back from :func:`absmax_quantize` to floats of scale's dtype.

    Per tensor and per channel the scale broadcasts against ``q``; per block pass the
    same ``block_size`` as when quantizing (``scale`` then has one entry per block).
    Defined in lesson 04.
    """
    _require_int("q", q)
    _require_float("scale", scale)
    if block_size is None:
        _check_broadcast(q, scale)
        return q.to(scale.dtype) * scale
    _check_block_size(block_size)
    rows = _rows(q, None, block_size)
    _check_one_per_block(scale, rows, block_size)
    return _unrows(rows.to(scale.dtype) * scale[:, None], q.shape, None, block_size)


# --------------------------------------------------------------------------- zero-point (asymmetric)


def zeropoint_quantize(
    w: torch.Tensor, bits: int = 8, dim: int | None = None, block_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (zero-point, affine) quantization onto ``[0, 2^bits - 1]``.

    ``scale = (max - min) / (2^bits - 1)``, ``zero_point = round(-min / scale)``,
    ``q = clamp(round(w / scale) + zero_point, 0, 2^bits - 1)``.

    As PyTorch's observers do, the range ``[min, max]`` is widened to include 0, so that
    0 is exactly representable (zero padding, ReLU zeros) and the zero-point lies in
    ``[0, 2^bits - 1]``. A one-sided tensor (all >= 0, e.g. after a ReLU) then uses every
    code, where absmax wastes the negative half.

    Args and granularity as :func:`absmax_quantize`.
    Returns:
        ``(q, scale, zero_point)``: ``q`` uint8 of w's shape; ``scale`` float32 (float64
        for float64 w) and ``zero_point`` int32, both shaped as absmax's scale.
        ``|w - (q - zero_point) * scale| <= scale / 2`` for every value.

    Defined in lesson 04.
    """
    _check_weights(w)
    _check_bits(bits)
    _check_granularity(w, dim, block_size)
    q_max = 2**bits - 1
    rows = _rows(w.detach().to(_compute_dtype(w)), dim, block_size)
    low = rows.amin(dim=1, keepdim=True).clamp(max=0)
    high = rows.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (high - low) / q_max                                   # source range / target range
    zero_point = torch.round(-low / _nonzero(scale)).clamp(0, q_max)
    q = (torch.round(rows / _nonzero(scale)) + zero_point).clamp(0, q_max).to(torch.uint8)
    return (
        _unrows(q, w.shape, dim, block_size),
        _per_group(scale, w.shape, dim, block_size),
        _per_group(zero_point.to(torch.int32), w.shape, dim, block_size),
    )


def zeropoint_dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, block_size: int | None = None
) -> torch.Tensor:
    """``(q - zero_point) * scale``: back from :func:`zeropoint_quantize`. Defined in lesson 04."""
    _require_int("q", q)
    _require_int("zero_point", zero_point)
    _require_float("scale", scale)
    if zero_point.shape != scale.shape:
        raise ValueError(f"zero_point and scale must have the same shape, got {tuple(zero_point.shape)} and {tuple(scale.shape)}")
    if block_size is None:
        _check_broadcast(q, scale)
        return (q.to(torch.int32) - zero_point).to(scale.dtype) * scale
    _check_block_size(block_size)
    rows = _rows(q.to(torch.int32), None, block_size)
    _check_one_per_block(scale, rows, block_size)
    values = (rows - zero_point[:, None]).to(scale.dtype) * scale[:, None]
    return _unrows(values, q.shape, None, block_size)


# --------------------------------------------------------------------------- int4 packing


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: ``(..., n)`` int8 in ``[-8, 7]`` -> ``(..., n/2)`` uint8.

    Element ``2i`` goes to the low nibble of byte ``i``, element ``2i + 1`` to the high
    nibble, each as 4-bit two's complement (``-1`` is ``0b1111``). ``n`` must be even.
    Defined in lesson 04.
    """
    _require_int("q", q)
    if q.dim() < 1 or q.shape[-1] % 2 != 0:
        raise ValueError(f"q's last dim must be even (two codes per byte), got shape {tuple(q.shape)}")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError(f"int4 codes must lie in [-8, 7], got [{int(q.min())}, {int(q.max())}]")
    nibbles = q.to(torch.int16) & 0xF                   # two's complement in 4 bits
    low, high = nibbles[..., 0::2], nibbles[..., 1::2]
    return (low | (high << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: ``(..., m)`` uint8 -> ``(..., 2m)`` int8 in ``[-8, 7]``. Defined in lesson 04."""
    _require_tensor("packed", packed)
    if packed.dtype != torch.uint8 or packed.dim() < 1:
        raise ValueError(f"packed must be an uint8 tensor with at least 1 dim, got {packed.dtype} of shape {tuple(packed.shape)}")
    nibbles = packed.to(torch.int16)
    low, high = nibbles & 0xF, nibbles >> 4
    pairs = torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    return torch.where(pairs >= 8, pairs - 16, pairs).to(torch.int8)   # 4-bit two's complement back to signed


# --------------------------------------------------------------------------- error


def quantization_error(w: torch.Tensor, w_hat: torch.Tensor) -> dict[str, float]:
    """How far ``w_hat`` (e.g. dequantized) is from ``w``, computed in float64.

    Returns a dict of Python floats:
        ``max_abs``: ``max |w - w_hat|``; ``mean_abs``: ``mean |w - w_hat|``;
        ``relative_frobenius``: ``||w - w_hat||_F / ||w||_F`` (0 if both are zero, inf if
        only w is); ``snr_db``: ``10 log10(sum w^2 / sum (w - w_hat)^2)``, signal-to-noise
        ratio in decibels (inf when there is no error; about 6 dB more per extra bit).

    Defined in lesson 04.
    """
    _require_float("w", w)
    _require_float("w_hat", w_hat)
    if w.shape != w_hat.shape:
        raise ValueError(f"w and w_hat must have the same shape, got {tuple(w.shape)} and {tuple(w_hat.shape)}")
    w, w_hat = w.detach().double(), w_hat.detach().double()
    error = w - w_hat
    signal_power, noise_power = (w**2).sum().item(), (error**2).sum().item()
    if noise_power == 0:
        relative, snr = 0.0, math.inf
    elif signal_power == 0:
        relative, snr = math.inf, -math.inf
    else:
        relative, snr = math.sqrt(noise_power / signal_power), 10 * math.log10(signal_power / noise_power)
    return {
        "max_abs": error.abs().max().item() if error.numel() else 0.0,
        "mean_abs": error.abs().mean().item() if error.numel() else 0.0,
        "relative_frobenius": relative,
        "snr_db": snr,
    }


# --------------------------------------------------------------------------- LLM.int8()


def int8_matmul_with_outliers(x: torch.Tensor, w: torch.Tensor, threshold: float = 6.0) -> tuple[torch.Tensor, float]:
    """``x @ w`` the LLM.int8() way (Dettmers et al. 2022): int8 except for outlier features.

    1. Outlier features: the columns of ``x`` (input features) where any ``|x| > threshold``.
       They, and the matching rows of ``w``, are multiplied in float32.
    2. The rest: ``x`` is quantized per row (vector-wise absmax int8, one scale per token),
       ``w`` per column (one scale per output feature); the int8 codes are multiplied and
       summed as integers (the int32 accumulator of int8 hardware; computed here in
       float64, which is exact: every product and partial sum is an integer below 2^53),
       then dequantized with ``scale_x[row] * scale_w[col]``.
    3. The two parts are added.

    ``threshold=math.inf`` gives plain vector-wise int8 (no outliers).

    Args:
        x: ``(..., k)`` floating-point activations.
        w: ``(k, m)`` floating-point weights (for an ``nn.Linear``, pass ``weight.T``).
        threshold: positive number; the paper uses 6.0.
    Returns:
        ``(out, outlier_fraction)``: ``out`` float32 ``(..., m)``; ``outlier_fraction`` the
        fraction of the ``k`` features that went through float32.

    Defined in lesson 04, used again in lesson 10.
    """
    _require_float("x", x)
    _require_float("w", w)
    if x.dim() < 1 or w.dim() != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"need x of shape (..., k) and w of shape (k, m), got x {tuple(x.shape)} and w {tuple(w.shape)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    if not (torch.isfinite(x).all() and torch.isfinite(w).all()):
        raise ValueError("x and w must contain only finite values (no inf or nan)")
    k, m = w.shape
    x2 = x.detach().reshape(-1, k).float()
    w2 = w.detach().float()

    outlier = (x2.abs() > threshold).any(dim=0)                       # (k,) one flag per input feature
    out = x2[:, outlier] @ w2[outlier, :]                               # float32 part, (n, m)

    regular = ~outlier
    if regular.any() and x2.shape[0] > 0:
        q_x, scale_x = absmax_quantize(x2[:, regular], bits=8, dim=0)  # per row: scale (n, 1)
        q_w, scale_w = absmax_quantize(w2[regular, :], bits=8, dim=1)  # per column: scale (1, m)
        accumulator = q_x.double() @ q_w.double()                       # exact integer sums
        out = out + accumulator.float() * (scale_x * scale_w)           # dequantize, (n, 1) * (1, m)
    return out.reshape(*x.shape[:-1], m), outlier.float().mean().item()


# --------------------------------------------------------------------------- NF4


NF4_CODES = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)
"""The 16 NormalFloat4 levels of QLoRA (Dettmers et al. 2023; bitsandbytes), sorted.

Quantiles of a standard normal distribution, scaled to [-1, 1]: 7 negative levels, 0 and
8 positive ones (so that 0 is exact). :func:`nf4_codes_from_normal_quantiles` rebuilds them.
QLoRA stores its frozen base weights this way, in blocks of 64. Defined in lesson 04.
"""


def nf4_codes_from_normal_quantiles() -> torch.Tensor:
    """Rebuild :data:`NF4_CODES` (float64) from normal quantiles, as bitsandbytes does.

    8 positive levels: the standard normal quantiles at 9 evenly spaced probabilities from
    ``p = 0.9677083`` down to 0.5, the last (0.5, i.e. 0) dropped; 7 negative levels
    likewise with 8 probabilities; plus 0. All are divided by the largest, so the ends
    are ±1. ``p`` is the mean of ``1 - 1/(2*15)`` and ``1 - 1/(2*16)``: it keeps the
    outermost quantile finite. Defined in lesson 04.
    """
    p = ((1 - 1 / 30) + (1 - 1 / 32)) / 2
    positive = torch.special.ndtri(torch.linspace(p, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(p, 0.5, 8, dtype=torch.float64)[:-1])
    codes = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return codes / codes.max()


def nf4_quantize(w: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4: per block, divide by the block's absmax and store the index of the nearest NF4 code.

    Args:
        w: floating-point tensor, any shape; blocks of ``block_size`` consecutive values of
            the flattened tensor (zero-padded at the end).
    Returns:
        ``(indices, absmax)``: uint8 indices into :data:`NF4_CODES` (0..15), w's shape;
        absmax float32 ``(n_blocks,)`` (float64 for float64 w).

    Defined in lesson 04.
    """
    _check_weights(w)
    _check_block_size(block_size)
    rows = _rows(w.detach().to(_compute_dtype(w)), None, block_size)
    absmax = rows.abs().amax(dim=1, keepdim=True)
    normalized = rows / _nonzero(absmax)                                  # in [-1, 1]
    codes = NF4_CODES.to(device=rows.device, dtype=rows.dtype)
    midpoints = (codes[1:] + codes[:-1]) / 2
    indices = torch.bucketize(normalized, midpoints)                      # nearest code: how many midpoints lie below
    return _unrows(indices.to(torch.uint8), w.shape, None, block_size), absmax.reshape(-1)


def nf4_dequantize(indices: torch.Tensor, absmax: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """``NF4_CODES[indices] * absmax`` per block: back from :func:`nf4_quantize`. Defined in lesson 04."""
    _require_int("indices", indices)
    _require_float("absmax", absmax)
    _check_block_size(block_size)
    rows = _rows(indices.long(), None, block_size)
    _check_one_per_block(absmax, rows, block_size, name="absmax")
    codes = NF4_CODES.to(device=absmax.device, dtype=absmax.dtype)
    return _unrows(codes[rows] * absmax[:, None], indices.shape, None, block_size)
