"""The checks of lesson 05 (FlashAttention) reject wrong answers with useful messages (tests/test_checks.py: they accept the reference)."""

from __future__ import annotations

import pytest
import torch

from course_lib.checks import flash as flash_checks
from tests.answers import solution_function

online_softmax_update = solution_function("online_softmax_update")
forward_tile_step = solution_function("forward_tile_step")


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


def tile_step_unscaled(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    return forward_tile_step(q_tile, k_tile, v_tile, m, l, acc, 1.0, mask)


def tile_step_without_mask(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    return forward_tile_step(q_tile, k_tile, v_tile, m, l, acc, scale, None)


def tile_step_mask_is_required(q_tile, k_tile, v_tile, m, l, acc, scale, mask):
    return forward_tile_step(q_tile, k_tile, v_tile, m, l, acc, scale, mask)


@pytest.mark.parametrize(
    "check,wrong,message",
    [
        (flash_checks.check_online_softmax_update, online_softmax_without_rescaling, "wrong values"),
        (flash_checks.check_online_softmax_update, online_softmax_returning_a_list_of_two, "tuple"),
        (flash_checks.check_online_softmax_update_edge_cases, online_softmax_with_nan_rows, "nan"),
        (flash_checks.check_forward_tile_step, tile_step_unscaled, "wrong values"),
        (flash_checks.check_forward_tile_step, tile_step_without_mask, "wrong values"),
        (flash_checks.check_forward_tile_step, tile_step_mask_is_required, "missing 1 required"),
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
    with pytest.raises(AssertionError, match=r"forward_tile_step\(q_tile, k_tile, v_tile, m, l, acc, scale=.*\(seed 13\)"):
        flash_checks.check_forward_tile_step(tile_step_unscaled, seed=13)


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
        (flash_checks.check_forward_tile_step, mutants.fts_fill_made_on_cpu, "meta device"),
        (flash_checks.check_forward_tile_step, mutants.fts_default_mask_on_cpu, "mask=None.*meta device"),
        (flash_checks.check_forward_tile_step, mutants.fts_bmm_with_view, "non-contiguous"),
        (flash_checks.check_forward_tile_step_edge_cases, mutants.fts_neginf_m_as_zero, "far below zero.*nan"),
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
        flash_checks.check_forward_tile_step(lambda *a, **k: list(forward_tile_step(*a, **k)))


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


def fts_with_where_and_reshape(q_tile, k_tile, v_tile, m, l, acc, scale, mask=None):
    """Masks with torch.where and a Python -inf, flattens with reshape for bmm."""
    q3, k3 = q_tile.reshape(-1, *q_tile.shape[-2:]), k_tile.reshape(-1, *k_tile.shape[-2:])
    s = torch.bmm(q3, k3.transpose(1, 2)).reshape(*q_tile.shape[:-1], k_tile.shape[-2]) * scale
    if mask is not None:
        s = torch.where(mask, s, float("-inf"))
    return online_softmax_update(m, l, acc, s, v_tile)


@pytest.mark.parametrize("name,fn", [("nan_to_num", osu_with_nan_to_num), ("python branch", osu_with_a_python_branch)])
def test_other_right_online_softmax_updates_pass(name, fn):
    flash_checks.check_online_softmax_update(fn)
    flash_checks.check_online_softmax_update_edge_cases(fn)


def test_another_right_forward_tile_step_passes():
    flash_checks.check_forward_tile_step(fts_with_where_and_reshape)
    flash_checks.check_forward_tile_step_edge_cases(fts_with_where_and_reshape)


def test_a_skip_written_as_k_start_at_or_after_q_end_passes():
    flash_checks.check_causal_tile_skip(lambda q_start, q_end, k_start: k_start >= q_end)
    flash_checks.check_causal_tile_skip_in_attention(lambda q_start, q_end, k_start: bool(k_start - q_end >= 0))
