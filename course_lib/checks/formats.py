"""Checks for lesson 04's number-format exercises: decode fp16 bits, round float32 to bf16."""

from __future__ import annotations

import math

import numpy as np
import torch

from course_lib import formats
from course_lib.checks.common import call_explained, expect_same_device, expect_tensor, new_generator
from course_lib.checks.guard import Rules, watched


DECODE_FP16 = Rules(
    "decode_fp16", modules=("course_lib.formats", "numpy", "struct", "_struct", "ml_dtypes"), dtypes=("float16",),
    functions=("torch.Tensor.numpy", "torch.from_numpy", "torch.frombuffer"),
    why="The exercise is to take the 16 bits apart with shifts and masks and compute the value with math, "
        "without numpy, struct, ml_dtypes, torch.float16 or course_lib.formats.",
)
ROUND_TO_BF16 = Rules(
    "round_to_bf16", modules=("course_lib.formats", "numpy", "ml_dtypes"), dtypes=("bfloat16",),
    functions=("torch.Tensor.numpy", "torch.from_numpy"),
    why="The exercise is to round with integer operations on x.view(torch.int32), without making a torch.bfloat16 tensor.",
)


def _expect_float(got, expected: float, what: str) -> None:
    if type(got) is not float:
        raise AssertionError(f"{what} should return a Python float, got {type(got).__name__} ({got!r})")
    if math.isnan(expected):
        if not math.isnan(got):
            raise AssertionError(f"{what} should be nan, got {got!r}")
        return
    if got != expected or math.copysign(1.0, got) != math.copysign(1.0, expected):
        raise AssertionError(f"{what} should be exactly {expected!r}, got {got!r}")


def _numpy_fp16(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def check_decode_fp16(decode_fp16, seed: int | None = None, n_cases: int = 300) -> None:
    """``decode_fp16(bits)`` on random 16-bit patterns (normal numbers), against numpy's float16."""
    decode_fp16 = watched(decode_fp16, DECODE_FP16)
    gen, seed = new_generator(seed)
    patterns = torch.randint(0, 2**16, (n_cases,), generator=gen).tolist()
    for bits in patterns:
        exponent = (bits >> 10) & 0x1F
        if exponent in (0, 31):  # subnormals, inf and nan are the edge cases
            continue
        _expect_float(decode_fp16(bits), _numpy_fp16(bits), f"decode_fp16({bits:#06x} = 0b{bits:016b}) (seed {seed})")


def check_decode_fp16_edge_cases(decode_fp16) -> None:
    """Zeros, subnormals, the largest value, infinities and NaN: every one of the 65,536 patterns."""
    decode_fp16 = watched(decode_fp16, DECODE_FP16)
    for bits in (0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0x4248, 0x3C00, 0xC000):
        _expect_float(decode_fp16(bits), _numpy_fp16(bits), f"decode_fp16({bits:#06x} = 0b{bits:016b})")
    every = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64)
    for bits in range(2**16):
        got = decode_fp16(bits)
        expected = float(every[bits])
        if not _same_float(got, expected):
            _expect_float(got, expected, f"decode_fp16({bits:#06x} = 0b{bits:016b})")


def _same_float(got, expected: float) -> bool:
    """Whether ``got`` is a Python float equal to ``expected``, with the same sign (for zeros), or both nan."""
    if type(got) is not float:
        return False
    if math.isnan(expected):
        return math.isnan(got)
    return got == expected and math.copysign(1.0, got) == math.copysign(1.0, expected)


def _bf16_reference(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def _float32_from_bits(bits) -> torch.Tensor:
    """float32 values with the given 32-bit patterns (an int64 tensor or a list of ints in [0, 2**32))."""
    bits = torch.as_tensor(bits, dtype=torch.int64)
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)


def _hex(x: torch.Tensor) -> list[str]:
    return [f"{b & 0xFFFFFFFF:#010x}" for b in x.reshape(-1).view(torch.int32).tolist()]


def _expect_bf16(got, x: torch.Tensor, what: str) -> None:
    """Fail unless ``got`` is ``x`` rounded to bf16, bit for bit (so -0.0 is not 0.0); ``x`` holds no NaN."""
    expected = _bf16_reference(x)
    expect_tensor(got, expected, what, atol=0.0, rtol=0.0)
    wrong = (got.view(torch.int32) != expected.view(torch.int32)).reshape(-1).nonzero()[:5, 0]
    if len(wrong):
        flat_x, flat_e, flat_g = (t.reshape(-1)[wrong] for t in (x, expected, got))
        raise AssertionError(f"{what} has wrong bits (the sign of zero counts): for x = {_hex(flat_x)} "
                             f"expected {_hex(flat_e)}, got {_hex(flat_g)}")


def _random_float32_patterns(gen, n: int) -> torch.Tensor:
    """``n`` float32 numbers with uniformly random bit patterns (subnormals to near-overflow, both signs), no inf or nan."""
    bits = torch.randint(0, 2**32, (n,), generator=gen, dtype=torch.int64)
    special = (bits >> 23) & 0xFF == 0xFF
    return _float32_from_bits(torch.where(special, bits ^ 0x40000000, bits))


def _random_ties(gen, n: int) -> torch.Tensor:
    """``n`` float32 numbers exactly halfway between two bf16 numbers: the low 16 bits are 0x8000."""
    kept = torch.randint(0, 0xFF80, (n,), generator=gen, dtype=torch.int64)  # sign, exponent < 255, 7 mantissa bits
    kept = torch.where((kept & 0x7F80) == 0x7F80, kept ^ 0x4000, kept)
    return _float32_from_bits((kept << 16) | 0x8000)


def check_round_to_bf16(round_to_bf16, seed: int | None = None, n: int = 20000) -> None:
    """``round_to_bf16(x)`` on random float32 tensors: bit-exact against ``x.to(torch.bfloat16).float()``.

    Values of every magnitude, random bit patterns (subnormals, near overflow, both signs),
    exact ties, and a transposed (non-contiguous) tensor.
    """
    round_to_bf16 = watched(round_to_bf16, ROUND_TO_BF16)
    gen, seed = new_generator(seed)
    third = n // 3
    x = torch.randn(third, generator=gen) * torch.exp(torch.randn(third, generator=gen) * 8)
    x = torch.cat([x, _random_float32_patterns(gen, third), _random_ties(gen, n - 2 * third)])
    what = f"round_to_bf16(x) for {n} random float32 values, ties among them (seed {seed})"
    _expect_bf16(call_explained(round_to_bf16, x, what=what), x, what)
    x = torch.randn(5, 4, 3, generator=gen).permute(2, 1, 0)
    what = f"round_to_bf16(x) for a (3, 4, 5) tensor x = torch.randn(5, 4, 3).permute(2, 1, 0), not contiguous (seed {seed})"
    _expect_bf16(call_explained(round_to_bf16, x, what=what), x, what)


# Ties (low 16 bits 0x8000) and their neighbours (0x7FFF, 0x8001) for kept parts (sign, exponent,
# 7 mantissa bits) that are even and odd: around 1 and 3, in subnormals, across the boundary
# to the normal numbers, and next to overflow (0x7F7F8000 rounds to inf).
_KEPT_PARTS = (0x3F80, 0x3F81, 0x4049, 0x404A, 0x0000, 0x0001, 0x0010, 0x0011, 0x007E, 0x007F, 0x7F7E, 0x7F7F)
TIE_PATTERNS = tuple(sign | kept << 16 | low for kept in _KEPT_PARTS for sign in (0, 0x80000000) for low in (0x8000, 0x7FFF, 0x8001))
EXTREME_PATTERNS = (0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x00000000, 0x80000000,
                    0x7F800000, 0xFF800000)


def check_round_to_bf16_edge_cases(round_to_bf16) -> None:
    """Ties (to even) for both signs and every range, the largest values, subnormals, infinities and NaN, other shapes, the device."""
    round_to_bf16 = watched(round_to_bf16, ROUND_TO_BF16)
    x = _float32_from_bits(TIE_PATTERNS)
    what = f"round_to_bf16(x) on exact ties and their neighbours, x = {_hex(x)}"
    _expect_bf16(call_explained(round_to_bf16, x, what=what), x, what)
    x = torch.cat([_float32_from_bits(EXTREME_PATTERNS), torch.tensor([3.14159265, -2.5e38, 1e-40, -1e-40])])
    what = f"round_to_bf16(x) on extremes x = {x.tolist()}"
    _expect_bf16(call_explained(round_to_bf16, x, what=what), x, what)
    for x, label in ((torch.tensor([-0.0]), "[-0.0]"), (torch.tensor([1.00390625]), "a single tie [1.00390625]"),
                     (torch.empty(0, 3), "an empty (0, 3) tensor"), (_float32_from_bits(TIE_PATTERNS[:24]).reshape(4, 6).t(), "transposed ties")):
        what = f"round_to_bf16(x) for {label}"
        _expect_bf16(call_explained(round_to_bf16, x, what=what), x, what)
    nans = _float32_from_bits([0x7FC00000, 0x7FFFFFFF, 0x7F80FFFF, 0x7FFF8000, 0xFFFFFFFF, 0x7F808000, 0xFF800001])
    got = call_explained(round_to_bf16, nans, what="round_to_bf16(x) for NaNs")
    if type(got) is not torch.Tensor or got.dtype != torch.float32 or got.shape != nans.shape or not torch.isnan(got).all():
        raise AssertionError(
            "round_to_bf16 must keep every NaN a NaN: rounding a NaN's mantissa can carry into the exponent "
            f"and give inf or 0; for NaN bit patterns {_hex(nans)} got {got}"
        )
    pi = call_explained(round_to_bf16, torch.tensor([math.pi]), what="round_to_bf16(torch.tensor([math.pi]))")
    if pi.item() != formats.round_to(math.pi, formats.BF16):
        raise AssertionError(f"round_to_bf16(pi) should be {formats.round_to(math.pi, formats.BF16)}, got {pi.item()}")
    expect_same_device(round_to_bf16, torch.randn(4, 6).t(), what="round_to_bf16(x) for x on another device")
