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
    q, scale = _blocks(w.T.contiguous(), block_size, 7)
    return q.T.contiguous(), scale


def int4_ignores_block_size(w, block_size=64):
    return _blocks(w, 64 if w.numel() % 64 == 0 else w.shape[-1], 7)


def int4_no_clamp_floor(w, block_size=64):
    rows = w.reshape(-1, block_size)
    scale = rows.abs().amax(dim=1) / 7
    q = torch.floor(rows / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None])
    return q.to(torch.int8).reshape(w.shape), scale


MUTANTS = {
    "test_decode_fp16": {
        f.__name__: f
        for f in (fp16_source_bias, fp16_no_subnormals, fp16_no_implicit_one, fp16_ignores_sign, fp16_no_inf_nan,
                  fp16_subnormal_exponent_off_by_one, fp16_returns_numpy)
    },
    "test_round_to_bf16": {
        f.__name__: f for f in (bf16_truncate, bf16_ties_away, bf16_returns_bfloat16, bf16_breaks_nan, bf16_via_float16, bf16_ties_down)
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
        }.items()
    },
    "test_quantize_int4_blocks": {
        f.__name__: f
        for f in (int4_per_tensor, int4_q_max_8, int4_unsigned_range, int4_blocks_down_columns, int4_ignores_block_size, int4_no_clamp_floor)
    },
}
