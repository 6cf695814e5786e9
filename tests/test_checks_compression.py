"""Lesson 10's checks reject wrong answers with useful messages (tests/test_checks.py: they accept the solution)."""

from __future__ import annotations

import pytest
import torch

from course_lib import distill, gptq, pruning, speculative
from course_lib.checks import compression as checks
from tests.mutants import compression as mutants
from tests.test_checks import solution

CHECKS = {"mask_2_4": checks.check_mask_2_4, "wanda_scores": checks.check_wanda_scores,
          "gptq_column_step": checks.check_gptq_column_step, "distillation_loss": checks.check_distillation_loss,
          "accept_or_resample": checks.check_accept_or_resample, "quantize_layer": checks.check_quantize_layer}


@pytest.mark.parametrize("check,mutant,message", [
    (checks.check_mask_2_4, mutants.mask_signed, r"compare \|w\|, not w"),
    (checks.check_mask_2_4, mutants.mask_smallest, "keeps the 2 smallest"),
    (checks.check_mask_2_4, mutants.mask_half_of_each_row, "not the largest half of the whole row"),
    (checks.check_mask_2_4, mutants.mask_one_per_group, "keeps 1 of its 4 weights, not 2"),
    (checks.check_mask_2_4, mutants.mask_as_float, "should return a bool tensor"),
    (checks.check_mask_2_4, mutants.mask_without_value_error, "should raise ValueError .* raised RuntimeError"),
    (checks.check_mask_2_4, mutants.mask_on_cpu, "meta device.*copied its input's data to the CPU"),
    (checks.check_wanda_scores, mutants.wanda_squared_norm, "take the square root"),
    (checks.check_wanda_scores, mutants.wanda_signed, r"use \|w\|, not w"),
    (checks.check_wanda_scores, mutants.wanda_norms_down_rows, "broadcast the norms along rows"),
    (checks.check_wanda_scores, mutants.wanda_rms, r"sqrt\(mean\(x\^2\)\) divides by their number"),
    (checks.check_wanda_scores, mutants.wanda_in_float32, "should return dtype torch.float64"),
    (checks.check_gptq_column_step, mutants.gptq_no_clamp, r"clamp the codes to \[0, 2\^bits - 1\]"),
    (checks.check_gptq_column_step, mutants.gptq_round_half_up, r"exactly half-way.*\n.*\n(.*\n)*Hint: round with torch.round"),
    (checks.check_gptq_column_step, mutants.gptq_round_half_away, "not away from zero"),
    (checks.check_gptq_column_step, mutants.gptq_no_division_by_diagonal, r"divide the error by u\[i, i\]"),
    (checks.check_gptq_column_step, mutants.gptq_wrong_sign, "subtract, do not add"),
    (checks.check_gptq_column_step, mutants.gptq_error_after_rounding, "the columns after i did not move"),
    (checks.check_gptq_column_step, mutants.gptq_without_zero_point, "the zero point is missing"),
    (checks.check_gptq_column_step, mutants.gptq_returns_codes, "not the integer code"),
    (checks.check_gptq_column_step, mutants.gptq_in_place, "changed its input tensor in place"),
    (checks.check_distillation_loss, mutants.distill_no_t_squared, r"multiply the KL term by T\^2"),
    (checks.check_distillation_loss, mutants.distill_kl_reversed, r"KL\(teacher \|\| student\)"),
    (checks.check_distillation_loss, mutants.distill_teacher_not_softened, "divide the teacher's logits by T too"),
    (checks.check_distillation_loss, mutants.distill_ce_softened, "not logits / T"),
    (checks.check_distillation_loss, mutants.distill_ignored_positions_averaged, "drop the others from both terms"),
    (checks.check_distillation_loss, mutants.distill_summed, "do not sum"),
    (checks.check_distillation_loss, mutants.distill_alpha_swapped, "not the other way round"),
    (checks.check_distillation_loss, mutants.distill_log_of_softmax, "F.log_softmax"),
    (checks.check_distillation_loss, mutants.distill_default_temperature_1, "temperature=2.0 and alpha=0.5 by default"),
    (checks.check_distillation_loss, mutants.distill_as_float, "should return a torch.Tensor"),
    (checks.check_accept_or_resample, mutants.accept_inverted_ratio, "not q / p"),
    (checks.check_accept_or_resample, mutants.accept_residual_q_minus_p, r"not max\(q - p, 0\)"),
    (checks.check_accept_or_resample, mutants.accept_residual_not_normalised, "to sum to 1"),
    (checks.check_accept_or_resample, mutants.accept_resample_from_p, "not from p itself"),
    (checks.check_accept_or_resample, mutants.accept_ignores_u, "use u"),
    (checks.check_accept_or_resample, mutants.accept_tensor_bool, "should return accepted as a Python bool"),
    (checks.check_accept_or_resample, mutants.accept_less_or_equal, "strictly"),
    (checks.check_quantize_layer, mutants.quantize_round_to_nearest, "1.00 times round-to-nearest's; at most 0.75"),
    (checks.check_quantize_layer, mutants.quantize_wrong_sign, "times round-to-nearest's"),
    (checks.check_quantize_layer, mutants.quantize_factor_of_hessian, "upper Cholesky factor of the damped inverse Hessian"),
    (checks.check_quantize_layer, mutants.quantize_twice_the_levels, "holds 16 distinct values; 3 bits allow at most 8"),
    (checks.check_quantize_layer, mutants.quantize_returns_codes, "times round-to-nearest's"),
    (checks.check_quantize_layer, mutants.quantize_returns_weights, "distinct values"),
    (checks.check_quantize_layer, mutants.quantize_no_damping, "always zero.*give a zero on the Hessian's diagonal a 1"),
    (checks.check_quantize_layer, mutants.quantize_in_float64, "should return a float32 tensor"),
    (checks.check_quantize_layer, mutants.quantize_without_value_error, "should raise ValueError"),
    (checks.check_quantize_layer, mutants.quantize_in_place, "changed its input tensor in place"),
])
def test_the_checks_say_what_is_wrong(check, mutant, message):
    with pytest.raises(AssertionError, match=message):
        check(mutant, seed=0)


def test_distillation_gradient_must_flow_to_the_student():
    def detached(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
        return solution("distillation_loss")(student_logits.detach(), teacher_logits, labels, temperature, alpha)

    with pytest.raises(AssertionError, match="gradients flow through"):
        checks.check_distillation_loss(detached, seed=0)


def test_any_tie_break_of_the_2_4_mask_is_right():
    """Ties broken towards the last index instead of the first: as right as torch.topk's choice."""
    def last_of_ties(w):
        if w.dim() != 2 or w.shape[1] % 4:
            raise ValueError("w should be (out, in) with in a multiple of 4")
        groups = w.abs().reshape(w.shape[0], w.shape[1] // 4, 4).flip(-1)
        kept = groups.topk(2, dim=-1).indices
        mask = torch.zeros(groups.shape, dtype=torch.bool, device=w.device).scatter(-1, kept, True)
        return mask.flip(-1).reshape(w.shape)

    for _ in range(5):
        checks.check_mask_2_4(last_of_ties)


def test_mask_2_4_must_raise_value_error_not_return_something():
    def lenient(w):
        w2 = w.reshape(w.shape[0], -1) if w.dim() > 2 else w.reshape(1, -1) if w.dim() == 1 else w
        if w2.shape[1] % 4:
            return torch.ones(w.shape, dtype=torch.bool)
        return solution("mask_2_4")(w2).reshape(w.shape)

    with pytest.raises(AssertionError, match=r"mask_2_4\(w\) for a 1-D w of 8 .*should raise ValueError .* returned Tensor"):
        checks.check_mask_2_4(lenient, seed=0)


def test_an_always_equal_mask_is_refused():
    class AlwaysEqual(torch.Tensor):
        def __eq__(self, other):
            return True

    def look_alike(w):
        return solution("mask_2_4")(w).as_subclass(AlwaysEqual)

    with pytest.raises(AssertionError, match="should return a torch.Tensor"):
        checks.check_mask_2_4(look_alike, seed=0)


def test_accept_or_resample_by_division_is_right_too():
    """u < p[token] / q[token], as the docstring states it, is as right as u * q[token] < p[token] on every case."""
    def by_division(p, q, token, u):
        if u < p[token] / q[token]:
            distribution = torch.zeros_like(p)
            distribution[token] = 1
            return True, distribution
        residual = (p - q).clamp(min=0)
        return False, residual / residual.sum()

    for _ in range(5):
        checks.check_accept_or_resample(by_division, n_cases=60)


def test_a_gptq_step_written_otherwise_is_right_too():
    """Multiplying by the ratio u[i, j] / u[i, i], on a column of shape (out,), one column at a time."""
    def other_order(w, u, i, scale, zero, bits):
        out = w.clone()
        column = w[:, i]
        s, z = scale[:, 0], zero[:, 0]
        q = s * (torch.clamp(torch.round(column / s) + z, 0, 2 ** bits - 1) - z)
        for j in range(i + 1, w.shape[1]):
            out[:, j] = w[:, j] - (column - q) * (u[i, j] / u[i, i])
        out[:, i] = q
        return out

    for _ in range(5):
        checks.check_gptq_column_step(other_order, n_cases=60)


def test_the_whole_layer_case_catches_a_step_that_is_right_only_on_small_layers():
    """Round to nearest, without spreading the error, on layers of 16 columns (the single-step cases have at most 12)."""
    def rtn_on_wide_layers(w, u, i, scale, zero, bits):
        if w.shape[1] < 16:
            return solution("gptq_column_step")(w, u, i, scale, zero, bits)
        out = w.clone()
        out[:, i:i + 1] = scale * (torch.clamp(torch.round(w[:, i:i + 1] / scale) + zero, 0, 2 ** bits - 1) - zero)
        return out

    with pytest.raises(AssertionError, match=r"after gptq_column_step for i = 0, 1, \.\.\., 15 .* compared with GPTQ"):
        checks.check_gptq_column_step(rtn_on_wide_layers, seed=0)


def test_the_checks_float64_references_agree_with_the_library():
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(6, 8, generator=gen, dtype=torch.float64), torch.randn(20, 8, generator=gen, dtype=torch.float64)
    assert torch.allclose(checks._wanda_reference(w, x), pruning.wanda_scores(w, torch.linalg.vector_norm(x, dim=0)))
    scale, zero = checks._grid64(w, 4)
    ref_scale, ref_zero = gptq.grid(w, 4)
    assert torch.equal(scale, ref_scale) and torch.equal(zero, ref_zero)
    s, t = torch.randn(2, 3, 11, generator=gen, dtype=torch.float64), torch.randn(2, 3, 11, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[1, -100, 4], [0, 10, -100]])
    for temperature, alpha in ((2.0, 0.5), (1.0, 0.0), (4.0, 1.0), (0.5, 0.3)):
        assert torch.allclose(checks._distill64(s, t, labels, temperature, alpha).float(),
                              distill.distillation_loss(s, t, labels, temperature, alpha), rtol=1e-5)
    p, q = torch.softmax(torch.randn(9, generator=gen), 0), torch.softmax(torch.randn(9, generator=gen), 0)
    accepted, distribution = checks._accept_reference(p, q, 3, 0.5)
    assert accepted == bool(0.5 * q[3] < p[3]) and torch.isclose(distribution.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert speculative.accept_or_resample  # the rule the check restates (tested by sampling in test_speculative.py)


def test_the_gptq_factor_is_the_librarys():
    """The check's own inverse-Hessian factor is built as course_lib.pruning.inverse_hessian_factor builds it."""
    gen = torch.Generator().manual_seed(3)
    u = checks._inverse_hessian_factor64(gen, 7, 1.0)
    assert torch.allclose(u, torch.triu(u)) and (torch.diag(u) != 1).all()
    hessian = torch.linalg.inv(u.T @ u)
    assert torch.allclose(pruning.inverse_hessian_factor(hessian, damp=0.0), u, atol=1e-8)


def test_failure_messages_name_the_seed():
    with pytest.raises(AssertionError, match=r"\(seed 5\)"):
        checks.check_wanda_scores(mutants.wanda_signed, seed=5)



def test_torch_semi_structured_sparsity_is_refused():
    """PyTorch's 2:4 conversion (CUDA only, but seen by the watch before it fails) is not an answer."""
    def converted(w):
        return torch.sparse.to_sparse_semi_structured(w).to_dense() != 0

    def from_dense(w):
        return torch.sparse.SparseSemiStructuredTensor.from_dense(w).to_dense() != 0

    for answer, message in ((converted, "torch.sparse.to_sparse_semi_structured"), (from_dense, "torch.sparse.semi_structured")):
        with pytest.raises(AssertionError, match=f"forbids:\n  - {message}"):
            checks.check_mask_2_4(answer, seed=0)


# --------------------------------------------------------------------------- graded: the learner's functions live in a sandbox


def test_graded_in_a_sandbox_errors_gradients_and_bools_travel_back():
    """ValueError comes back as ValueError, the student's gradient is taken next to the loss, accepted stays a bool."""
    from course_lib.autograde import RemoteFunction
    from course_lib.sandbox import Sandbox
    from tests import answers

    cells = "\n\n".join(answer for _, _, name, answer, _ in answers.graded_cells() if name in CHECKS)
    with Sandbox(timeout=120) as sandbox:
        assert sandbox.run_cell("import math, torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n" + cells).ok
        for name, check in CHECKS.items():
            check(RemoteFunction(sandbox, name), seed=0)
        assert sandbox.run_cell("def detached(*args, **kwargs):\n    return distillation_loss(*args, **kwargs).detach()").ok
        with pytest.raises(AssertionError, match="gradients flow through"):
            checks.check_distillation_loss(RemoteFunction(sandbox, "detached"), seed=0)


def test_the_capstone_bound_rejects_round_to_nearest_on_the_whole_model():
    """Round-to-nearest at 3 bits reaches 2.327 on the held-out texts: above the bound, whatever the calibration."""
    with pytest.raises(AssertionError, match=r"perplexity of 2\.32\d+; at most 2.318"):
        checks.check_quantized_model(mutants.quantize_round_to_nearest, seed=0)


def test_the_capstone_counts_levels_on_every_layer_of_the_model():
    """4-bit weights handed in for a 3-bit model fail on the first layer, before any perplexity is measured."""
    def four_bits(w, hessian, bits):
        return mutants.quantize_round_to_nearest(w, hessian, bits + 1)

    with pytest.raises(AssertionError, match="blocks.0.*distinct values; 3 bits allow at most 8"):
        checks.check_quantized_model(four_bits, seed=0)
