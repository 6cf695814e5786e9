"""Checks for lesson 04's number-format exercises: decode fp16 bits, round float32 to bf16."""

from __future__ import annotations

import math

import numpy as np
import torch

from course_lib import formats
from course_lib.checks.common import call, expect_tensor, new_generator
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
        if not (got == expected or (math.isnan(got) and math.isnan(expected))):
            _expect_float(got, expected, f"decode_fp16({bits:#06x} = 0b{bits:016b})")


def _bf16_reference(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def check_round_to_bf16(round_to_bf16, seed: int | None = None, n: int = 20000) -> None:
    """``round_to_bf16(x)`` on random float32 tensors: bit-exact against ``x.to(torch.bfloat16).float()``."""
    round_to_bf16 = watched(round_to_bf16, ROUND_TO_BF16)
    gen, seed = new_generator(seed)
    x = torch.randn(n, generator=gen) * torch.exp(torch.randn(n, generator=gen) * 8)
    what = f"round_to_bf16(x) for {n} random float32 values (seed {seed})"
    got = call(round_to_bf16, x, what=what)
    expect_tensor(got, _bf16_reference(x), what, atol=0.0, rtol=0.0)
    x = torch.randn(3, 4, 5, generator=gen)
    what = "round_to_bf16(x) for a (3, 4, 5) tensor"
    expect_tensor(call(round_to_bf16, x, what=what), _bf16_reference(x), what, atol=0.0, rtol=0.0)


def check_round_to_bf16_edge_cases(round_to_bf16) -> None:
    """Ties (to even), values just above and below a tie, the largest values, subnormals, infinities and NaN."""
    round_to_bf16 = watched(round_to_bf16, ROUND_TO_BF16)
    one = torch.tensor([1.0]).view(torch.int32)
    ties = [(one + 0x8000 + k * 0x10000).view(torch.float32) for k in range(4)]  # 1 + half an ulp of bf16, and further ties
    pattern = torch.tensor(
        [0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7FFFFF, 0x7F7F7FFF, 0x00000001, 0x00018000, 0x80000000, 0xBF808000 - 2**32],
        dtype=torch.int64,
    ).to(torch.int32).view(torch.float32)
    x = torch.cat([*ties, pattern, torch.tensor([0.0, -0.0, math.inf, -math.inf, 3.14159265, -2.5e38, 1e-40])])
    what = f"round_to_bf16 on ties and extremes {x.tolist()}"
    expect_tensor(call(round_to_bf16, x, what=what), _bf16_reference(x), what, atol=0.0, rtol=0.0)
    got_sign = torch.signbit(round_to_bf16(torch.tensor([-0.0])))
    if not bool(got_sign[0]):
        raise AssertionError("round_to_bf16(-0.0) must keep the sign bit")
    nans = torch.tensor([0x7FC00000, 0x7FFFFFFF, 0x7F80FFFF, 0x7FFF8000, 0xFFFFFFFF - 2**32], dtype=torch.int64).to(torch.int32).view(torch.float32)
    got = round_to_bf16(nans)
    if type(got) is not torch.Tensor or got.dtype != torch.float32 or not torch.isnan(got).all():
        raise AssertionError(
            "round_to_bf16 must keep every NaN a NaN: rounding a NaN's mantissa can carry into the exponent "
            f"and give inf or 0; for NaN bit patterns {[hex(b & 0xFFFFFFFF) for b in nans.view(torch.int32).tolist()]} got {got}"
        )
    pi = round_to_bf16(torch.tensor([math.pi]))
    if pi.item() != formats.round_to(math.pi, formats.BF16):
        raise AssertionError(f"round_to_bf16(pi) should be {formats.round_to(math.pi, formats.BF16)}, got {pi.item()}")
