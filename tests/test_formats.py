"""course_lib.formats bit for bit against numpy, ml_dtypes and torch (lesson 04).

What is compared, and why from which source precision:

- encode rounds the exact value of a float64 once. numpy rounds float64 -> float32 and
  float64 -> float16 once, so fp32 and fp16 are checked on float64 inputs (with bits
  beyond float32's 23, which would expose double rounding).
- ml_dtypes 0.6 and torch 2.13 convert float64 to bf16 and fp8 *through float32*
  (rounding twice; ``test_references_round_float64_through_float32`` shows it). From
  float32 they round once, so bf16, E4M3 and E5M2 are checked on float32 inputs
  (widened to float64 for encode, which is exact) against both libraries.
- fp8 E4M3 overflow: torch saturates to ±448 (``FP8_E4M3``); ml_dtypes gives NaN
  (``FP8_E4M3_NAN``). Each is compared with its own reference.
- NaN is compared as "is NaN" (payloads and NaN signs differ between libraries).

Values compared per format (``INPUT_COUNT``, also in the test ids), each
``encode_array``'d and checked against every listed reference:
fp32 1,000,016 (numpy from float64), fp16 1,000,016 (numpy from float64),
bf16 1,000,016 (ml_dtypes and torch from float32),
fp8_e4m3 1,000,016 (torch from float32, saturating; ml_dtypes from float32 for the NaN variant),
fp8_e5m2 1,000,016 (ml_dtypes and torch from float32).
Mix per format: 350,000 random float32 bit patterns, 300,000 values with random exponents
across the format's range (and 2 beyond) and random source-precision mantissas, 100,000
near the largest number, 100,000 in the subnormal range, 150,000 halfway cases (50,000 exact
midpoints between neighbours, each also one source ulp above and below), 16 edge cases.
Scalar ``encode`` is checked against ``encode_array`` on 20,000 of them per format.
Exhaustive decode: all 2^8 patterns of E4M3 and E5M2 (ml_dtypes and torch) and all 2^16 of
fp16 (numpy) and bf16 (ml_dtypes and torch); fp32 decode on 1,000,000 random patterns.
"""

from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np
import pytest
import torch

from course_lib.formats import (
    BF16,
    FORMATS,
    FP8_E4M3,
    FP8_E5M2,
    FP16,
    FP32,
    SOURCE_ERRATA,
    FloatFormat,
    bias_for,
    decode,
    decode_array,
    encode,
    encode_array,
    explain,
    fields,
    int8_decode,
    int8_encode,
    pi_table,
    representable_values,
    round_to,
)

FP8_E4M3_NAN = dataclasses.replace(FP8_E4M3, name="fp8_e4m3_nan", overflow="nan")   # ml_dtypes' overflow

N_BIT_PATTERNS, N_LOG_UNIFORM, N_NEAR_MAX, N_SUBNORMAL, N_MIDPOINTS = 350_000, 300_000, 100_000, 100_000, 50_000
N_EDGE = 16
INPUT_COUNT = N_BIT_PATTERNS + N_LOG_UNIFORM + N_NEAR_MAX + N_SUBNORMAL + 3 * N_MIDPOINTS + N_EDGE   # 1,000,016

# the source precision each format is checked from (see the module docstring)
SOURCE_DTYPE = {"fp32": np.float64, "fp16": np.float64, "bf16": np.float32, "fp8_e4m3": np.float32, "fp8_e5m2": np.float32}
SEED = {"fp32": 1, "fp16": 2, "bf16": 3, "fp8_e4m3": 4, "fp8_e5m2": 5}


# --------------------------------------------------------------------------- references


def reference_bits(x: np.ndarray, fmt: FloatFormat, library: str) -> np.ndarray:
    """The bit patterns a library gives for x (already of the source dtype)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if library == "numpy":
            target = {"fp32": np.float32, "fp16": np.float16}[fmt.name]
            return x.astype(target).view(np.uint32 if fmt is FP32 else np.uint16)
        if library == "ml_dtypes":
            target = {"bf16": ml_dtypes.bfloat16, "fp8_e4m3_nan": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2}[fmt.name]
            return x.astype(target).view(np.uint16 if fmt is BF16 else np.uint8)
    target = {"bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[fmt.name]
    out = torch.from_numpy(x).to(target)
    return out.view(torch.int16 if fmt is BF16 else torch.uint8).numpy().view(np.uint16 if fmt is BF16 else np.uint8)


def reference_values(fmt: FloatFormat, library: str) -> np.ndarray:
    """What a library says each of the 2^8 or 2^16 bit patterns is worth, as float64."""
    if fmt.total_bits == 8:
        patterns = np.arange(256, dtype=np.uint8)
        if library == "torch":
            dtype = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[fmt.name]
            return torch.from_numpy(patterns).view(dtype).double().numpy()
        dtype = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2}[fmt.name]
        return patterns.view(dtype).astype(np.float64)
    patterns = np.arange(2**16, dtype=np.uint16)
    if fmt is FP16:
        return patterns.view(np.float16).astype(np.float64)
    if library == "torch":
        return torch.from_numpy(patterns.view(np.int16)).view(torch.bfloat16).double().numpy()
    with np.errstate(invalid="ignore"):
        return patterns.view(ml_dtypes.bfloat16).astype(np.float64)


# --------------------------------------------------------------------------- inputs


def edge_cases(fmt: FloatFormat) -> list[float]:
    big, tiny, normal = fmt.max_value, fmt.min_subnormal, fmt.min_normal
    beyond_max = math.ldexp(1.0, math.frexp(big)[1])                 # the next power of two: max + one step
    overflow_boundary = (big + beyond_max) / 2                        # halfway: ties to even rounds up for IEEE
    return [
        0.0, -0.0, math.inf, -math.inf, math.nan,
        big, -big, overflow_boundary, -overflow_boundary,
        normal, tiny, -tiny,
        tiny / 2,                  # halfway between 0 and the smallest subnormal: ties to 0 (even)
        3 * tiny / 2,              # halfway between subnormals 1 and 2: ties to 2 (even)
        normal - tiny / 2,         # halfway between the largest subnormal and the smallest normal
        beyond_max * 4,
    ]


def midpoints(fmt: FloatFormat, rng: np.random.Generator, n: int) -> np.ndarray:
    """Exact midpoints between neighbouring numbers of fmt (including max and the step past it), random signs."""
    if fmt.total_bits <= 16:
        values = representable_values(fmt)
        positive = values[values >= 0]
        beyond_max = math.ldexp(1.0, math.frexp(fmt.max_value)[1])
        positive = np.append(positive, beyond_max)
        mids = (positive[:-1] + positive[1:]) / 2                  # exact in float64
        chosen = mids[rng.integers(0, len(mids), n)]
    else:                                                           # fp32: neighbours of random float32s
        lows = np.abs(rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32))
        lows = np.where(np.isfinite(lows), lows, 1.0).astype(np.float32)
        highs = np.nextafter(lows, np.float32(np.inf))
        chosen = (lows.astype(np.float64) + highs.astype(np.float64)) / 2
    return chosen * rng.choice([-1.0, 1.0], n)


def sample_inputs(fmt: FloatFormat) -> np.ndarray:
    """INPUT_COUNT inputs of the source dtype for fmt (deterministic)."""
    source = SOURCE_DTYPE[fmt.name.removesuffix("_nan")]
    rng = np.random.default_rng(SEED[fmt.name.removesuffix("_nan")])

    def signs(n):
        return rng.choice([-1.0, 1.0], n)

    bit_patterns = rng.integers(0, 2**32, N_BIT_PATTERNS, dtype=np.uint64).astype(np.uint32).view(np.float32)

    precision = 52 if source == np.float64 else 23
    exponents = rng.integers(1 - fmt.bias - fmt.mantissa_bits - 2, math.frexp(fmt.max_value)[1] + 2, N_LOG_UNIFORM)
    mantissas = rng.integers(0, 2**precision, N_LOG_UNIFORM, dtype=np.int64)
    log_uniform = np.ldexp(1.0 + np.ldexp(mantissas.astype(np.float64), -precision), exponents) * signs(N_LOG_UNIFORM)

    near_max = rng.uniform(fmt.max_value / 2, fmt.max_value * 2, N_NEAR_MAX) * signs(N_NEAR_MAX)
    subnormal = rng.uniform(0, 2 * fmt.min_normal, N_SUBNORMAL) * signs(N_SUBNORMAL)

    exact_mids = midpoints(fmt, rng, N_MIDPOINTS)
    mids = exact_mids.astype(source)
    assert np.array_equal(mids.astype(np.float64), exact_mids), "midpoints must be exact in the source dtype"
    above = np.nextafter(mids, np.copysign(np.inf, mids).astype(source))
    below = np.nextafter(mids, np.zeros_like(mids))

    with np.errstate(over="ignore", invalid="ignore"):   # overflow to inf on purpose; signalling NaNs
        parts = [bit_patterns, log_uniform, near_max, subnormal, mids, above, below, np.array(edge_cases(fmt))]
        x = np.concatenate([p.astype(source) for p in parts])
    assert len(x) == INPUT_COUNT
    return x


@pytest.fixture(scope="module")
def inputs():
    cache = {}

    def get(fmt):
        if fmt.name not in cache:
            cache[fmt.name] = sample_inputs(fmt)
        return cache[fmt.name]

    return get


def assert_same_bits(x: np.ndarray, ours: np.ndarray, theirs: np.ndarray, fmt: FloatFormat, what: str) -> None:
    our_nan = np.isnan(decode_array(ours, fmt))
    their_nan = np.isnan(decode_array(theirs.astype(np.int64), fmt))
    bad = (our_nan != their_nan) | (~their_nan & (ours.astype(np.int64) != theirs.astype(np.int64)))
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        pytest.fail(f"{fmt.name} vs {what}: {bad.sum()} of {len(x)} differ, e.g. x={x[i].tolist()} ours={ours[i].tolist()} theirs={theirs[i].tolist()}")


# --------------------------------------------------------------------------- a million values per format

CASES = [
    (FP32, "numpy"),
    (FP16, "numpy"),
    (BF16, "ml_dtypes"),
    (BF16, "torch"),
    (FP8_E4M3, "torch"),
    (FP8_E4M3_NAN, "ml_dtypes"),
    (FP8_E5M2, "ml_dtypes"),
    (FP8_E5M2, "torch"),
]


@pytest.mark.parametrize("fmt,library", CASES, ids=[f"{f.name}-vs-{lib}-{INPUT_COUNT}-values" for f, lib in CASES])
def test_encode_array_bit_exact_against_reference(inputs, fmt, library):
    x = inputs(fmt)
    ours = encode_array(x, fmt)
    assert ours.dtype == {8: np.uint8, 16: np.uint16, 32: np.uint32}[fmt.total_bits] and ours.shape == x.shape
    assert_same_bits(x, ours, reference_bits(x, fmt, library), fmt, f"{library} from {x.dtype}")


@pytest.mark.parametrize("fmt", [FP32, FP16, BF16, FP8_E4M3, FP8_E4M3_NAN, FP8_E5M2], ids=lambda f: f"{f.name}-20000-values")
def test_scalar_encode_equals_encode_array(inputs, fmt):
    x = inputs(fmt)
    pick = np.concatenate([np.random.default_rng(0).integers(0, len(x), 20_000 - N_EDGE), np.arange(len(x) - N_EDGE, len(x))])
    vectorised = encode_array(x[pick], fmt)
    scalar = [encode(float(v), fmt) for v in x[pick]]
    assert scalar == vectorised.tolist()


def test_encode_array_takes_float32_and_float16_like_float64():
    x = np.random.default_rng(7).standard_normal(1000) * 100
    for dtype in (np.float32, np.float16):
        narrow = x.astype(dtype)
        assert np.array_equal(encode_array(narrow, FP8_E4M3), encode_array(narrow.astype(np.float64), FP8_E4M3))
    assert np.array_equal(encode_array(x.reshape(10, 100), FP16), encode_array(x, FP16).reshape(10, 100))


def test_references_round_float64_through_float32():
    """Why bf16/fp8 are compared from float32: from float64 the libraries round twice."""
    x = 1 + 1 / 16 + 2**-40          # just above the E4M3 midpoint between 1.0 and 1.125
    assert round_to(x, FP8_E4M3) == 1.125                                   # rounded once: up
    assert float(np.float64(x).astype(ml_dtypes.float8_e4m3fn)) == 1.0      # float32 first lands on the midpoint, then ties to even
    assert torch.tensor(x, dtype=torch.float64).to(torch.float8_e4m3fn).item() == 1.0
    y = 1 + 2**-8 + 2**-40            # the same for bf16
    assert round_to(y, BF16) == 1 + 2**-7
    assert float(np.float64(y).astype(ml_dtypes.bfloat16)) == 1.0
    z = 1 + 2**-11 + 2**-40           # and fp16: numpy rounds once, torch twice
    assert round_to(z, FP16) == float(np.float64(z).astype(np.float16)) == 1 + 2**-10
    assert torch.tensor(z, dtype=torch.float64).to(torch.float16).item() == 1.0


# --------------------------------------------------------------------------- every bit pattern


EXHAUSTIVE = [(FP8_E4M3, "ml_dtypes"), (FP8_E4M3, "torch"), (FP8_E5M2, "ml_dtypes"), (FP8_E5M2, "torch"),
              (FP16, "numpy"), (BF16, "ml_dtypes"), (BF16, "torch")]


@pytest.mark.parametrize("fmt,library", EXHAUSTIVE, ids=[f"{f.name}-vs-{lib}-all-{2**f.total_bits}-patterns" for f, lib in EXHAUSTIVE])
def test_decode_every_bit_pattern(fmt, library):
    theirs = reference_values(fmt, library)
    ours = np.array([decode(b, fmt) for b in range(2**fmt.total_bits)])
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    finite_or_inf = ~np.isnan(theirs)
    assert np.array_equal(ours[finite_or_inf], theirs[finite_or_inf])
    assert np.array_equal(np.signbit(ours[finite_or_inf]), np.signbit(theirs[finite_or_inf]))   # -0.0 too
    assert np.array_equal(decode_array(np.arange(2**fmt.total_bits), fmt), ours, equal_nan=True)


@pytest.mark.parametrize("fmt", [FP8_E4M3, FP8_E5M2, FP16, BF16], ids=lambda f: f"{f.name}-all-patterns")
def test_encode_decode_round_trip_every_pattern(fmt):
    for b in range(2**fmt.total_bits):
        value = decode(b, fmt)
        if not math.isnan(value):
            assert encode(value, fmt) == b


def test_fp32_decode_random_patterns_1000000():
    patterns = np.random.default_rng(11).integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    ours = decode_array(patterns, FP32)
    with np.errstate(invalid="ignore"):
        theirs = patterns.view(np.float32).astype(np.float64)
    assert np.array_equal(ours, theirs, equal_nan=True)
    assert np.array_equal(np.signbit(ours), np.signbit(theirs))
    for b in patterns[:2000].tolist():
        assert decode(b, FP32) == float(np.uint32(b).view(np.float32)) or math.isnan(decode(b, FP32))


# --------------------------------------------------------------------------- edge cases, one by one


@pytest.mark.parametrize(
    "fmt,x,expected_bits",
    [
        (FP16, 0.0, 0x0000), (FP16, -0.0, 0x8000), (FP16, math.inf, 0x7C00), (FP16, -math.inf, 0xFC00),
        (FP16, 65504.0, 0x7BFF), (FP16, 65519.99, 0x7BFF), (FP16, 65520.0, 0x7C00),      # 65520: the overflow boundary
        (FP16, 2**-24, 0x0001), (FP16, 2**-25, 0x0000), (FP16, 2**-25 + 2**-40, 0x0001),  # smallest subnormal; half of it ties to 0
        (FP16, 3 * 2**-25, 0x0002),                                                        # halfway between subnormals 1 and 2: to 2
        (FP16, 1 + 2**-11, 0x3C00), (FP16, 1 + 3 * 2**-11, 0x3C02),                        # ties to even mantissa
        (BF16, 1 + 2**-8, 0x3F80), (BF16, 3.0e38, 0x7F62), (BF16, 3.4e38, 0x7F80),
        (FP8_E4M3, 448.0, 0x7E), (FP8_E4M3, 464.0, 0x7E), (FP8_E4M3, 465.0, 0x7E), (FP8_E4M3, 1e9, 0x7E),
        (FP8_E4M3, math.inf, 0x7E), (FP8_E4M3, -math.inf, 0xFE), (FP8_E4M3, math.nan, 0x7F), (FP8_E4M3, -math.nan, 0xFF),
        (FP8_E4M3, 2**-9, 0x01), (FP8_E4M3, 2**-10, 0x00), (FP8_E4M3, 3 * 2**-10, 0x02), (FP8_E4M3, -0.0, 0x80),
        (FP8_E4M3_NAN, 464.0, 0x7E), (FP8_E4M3_NAN, 465.0, 0x7F), (FP8_E4M3_NAN, -math.inf, 0xFF),
        (FP8_E5M2, 57344.0, 0x7B), (FP8_E5M2, 61439.0, 0x7B), (FP8_E5M2, 61440.0, 0x7C), (FP8_E5M2, -math.inf, 0xFC),
        (FP8_E5M2, math.nan, 0x7E), (FP8_E5M2, 2**-16, 0x01), (FP8_E5M2, 2**-17, 0x00),
        (FP32, 2**-149, 0x00000001), (FP32, 2**-150, 0x00000000), (FP32, 3 * 2**-150, 0x00000002),
        (FP32, 3.4028235677973366e38, 0x7F800000), (FP32, 3.4028235677973362e38, 0x7F7FFFFF),
    ],
    ids=lambda v: v.name if isinstance(v, FloatFormat) else (f"{v:#x}" if isinstance(v, int) else repr(v)),
)
def test_edge_case_bits(fmt, x, expected_bits):
    assert encode(x, fmt) == expected_bits
    assert encode_array(np.array([x]), fmt)[0] == expected_bits


def test_e4m3_overflow_matches_torch_saturation_and_ml_dtypes_nan():
    """torch 2.13 saturates E4M3 overflow (and inf) to ±448; ml_dtypes 0.6 gives NaN. Both tie 464 to 448."""
    x = np.array([448, 463.9, 464, 464.1, 479, 480, 1e4, 3e38, np.inf, -np.inf, -500, np.nan], dtype=np.float32)
    torch_values = torch.from_numpy(x).to(torch.float8_e4m3fn).double().numpy()
    assert np.array_equal(round_to(x, FP8_E4M3), torch_values, equal_nan=True)
    assert torch_values.tolist()[:-1] == [448.0] * 9 + [-448.0, -448.0]
    ml_values = x.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    assert np.array_equal(round_to(x, FP8_E4M3_NAN), ml_values, equal_nan=True)
    assert np.isnan(ml_values[3:]).all() and (ml_values[:3] == 448).all()


def test_format_constants():
    assert (FP32.max_value, FP16.max_value, FP8_E4M3.max_value, FP8_E5M2.max_value) == (float(np.finfo(np.float32).max), 65504.0, 448.0, 57344.0)
    assert BF16.max_value == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    for fmt, ref in [(FP32, np.float32), (FP16, np.float16), (BF16, ml_dtypes.bfloat16), (FP8_E4M3, ml_dtypes.float8_e4m3fn), (FP8_E5M2, ml_dtypes.float8_e5m2)]:
        info = ml_dtypes.finfo(ref) if fmt in (BF16, FP8_E4M3, FP8_E5M2) else np.finfo(ref)
        assert fmt.min_normal == float(info.smallest_normal)
        assert fmt.min_subnormal == float(info.smallest_subnormal)
        assert fmt.epsilon == float(info.eps)
        assert fmt.bias == bias_for(fmt.exponent_bits)
    assert FP8_E4M3.has_inf is False and FP8_E5M2.has_inf is True
    assert decode(FP8_E4M3.nan_bits, FP8_E4M3) != decode(FP8_E4M3.nan_bits, FP8_E4M3)   # S.1111.111 is NaN
    assert set(FORMATS) == {"fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"}


def test_representable_values():
    e4m3 = representable_values(FP8_E4M3)
    assert len(e4m3) == 253 and e4m3[0] == -448 and e4m3[-1] == 448 and np.all(np.diff(e4m3) > 0)
    assert len(representable_values(FP8_E5M2)) == 247 and len(representable_values(FP16)) == 63487
    finite16 = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64)
    assert np.array_equal(representable_values(FP16), np.unique(finite16[np.isfinite(finite16)]))
    with pytest.raises(ValueError, match="8- and 16-bit formats only"):
        representable_values(FP32)


def test_fields_and_explain():
    assert fields(0b0_1000_101, FP8_E4M3) == (0, 8, 5)
    assert fields(0xFC00, FP16) == (1, 31, 0)
    text = explain(math.pi, FP16)
    assert "0 10000 1001001000" in text and "16 - 15 = 1" in text
    assert "(-1)^0 × 2^1 × 1.1001001000 (binary) = 3.140625" in text
    assert "subnormal" in explain(2**-9, FP8_E4M3) and "infinity" in explain(-math.inf, FP16) and "NaN" in explain(math.nan, BF16)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: encode(1.0, "fp16"), "fmt must be a FloatFormat"),
        (lambda: decode(256, FP8_E4M3), r"bits must be in \[0, 2\^8\)"),
        (lambda: decode(1.5, FP16), "bits must be an int"),
        (lambda: encode_array(np.arange(3), FP16), "dtype float64, float32 or float16"),
        (lambda: encode_array([1.0], FP16), "must be a numpy array"),
        (lambda: decode_array(np.array([1.0]), FP16), "integer array"),
        (lambda: bias_for(0), "exponent_bits must be an int >= 2"),
        (lambda: FloatFormat("x", 4, 3, 7, has_inf=False, overflow="inf"), "cannot overflow to inf"),
        (lambda: FloatFormat("x", 4, 3, 7, has_inf=True, overflow="saturate"), "overflows to inf"),
        (lambda: int8_encode(math.nan), "no NaN"),
        (lambda: int8_decode(256), "0..255"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- the source text's pi table and errata


def test_pi_table_reproduces_the_source():
    rows = {row["format"]: row for row in pi_table()}
    assert f"{rows['fp32']['value']:.20f}" == "3.14159274101257324219"          # as the source prints it
    assert rows["fp32"]["bits"] == "0 10000000 10010010000111111011011"         # (1.10010010000111111011011) in the source
    assert rows["fp16"]["value"] == 3.140625 and rows["fp16"]["bits"] == "0 10000 1001001000"
    assert rows["bf16"]["value"] == 3.140625 and rows["bf16"]["bits"] == "0 10000000 1001001"
    assert rows["fp8_e4m3"]["value"] == 3.25 and rows["fp8_e4m3"]["bits"] == "0 1000 101"   # 1.1001.. rounds up to 1.101
    assert rows["fp8_e5m2"]["value"] == 3.0 and rows["fp8_e5m2"]["bits"] == "0 10000 10"    # 1.1001.. rounds down to 1.10
    assert rows["int8"]["value"] == 3.0 and rows["int8"]["bits"] == "00000011"
    # the references agree
    assert float(np.float32(math.pi)) == rows["fp32"]["value"]
    assert torch.tensor(math.pi).to(torch.float8_e4m3fn).item() == 3.25
    assert torch.tensor(math.pi).to(torch.float8_e5m2).item() == 3.0
    assert torch.tensor(math.pi).to(torch.bfloat16).item() == 3.140625


def test_source_ranges():
    assert 3.40e38 < FP32.max_value < 3.41e38       # "-3e38~3e38"
    assert FP16.max_value == 65504                  # "-65504~65504"
    assert BF16.max_value > 3.38e38                 # bf16: fp32's range with fewer mantissa bits


def test_bias_erratum():
    assert [bias_for(k) for k in (4, 5, 8, 11)] == [7, 15, 127, 1023]
    assert 2**8 - 1 == 255 != bias_for(8)           # the source's formula 2^k - 1
    assert fields(encode(math.pi, FP32), FP32)[1] - bias_for(8) == 1   # 128 - 127 = 1, as the source computes


def test_fp8_is_two_formats_not_a_free_split():
    assert [(f.exponent_bits, f.mantissa_bits, f.bias, f.max_value) for f in (FP8_E4M3, FP8_E5M2)] == [(4, 3, 7, 448.0), (5, 2, 15, 57344.0)]
    assert {torch.finfo(torch.float8_e4m3fn).max, torch.finfo(torch.float8_e5m2).max} == {448.0, 57344.0}
    assert len(SOURCE_ERRATA) == 3 and "E4M3" in SOURCE_ERRATA[1].correction


def test_int8_is_twos_complement():
    for n in range(-128, 128):
        expected = int(np.array(n, dtype=np.int8).view(np.uint8))
        assert int8_encode(n) == expected and int8_decode(expected) == n
    assert int8_encode(-1) == 0b11111111 and int8_encode(-128) == 0b10000000
    assert int8_encode(1000) == 127 and int8_encode(-1000) == 0b10000000   # clamps
    assert int8_encode(2.5) == 2 and int8_encode(3.5) == 4                # ties to even, like torch.round
    assert int8_decode(int8_encode(math.pi)) == 3
