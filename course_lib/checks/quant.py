"""Checks for lesson 04's quantization exercises: absmax int8 and per-block int4."""

from __future__ import annotations

import math

import torch

from course_lib import quant
from course_lib.checks.common import call_explained, expect_same_device, expect_tensor, new_generator, randint
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


def _non_contiguous(w: torch.Tensor) -> torch.Tensor:
    """The same values (same shape, same logical order) stored the other way round: ``w.t()`` of a copy, for any dims."""
    dims = tuple(reversed(range(w.dim())))
    return w.permute(dims).contiguous().permute(dims)


def _tie_grid(gen, n_groups: int, group: int, q_max: int, dtype) -> torch.Tensor:
    """Groups whose max|w| is ``q_max * 2**e`` (so the scale is ``2**e`` exactly) and whose values are halves ``k/2 * 2**e``.

    ``w / scale`` is then exact, and half of the values are ties: 0.5, 1.5, -2.5, ...
    """
    halves = torch.randint(-2 * q_max, 2 * q_max + 1, (n_groups, group), generator=gen).to(dtype) / 2
    where_max = torch.randint(0, group, (n_groups,), generator=gen)
    signs = 1.0 - 2 * torch.randint(0, 2, (n_groups,), generator=gen).to(dtype)
    halves[torch.arange(n_groups), where_max] = q_max * signs
    powers = torch.randint(-20, 21, (n_groups, 1), generator=gen).to(dtype)
    return (halves * 2.0**powers).reshape(-1)


def _subnormal(k: int, dtype) -> float:
    """``k`` times the smallest positive subnormal number of ``dtype``."""
    return k * 2.0 ** (-149 if dtype == torch.float32 else -1074)


def _expect_quantized(got, w: torch.Tensor, what: str, bits: int, block_size: int | None = None) -> None:
    """Fail unless ``got`` is ``(q, scale)`` of absmax quantization of ``w``: q exactly, the scales to the last few bits."""
    q, scale = _expect_pair(got, what)
    q_ref, scale_ref = quant.absmax_quantize(w, bits=bits, block_size=block_size)
    tight = 4 * torch.finfo(w.dtype).eps  # relative: a tiny scale must not pass as "close to 0"
    expect_tensor(scale, scale_ref, f"the scale{'s' if block_size else ''} of {what}", atol=0.0, rtol=tight)
    expect_tensor(q, q_ref, f"q of {what}")


def _expect_dequantized(absmax_dequantize_int8, q: torch.Tensor, scale: torch.Tensor, what: str) -> None:
    """Fail unless ``absmax_dequantize_int8(q, scale)`` is ``q * scale`` in scale's dtype, to the last few bits."""
    got = call_explained(absmax_dequantize_int8, q, scale, what=what)
    expect_tensor(got, quant.absmax_dequantize(q, scale), what, atol=0.0, rtol=4 * torch.finfo(scale.dtype).eps)


def _int8_case(gen, case: int) -> tuple[torch.Tensor, str]:
    """Random weights for case number ``case``: float32 and float64 in turn, Gaussian or exact ties, contiguous or not."""
    dtype = (torch.float32, torch.float64)[case % 2]
    shape = tuple(randint(gen, 1, 9) for _ in range(randint(gen, 1, 3)))
    if case % 4 >= 2:
        w, kind = _tie_grid(gen, 1, math.prod(shape), 127, dtype).reshape(shape), "exact ties (max|w| = 127 * 2**e)"
    else:
        w, kind = _weights(gen, shape, dtype), "Gaussian"
    if case % 3 == 2 and w.dim() >= 2:
        return _non_contiguous(w), f"{kind}, not contiguous"
    return w, kind


def check_absmax_int8(absmax_quantize_int8, absmax_dequantize_int8, seed: int | None = None, n_cases: int = 12) -> None:
    """``absmax_quantize_int8(w) -> (q, scale)`` (one scale for the whole tensor) and ``absmax_dequantize_int8(q, scale)``."""
    absmax_quantize_int8 = watched(absmax_quantize_int8, ABSMAX_INT8)
    absmax_dequantize_int8 = watched(absmax_dequantize_int8, ABSMAX_INT8)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        w, kind = _int8_case(gen, case)
        what = f"absmax_quantize_int8(w) for w of shape {tuple(w.shape)} and {w.dtype}, {kind} (seed {seed})"
        _expect_quantized(call_explained(absmax_quantize_int8, w, what=what), w, what, bits=8)
        q = torch.randint(-127, 128, w.shape, generator=gen, dtype=torch.int8)
        scale = torch.tensor(float(torch.empty(()).uniform_(1e-3, 1.0, generator=gen)), dtype=w.dtype)
        _expect_dequantized(absmax_dequantize_int8, q, scale, f"absmax_dequantize_int8(q, scale) for random int8 q of shape "
                                                              f"{tuple(q.shape)} and a {scale.dtype} scale (seed {seed})")


def _int8_edge_cases() -> list[tuple[torch.Tensor, str]]:
    """(w, what it is) for the edge cases of absmax int8."""
    ties = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5, 62.5, -63.5, 125.5, -126.5, 0.0, 1.0, -127.0, 127.0]
    cases = []
    for dtype in (torch.float32, torch.float64):
        tiny = _subnormal(1, dtype)
        cases += [
            (torch.zeros(4, 4, dtype=dtype), "an all-zero tensor (no division by zero: scale 0, codes 0)"),
            (torch.zeros((), dtype=dtype), "an all-zero 0-d tensor"),
            (torch.tensor(ties, dtype=dtype), "exact ties with max|w| = 127, scale 1 (ties to even)"),
            (torch.tensor(ties, dtype=dtype) * 2.0**-3, "exact ties with scale 2**-3"),
            (torch.tensor(ties, dtype=dtype).reshape(4, 4) * 2.0**10, "exact ties with scale 2**10, as a (4, 4) tensor"),
            (torch.tensor([1e-40, -3e-41, 5e-42, 0.0], dtype=dtype), "tiny weights (max|w| = 1e-40)"),
            (torch.tensor([190 * tiny, -64 * tiny, 3 * tiny, 0.0], dtype=dtype), "subnormal weights whose max / scale rounds to 190 (clamp to 127)"),
            (torch.tensor([63 * tiny, -tiny, 0.0], dtype=dtype), "weights so tiny that max|w| / 127 underflows to 0 (scale 0, codes 0)"),
            (torch.tensor([-3.0], dtype=dtype), "a single weight"),
            (torch.tensor(2.5, dtype=dtype), "a 0-d tensor"),
            (_non_contiguous(torch.arange(-12, 12, dtype=dtype).reshape(4, 6) + 0.5), "a non-contiguous (4, 6) tensor (w.t() of a (6, 4) one)"),
        ]
    cases += [
        (torch.tensor([1e-300, -4e-301, 1e-310, 0.0], dtype=torch.float64), "tiny float64 weights (max|w| = 1e-300)"),
        (torch.tensor([1e-310, -3e-311, 0.0], dtype=torch.float64), "subnormal float64 weights (max|w| = 1e-310)"),
        (torch.tensor([3e38, -1.5e38, 1e37, 2.0, -3.4e38]), "huge float32 weights (w * 127 overflows)"),
        (torch.tensor([1e308, -1.7e308, 5e307, 1.0], dtype=torch.float64), "huge float64 weights (w * 127 overflows)"),
        (torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 127 / 254, 3 * 2 / 254]), "[-2, -1, 0, 1, 2, ...] (the extremes become -127 and 127)"),
    ]
    outlier = torch.randn(64, generator=torch.Generator().manual_seed(0))
    outlier[7] = 60.0
    return cases + [(outlier, "a tensor with one outlier (60.0)")]


def check_absmax_int8_edge_cases(absmax_quantize_int8, absmax_dequantize_int8) -> None:
    """All zeros, exact ties (to even), tiny, subnormal and huge weights, 0-d and non-contiguous tensors, the device."""
    absmax_quantize_int8 = watched(absmax_quantize_int8, ABSMAX_INT8)
    absmax_dequantize_int8 = watched(absmax_dequantize_int8, ABSMAX_INT8)
    for w, label in _int8_edge_cases():
        shown = f": w = {w.tolist()}" if w.numel() <= 16 else f" of shape {tuple(w.shape)}"
        what = f"absmax_quantize_int8(w) for {label}{shown} ({w.dtype})"
        got = call_explained(absmax_quantize_int8, w, what=what)
        _expect_quantized(got, w, what, bits=8)
        q, scale = got
        _expect_dequantized(absmax_dequantize_int8, q, scale, f"absmax_dequantize_int8(q, scale) after {what}")
    q = _non_contiguous(torch.arange(-127, 128, 17, dtype=torch.int8).reshape(3, 5))
    _expect_dequantized(absmax_dequantize_int8, q, torch.tensor(0.25, dtype=torch.float64), "absmax_dequantize_int8(q, 0.25) for a non-contiguous q")
    w = _non_contiguous(torch.randn(5, 6))
    expect_same_device(absmax_quantize_int8, w, what="absmax_quantize_int8(w) for w on another device")
    expect_same_device(absmax_dequantize_int8, torch.zeros(5, 6, dtype=torch.int8), torch.tensor(0.5),
                       what="absmax_dequantize_int8(q, scale) for q and scale on another device")


def _int4_case(gen, case: int) -> tuple[torch.Tensor, int, str]:
    """Random weights and a block size for case ``case``: float32 and float64, any number of dims, ties or Gaussian, contiguous or not."""
    dtype = (torch.float32, torch.float64)[case % 2]
    block = (64, 32, 16, 8, 48, 5)[case % 6]
    n_blocks = 2 * randint(gen, 1, 6)
    n = block * n_blocks
    shape = ((n,), (2, n // 2), (n_blocks, block), (n_blocks // 2, 2, block), (block, n_blocks))[randint(gen, 0, 4)]
    if case % 4 >= 2:
        w, kind = _tie_grid(gen, n_blocks, block, 7, dtype).reshape(shape), "exact ties (max|block| = 7 * 2**e)"
    else:
        w, kind = _weights(gen, shape, dtype), "Gaussian"
        w.reshape(-1)[randint(gen, 0, n - 1)] *= 20  # one block gets a large value
    if case % 3 == 1 and w.dim() >= 2:
        return _non_contiguous(w), block, f"{kind}, not contiguous"
    return w, block, kind


def _call_int4(quantize_int4_blocks, w: torch.Tensor, block: int, style: int, label: str):
    """Call with block_size by keyword (style 0), positionally (1) or left to its default of 64 (2, for blocks of 64)."""
    if style == 2 and block == 64:
        what = f"quantize_int4_blocks(w) (the default block_size=64) for w of shape {tuple(w.shape)} and {w.dtype}, {label}"
        return call_explained(quantize_int4_blocks, w, what=what), what
    if style == 1:
        what = f"quantize_int4_blocks(w, {block}) for w of shape {tuple(w.shape)} and {w.dtype}, {label}"
        return call_explained(quantize_int4_blocks, w, block, what=what), what
    what = f"quantize_int4_blocks(w, block_size={block}) for w of shape {tuple(w.shape)} and {w.dtype}, {label}"
    return call_explained(quantize_int4_blocks, w, block_size=block, what=what), what


def check_blockwise_int4(quantize_int4_blocks, seed: int | None = None, n_cases: int = 12) -> None:
    """``quantize_int4_blocks(w, block_size=64) -> (q, scales)``: absmax int4 codes in [-7, 7], one scale per block of the flattened tensor."""
    quantize_int4_blocks = watched(quantize_int4_blocks, QUANTIZE_INT4_BLOCKS)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        w, block, kind = _int4_case(gen, case)
        got, what = _call_int4(quantize_int4_blocks, w, block, case % 3, f"{kind} (seed {seed})")
        _expect_quantized(got, w, what, bits=4, block_size=block)


def _int4_edge_cases() -> list[tuple[torch.Tensor, int | None, str]]:
    """(w, block_size or None for the default, what it is) for the edge cases of per-block int4."""
    zero_row = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    zero_row[2] = 0.0
    across = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    across[0, :16] *= 10
    ties = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5, 4.5, -5.5, 6.5, -6.5, 7.0, 0.0, 1.0, -7.0]
    cases = [(zero_row, None, "the default block_size=64, an all-zero row (scale 0, codes 0)"),
             (across, 48, "blocks of 48 over a (3, 32) tensor (blocks run across rows)")]
    for dtype in (torch.float32, torch.float64):
        tiny = _subnormal(1, dtype)
        cases += [
            (torch.tensor(ties, dtype=dtype).reshape(2, 8), 8, "exact ties with max|block| = 7, scale 1 (ties to even)"),
            (torch.tensor(ties, dtype=dtype) * torch.tensor([2.0**-3] * 8 + [2.0**6] * 8, dtype=dtype), 8, "exact ties with scales 2**-3 and 2**6"),
            (torch.tensor([1e-40, -5e-41, 2e-41, 0.0, 10 * tiny, -7 * tiny, 3 * tiny, tiny, 3 * tiny, -tiny, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=dtype), 4,
             "tiny blocks: max 1e-40; subnormal, max / scale = 10 (clamp to 7); max / 7 underflows to 0 (scale 0, codes 0); all zero"),
            (torch.tensor([-3.0], dtype=dtype), 1, "a single weight"),
            (torch.tensor(2.5, dtype=dtype), 1, "a 0-d tensor with block_size=1"),
            (_non_contiguous(torch.arange(-12, 12, dtype=dtype).reshape(4, 6) * 0.25), 8, "a non-contiguous (4, 6) tensor: blocks follow the logical order"),
            (torch.arange(-12, 12, dtype=dtype).reshape(2, 3, 4) * 0.5, 6, "a (2, 3, 4) tensor"),
        ]
    cases += [
        (torch.tensor([1e-300, -4e-301, 1e-310, 0.0, 1e-310, -3e-311, 0.0, 0.0], dtype=torch.float64), 4, "tiny float64 blocks (max 1e-300 and 1e-310)"),
        (torch.tensor([3e38, -1.5e38, 1e37, 2.0, 1.0, -0.5, 0.25, 0.0]), 4, "a block of huge float32 weights (w * 7 overflows)"),
        (torch.tensor([1e308, -1.7e308, 5e307, 1.0, 1.0, -0.5, 0.25, 0.0], dtype=torch.float64), 4, "a block of huge float64 weights"),
    ]
    return cases


def check_blockwise_int4_edge_cases(quantize_int4_blocks) -> None:
    """The default block size of 64, zero blocks, blocks across rows, exact ties, tiny, subnormal and huge blocks, other shapes, the device."""
    quantize_int4_blocks = watched(quantize_int4_blocks, QUANTIZE_INT4_BLOCKS)
    for i, (w, block, label) in enumerate(_int4_edge_cases()):
        got, what = _call_int4(quantize_int4_blocks, w, block or 64, 2 if block is None else i % 2, label)
        _expect_quantized(got, w, f"{what}: w = {w.tolist()}" if w.numel() <= 16 else what, bits=4, block_size=block or 64)
    expect_same_device(quantize_int4_blocks, _non_contiguous(torch.randn(4, 32)), block_size=16,
                       what="quantize_int4_blocks(w, block_size=16) for w on another device")


# --------------------------------------------------------------------------- capstone: packed int4 with zero points

INT4_PACKED = Rules(
    "int4_packed", modules=("course_lib.quant", "course_lib.formats", "course_lib.int4", "course_lib.gptq"), ops=_QUANT_OPS,
    why="The exercise is to compute the grid, the codes and the packing yourself, without course_lib.quant, "
        "course_lib.int4, course_lib.gptq or PyTorch's quantization functions.",
)
PACKED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def reference_int4_packed(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The checks' reference: ``(packed uint8 (out, in/2), scale float32 (out, in/g), zero uint8 (out, in/g))``.

    Per group, computed in float32: ``low = min(w, 0)``, ``high = max(w, 0)``, ``scale = (high - low) / 15``,
    ``zero = round(-low / scale)``, ``code = clamp(round(w / scale) + zero, 0, 15)``; a group whose scale
    is 0 is divided by 1 instead (zero 0, codes 0). Byte ``j``: code ``2j`` in the low nibble, ``2j + 1``
    in the high nibble (course_lib.int4's layout).
    """
    out, n = w.shape
    x = w.detach().to(torch.float32).reshape(out, n // group_size, group_size)
    low = x.amin(dim=2).clamp(max=0)
    high = x.amax(dim=2).clamp(min=0)
    scale = (high - low) / 15
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-low / safe)
    codes = torch.clamp(torch.round(x / safe[..., None]) + zero[..., None], 0, 15).to(torch.uint8).reshape(out, n)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, scale, zero.to(torch.uint8)


def _unpack_reference(packed: torch.Tensor) -> torch.Tensor:
    """Codes (out, 2 * bytes) from packed bytes, low nibble first (course_lib.int4's layout)."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], 2 * packed.shape[1])


def _expect_triple(got, what: str):
    if not isinstance(got, tuple) or len(got) != 3:
        raise AssertionError(f"{what} should return a tuple (packed, scale, zero), got {type(got).__name__}")
    return got


def _expect_packed(got, w: torch.Tensor, group_size: int, what: str) -> None:
    """Fail unless ``got`` is the reference's (packed, scale, zero) for ``w``, with a message that says which part is wrong."""
    packed, scale, zero = _expect_triple(got, what)
    ref_packed, ref_scale, ref_zero = reference_int4_packed(w, group_size)
    for name, t, dtype, shape in (("packed", packed, torch.uint8, ref_packed.shape), ("scale", scale, torch.float32, ref_scale.shape),
                                  ("zero", zero, torch.uint8, ref_zero.shape)):
        if type(t) is not torch.Tensor or t.dtype != dtype or t.shape != shape:
            got_text = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise AssertionError(f"{what}: {name} should be a {dtype} tensor of shape {tuple(shape)}, got {got_text}")
    if not torch.isfinite(scale).all():
        raise AssertionError(f"{what}: scale holds NaN or inf (a group of zeros has scale 0: divide it by 1 instead)")
    expect_tensor(scale, ref_scale, f"the scales of {what}", atol=0.0, rtol=4 * torch.finfo(torch.float32).eps)
    expect_tensor(zero, ref_zero, f"the zero points of {what} (round(-min(group, 0) / scale), 0 for a group of zeros)")
    codes, ref_codes = _unpack_reference(packed), _unpack_reference(ref_packed)
    if not torch.equal(codes, ref_codes):
        swapped = torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(codes.shape)
        if torch.equal(swapped, ref_codes):
            raise AssertionError(f"{what}: the nibbles are swapped: code 2j belongs in the LOW nibble of byte j (bits 0-3), "
                                 f"code 2j + 1 in the high nibble, as course_lib.int4 stores them")
        wrong = (codes != ref_codes).nonzero()[0].tolist()
        raise AssertionError(f"{what}: the codes (unpacked low nibble first) differ from clamp(round(w / scale) + zero, 0, 15) "
                             f"in {int((codes != ref_codes).sum())} of {codes.numel()} places, first at {tuple(wrong)}: "
                             f"got {int(codes[tuple(wrong)])}, expected {int(ref_codes[tuple(wrong)])}")
    deq = scale.repeat_interleave(group_size, dim=1) * (codes.to(torch.float32) - zero.to(torch.float32).repeat_interleave(group_size, dim=1))
    half_step = scale.repeat_interleave(group_size, dim=1) / 2
    err = (w.detach().to(torch.float32) - deq).abs()
    if not (err <= half_step * (1 + 1e-5) + 1e-45).all():  # a consequence of the above, stated for the learner
        raise AssertionError(f"{what}: some weight is further than scale / 2 from its dequantized value")


def _expect_dequantized_packed(dequantize_int4_packed, packed, scale, zero, group_size: int, what: str) -> None:
    got = call_explained(dequantize_int4_packed, packed, scale, zero, group_size, what=what)
    codes = _unpack_reference(packed).to(torch.float32)
    g = group_size
    expected = scale.repeat_interleave(g, dim=1) * (codes - zero.to(torch.float32).repeat_interleave(g, dim=1))
    expect_tensor(got, expected, what, atol=0.0, rtol=0.0)


def _packed_case(gen, case: int) -> tuple[torch.Tensor, int, str]:
    dtype = PACKED_DTYPES[case % 3]
    group = (32, 8, 16, 64, 2, 32)[case % 6]
    out, n_groups = randint(gen, 1, 6), randint(gen, 1, 4)
    if case % 4 == 3:  # exact ties, some where round(high / scale) + zero reaches 16 before clamping
        low_half = 2 * torch.randint(0, 7, (out, n_groups, 1), generator=gen) + 1  # -low / scale = odd + 0.5
        x = (torch.randint(0, 31, (out, n_groups, group), generator=gen) - low_half) / 2.0
        x[..., 0] = -low_half[..., 0] / 2.0
        x[..., -1] = 15 - low_half[..., 0] / 2.0
        w, kind = (x * 2.0 ** torch.randint(-6, 7, (out, n_groups, 1), generator=gen)).reshape(out, -1).to(dtype), "exact ties"
    else:
        w, kind = _weights(gen, (out, n_groups * group), torch.float32).to(dtype), "Gaussian"
        if case % 4 == 1:
            w = w.abs() + 0.1  # groups without negative values: zero point 0
    if case % 3 == 1:
        return _non_contiguous(w), group, f"{kind}, not contiguous"
    return w, group, kind


def check_int4_packed(quantize_int4_packed, dequantize_int4_packed, seed: int | None = None, n_cases: int = 12) -> None:
    """``quantize_int4_packed(w, group_size=32) -> (packed, scale, zero)`` and ``dequantize_int4_packed(packed, scale, zero, group_size)``."""
    quantize_int4_packed = watched(quantize_int4_packed, INT4_PACKED)
    dequantize_int4_packed = watched(dequantize_int4_packed, INT4_PACKED)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        w, group, kind = _packed_case(gen, case)
        what = f"quantize_int4_packed(w, group_size={group}) for w of shape {tuple(w.shape)} and {w.dtype}, {kind} (seed {seed})"
        got = call_explained(quantize_int4_packed, w, group_size=group, what=what)
        _expect_packed(got, w, group, what)
        packed, scale, zero = got
        _expect_dequantized_packed(dequantize_int4_packed, packed, scale, zero, group,
                                   f"dequantize_int4_packed(packed, scale, zero, {group}) after {what}")


def _packed_edge_cases() -> list[tuple[torch.Tensor, int | None, str]]:
    gen = torch.Generator().manual_seed(3)
    zero_group = torch.randn(3, 64, generator=gen)
    zero_group[1, 32:] = 0.0
    constant = torch.cat([torch.full((2, 8), 2.0), torch.full((2, 8), -3.0), torch.full((2, 8), 0.0)], dim=1)
    clamp = torch.tensor([[-1.5, 13.5, 0.0, 1.0, 2.5, -0.5, 7.5, 6.5]])
    cases = [
        (zero_group, None, "the default group_size=32, with a group of zeros (scale 0, zero 0, codes 0: no NaN)"),
        (constant, 8, "constant groups (2, -3 and 0)"),
        (clamp, 8, "a group [-1.5, 13.5, ...]: scale 1, zero 2, and 13.5 gives round(13.5) + 2 = 16 (clamp to 15)"),
        (torch.tensor([[1e30, -3e29, 5e29, 0.0], [-1e30, 1e29, 0.0, 0.0]]), 4, "huge weights (1e30)"),
        (torch.tensor([[1e-30, -3e-31, 5e-31, 0.0], [1e-40, -1e-41, 0.0, 0.0]]), 4, "tiny weights (1e-30 and subnormal 1e-40)"),
        (torch.tensor([[1e4, -3e3, 5.0, 0.0], [6e-8, -1e-7, 0.0, 3e-5]], dtype=torch.float16), 4, "float16 weights, large and subnormal"),
        (torch.tensor([[1e30, -3e29, 5e29, 0.0], [1e-30, -1e-31, 0.0, 0.0]], dtype=torch.bfloat16), 2, "bfloat16 weights (1e30, 1e-30)"),
        (_non_contiguous(torch.arange(-16, 16, dtype=torch.float32).reshape(2, 16) * 0.25), 8, "a non-contiguous (2, 16) tensor"),
    ]
    return cases


def check_int4_packed_edge_cases(quantize_int4_packed, dequantize_int4_packed) -> None:
    """Zero and constant groups, the clamp, huge and tiny weights, float16/bfloat16, non-contiguous input, bad sizes, course_lib.int4's layout."""
    from course_lib import int4  # the layout the learner's bytes must share (not called by the learner)

    quantize_int4_packed = watched(quantize_int4_packed, INT4_PACKED)
    dequantize_int4_packed = watched(dequantize_int4_packed, INT4_PACKED)
    for w, group, label in _packed_edge_cases():
        g = group or 32
        shown = f": w = {w.tolist()}" if w.numel() <= 16 else f" of shape {tuple(w.shape)}"
        if group is None:
            what = f"quantize_int4_packed(w) (the default group_size=32) for {label}{shown} ({w.dtype})"
            got = call_explained(quantize_int4_packed, w, what=what)
        else:
            what = f"quantize_int4_packed(w, group_size={g}) for {label}{shown} ({w.dtype})"
            got = call_explained(quantize_int4_packed, w, group_size=g, what=what)
        _expect_packed(got, w, g, what)
        packed, scale, zero = got
        back = call_explained(dequantize_int4_packed, packed, scale, zero, g, what=f"dequantize_int4_packed after {what}")
        if isinstance(back, torch.Tensor) and not torch.isfinite(back).all():
            raise AssertionError(f"dequantize_int4_packed after {what} gives NaN or inf")
        _expect_dequantized_packed(dequantize_int4_packed, packed, scale, zero, g, f"dequantize_int4_packed after {what}")
    # the bytes are course_lib.int4's: its unpack and dequantize read them as the learner's own functions do
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(4)) * 0.02
    what = "quantize_int4_packed(w, group_size=128) for a (8, 256) layer"
    packed, scale, zero = call_explained(quantize_int4_packed, w, group_size=128, what=what)
    ref = int4.Int4Weight(packed, scale.to(torch.float16), zero, 128)
    expect_tensor(int4.unpack(ref), _unpack_reference(reference_int4_packed(w, 128)[0]),
                  f"course_lib.int4.unpack of the bytes of {what} (code 2j in the low nibble of byte j)")
    ours = call_explained(dequantize_int4_packed, packed, scale.to(torch.float16).float(), zero, 128, what="dequantize_int4_packed")
    expect_tensor(ours, int4.dequantize(ref), f"dequantize_int4_packed against course_lib.int4.dequantize after {what}", atol=0.0, rtol=0.0)
    for bad, g, why in ((torch.randn(2, 7), 1, "an odd number of inputs (7)"), (torch.randn(2, 24), 16, "in = 24 not a multiple of group_size = 16"),
                        (torch.randn(2, 12), 3, "an odd group_size (3): a byte's two codes would fall in different groups"),
                        (torch.randn(24), 8, "a 1-D tensor (a weight matrix is 2-D)")):
        try:
            quantize_int4_packed(bad, group_size=g)
        except ValueError:
            continue
        except Exception as err:  # noqa: BLE001
            raise AssertionError(f"quantize_int4_packed(w, group_size={g}) for {why} should raise ValueError, got {type(err).__name__}: {err}") from None
        raise AssertionError(f"quantize_int4_packed(w, group_size={g}) for {why} should raise ValueError, it returned")
    expect_same_device(quantize_int4_packed, torch.randn(4, 32), group_size=16,
                       what="quantize_int4_packed(w, group_size=16) for w on another device")


# --------------------------------------------------------------------------- prediction: bytes of an int4 layer

PREDICT_INT4_LAYER_MIB = Rules(
    "predict_int4_layer_mib", modules=("course_lib.int4", "course_lib.quant", "course_lib.memory"),
    why="A prediction is a number you work out before running the lesson's cells, not computed with the course's code.",
)


def int4_layer_bytes(out_features: int = 4096, in_features: int = 4096, group_size: int = 128) -> int:
    """Bytes of a layer stored as :class:`course_lib.int4.Int4Weight`: packed codes, float16 scales, uint8 zero points."""
    from course_lib import int4

    groups = in_features // group_size
    w = int4.Int4Weight(torch.empty(out_features, in_features // 2, dtype=torch.uint8, device="meta"),
                        torch.empty(out_features, groups, dtype=torch.float16, device="meta"),
                        torch.empty(out_features, groups, dtype=torch.uint8, device="meta"), group_size)
    return sum(t.numel() * t.element_size() for t in (w.packed, w.scale, w.zero))


def check_predict_int4_layer_mib(predict_int4_layer_mib) -> None:
    """The prediction: the MiB of a 4096 x 4096 layer in course_lib.int4's format (groups of 128), within 1%."""
    expected = int4_layer_bytes() / 2**20
    got = watched(predict_int4_layer_mib, PREDICT_INT4_LAYER_MIB)()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"predict_int4_layer_mib() should return a number (an int or a float), got {type(got).__name__} ({got!r})")
    if not math.isfinite(got) or not abs(got - expected) <= 0.01 * expected:
        raise AssertionError(f"predict_int4_layer_mib() returned {got}, not within 1% of the MiB the lesson computes: half a byte "
                             "per weight, plus 2 + 1 bytes for each group's scale and zero point, divided by 2**20")
