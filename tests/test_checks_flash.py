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
