"""Wrong answers to lesson 04's exercises: decode fp16 bits, round to bf16, absmax int8, per-block int4."""

import math

import torch

# --------------------------------------------------------------------------- decode_fp16


def _fields(bits):
    return bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF


def fp16_source_bias(bits):
    """The source text's bias formula: 2^5 - 1 = 31 instead of 2^4 - 1 = 15."""
    s, e, m = _fields(bits)
    if e == 31:
        return math.nan if m else (-math.inf if s else math.inf)
    v = math.ldexp(m, -30 - 10) if e == 0 else math.ldexp(1024 + m, e - 31 - 10)
    return -v if s else v


def fp16_no_subnormals(bits):
    """Treats exponent 0 like a normal exponent (implicit leading 1)."""
    s, e, m = _fields(bits)
    if e == 31:
        return math.nan if m else (-math.inf if s else math.inf)
    v = math.ldexp(1024 + m, e - 15 - 10)
    return -v if s else v


def fp16_no_implicit_one(bits):
    s, e, m = _fields(bits)
    if e == 31:
        return math.nan if m else (-math.inf if s else math.inf)
    v = math.ldexp(m, -14 - 10) if e == 0 else math.ldexp(m, e - 15 - 10)
    return -v if s else v


def fp16_ignores_sign(bits):
    s, e, m = _fields(bits)
    if e == 31:
        return math.nan if m else math.inf
    return math.ldexp(m, -24) if e == 0 else math.ldexp(1024 + m, e - 25)


def fp16_no_inf_nan(bits):
    """Decodes exponent 31 as an ordinary number."""
    s, e, m = _fields(bits)
    v = math.ldexp(m, -24) if e == 0 else math.ldexp(1024 + m, e - 25)
    return -v if s else v


def fp16_subnormal_exponent_off_by_one(bits):
    """Subnormals scaled by 2^-15 instead of 2^-14."""
    s, e, m = _fields(bits)
    if e == 31:
        return math.nan if m else (-math.inf if s else math.inf)
    v = math.ldexp(m, -15 - 10) if e == 0 else math.ldexp(1024 + m, e - 25)
    return -v if s else v


def fp16_returns_numpy(bits):
    import numpy as np

    return np.array([bits], dtype=np.uint16).view(np.float16)[0]


def fp16_int_for_whole_numbers(bits):
    """Returns an int when the value is a whole number (2 ** (e - 15) with integer arithmetic)."""
    s, e, m = _fields(bits)
    if e == 31:
        return math.nan if m else (-math.inf if s else math.inf)
    if e == 0:
        v = math.ldexp(m, -24)
    elif e >= 25:
        v = (1024 + m) << (e - 25)
    else:
        v = math.ldexp(1024 + m, e - 25)
    return -v if s else v


def fp16_loses_negative_zero(bits):
    """(-1) ** sign * mantissa * 2 ** -24 with integer factors first: -0 is the int 0, so 0x8000 gives +0.0."""
    s, e, m = _fields(bits)
    if e == 31:
        return math.nan if m else (-math.inf if s else math.inf)
    if e == 0:
        return (-1) ** s * m * 2.0 ** -24
    return (-1) ** s * math.ldexp(1024 + m, e - 25)


def fp16_returns_tensor(bits):
    """Computes in a float32 tensor and returns the tensor instead of a Python float."""
    s, e, m = _fields(bits)
    if e == 31:
        v = math.nan if m else math.inf
    else:
        v = math.ldexp(m, -24) if e == 0 else math.ldexp(1024 + m, e - 25)
    return torch.tensor(-v if s else v)


def fp16_rounded_decimals(bits):
    """Rounds the result to 6 decimals, so small values and subnormals are wrong."""
    s, e, m = _fields(bits)
    if e == 31:
        return math.nan if m else (-math.inf if s else math.inf)
    v = math.ldexp(m, -24) if e == 0 else math.ldexp(1024 + m, e - 25)
    return round(-v if s else v, 6)


def fp16_inf_for_all_of_exponent_31(bits):
    """Decodes every exponent-31 pattern as an infinity: no nan."""
    s, e, m = _fields(bits)
    if e == 31:
        return -math.inf if s else math.inf
    v = math.ldexp(m, -24) if e == 0 else math.ldexp(1024 + m, e - 25)
    return -v if s else v


# --------------------------------------------------------------------------- round_to_bf16


def _as_int64(x):
    return x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _as_float(b):
    b = b & 0xFFFFFFFF
    return torch.where(b >= 2**31, b - 2**32, b).to(torch.int32).view(torch.float32)


def bf16_truncate(x):
    """Drops the low 16 bits: rounds toward zero."""
    return _as_float((_as_int64(x) >> 16) << 16)


def bf16_ties_away(x):
    """Rounds half away from zero instead of to even."""
    out = _as_float(((_as_int64(x) + 0x8000) >> 16) << 16)
    return torch.where(torch.isnan(x), x, out)


def bf16_returns_bfloat16(x):
    return x.to(torch.bfloat16)


def bf16_breaks_nan(x):
    """Rounds NaN's mantissa too, which can carry into the exponent and give inf."""
    b = _as_int64(x)
    return _as_float(((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16)


def bf16_via_float16(x):
    """Rounds to fp16 instead: wrong range and precision."""
    return x.to(torch.float16).to(torch.float32)


def bf16_ties_down(x):
    """Rounds ties toward zero."""
    out = _as_float(((_as_int64(x) + 0x7FFF) >> 16) << 16)
    return torch.where(torch.isnan(x), x, out)


def _round_even(u):
    """Round-to-nearest-even of the 32-bit patterns ``u`` (int64, 0..2**32-1) to their top 16 bits."""
    return (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000


def bf16_flat_view(x):
    """Flattens with x.view(-1), which fails on a transposed (non-contiguous) tensor."""
    flat = x.view(-1)
    out = _as_float(_round_even(_as_int64(flat)))
    return torch.where(torch.isnan(flat), flat, out).view(x.shape)


def bf16_mask_on_cpu(x):
    """Makes the mask with torch.full(x.shape, ...) without device=x.device: fails for a tensor on a GPU."""
    u = _as_int64(x)
    mask = torch.full(x.shape, 0xFFFF0000, dtype=torch.int64)
    out = _as_float((u + 0x7FFF + ((u >> 16) & 1)) & mask)
    return torch.where(torch.isnan(x), x, out)


def bf16_frexp(x):
    """Rounds the frexp mantissa to 8 bits (ties to even): right for normal numbers, too many bits for subnormals."""
    m, e = torch.frexp(x)
    return torch.ldexp(torch.round(m * 256) / 256, e.to(torch.float32))


def bf16_ties_toward_positive(x):
    """Rounds ties up in value (toward +inf): negative ties go toward zero, positive ones away."""
    u = _as_int64(x)
    negative = u >= 2**31
    out = _as_float(torch.where(negative, u + 0x7FFF, u + 0x8000) & 0xFFFF0000)
    return torch.where(torch.isnan(x), x, out)


def bf16_saturates(x):
    """Clamps overflow to the largest finite bf16 number instead of rounding to infinity."""
    out = _as_float(_round_even(_as_int64(x)))
    big = 3.3895313892515355e38
    out = torch.where(torch.isinf(out) & torch.isfinite(x), torch.copysign(torch.full_like(x, big), x), out)
    return torch.where(torch.isnan(x), x, out)


def bf16_in_place(x):
    """Rounds the bits of x itself (x.view(torch.int32) shares x's memory), changing the caller's tensor."""
    b = x.view(torch.int32)
    nan = torch.isnan(x)
    rounded = b + 0x7FFF + ((b >> 16) & 1)
    b.copy_(torch.where(nan, b, rounded & -65536))
    return x


def bf16_flushes_subnormals(x):
    """Flushes subnormal results to zero, as if bf16 had none."""
    out = _as_float(_round_even(_as_int64(x)))
    out = torch.where(out.abs() < 2.0**-126, out * 0, out)
    return torch.where(torch.isnan(x), x, out)


# --------------------------------------------------------------------------- absmax int8 (a pair of functions)


def _q8(w, q_max=127, rounding=torch.round):
    scale = w.abs().max() / q_max
    safe = scale if scale > 0 else torch.ones_like(scale)
    return rounding(w / safe).clamp(-q_max, q_max).to(torch.int8), scale


def int8_scale_128(w):
    return _q8(w, 128)


def int8_truncates(w):
    """Converts with .to(torch.int8), which truncates toward zero instead of rounding."""
    return _q8(w, rounding=torch.trunc)


def int8_per_row(w):
    """One scale per row, not for the whole tensor."""
    if w.dim() < 2:
        return _q8(w)
    scale = w.abs().amax(dim=-1, keepdim=True) / 127
    return torch.round(w / scale.clamp_min(1e-30)).clamp(-127, 127).to(torch.int8), scale


def int8_float_codes(w):
    q, scale = _q8(w)
    return q.float(), scale


def int8_max_not_absmax(w):
    """Takes the scale from the largest value, not the largest magnitude: large negative values clip."""
    scale = w.max().clamp_min(0) / 127
    safe = scale if scale > 0 else torch.ones_like(scale)
    return torch.round(w / safe).clamp(-127, 127).to(torch.int8), scale


def int8_floor(w):
    return _q8(w, rounding=torch.floor)


def int8_dequantize(q, scale):
    return q.to(scale.dtype) * scale


def int8_dequantize_divides(q, scale):
    return q.to(scale.dtype) / scale.clamp_min(1e-30)


def int8_half_away(w):
    """Rounds half away from zero (sign(x) * floor(|x| + 0.5)) instead of to even."""
    return _q8(w, rounding=lambda x: torch.sign(x) * torch.floor(x.abs() + 0.5))


def int8_half_up(w):
    """Rounds half up (floor(x + 0.5)) instead of to even."""
    return _q8(w, rounding=lambda x: torch.floor(x + 0.5))


def int8_no_clamp(w):
    """Leaves out the clamp to [-127, 127]: a code that rounds to 128 wraps around in int8."""
    scale = w.abs().max() / 127
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(w / safe).to(torch.int8), scale


def int8_eps_divisor(w):
    """Divides by scale + 1e-12 to avoid dividing by zero: wrong for tiny weights and off at float64 ties."""
    scale = w.abs().max() / 127
    return torch.round(w / (scale + 1e-12)).clamp(-127, 127).to(torch.int8), scale


def int8_multiplies_first(w):
    """q = round(w * 127 / max|w|): w * 127 overflows to inf for huge weights."""
    amax = w.abs().max()
    scale = amax / 127
    q = torch.round(w * 127 / torch.where(amax == 0, torch.ones_like(amax), amax))
    return q.clamp(-127, 127).to(torch.int8), scale


def int8_reciprocal(w):
    """Multiplies by 127 / max|w|, which overflows to inf when max|w| is tiny."""
    amax = w.abs().max()
    inverse = torch.where(amax == 0, torch.zeros_like(amax), 127 / amax)
    return torch.round(w * inverse).clamp(-127, 127).to(torch.int8), amax / 127


def int8_flat_view(w):
    """Flattens with w.view(-1), which fails on a transposed (non-contiguous) tensor."""
    q, scale = _q8(w.view(-1))
    return q.view(w.shape), scale


def int8_guard_on_max(w):
    """Guards max|w| == 0 instead of scale == 0: when max|w| / 127 underflows to 0, w / 0 gives +-inf and nan."""
    amax = w.abs().max()
    scale = amax / 127
    safe = torch.where(amax == 0, torch.ones_like(scale), scale)
    return torch.round(w / safe).clamp(-127, 127).to(torch.int8), scale


def int8_divisor_on_cpu(w):
    """Makes the stand-in divisor with torch.ones(1) on the CPU: fails for a tensor on a GPU."""
    scale = w.abs().max() / 127
    safe = torch.where(scale == 0, torch.ones(1, dtype=w.dtype), scale)
    return torch.round(w / safe).clamp(-127, 127).to(torch.int8), scale


def int8_scale_float32(w):
    """Returns a float32 scale also for float64 weights."""
    q, scale = _q8(w)
    return q, scale.float()


def int8_codes_int32(w):
    """Returns the codes as torch.int32 (.int()) instead of torch.int8."""
    q, scale = _q8(w)
    return q.int(), scale


def int8_scale_keepdim(w):
    """Takes the max with keepdim=True: the scale has w's number of dims instead of being 0-d."""
    scale = w.abs().amax(dim=tuple(range(w.dim())), keepdim=True) / 127
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(w / safe).clamp(-127, 127).to(torch.int8), scale


def int8_divides_in_place(w):
    """Divides w in place (w /= scale), changing the caller's tensor."""
    scale = w.abs().max() / 127
    w /= torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(w).clamp(-127, 127).to(torch.int8), scale


def int8_dequantize_float32(q, scale):
    """Converts the codes with .float(): a float32 result for a float64 scale."""
    return q.float() * scale


# --------------------------------------------------------------------------- per-block int4


def _blocks(w, block_size, q_max):
    rows = w.reshape(-1, block_size)
    scale = rows.abs().amax(dim=1) / q_max
    q = torch.round(rows / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]).clamp(-q_max, q_max)
    return q.to(torch.int8).reshape(w.shape), scale


def int4_per_tensor(w, block_size=64):
    scale = w.abs().max() / 7
    q = torch.round(w / scale).clamp(-7, 7).to(torch.int8)
    return q, scale.repeat(w.numel() // block_size)


def int4_q_max_8(w, block_size=64):
    """Uses 2^(bits-1) = 8 instead of 2^(bits-1) - 1 = 7, so the largest value gets code 8, outside int4."""
    return _blocks(w, block_size, 8)


def int4_unsigned_range(w, block_size=64):
    """Divides by 15 (the unsigned range) for signed codes."""
    return _blocks(w, block_size, 15)


def int4_blocks_down_columns(w, block_size=64):
    """Takes blocks down the columns instead of along the flattened rows."""
    columns = w.reshape(len(w), -1) if w.dim() else w.reshape(1, 1)
    q, scale = _blocks(columns.T.contiguous(), block_size, 7)
    return q.T.reshape(w.shape), scale


def int4_ignores_block_size(w, block_size=64):
    return _blocks(w, 64 if w.numel() % 64 == 0 else w.shape[-1], 7)


def int4_no_clamp_floor(w, block_size=64):
    rows = w.reshape(-1, block_size)
    scale = rows.abs().amax(dim=1) / 7
    q = torch.floor(rows / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None])
    return q.to(torch.int8).reshape(w.shape), scale


def _blocks_with(w, block_size, rounding=torch.round, q_max=7):
    """Per-block absmax like the solution, with another rounding."""
    rows = w.reshape(-1, block_size)
    scale = rows.abs().amax(dim=1) / q_max
    q = rounding(rows / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]).clamp(-q_max, q_max)
    return q.to(torch.int8).reshape(w.shape), scale


def int4_half_away(w, block_size=64):
    """Rounds half away from zero (sign(x) * floor(|x| + 0.5)) instead of to even."""
    return _blocks_with(w, block_size, lambda x: torch.sign(x) * torch.floor(x.abs() + 0.5))


def int4_half_up(w, block_size=64):
    """Rounds half up (floor(x + 0.5)) instead of to even."""
    return _blocks_with(w, block_size, lambda x: torch.floor(x + 0.5))


def int4_truncates(w, block_size=64):
    """Converts with .to(torch.int8) without rounding: truncates toward zero."""
    return _blocks_with(w, block_size, torch.trunc)


def int4_scales_float32(w, block_size=64):
    """Returns float32 scales also for float64 weights."""
    q, scale = _blocks(w, block_size, 7)
    return q, scale.float()


def int4_view_blocks(w, block_size=64):
    """Makes the blocks with w.view(-1, block_size), which fails on a transposed (non-contiguous) tensor."""
    rows = w.view(-1, block_size)
    scale = rows.abs().amax(dim=1) / 7
    q = torch.round(rows / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]).clamp(-7, 7)
    return q.to(torch.int8).view(w.shape), scale


def int4_memory_order(w, block_size=64):
    """Takes the blocks in memory order with as_strided: right for contiguous tensors only."""
    rows = w.as_strided((w.numel() // block_size, block_size), (block_size, 1))
    scale = rows.abs().amax(dim=1) / 7
    q = torch.round(rows / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]).clamp(-7, 7)
    return q.to(torch.int8).reshape(w.shape), scale


def int4_eps_divisor(w, block_size=64):
    """Divides by scale + 1e-12 to avoid dividing by zero: wrong for tiny weights and off at float64 ties."""
    rows = w.reshape(-1, block_size)
    scale = rows.abs().amax(dim=1) / 7
    q = torch.round(rows / (scale[:, None] + 1e-12)).clamp(-7, 7)
    return q.to(torch.int8).reshape(w.shape), scale


def int4_no_clamp(w, block_size=64):
    """Leaves out the clamp to [-7, 7]: a code can round to 8 or more."""
    rows = w.reshape(-1, block_size)
    scale = rows.abs().amax(dim=1) / 7
    q = torch.round(rows / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None])
    return q.to(torch.int8).reshape(w.shape), scale


def int4_multiplies_first(w, block_size=64):
    """q = round(w * 7 / max|block|): w * 7 overflows to inf for huge weights."""
    rows = w.reshape(-1, block_size)
    amax = rows.abs().amax(dim=1, keepdim=True)
    q = torch.round(rows * 7 / torch.where(amax > 0, amax, torch.ones_like(amax))).clamp(-7, 7)
    return q.to(torch.int8).reshape(w.shape), amax[:, 0] / 7


def int4_guard_on_max(w, block_size=64):
    """Guards max|block| == 0 instead of scale == 0: when max|block| / 7 underflows to 0, w / 0 gives +-inf and nan."""
    rows = w.reshape(-1, block_size)
    amax = rows.abs().amax(dim=1)
    scale = amax / 7
    q = torch.round(rows / torch.where(amax > 0, scale, torch.ones_like(scale))[:, None]).clamp(-7, 7)
    return q.to(torch.int8).reshape(w.shape), scale


def int4_ones_on_cpu(w, block_size=64):
    """Makes the stand-in divisors with torch.ones(n_blocks) on the CPU: fails for a tensor on a GPU."""
    rows = w.reshape(-1, block_size)
    scale = rows.abs().amax(dim=1) / 7
    safe = torch.where(scale > 0, scale, torch.ones(rows.shape[0], dtype=w.dtype))
    return torch.round(rows / safe[:, None]).clamp(-7, 7).to(torch.int8).reshape(w.shape), scale


def int4_assumes_2d(w, block_size=64):
    """Assumes a 2-d weight matrix (rows, cols = w.shape)."""
    rows, cols = w.shape
    return _blocks(w.reshape(rows * cols), block_size, 7)[0].reshape(rows, cols), _blocks(w.reshape(-1), block_size, 7)[1]


def int4_divides_in_place(w, block_size=64):
    """Divides the blocks in place (blocks /= scales), changing the caller's tensor through the view."""
    rows = w.reshape(-1, block_size)
    scale = rows.abs().amax(dim=1) / 7
    rows /= torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    return torch.round(rows).clamp(-7, 7).to(torch.int8).reshape(w.shape), scale


MUTANTS = {
    "test_decode_fp16": {
        f.__name__: f
        for f in (fp16_source_bias, fp16_no_subnormals, fp16_no_implicit_one, fp16_ignores_sign, fp16_no_inf_nan,
                  fp16_subnormal_exponent_off_by_one, fp16_returns_numpy, fp16_int_for_whole_numbers, fp16_loses_negative_zero,
                  fp16_returns_tensor, fp16_rounded_decimals, fp16_inf_for_all_of_exponent_31)
    },
    "test_round_to_bf16": {
        f.__name__: f
        for f in (bf16_truncate, bf16_ties_away, bf16_returns_bfloat16, bf16_breaks_nan, bf16_via_float16, bf16_ties_down,
                  bf16_flat_view, bf16_mask_on_cpu, bf16_frexp, bf16_ties_toward_positive, bf16_saturates, bf16_in_place,
                  bf16_flushes_subnormals)
    },
    # this exercise defines two functions: a mutant gives both names
    "test_absmax_int8": {
        name: {"absmax_quantize_int8": quantize, "absmax_dequantize_int8": dequantize}
        for name, (quantize, dequantize) in {
            "scale_128": (int8_scale_128, int8_dequantize),
            "truncates": (int8_truncates, int8_dequantize),
            "per_row": (int8_per_row, int8_dequantize),
            "float_codes": (int8_float_codes, int8_dequantize),
            "max_not_absmax": (int8_max_not_absmax, int8_dequantize),
            "floor": (int8_floor, int8_dequantize),
            "dequantize_divides": (_q8, int8_dequantize_divides),
            "half_away": (int8_half_away, int8_dequantize),
            "half_up": (int8_half_up, int8_dequantize),
            "no_clamp": (int8_no_clamp, int8_dequantize),
            "eps_divisor": (int8_eps_divisor, int8_dequantize),
            "multiplies_first": (int8_multiplies_first, int8_dequantize),
            "reciprocal": (int8_reciprocal, int8_dequantize),
            "flat_view": (int8_flat_view, int8_dequantize),
            "guard_on_max": (int8_guard_on_max, int8_dequantize),
            "divisor_on_cpu": (int8_divisor_on_cpu, int8_dequantize),
            "scale_float32": (int8_scale_float32, int8_dequantize),
            "codes_int32": (int8_codes_int32, int8_dequantize),
            "scale_keepdim": (int8_scale_keepdim, int8_dequantize),
            "divides_in_place": (int8_divides_in_place, int8_dequantize),
            "dequantize_float32": (_q8, int8_dequantize_float32),
        }.items()
    },
    "test_quantize_int4_blocks": {
        f.__name__: f
        for f in (int4_per_tensor, int4_q_max_8, int4_unsigned_range, int4_blocks_down_columns, int4_ignores_block_size, int4_no_clamp_floor,
                  int4_half_away, int4_half_up, int4_truncates, int4_scales_float32, int4_view_blocks, int4_memory_order,
                  int4_eps_divisor, int4_no_clamp, int4_multiplies_first, int4_guard_on_max, int4_ones_on_cpu, int4_assumes_2d,
                  int4_divides_in_place)
    },
}


# --------------------------------------------------------------------------- capstone: packed int4 with zero points


def _pk_check(w, group_size):
    if w.dim() != 2 or w.shape[1] % 2 or group_size % 2 or w.shape[1] % group_size:
        raise ValueError("bad shape")


def _pk_grid(w, group_size):
    out, n = w.shape
    x = w.detach().to(torch.float32).reshape(out, n // group_size, group_size)
    low, high = x.amin(dim=2).clamp(max=0), x.amax(dim=2).clamp(min=0)
    scale = (high - low) / 15
    return x, low, scale, torch.where(scale == 0, torch.ones_like(scale), scale)


def _pk_pack(codes, swap=False):
    low, high = codes[:, 0::2], codes[:, 1::2]
    return (high | (low << 4)) if swap else (low | (high << 4))


def _pk_quantize(w, group_size=32, swap=False):
    _pk_check(w, group_size)
    x, low, scale, divisor = _pk_grid(w, group_size)
    zero = torch.round(-low / divisor)
    codes = torch.clamp(torch.round(x / divisor[..., None]) + zero[..., None], 0, 15).to(torch.uint8).reshape(w.shape)
    return _pk_pack(codes, swap), scale, zero.to(torch.uint8)


def _pk_dequantize(packed, scale, zero, group_size=32, swap=False):
    low, high = (packed >> 4, packed & 0xF) if swap else (packed & 0xF, packed >> 4)
    codes = torch.stack([low, high], dim=-1).reshape(packed.shape[0], 2 * packed.shape[1]).to(torch.float32)
    return scale.float().repeat_interleave(group_size, dim=1) * (codes - zero.float().repeat_interleave(group_size, dim=1))


def pk_swapped_in_pack_only(w, group_size=32):
    """High nibble first when packing, low nibble first when unpacking: the round trip fails."""
    return _pk_quantize(w, group_size, swap=True)


def pk_swapped_both(w, group_size=32):
    """High nibble first in both functions: a round trip of its own, but not course_lib.int4's layout."""
    return _pk_quantize(w, group_size, swap=True)


def pk_symmetric_16_levels(w, group_size=32):
    """Symmetric: scale = max|w| / 8 and zero 8, so the largest positive weight (code 16) is clipped to 15."""
    _pk_check(w, group_size)
    out, n = w.shape
    x = w.detach().to(torch.float32).reshape(out, n // group_size, group_size)
    scale = x.abs().amax(dim=2) / 8
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.full_like(scale, 8.0)
    codes = torch.clamp(torch.round(x / divisor[..., None]) + 8, 0, 15).to(torch.uint8).reshape(w.shape)
    return _pk_pack(codes), scale, zero.to(torch.uint8)


def pk_zero_not_rounded(w, group_size=32):
    """The zero point -low / scale is added before rounding (and truncated when stored as uint8)."""
    _pk_check(w, group_size)
    x, low, scale, divisor = _pk_grid(w, group_size)
    zero = -low / divisor
    codes = torch.clamp(torch.round(x / divisor[..., None] + zero[..., None]), 0, 15).to(torch.uint8).reshape(w.shape)
    return _pk_pack(codes), scale, zero.to(torch.uint8)


def pk_no_clamp(w, group_size=32):
    """Codes not clamped to 0..15: a 16 wraps to 0 in its nibble (or spills into the neighbour's)."""
    _pk_check(w, group_size)
    x, low, scale, divisor = _pk_grid(w, group_size)
    zero = torch.round(-low / divisor)
    codes = (torch.round(x / divisor[..., None]) + zero[..., None]).to(torch.uint8).reshape(w.shape) & 0xF
    return _pk_pack(codes), scale, zero.to(torch.uint8)


def pk_scale_eps(w, group_size=32):
    """A group of zeros gets scale 1e-8 instead of 0 (an epsilon guard rather than a divide-by-one)."""
    _pk_check(w, group_size)
    x, low, scale, _ = _pk_grid(w, group_size)
    scale = scale.clamp(min=1e-8)
    zero = torch.round(-low / scale)
    codes = torch.clamp(torch.round(x / scale[..., None]) + zero[..., None], 0, 15).to(torch.uint8).reshape(w.shape)
    return _pk_pack(codes), scale, zero.to(torch.uint8)


def pk_scale_nan(w, group_size=32):
    """Divides by the scale even when it is 0: a group of zeros gets a NaN scale (0/0 of a 0 * (1/0) product)."""
    _pk_check(w, group_size)
    x, low, scale, _ = _pk_grid(w, group_size)
    inverse = 1 / scale
    zero = torch.round(-low * inverse)
    codes = torch.clamp(torch.round(x * inverse[..., None]) + zero[..., None], 0, 15).to(torch.uint8).reshape(w.shape)
    return _pk_pack(codes), 1 / inverse * torch.where(torch.isinf(inverse), torch.nan, 1.0), zero.to(torch.uint8)


def pk_no_odd_check(w, group_size=32):
    """No check of the sizes: an odd group_size or in silently packs codes of two groups into one byte."""
    out, n = w.shape
    g = group_size
    x = w.detach().to(torch.float32)
    pad = (-n) % g
    groups = torch.nn.functional.pad(x, (0, pad)).reshape(out, -1, g)
    low, high = groups.amin(dim=2).clamp(max=0), groups.amax(dim=2).clamp(min=0)
    scale = (high - low) / 15
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-low / divisor)
    codes = torch.clamp(torch.round(groups / divisor[..., None]) + zero[..., None], 0, 15).to(torch.uint8).reshape(out, -1)[:, :n]
    if n % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    return _pk_pack(codes), scale, zero.to(torch.uint8)


def pk_float16_scale(w, group_size=32):
    """Scales returned in float16 (as course_lib.int4 stores them), not float32 as asked."""
    packed, scale, zero = _pk_quantize(w, group_size)
    return packed, scale.to(torch.float16), zero


def pk_dequantize_ignores_zero(packed, scale, zero, group_size=32):
    """scale * code, forgetting the zero point."""
    return _pk_dequantize(packed, scale, torch.zeros_like(zero), group_size)


def pk_dequantize_swapped(packed, scale, zero, group_size=32):
    return _pk_dequantize(packed, scale, zero, group_size, swap=True)


MUTANTS["test_int4_packed"] = {
    name: {"quantize_int4_packed": quantize, "dequantize_int4_packed": dequantize}
    for name, (quantize, dequantize) in {
        "swapped_in_pack_only": (pk_swapped_in_pack_only, _pk_dequantize),
        "swapped_both": (pk_swapped_both, pk_dequantize_swapped),
        "symmetric_16_levels": (pk_symmetric_16_levels, _pk_dequantize),
        "zero_not_rounded": (pk_zero_not_rounded, _pk_dequantize),
        "no_clamp": (pk_no_clamp, _pk_dequantize),
        "scale_eps": (pk_scale_eps, _pk_dequantize),
        "scale_nan": (pk_scale_nan, _pk_dequantize),
        "no_odd_check": (pk_no_odd_check, _pk_dequantize),
        "float16_scale": (pk_float16_scale, _pk_dequantize),
        "dequantize_ignores_zero": (_pk_quantize, pk_dequantize_ignores_zero),
    }.items()
}


# --------------------------------------------------------------------------- prediction: MiB of a 4096 x 4096 int4 layer


def predict_int4_codes_only():
    """Half a byte per weight, the scales and zero points forgotten."""
    return 8.0


def predict_int4_fp16_zero():
    """The zero point counted as a float16 too."""
    return 8.5


def predict_int4_fp32_scale():
    """A float32 scale per group."""
    return 8.625


def predict_int4_byte_per_code():
    """One byte per code (no packing)."""
    return 16.375


def predict_int4_bits():
    """Counted in megabits."""
    return 67.0


MUTANTS["test_predict_int4_layer_mib"] = {
    f.__name__: f for f in (predict_int4_codes_only, predict_int4_fp16_zero, predict_int4_fp32_scale, predict_int4_byte_per_code, predict_int4_bits)
}
