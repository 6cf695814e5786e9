"""The checks of lessons 03 (memory) and 04 (formats, quantization) reject wrong answers with useful messages.

tests/test_checks.py proves that they accept the solutions; tests/test_mutants.py that every
mutant fails its whole test cell. Here each kind of mistake fails the check meant to catch it,
with a message that says what was called and what was wrong.
"""

from __future__ import annotations

import pytest
import torch

from course_lib.checks.common import expect_same_device
from course_lib.checks import formats as formats_checks
from course_lib.checks import memory as memory_checks
from course_lib.checks import quant as quant_checks
from tests import answers
from tests.mutants import formats as fm
from tests.mutants import memory as mm


def _int8(quantize, dequantize=fm.int8_dequantize):
    return quantize, dequantize


@pytest.mark.parametrize(
    "check,wrong,message",
    [
        # lesson 03: counting
        (memory_checks.check_llama_block_params, mm.block_params_one_norm, r"llama_block_params\(.*\) \(seed \d+\) should be"),
        (memory_checks.check_llama_block_params, mm.block_params_float_then_int, r"beyond 2\*\*53 parameters\) should be"),
        (memory_checks.check_llama_block_params, mm.block_params_numpy_int, r"should return a Python int, got int64"),
        (memory_checks.check_llama_block_params, mm.block_params_swapped_heads, r"llama_block_params\(.*\) \(seed \d+\) should be"),
        (memory_checks.check_model_state_bytes, mm.states_bits_over_8, r"model_state_bytes\((n_params=)?9\d+.*\(beyond 2\*\*53\)\['weights'\] should be"),
        (memory_checks.check_model_state_bytes, mm.states_true_division, r"should return a Python int, got float"),
        (memory_checks.check_model_state_bytes, mm.states_with_total, r"should return a dict with keys"),
        (memory_checks.check_kv_cache_bytes, mm.kv_bytes_default_fp32, r"kv_cache_bytes\(.*\) \(.*default.*\) should be|should be"),
        (memory_checks.check_kv_cache_bytes, mm.kv_bytes_defaults_swapped, r"kv_cache_bytes\(.*, \d+(, bytes_per_element=\d)?\) \(.*\) (should be|raised TypeError)"),
        (memory_checks.check_kv_cache_bytes, mm.kv_bytes_float_then_int, r"a cache beyond 2\*\*53 bytes\) should be"),
        # lesson 04: fp16 and bf16
        (formats_checks.check_decode_fp16_edge_cases, fm.fp16_loses_negative_zero, r"decode_fp16\(0x8000 .*\) should be exactly -0.0, got 0.0"),
        (formats_checks.check_decode_fp16, fm.fp16_returns_tensor, r"should return a Python float, got Tensor"),
        (formats_checks.check_round_to_bf16, fm.bf16_flat_view, r"permute\(2, 1, 0\), not contiguous .*raised RuntimeError"),
        (formats_checks.check_round_to_bf16_edge_cases, fm.bf16_mask_on_cpu, r"on another device mixes devices"),
        (formats_checks.check_round_to_bf16_edge_cases, fm.bf16_saturates, r"exact ties and their neighbours"),
        (formats_checks.check_round_to_bf16, fm.bf16_in_place, r"changed its input tensor in place"),
    ],
)
def test_check_rejects_a_wrong_answer_with_a_useful_message(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)


@pytest.mark.parametrize(
    "check,pair,message",
    [
        (quant_checks.check_absmax_int8_edge_cases, _int8(fm.int8_half_away), r"q of absmax_quantize_int8\(w\) for exact ties .*wrong entries"),
        (quant_checks.check_absmax_int8_edge_cases, _int8(fm.int8_no_clamp), r"max / scale rounds to 190 \(clamp to 127\)"),
        (quant_checks.check_absmax_int8_edge_cases, _int8(fm.int8_eps_divisor), r"tiny weights \(max\|w\| = 1e-40\)"),
        (quant_checks.check_absmax_int8_edge_cases, _int8(fm.int8_guard_on_max), r"underflows to 0"),
        (quant_checks.check_absmax_int8_edge_cases, _int8(fm.int8_reciprocal), r"tiny weights"),
        (quant_checks.check_absmax_int8_edge_cases, _int8(fm.int8_flat_view), r"non-contiguous .*raised RuntimeError"),
        (quant_checks.check_absmax_int8_edge_cases, _int8(fm.int8_scale_keepdim), r"the scale of .* should return shape \(\), got"),
        (quant_checks.check_absmax_int8, _int8(fm.int8_scale_float32), r"should return dtype torch.float64, got torch.float32"),
        (quant_checks.check_absmax_int8, _int8(fm._q8, fm.int8_dequantize_float32), r"absmax_dequantize_int8\(q, scale\) .*dtype torch.float64"),
    ],
)
def test_int8_check_rejects_a_wrong_pair_with_a_useful_message(check, pair, message):
    with pytest.raises(AssertionError, match=message):
        check(*pair)


def test_int8_device_check_sees_a_divisor_made_on_the_cpu():
    """Asked on its own, the device check names the mistake (the test cell may fail earlier, on a 0-d tensor)."""
    with pytest.raises(AssertionError, match="on another device mixes devices"):
        expect_same_device(fm.int8_divisor_on_cpu, torch.randn(3, 4), what="absmax_quantize_int8(w) for w on another device")


@pytest.mark.parametrize(
    "check,wrong,message",
    [
        (quant_checks.check_blockwise_int4_edge_cases, fm.int4_half_up, r"exact ties .*wrong entries"),
        (quant_checks.check_blockwise_int4_edge_cases, fm.int4_no_clamp, r"clamp to 7"),
        (quant_checks.check_blockwise_int4_edge_cases, fm.int4_guard_on_max, r"underflows to 0"),
        (quant_checks.check_blockwise_int4_edge_cases, fm.int4_view_blocks, r"non-contiguous .*raised RuntimeError"),
        (quant_checks.check_blockwise_int4_edge_cases, fm.int4_memory_order, r"logical order"),
        (quant_checks.check_blockwise_int4_edge_cases, fm.int4_ones_on_cpu, r"on another device mixes devices"),
        (quant_checks.check_blockwise_int4_edge_cases, fm.int4_assumes_2d, r"raised ValueError"),
        (quant_checks.check_blockwise_int4, fm.int4_scales_float32, r"should return dtype torch.float64, got torch.float32"),
        (quant_checks.check_blockwise_int4, fm.int4_divides_in_place, r"changed its input tensor in place"),
    ],
)
def test_int4_check_rejects_a_wrong_answer_with_a_useful_message(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)


def test_exact_ties_are_exact():
    """The tie grids really put w / scale on halves: the reference's codes differ from half-away rounding on them."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        w = quant_checks._tie_grid(gen, 3, 16, 7, dtype)
        blocks = w.reshape(3, 16)
        scale = blocks.abs().amax(dim=1, keepdim=True) / 7
        ratio = blocks / scale
        assert torch.equal(ratio * 2, torch.round(ratio * 2)), "w / scale should be a multiple of 0.5 exactly"
        assert (ratio.abs() == 7).any(dim=1).all()


def test_round_to_bf16_ties_cover_both_signs_and_parities():
    x = formats_checks._float32_from_bits(formats_checks.TIE_PATTERNS)
    bits = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    ties = bits[(bits & 0xFFFF) == 0x8000]
    assert {int(b >> 31) for b in ties} == {0, 1}
    assert {int((b >> 16) & 1) for b in ties} == {0, 1}
    assert torch.isinf(formats_checks._bf16_reference(formats_checks._float32_from_bits([0x7F7F8000]))).all()


def test_solutions_pass_with_any_seed():
    """A few fixed seeds of the random checks, as a learner's re-run would draw them."""
    for seed in (0, 1, 2**31 - 1):
        memory_checks.check_llama_block_params(answers.solution_function("llama_block_params"), seed=seed)
        memory_checks.check_model_state_bytes(answers.solution_function("model_state_bytes"), seed=seed)
        memory_checks.check_kv_cache_bytes(answers.solution_function("kv_cache_bytes"), seed=seed)
        formats_checks.check_round_to_bf16(answers.solution_function("round_to_bf16"), seed=seed)
        quant_checks.check_absmax_int8(answers.solution_function("absmax_quantize_int8"),
                                       answers.solution_function("absmax_dequantize_int8"), seed=seed)
        quant_checks.check_blockwise_int4(answers.solution_function("quantize_int4_blocks"), seed=seed)


def test_failure_messages_name_the_seed():
    with pytest.raises(AssertionError, match=r"\(seed 5\)"):
        memory_checks.check_kv_cache_bytes(mm.kv_bytes_keys_only, seed=5)
    with pytest.raises(AssertionError, match=r"\(seed 5\)"):
        quant_checks.check_blockwise_int4(fm.int4_scales_float32, seed=5)


# lesson 03: the capstone, activation_bytes


@pytest.mark.parametrize(
    "wrong,message",
    [
        (mm.activation_no_probs, r"activation_bytes\(ModelShape\(.*attention='eager'.*\(seed \d+\) should be"),
        (mm.activation_kv_as_heads, r"attention='sdpa', .* should be"),
        (mm.activation_no_recompute, r"checkpointing=True\) \(seed \d+\) should be"),
        (mm.activation_accepts_bool, r"\(batch_size True\) should raise ValueError"),
        (mm.activation_float, r"should return a Python int, got float"),
    ],
)
def test_activation_check_rejects_a_wrong_answer_with_a_useful_message(wrong, message):
    with pytest.raises(AssertionError, match=message):
        memory_checks.check_activation_bytes(wrong)


def test_activation_solution_passes_with_any_seed_and_matches_the_measurement():
    solution = answers.solution_function("activation_bytes")
    for seed in (0, 1, 2**31 - 1):
        memory_checks.check_activation_bytes(solution, seed=seed)
    memory_checks.check_activation_bytes_against_measurement(solution)


def test_activation_measurement_check_names_the_measured_bytes():
    with pytest.raises(AssertionError, match=r"saves [\d,]+ bytes for backward on the CPU"):
        memory_checks.check_activation_bytes_against_measurement(mm.activation_no_probs)


# lesson 04's capstone: packed int4 with zero points

def _packed(name):
    pair = fm.MUTANTS["test_int4_packed"][name]
    return pair["quantize_int4_packed"], pair["dequantize_int4_packed"]


@pytest.mark.parametrize(
    "check,mutant,message",
    [
        (quant_checks.check_int4_packed, "swapped_in_pack_only", r"nibbles are swapped: code 2j belongs in the LOW nibble"),
        (quant_checks.check_int4_packed, "swapped_both", r"nibbles are swapped"),
        (quant_checks.check_int4_packed, "symmetric_16_levels", r"the scales of quantize_int4_packed"),
        (quant_checks.check_int4_packed, "zero_not_rounded", r"the zero points of quantize_int4_packed"),
        (quant_checks.check_int4_packed_edge_cases, "no_clamp", r"clamp to 15\).*the codes .* differ"),
        (quant_checks.check_int4_packed_edge_cases, "scale_nan", r"group of zeros.*scale holds NaN"),
        (quant_checks.check_int4_packed_edge_cases, "scale_eps", r"the scales of .*group of zeros"),
        (quant_checks.check_int4_packed_edge_cases, "no_odd_check", r"odd number of inputs \(7\) should raise ValueError"),
        (quant_checks.check_int4_packed, "float16_scale", r"scale should be a torch.float32 tensor"),
        (quant_checks.check_int4_packed, "dequantize_ignores_zero", r"dequantize_int4_packed\(packed, scale, zero, \d+\) after"),
    ],
)
def test_int4_packed_check_rejects_a_wrong_answer_with_a_useful_message(check, mutant, message):
    with pytest.raises(AssertionError, match=message):
        check(*_packed(mutant))


def test_int4_packed_reference_matches_course_lib_int4():
    """The checks' reference stores the bytes as course_lib.int4 does, and its grid is course_lib.gptq's (scale 0 aside)."""
    from course_lib import gptq, int4

    w = torch.randn(6, 128, generator=torch.Generator().manual_seed(0))
    packed, scale, zero = quant_checks.reference_int4_packed(w, 32)
    codes, ref_scale, ref_zero = gptq.rtn_codes(w, 4, 32)
    assert torch.equal(int4.unpack(int4.Int4Weight(packed, scale.half(), zero, 32)), codes)
    assert torch.allclose(scale.double(), ref_scale, rtol=1e-6) and torch.equal(zero.double(), ref_zero)
    solution = (answers.solution_function("quantize_int4_packed"), answers.solution_function("dequantize_int4_packed"))
    for seed in (0, 1, 2**31 - 1):
        quant_checks.check_int4_packed(*solution, seed=seed)
    with pytest.raises(AssertionError, match=r"\(seed 5\)"):
        quant_checks.check_int4_packed(*_packed("zero_not_rounded"), seed=5)
