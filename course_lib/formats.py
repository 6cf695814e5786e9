"""Floating-point formats from scratch: fp32, fp16, bf16 and the two fp8 formats (lesson 04).

A binary floating-point number is three fields of bits, ``sign | exponent | mantissa``::

    value = (-1)^sign × 2^(exponent - bias) × 1.mantissa       (normal numbers)
    value = (-1)^sign × 2^(1 - bias)        × 0.mantissa       (subnormals: exponent field 0)

The *stored* exponent is an unsigned integer; the *real* exponent is the stored one minus
the bias ``2^(k-1) - 1`` for ``k`` exponent bits (127 for fp32's 8 bits). The source text
writes ``2^k - 1``, which would be 255 (see :data:`SOURCE_ERRATA`).

:func:`encode` turns a Python float (a float64) into the bit pattern of the target format
using only integer arithmetic: it takes the *exact* real value of the float64, rounds it
once to the nearest representable value (ties to the even mantissa), and handles
subnormals, overflow, signed zeros, infinities and NaN. :func:`decode` goes back.
:func:`encode_array` is the same algorithm, vectorised with numpy integer operations, for
millions of values at once. Nothing here asks numpy, torch or ``struct`` to convert to the
target format: the tests do that, to check these functions bit for bit.

Overflow differs between formats, and for fp8 E4M3 between libraries:

- fp32, fp16, bf16, fp8 E5M2 (IEEE-like): a value that rounds above the largest finite
  number becomes ±inf (``overflow="inf"``).
- fp8 E4M3 "fn" (finite + NaN: no infinity, one NaN pattern ``S.1111.111``) has no inf.
  PyTorch 2.13's ``x.to(torch.float8_e4m3fn)`` *saturates*: every value that rounds above
  448, and ±inf itself, becomes ±448; only NaN becomes NaN. :data:`FP8_E4M3` does the same
  (``overflow="saturate"``). ml_dtypes 0.6 (``ml_dtypes.float8_e4m3fn``) instead turns
  those values into NaN; ``dataclasses.replace(FP8_E4M3, overflow="nan")`` does that.
  Both round 464 (halfway between 448 and the would-be 480) to 448, ties to even.

NaN payloads are not modelled: encode returns one canonical NaN (the quiet NaN, or
``S.1111.111`` for E4M3) with the sign of the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np


# --------------------------------------------------------------------------- formats


def bias_for(exponent_bits: int) -> int:
    """The exponent bias of a format with ``exponent_bits`` exponent bits: ``2^(k-1) - 1``.

    127 for 8 bits (fp32, bf16), 15 for 5 bits (fp16, fp8 E5M2), 7 for 4 bits (fp8 E4M3).
    It puts real exponent 0 (the numbers 1.xxx) in the middle of the stored range, so
    that as many exponents lie above 1 as below. Defined in lesson 04.
    """
    if isinstance(exponent_bits, bool) or not isinstance(exponent_bits, int) or exponent_bits < 2:
        raise ValueError(f"exponent_bits must be an int >= 2, got {exponent_bits!r}")
    return 2 ** (exponent_bits - 1) - 1


OVERFLOW_MODES = ("inf", "saturate", "nan")


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits``.

    Fields:
        name: a short name, e.g. ``"fp16"``.
        exponent_bits, mantissa_bits: field widths (the sign is always 1 bit).
        bias: subtracted from the stored exponent; :func:`bias_for` for all formats here.
        has_inf: ``True`` for IEEE-like formats, where the all-ones exponent means
            ±inf (mantissa 0) or NaN (mantissa not 0). ``False`` for "fn" (finite + NaN)
            formats such as fp8 E4M3, where the all-ones exponent holds ordinary numbers
            and only the all-ones pattern ``S.1111.111`` is NaN.
        overflow: what :func:`encode` gives for values that round above the largest
            finite number, and for ±inf: ``"inf"`` (±inf), ``"saturate"`` (± the largest
            finite number) or ``"nan"``.

    Derived properties: ``total_bits``, ``max_bits`` (bit pattern of the largest finite
    number), ``max_value``, ``min_normal``, ``min_subnormal``, ``epsilon``.
    Defined in lesson 04.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_inf: bool
    overflow: str

    def __post_init__(self):
        if self.exponent_bits < 2 or self.mantissa_bits < 1 or self.mantissa_bits > 51:
            raise ValueError(f"need exponent_bits >= 2 and 1 <= mantissa_bits <= 51, got {self.exponent_bits}, {self.mantissa_bits}")
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(f"overflow must be one of {OVERFLOW_MODES}, got {self.overflow!r}")
        if self.has_inf and self.overflow != "inf":
            raise ValueError(f"a format with infinities overflows to inf, got overflow={self.overflow!r}")
        if not self.has_inf and self.overflow == "inf":
            raise ValueError("a format without infinities cannot overflow to inf; use 'saturate' or 'nan'")

    @property
    def total_bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def exponent_all_ones(self) -> int:
        return 2**self.exponent_bits - 1

    @property
    def max_bits(self) -> int:
        """Bit pattern (sign 0) of the largest finite number."""
        m = self.mantissa_bits
        if self.has_inf:   # the all-ones exponent is reserved: 0.11110.11 for E5M2
            return ((self.exponent_all_ones - 1) << m) | (2**m - 1)
        return (self.exponent_all_ones << m) | (2**m - 2)   # all ones but the NaN: 0.1111.110 for E4M3

    @property
    def inf_bits(self) -> int:
        """Bit pattern of +inf (only for formats with infinities)."""
        if not self.has_inf:
            raise ValueError(f"{self.name} has no infinity")
        return self.exponent_all_ones << self.mantissa_bits

    @property
    def nan_bits(self) -> int:
        """Bit pattern (sign 0) of the canonical NaN: the quiet NaN, or S.1111.111 for "fn" formats."""
        m = self.mantissa_bits
        if self.has_inf:
            return (self.exponent_all_ones << m) | (1 << (m - 1))
        return (self.exponent_all_ones << m) | (2**m - 1)

    @property
    def max_value(self) -> float:
        return decode(self.max_bits, self)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, 1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, 1 - self.bias - self.mantissa_bits)

    @property
    def epsilon(self) -> float:
        """The gap between 1 and the next larger number: ``2^-mantissa_bits``."""
        return math.ldexp(1.0, -self.mantissa_bits)


FP32 = FloatFormat("fp32", exponent_bits=8, mantissa_bits=23, bias=127, has_inf=True, overflow="inf")
FP16 = FloatFormat("fp16", exponent_bits=5, mantissa_bits=10, bias=15, has_inf=True, overflow="inf")
BF16 = FloatFormat("bf16", exponent_bits=8, mantissa_bits=7, bias=127, has_inf=True, overflow="inf")
FP8_E4M3 = FloatFormat("fp8_e4m3", exponent_bits=4, mantissa_bits=3, bias=7, has_inf=False, overflow="saturate")
FP8_E5M2 = FloatFormat("fp8_e5m2", exponent_bits=5, mantissa_bits=2, bias=15, has_inf=True, overflow="inf")

FORMATS = {f.name: f for f in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2)}
FP8_FORMATS = (FP8_E4M3, FP8_E5M2)


def _check_format(fmt) -> None:
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"fmt must be a FloatFormat such as FP16 or FP8_E4M3, got {type(fmt).__name__}")


# --------------------------------------------------------------------------- one number


def _round_shift_right(n: int, shift: int) -> int:
    """``n / 2^shift`` rounded to the nearest integer, ties to even (``n >= 0``, ``shift >= 1``)."""
    quotient = n >> shift
    remainder = n - (quotient << shift)
    half = 1 << (shift - 1)
    if remainder > half or (remainder == half and quotient % 2 == 1):
        quotient += 1
    return quotient


def encode(x: float, fmt: FloatFormat) -> int:
    """The bit pattern (an int in ``[0, 2^total_bits)``) of ``x`` rounded to ``fmt``.

    ``x`` is read as a float64 (a Python float) and its *exact* value is rounded once to
    the nearest number of ``fmt``, ties to the even mantissa. So ``encode(x, FP16)``
    equals numpy's ``np.float64(x).astype(np.float16)``; torch and ml_dtypes convert
    float64 to bf16/fp8 through float32 (rounding twice), so for those they agree with
    ``encode`` only on inputs that are exactly float32.

    Overflow follows ``fmt.overflow`` (see the module docstring): ±inf, ±max (fp8 E4M3,
    as torch) or NaN. NaN gives the canonical NaN with the sign of ``x``; -0.0 keeps
    its sign. Defined in lesson 04.
    """
    _check_format(fmt)
    x = float(x)
    m = fmt.mantissa_bits
    sign_bit = 1 << (fmt.total_bits - 1) if math.copysign(1.0, x) < 0 else 0
    if math.isnan(x):
        return sign_bit | fmt.nan_bits
    if math.isinf(x):
        return sign_bit | _overflow_bits(fmt)
    if x == 0.0:
        return sign_bit

    # |x| = significand × 2^(e2 - 53) exactly, with 2^52 <= significand < 2^53
    fraction, e2 = math.frexp(abs(x))
    significand = int(math.ldexp(fraction, 53))
    real_exponent = e2 - 1                              # |x| = 1.xxx × 2^real_exponent

    # the spacing of fmt's numbers near x is 2^quantum_exponent; below the smallest
    # normal exponent (1 - bias) it stays fixed: those are the subnormals
    quantum_exponent = max(real_exponent, 1 - fmt.bias) - m
    shift = quantum_exponent - (e2 - 53)                # always >= 1, as m <= 51
    n = _round_shift_right(significand, shift)          # |x| rounded, in units of the spacing

    if real_exponent < 1 - fmt.bias:                    # subnormal: exponent field 0, mantissa n
        magnitude = n                                   # (n = 2^m means rounding up to the smallest normal: still right)
    else:                                               # normal: n = 2^m + mantissa
        stored_exponent = real_exponent + fmt.bias
        magnitude = (stored_exponent << m) + (n - 2**m)  # n = 2^(m+1) carries into the exponent: still right

    if magnitude > fmt.max_bits:
        magnitude = _overflow_bits(fmt)
    return sign_bit | magnitude


def _overflow_bits(fmt: FloatFormat) -> int:
    if fmt.overflow == "inf":
        return fmt.inf_bits
    if fmt.overflow == "saturate":
        return fmt.max_bits
    return fmt.nan_bits


def _check_bits(bits, fmt: FloatFormat) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"bits must be an int, got {type(bits).__name__}")
    if not 0 <= bits < 2**fmt.total_bits:
        raise ValueError(f"bits must be in [0, 2^{fmt.total_bits}) for {fmt.name}, got {bits}")


def fields(bits: int, fmt: FloatFormat) -> tuple[int, int, int]:
    """Split a bit pattern into ``(sign, stored exponent, mantissa)`` integers. Defined in lesson 04."""
    _check_format(fmt)
    _check_bits(bits, fmt)
    bits = int(bits)
    m = fmt.mantissa_bits
    sign = bits >> (fmt.total_bits - 1)
    exponent = (bits >> m) & fmt.exponent_all_ones
    mantissa = bits & (2**m - 1)
    return sign, exponent, mantissa


def decode(bits: int, fmt: FloatFormat) -> float:
    """The value of a bit pattern of ``fmt``, as a Python float (exact). Defined in lesson 04."""
    sign, exponent, mantissa = fields(bits, fmt)
    m = fmt.mantissa_bits
    if exponent == fmt.exponent_all_ones and fmt.has_inf:
        value = math.inf if mantissa == 0 else math.nan
    elif exponent == fmt.exponent_all_ones and mantissa == 2**m - 1:   # "fn" formats: S.1111.111
        value = math.nan
    elif exponent == 0:                                                  # subnormal: 0.mantissa × 2^(1-bias)
        value = math.ldexp(mantissa, 1 - fmt.bias - m)
    else:                                                                # normal: 1.mantissa × 2^(exponent-bias)
        value = math.ldexp(2**m + mantissa, exponent - fmt.bias - m)
    return -value if sign else value


def round_to(x, fmt: FloatFormat):
    """``x`` rounded to ``fmt`` and back: ``decode(encode(x))``.

    ``x`` is a Python float (returns a float) or a numpy array (returns a float64 array
    of the same shape, through :func:`encode_array` and :func:`decode_array`).
    Defined in lesson 04.
    """
    if isinstance(x, np.ndarray):
        return decode_array(encode_array(x, fmt), fmt)
    return decode(encode(x, fmt), fmt)


def _exact_decimal(value: float) -> str:
    """The exact decimal expansion of a float, or 20 significant digits if that is very long."""
    text = format(Decimal(value), "f")
    if len(text) > 40:
        return f"{value:.20g}"
    return text


def explain(x: float, fmt: FloatFormat) -> str:
    """A few lines that take ``x`` rounded to ``fmt`` apart, field by field.

    For pi in fp16 the last line reads
    ``value     (-1)^0 × 2^1 × 1.1001001000 (binary) = 3.140625``, as the source text
    writes it. Defined in lesson 04.
    """
    _check_format(fmt)
    x = float(x)
    bits = encode(x, fmt)
    sign, exponent, mantissa = fields(bits, fmt)
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    sign_text, exp_text, man_text = str(sign), format(exponent, f"0{e}b"), format(mantissa, f"0{m}b")
    value = decode(bits, fmt)
    lines = [
        f"{x!r} in {fmt.name} (1 sign bit, {e} exponent bits, {m} mantissa bits, bias {fmt.bias})",
        f"bits      {sign_text} {exp_text} {man_text}",
        f"sign      {sign_text} -> (-1)^{sign} = {'-1' if sign else '+1'}",
    ]
    if math.isnan(value):
        lines.append(f"exponent  {exp_text} all ones and mantissa {man_text}: NaN (not a number)")
        lines.append("value     nan")
    elif math.isinf(value):
        lines.append(f"exponent  {exp_text} all ones and mantissa 0: infinity")
        lines.append(f"value     {value}")
    elif exponent == 0:
        real = 1 - fmt.bias
        lines.append(f"exponent  {exp_text} = 0 stored: subnormal (or zero), real exponent fixed at 1 - {fmt.bias} = {real}")
        lines.append(f"mantissa  {man_text} -> 0.{man_text} (binary) = {_exact_decimal(math.ldexp(mantissa, -m))}")
        lines.append(f"value     (-1)^{sign} × 2^{real} × 0.{man_text} (binary) = {_exact_decimal(value)}")
    else:
        real = exponent - fmt.bias
        lines.append(f"exponent  {exp_text} = {exponent} stored, real exponent {exponent} - {fmt.bias} = {real}")
        lines.append(f"mantissa  {man_text} -> 1.{man_text} (binary) = {_exact_decimal(1 + math.ldexp(mantissa, -m))}")
        lines.append(f"value     (-1)^{sign} × 2^{real} × 1.{man_text} (binary) = {_exact_decimal(value)}")
    if math.isfinite(value) and math.isfinite(x):
        lines.append(f"error     value - x = {value - x:.6g}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- many numbers at once


def _bits_dtype(fmt: FloatFormat):
    if fmt.total_bits <= 8:
        return np.uint8
    if fmt.total_bits <= 16:
        return np.uint16
    if fmt.total_bits <= 32:
        return np.uint32
    return np.uint64


def encode_array(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """:func:`encode` for a whole numpy array, with the same integer algorithm, vectorised.

    Args:
        x: float64, float32 or float16 array (any shape); float32/float16 are first
            widened to float64, which is exact.
        fmt: the target format.
    Returns:
        unsigned integer array of x's shape: uint8 for fp8, uint16 for fp16/bf16,
        uint32 for fp32, holding the bit patterns.

    Defined in lesson 04.
    """
    _check_format(fmt)
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float64, np.float32, np.float16):
        raise ValueError(f"x must be a numpy array of dtype float64, float32 or float16, got {getattr(x, 'dtype', type(x).__name__)}")
    m = fmt.mantissa_bits
    with np.errstate(invalid="ignore"):                 # signalling NaNs (random bit patterns) warn when widened
        raw = x.astype(np.float64).view(np.uint64)      # float64 fields: 1 | 11 | 52 bits
    negative = (raw >> 63) == 1
    exp64 = ((raw >> 52) & 0x7FF).astype(np.int64)
    frac64 = raw & ((1 << 52) - 1)

    # |x| = significand × 2^(real_exponent - 52), the implicit 1 added for normal float64s
    is_normal64 = exp64 != 0
    significand = np.where(is_normal64, frac64 | (1 << 52), frac64)
    real_exponent = np.where(is_normal64, exp64 - 1023, -1022)

    quantum_exponent = np.maximum(real_exponent, 1 - fmt.bias) - m
    shift = quantum_exponent - (real_exponent - 52)     # >= 1
    shift = np.minimum(shift, 60).astype(np.uint64)     # beyond 54 every significand rounds to 0 anyway
    quotient = significand >> shift
    remainder = significand - (quotient << shift)
    half = np.uint64(1) << (shift - np.uint64(1))
    round_up = (remainder > half) | ((remainder == half) & ((quotient & 1) == 1))
    n = (quotient + round_up).astype(np.int64)

    # as in encode: subnormals store n itself, normals (exponent << m) + (n - 2^m); carries work out
    stored_exponent = real_exponent + fmt.bias
    is_subnormal = stored_exponent < 1
    magnitude = np.where(is_subnormal, n, (stored_exponent << m) + n - 2**m)

    overflow = _overflow_bits(fmt)
    magnitude = np.where(magnitude > fmt.max_bits, overflow, magnitude)
    magnitude = np.where((exp64 == 0) & (frac64 == 0), 0, magnitude)                  # ±0
    magnitude = np.where((exp64 == 0x7FF) & (frac64 == 0), overflow, magnitude)  # ±inf
    magnitude = np.where((exp64 == 0x7FF) & (frac64 != 0), fmt.nan_bits, magnitude)  # NaN

    sign_bit = np.where(negative, 1 << (fmt.total_bits - 1), 0)
    return (sign_bit | magnitude).astype(_bits_dtype(fmt))


def decode_array(bits: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """:func:`decode` for a numpy array of bit patterns; returns float64. Defined in lesson 04."""
    _check_format(fmt)
    if not isinstance(bits, np.ndarray) or not np.issubdtype(bits.dtype, np.integer):
        raise ValueError(f"bits must be a numpy integer array, got {getattr(bits, 'dtype', type(bits).__name__)}")
    bits = bits.astype(np.int64)
    if bits.size and (bits.min() < 0 or bits.max() >= 2**fmt.total_bits):
        raise ValueError(f"bits must be in [0, 2^{fmt.total_bits}) for {fmt.name}")
    m = fmt.mantissa_bits
    sign = bits >> (fmt.total_bits - 1)
    exponent = (bits >> m) & fmt.exponent_all_ones
    mantissa = bits & (2**m - 1)
    subnormal = np.ldexp(mantissa.astype(np.float64), 1 - fmt.bias - m)
    normal = np.ldexp((2**m + mantissa).astype(np.float64), (exponent - fmt.bias - m).astype(np.int32))
    value = np.where(exponent == 0, subnormal, normal)
    if fmt.has_inf:
        value = np.where(exponent == fmt.exponent_all_ones, np.where(mantissa == 0, np.inf, np.nan), value)
    else:
        value = np.where((exponent == fmt.exponent_all_ones) & (mantissa == 2**m - 1), np.nan, value)
    return np.where(sign == 1, -value, value)


def representable_values(fmt: FloatFormat) -> np.ndarray:
    """Every finite number of an 8- or 16-bit format, sorted, as float64 (one zero, not ±0).

    256 patterns give 253 numbers for E4M3 (two NaNs, ±0 merged), 65536 give 63487 for
    fp16. For number-line plots. Defined in lesson 04.
    """
    _check_format(fmt)
    if fmt.total_bits > 16:
        raise ValueError(f"representable_values lists 8- and 16-bit formats only, {fmt.name} has {fmt.total_bits} bits")
    values = decode_array(np.arange(2**fmt.total_bits), fmt)
    return np.unique(values[np.isfinite(values)])


# --------------------------------------------------------------------------- int8, and the source text


def int8_encode(x: float) -> int:
    """``x`` rounded to the nearest integer (ties to even) and clamped to int8's -128..127,
    returned as its 8-bit two's-complement bit pattern (an int in 0..255).

    int8 is an integer format, not a float: no exponent, no mantissa. Its pattern for a
    negative n is ``256 + n`` (two's complement), so ``-1`` is ``0b11111111``.
    Defined in lesson 04.
    """
    x = float(x)
    if math.isnan(x):
        raise ValueError("int8 has no NaN; cannot encode nan")
    n = max(-128, min(127, round(x)))    # Python's round: ties to even, like torch.round
    return n % 256


def int8_decode(bits: int) -> int:
    """The integer an 8-bit two's-complement pattern stands for (0..255 -> -128..127). Defined in lesson 04."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= 255:
        raise ValueError(f"bits must be an int in 0..255, got {bits!r}")
    return int(bits) - 256 if bits >= 128 else int(bits)


def pi_table() -> list[dict]:
    """The source text's table of pi in each format, recomputed.

    One dict per row with ``format``, ``bits`` (sign, exponent, mantissa separated by
    spaces), ``value`` (a float) and ``error`` (value - pi, as a float). Rows: fp32,
    fp16, bf16, fp8 E4M3, fp8 E5M2, int8. Defined in lesson 04.
    """
    rows = []
    for fmt in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2):
        bits = encode(math.pi, fmt)
        sign, exponent, mantissa = fields(bits, fmt)
        text = f"{sign} {exponent:0{fmt.exponent_bits}b} {mantissa:0{fmt.mantissa_bits}b}"
        value = decode(bits, fmt)
        rows.append({"format": fmt.name, "bits": text, "value": value, "error": value - math.pi})
    bits = int8_encode(math.pi)
    value = int8_decode(bits)
    rows.append({"format": "int8", "bits": f"{bits:08b}", "value": float(value), "error": value - math.pi})
    return rows


@dataclass(frozen=True)
class Erratum:
    """A claim of the source text, in Chinese and English, and what is right."""

    quote: str
    english: str
    correction: str


SOURCE_ERRATA = (
    Erratum(
        quote="真实指数=存储指数−(2^指数位数-1)=128−127=1",
        english="real exponent = stored exponent − (2^(exponent bits) − 1) = 128 − 127 = 1",
        correction="The bias is 2^(k-1) - 1 for k exponent bits: 2^7 - 1 = 127 for fp32. The formula as "
        "written gives 2^8 - 1 = 255; only the numbers 128 - 127 = 1 are right. See bias_for().",
    ),
    Erratum(
        quote="fp8允许用户根据任务分配剩余的7位给指数或尾数",
        english="fp8 lets the user split the remaining 7 bits between exponent and mantissa as the task needs",
        correction="fp8 is two standard formats (Micikevicius et al. 2022, OCP): E4M3 (bias 7, max 448, no inf, "
        "more precision, used for weights and activations) and E5M2 (bias 15, max 57344, IEEE inf/NaN, more range, "
        "used for gradients). Hardware and PyTorch support these two, not any split.",
    ),
    Erratum(
        quote="int8类型的量化可以理解为没有指数位,7位全部给到尾数因此范围是-128~127",
        english="int8 can be seen as having no exponent bits, all 7 bits going to the mantissa, hence the range -128 to 127",
        correction="int8 is an integer format, not a float: 8-bit two's complement, -128..127, evenly spaced by 1. "
        "There is no sign bit + mantissa split (that would give -127..127 and two zeros); -128 is 0b10000000.",
    ),
)
