"""The checks of lesson 05 (FlashAttention) reject wrong answers with useful messages (tests/test_checks.py: they accept the reference)."""

from __future__ import annotations

import pytest
import torch

from course_lib.checks import flash as flash_checks
from tests.answers import solution_function

online_softmax_update = solution_function("online_softmax_update")
flash_forward = solution_function("flash_forward")


# --------------------------------------------------------------------------- wrong answers


def online_softmax_without_rescaling(m, l, acc, scores, v):
    m_new = torch.maximum(m, scores.amax(dim=-1))
    safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    p = torch.exp(scores - safe.unsqueeze(-1))
    return m_new, l + p.sum(-1), acc + p @ v


def online_softmax_returning_a_list_of_two(m, l, acc, scores, v):
    return list(online_softmax_update(m, l, acc, scores, v)[:2])


def online_softmax_with_nan_rows(m, l, acc, scores, v):
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - m_new)
    p = torch.exp(scores - m_new.unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def flash_forward_unscaled(q, k, v, block_q=64, block_k=64, causal=False):
    return flash_forward(q * (q.shape[-1] ** 0.5), k, v, block_q, block_k, causal)


def flash_forward_whole_matrix(q, k, v, block_q=64, block_k=64, causal=False):
    """Right values, but one tile as large as the whole sequence whatever it is asked."""
    return flash_forward(q, k, v, q.shape[-2], k.shape[-2], causal)


@pytest.mark.parametrize(
    "check,wrong,message",
    [
        (flash_checks.check_online_softmax_update, online_softmax_without_rescaling, "wrong values"),
        (flash_checks.check_online_softmax_update, online_softmax_returning_a_list_of_two, "tuple"),
        (flash_checks.check_online_softmax_update_edge_cases, online_softmax_with_nan_rows, "nan"),
        (flash_checks.check_flash_forward, flash_forward_unscaled, "wrong values"),
        (flash_checks.check_flash_forward_tiles, flash_forward_whole_matrix, "more than a tile"),
        (flash_checks.check_causal_tile_skip, lambda q_start, q_end, k_start: k_start > q_end, "should be True"),
        (flash_checks.check_causal_tile_skip, lambda q_start, q_end, k_start: k_start > q_start, "should be False"),
        (flash_checks.check_causal_tile_skip, lambda q_start, q_end, k_start: int(k_start >= q_end), "Python bool"),
        (flash_checks.check_causal_tile_skip_in_attention, lambda q_start, q_end, k_start: False, "should be True"),
    ],
)
def test_check_rejects_wrong_answers(check, wrong, message):
    with pytest.raises((AssertionError, TypeError), match=message):
        check(wrong)


def test_same_seed_same_inputs():
    def recorder(seen):
        def fn(m, l, acc, scores, v):
            if scores.device.type != "meta":  # the device check's inputs hold no values
                seen.append(scores.clone())
            return online_softmax_update(m, l, acc, scores, v)

        return fn

    first, again = [], []
    flash_checks.check_online_softmax_update(recorder(first), seed=3)
    flash_checks.check_online_softmax_update(recorder(again), seed=3)
    assert len(first) == len(again) and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_failure_messages_name_the_call_and_the_seed():
    with pytest.raises(AssertionError, match=r"flash_forward\(q, k, v, block_q=.*\(seed 13\)"):
        flash_checks.check_flash_forward(flash_forward_unscaled, seed=13)


# --------------------------------------------------------------------------- mistakes only extreme inputs, layouts, devices or calls show

from tests.mutants import flash as mutants  # noqa: E402


@pytest.mark.parametrize(
    "check,wrong,message",
    [
        (flash_checks.check_online_softmax_update, mutants.osu_zeros_on_cpu, "meta device"),
        (flash_checks.check_online_softmax_update, mutants.osu_bmm_with_view, "non-contiguous.*use reshape"),
        (flash_checks.check_online_softmax_update, mutants.osu_renamed_arguments, "by keyword.*parameter names"),
        (flash_checks.check_online_softmax_update_edge_cases, mutants.osu_exp_separately, "thousands.*nan"),
        (flash_checks.check_online_softmax_update_edge_cases, mutants.osu_shift_by_tile_max, "nan"),
        (flash_checks.check_flash_forward_tiles, mutants.ff_no_causal_skip, "must be skipped"),
        (flash_checks.check_flash_forward_tiles, mutants.ff_mask_every_tile_no_skip, "must be skipped"),
        (flash_checks.check_flash_forward, mutants.ff_lse_is_m, "its lse"),
        (flash_checks.check_flash_forward, mutants.ff_scales_q_in_place, "in place"),
        (flash_checks.check_causal_tile_skip, mutants.skip_returns_numpy_bool, r"got numpy\.bool"),
        (flash_checks.check_causal_tile_skip, lambda q_start, q_end, k_end: k_end > q_end - 1, "by keyword"),
    ],
)
def test_check_rejects_mistakes_that_only_some_inputs_show(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)


def test_moving_the_state_to_the_cpu_is_seen_on_the_meta_device():
    def via_the_cpu(m, l, acc, scores, v):  # on a GPU its state would come back on the CPU
        return online_softmax_update(*(t.cpu() for t in (m, l, acc, scores, v)))

    with pytest.raises(AssertionError, match="copied its input's data to the CPU"):
        flash_checks.check_online_softmax_update(via_the_cpu)


def test_a_list_is_not_the_tuple_the_docstring_asks_for():
    with pytest.raises(AssertionError, match="should return a tuple .* got list"):
        flash_checks.check_online_softmax_update(lambda *a: list(online_softmax_update(*a)))
    with pytest.raises(AssertionError, match="should return a tuple .* got list"):
        flash_checks.check_flash_forward(lambda *a, **k: list(flash_forward(*a, **k)))


def test_the_state_of_the_first_tile_in_the_thousands_chain_is_folded_step_by_step():
    seen = []

    def recorder(m, l, acc, scores, v):
        seen.append(scores.clone())
        return online_softmax_update(m, l, acc, scores, v)

    flash_checks.check_online_softmax_update_edge_cases(recorder)
    assert any(torch.isneginf(s).all() for s in seen), "an all -inf tile is among the edge cases"
    assert any(s.abs().max() >= 2000 for s in seen if torch.isfinite(s).any())


def test_non_contiguous_copies_have_the_same_values_and_no_contiguous_layout():
    x = torch.randn(2, 3, 4, 5)
    y = flash_checks._non_contiguous(x)
    assert torch.equal(x, y) and not y.is_contiguous()
    with pytest.raises(RuntimeError):
        y.view(-1, 4, 5)
    mask = torch.rand(3, 4) < 0.5
    assert torch.equal(flash_checks._non_contiguous(mask), mask)


# --------------------------------------------------------------------------- right answers written otherwise still pass


def osu_with_nan_to_num(m, l, acc, scores, v):
    """exp(-inf - (-inf)) is nan; replacing it by 0 afterwards is right too."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.nan_to_num(torch.exp(m - m_new), nan=0.0)
    p = torch.nan_to_num(torch.exp(scores - m_new.unsqueeze(-1)), nan=0.0)
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + torch.einsum("...qk,...kv->...qv", p, v)


def osu_with_a_python_branch(m, l, acc, scores, v):
    """Needs the values (.any()): cannot run on the meta device, which is not held against it."""
    m_new = torch.maximum(m, scores.amax(dim=-1))
    if torch.isneginf(m_new).any():
        shift = torch.where(torch.isneginf(m_new), 0.0, m_new)
    else:
        shift = m_new
    rescale, p = torch.exp(m - shift), torch.exp(scores - shift.unsqueeze(-1))
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ v


def ff_with_einsum_and_continue(q, k, v, block_q=64, block_k=64, causal=False):
    """einsum for the products, torch.where for the mask, continue (not break) past the skipped tiles, preallocated outputs."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    o, lse = q.new_empty(*q.shape[:-1], v.shape[-1]), q.new_empty(q.shape[:-1])
    for qs in range(0, n_q, block_q):
        qe = min(n_q, qs + block_q)
        m = torch.full(q.shape[:-2] + (qe - qs,), float("-inf"), dtype=q.dtype)
        l, acc = torch.zeros_like(m), q.new_zeros(*m.shape, v.shape[-1])
        for ks in range(0, n_k, block_k):
            if causal and ks >= qe:
                continue
            ke = min(n_k, ks + block_k)
            s = torch.einsum("...qe,...ke->...qk", q[..., qs:qe, :], k[..., ks:ke, :]) / q.shape[-1] ** 0.5
            if causal:
                s = torch.where(torch.arange(ks, ke) <= torch.arange(qs, qe)[:, None], s, float("-inf"))
            m, l, acc = online_softmax_update(m, l, acc, s, v[..., ks:ke, :])
        o[..., qs:qe, :], lse[..., qs:qe] = acc / l[..., None], m + l.log()
    return o, lse


@pytest.mark.parametrize("name,fn", [("nan_to_num", osu_with_nan_to_num), ("python branch", osu_with_a_python_branch)])
def test_other_right_online_softmax_updates_pass(name, fn):
    flash_checks.check_online_softmax_update(fn)
    flash_checks.check_online_softmax_update_edge_cases(fn)


def test_another_right_flash_forward_passes():
    flash_checks.check_flash_forward(ff_with_einsum_and_continue, n_cases=6)


def test_the_score_tiles_counted_are_those_on_or_below_the_diagonal():
    assert flash_checks._expected_score_pairs(512, 512, 64, 64, True) == (512 * 512 // 2 + 8 * 64 * 64 // 2, 36)
    assert flash_checks._expected_score_pairs(10, 10, 4, 4, False) == (100, 9)


def test_a_skip_written_as_k_start_at_or_after_q_end_passes():
    flash_checks.check_causal_tile_skip(lambda q_start, q_end, k_start: k_start >= q_end)
    flash_checks.check_causal_tile_skip_in_attention(lambda q_start, q_end, k_start: bool(k_start - q_end >= 0))


# --------------------------------------------------------------------------- graded: the learner's function lives in a sandbox


def test_graded_in_a_sandbox_the_score_tiles_are_counted_where_the_answer_runs():
    """The grader cannot see the operators the sandbox runs: the count runs next to the answer and comes back as data."""
    import inspect

    from course_lib.autograde import RemoteFunction
    from course_lib.sandbox import Sandbox
    from tests import answers
    from tests.mutants import flash as mutants

    solution = next(answer for _, _, name, answer, _ in answers.graded_cells() if name == "flash_forward")
    wrong = "\n\n".join(inspect.getsource(f) for f in (mutants._ff, mutants.ff_mask_every_tile_no_skip))
    with Sandbox(timeout=120) as sandbox:
        assert sandbox.run_cell("import math\nimport torch\n\n" + solution + "\n\n" + wrong).ok
        flash_checks.check_flash_forward_tiles(RemoteFunction(sandbox, "flash_forward"), seed=0)
        with pytest.raises(AssertionError, match="Tiles above the diagonal must be skipped"):
            flash_checks.check_flash_forward_tiles(RemoteFunction(sandbox, "ff_mask_every_tile_no_skip"), seed=0)
