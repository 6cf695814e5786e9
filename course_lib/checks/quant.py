"""Checks for lesson 04's quantization exercises: absmax int8 and per-block int4."""

from __future__ import annotations

import torch

from course_lib import quant
from course_lib.checks.common import call, expect_tensor, new_generator, randint
from course_lib.checks.guard import Rules, watched


_QUANT_OPS = ("aten.quantize_per*", "aten.fake_quantize*", "aten._fake_quantize*", "aten.dequantize*")
ABSMAX_INT8 = Rules(
    "absmax_int8", modules=("course_lib.quant", "course_lib.formats"), ops=_QUANT_OPS,
    why="The exercise is to compute the scale and the codes yourself, without course_lib.quant or PyTorch's quantization functions.",
)
QUANTIZE_INT4_BLOCKS = Rules(
    "quantize_int4_blocks", modules=("course_lib.quant", "course_lib.formats"), ops=_QUANT_OPS,
    why="The exercise is to compute the scales and the codes yourself, without course_lib.quant or PyTorch's quantization functions.",
)


def _expect_pair(got, what: str):
    if not isinstance(got, tuple) or len(got) != 2:
        raise AssertionError(f"{what} should return a tuple (q, scale), got {type(got).__name__}")
    return got


def _weights(gen, shape, dtype=torch.float32):
    w = torch.randn(shape, generator=gen, dtype=torch.float64) * float(torch.empty(1).uniform_(0.01, 3.0, generator=gen))
    return w.to(dtype)


def check_absmax_int8(absmax_quantize_int8, absmax_dequantize_int8, seed: int | None = None, n_cases: int = 10) -> None:
    """``absmax_quantize_int8(w) -> (q, scale)`` (one scale for the whole tensor) and ``absmax_dequantize_int8(q, scale)``."""
    absmax_quantize_int8 = watched(absmax_quantize_int8, ABSMAX_INT8)
    absmax_dequantize_int8 = watched(absmax_dequantize_int8, ABSMAX_INT8)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        shape = tuple(randint(gen, 1, 9) for _ in range(randint(gen, 1, 3)))
        dtype = (torch.float32, torch.float64)[case % 2]
        w = _weights(gen, shape, dtype)
        what = f"absmax_quantize_int8(w) for w of shape {shape} and {dtype} (seed {seed})"
        q, scale = _expect_pair(call(absmax_quantize_int8, w, what=what), what)
        q_ref, scale_ref = quant.absmax_quantize(w, bits=8)
        expect_tensor(scale, scale_ref, f"the scale of {what}")
        expect_tensor(q, q_ref, f"q of {what}")
        back = f"absmax_dequantize_int8(q, scale) after {what}"
        expect_tensor(call(absmax_dequantize_int8, q_ref, scale_ref, what=back), quant.absmax_dequantize(q_ref, scale_ref), back)


def check_absmax_int8_edge_cases(absmax_quantize_int8, absmax_dequantize_int8) -> None:
    """An all-zero tensor (no division by zero), the extremes map to +-127, ties round to even, and an outlier."""
    absmax_quantize_int8 = watched(absmax_quantize_int8, ABSMAX_INT8)
    absmax_dequantize_int8 = watched(absmax_dequantize_int8, ABSMAX_INT8)
    w = torch.zeros(4, 4)
    q, scale = absmax_quantize_int8(w)
    expect_tensor(scale, torch.tensor(0.0), "the scale of an all-zero tensor")
    expect_tensor(q, torch.zeros(4, 4, dtype=torch.int8), "q of an all-zero tensor")
    expect_tensor(absmax_dequantize_int8(q, scale), w, "dequantizing an all-zero tensor")
    w = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 127 / 254, 3 * 2 / 254])  # 0.5 and 1.5 steps: ties go to even
    q, scale = absmax_quantize_int8(w)
    q_ref, scale_ref = quant.absmax_quantize(w, bits=8)
    expect_tensor(q, q_ref, f"q of {w.tolist()} (the extremes become -127 and 127, ties round to even)")
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    w[7] = 60.0
    q, scale = absmax_quantize_int8(w)
    q_ref, scale_ref = quant.absmax_quantize(w, bits=8)
    expect_tensor(q, q_ref, "q of a tensor with one outlier (60.0)")
    expect_tensor(absmax_dequantize_int8(q, scale), quant.absmax_dequantize(q_ref, scale_ref), "dequantized tensor with one outlier")


def check_blockwise_int4(quantize_int4_blocks, seed: int | None = None, n_cases: int = 8) -> None:
    """``quantize_int4_blocks(w, block_size=64) -> (q, scales)``: absmax int4 codes in [-7, 7], one scale per block of the flattened tensor."""
    quantize_int4_blocks = watched(quantize_int4_blocks, QUANTIZE_INT4_BLOCKS)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        block = (64, 32, 16, 8)[case % 4]
        shape = (randint(gen, 1, 6), block * randint(gen, 1, 4))
        w = _weights(gen, shape)
        w[randint(gen, 0, shape[0] - 1), randint(gen, 0, shape[1] - 1)] *= 20  # one block gets a large value
        what = f"quantize_int4_blocks(w, block_size={block}) for w of shape {shape} (seed {seed})"
        q, scales = _expect_pair(call(quantize_int4_blocks, w, block_size=block, what=what), what)
        q_ref, scales_ref = quant.absmax_quantize(w, bits=4, block_size=block)
        expect_tensor(scales, scales_ref, f"the scales of {what}")
        expect_tensor(q, q_ref, f"q of {what}")


def check_blockwise_int4_edge_cases(quantize_int4_blocks) -> None:
    """The default block size of 64, a zero block among others, and blocks that run across rows."""
    quantize_int4_blocks = watched(quantize_int4_blocks, QUANTIZE_INT4_BLOCKS)
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    w[2] = 0.0
    q, scales = quantize_int4_blocks(w)
    q_ref, scales_ref = quant.absmax_quantize(w, bits=4, block_size=64)
    expect_tensor(scales, scales_ref, "scales with the default block_size=64 and an all-zero row")
    expect_tensor(q, q_ref, "q with the default block_size=64 and an all-zero row")
    w = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))  # 96 values: blocks of 48 cross rows
    w[0, :16] *= 10
    q, scales = quantize_int4_blocks(w, block_size=48)
    q_ref, scales_ref = quant.absmax_quantize(w, bits=4, block_size=48)
    expect_tensor(scales, scales_ref, "scales for blocks of 48 over a (3, 32) tensor (blocks run across rows)")
    expect_tensor(q, q_ref, "q for blocks of 48 over a (3, 32) tensor")
