"""Lesson 09's checks: the capstone (one training of the solution), what it refuses, its hidden test, and the hints."""

from __future__ import annotations

import pytest
import torch

from course_lib import rlhf
from course_lib.checks import rlhf as checks
from course_lib.models import load_pretrained
from tests.mutants import rlhf as mutants
from tests.test_checks import solution


def test_the_capstone_accepts_the_solution_and_its_policy_still_sorts():
    policy, measured = checks.check_aligned_policy(solution("align_policy"))
    assert measured["win_rate"] >= checks.MIN_WIN_RATE
    assert measured["truthful"] >= measured["sft_truthful"] - checks.MAX_TRUTH_LOSS
    kept = checks.check_aligned_policy_keeps_skills(policy, seed=None)
    assert kept["policy"] >= kept["sft"] - checks.MAX_SKILL_LOSS


def test_the_capstone_gives_comparisons_without_facts_or_flags_the_same_for_the_same_seed():
    seen = []

    def unchanged(sft_model, tokenizer, comparisons):
        seen.append(comparisons)
        return sft_model.state_dict()

    for _ in range(2):
        with pytest.raises(AssertionError, match=r"prefers the policy's answers to the SFT model's 50.0% of the time"):
            checks.check_aligned_policy(unchanged, seed=3)
    assert seen[0] == seen[1] and len(seen[0]) == len(rlhf.preference_data(seed=3)["train"])
    assert all(type(c) is tuple and len(c) == 3 and all(type(x) is str for x in c) for c in seen[0])
    held_out_people = {f.subject for f in rlhf.question_facts()["heldout"]}
    assert not any(person in c[0] for c in seen[0] for person in held_out_people)


def test_the_capstone_says_when_alignment_cost_the_truth():
    with pytest.raises(AssertionError, match=r"answers are true \d+% of the time on the held-out people, the SFT model's 63%"):
        checks.check_aligned_policy(mutants.align_too_far)


@pytest.mark.parametrize("mutant,message", [
    (mutants.align_returns_model, r"should return the aligned policy's weights, policy.state_dict\(\) .*got DecoderLM"),
    (mutants.align_other_model, "the weights should be the SFT model's parameters"),
    (mutants.align_nan_weights, "should be a finite float32 tensor"),
])
def test_a_malformed_policy_is_refused_with_what_is_wrong(mutant, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_aligned_policy(mutant)


def test_the_hidden_test_fails_a_policy_that_lost_the_skill_of_sorting():
    """course-lm-small before instruction tuning has the SFT model's shape but has never seen the chat format."""
    with pytest.raises(AssertionError, match=r"the policy sorts \d+% of them exactly, the SFT model 9\d%"):
        checks.check_aligned_policy_keeps_skills(load_pretrained("course-lm-small").state_dict(), seed=0)


def test_an_answer_that_raises_fails_with_the_call_named():
    def broken(sft_model, tokenizer, comparisons):
        raise RuntimeError("out of ideas")

    with pytest.raises(AssertionError, match=r"align_policy\(sft_model, tokenizer, comparisons\) .* raised RuntimeError"):
        checks.check_aligned_policy(broken)


@pytest.mark.parametrize("check,mutant,message", [
    (checks.check_bradley_terry_loss, mutants.bt_swapped, "the wrong way round"),
    (checks.check_bradley_terry_loss, mutants.bt_unstable, "use torch.nn.functional.logsigmoid"),
    (checks.check_dpo_loss, mutants.dpo_unstable, "use torch.nn.functional.logsigmoid"),
    (checks.check_kl_penalized_rewards, mutants.kl_score_on_last_column, "not on the last column"),
    (checks.check_kl_penalized_rewards, mutants.kl_penalty_on_padding, "zero where the mask is False"),
    (checks.check_gae, mutants.gae_without_lambda, "lambda is missing"),
    (checks.check_gae, mutants.gae_reads_values_in_padding, "the value after an answer's last token is 0"),
    (checks.check_dpo_loss, mutants.dpo_without_reference, "the reference model is missing"),
    (checks.check_dpo_loss, mutants.dpo_reference_added, "the reference is subtracted"),
    (checks.check_group_advantages, mutants.group_population_std, "Bessel's correction"),
    (checks.check_group_advantages, mutants.group_whole_batch, "within each group"),
])
def test_the_checks_hint_at_the_usual_mistakes(check, mutant, message):
    with pytest.raises(AssertionError, match=message):
        check(mutant, seed=0)


def test_the_checks_float64_references_are_the_librarys_functions():
    """The checks compare with formulas of their own; they agree with course_lib.rlhf (tested by hand in test_rlhf.py)."""
    gen = torch.Generator().manual_seed(0)
    c, r = torch.randn(9, generator=gen, dtype=torch.float64), torch.randn(9, generator=gen, dtype=torch.float64)
    assert torch.allclose(checks._bt_reference(c, r), rlhf.bradley_terry_loss(c, r))
    mask = checks._prefix_mask(gen, 4, 6)
    rewards, values = torch.randn(4, 6, generator=gen, dtype=torch.float64), torch.randn(4, 6, generator=gen, dtype=torch.float64)
    for got, expected in zip(rlhf.gae(rewards, values, mask, 0.9, 0.8), checks._gae_reference(rewards, values, mask, 0.9, 0.8)):
        assert torch.allclose(got, expected)
    scores = torch.randn(4, generator=gen, dtype=torch.float64)
    assert torch.allclose(rlhf.kl_penalized_rewards(scores, rewards, values, mask, 0.3),
                          checks._kl_reference(scores, rewards, values, mask, 0.3))
    logps = [-torch.rand(5, generator=gen, dtype=torch.float64) * 9 for _ in range(4)]
    assert torch.allclose(rlhf.dpo_loss(*logps, 0.2), checks._dpo_reference(*logps, 0.2))
    grouped = (torch.rand(3, 8, generator=gen) < 0.5).double()
    assert torch.allclose(rlhf.group_advantages(grouped), checks._group_reference(grouped, 1e-4))


# --------------------------------------------------------------------------- graded: the learner's functions live in a sandbox


@pytest.fixture(scope="module")
def sandbox():
    from course_lib.sandbox import Sandbox

    with Sandbox(timeout=120) as box:
        yield box


LEARNER_CELL = '''
import copy, torch
import torch.nn.functional as F

def bradley_terry_loss(chosen_scores, rejected_scores):
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()

def bt_detached(chosen_scores, rejected_scores):
    return -F.logsigmoid(chosen_scores - rejected_scores).mean().detach()

def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin).mean()

def returns_the_model(sft_model, tokenizer, comparisons):
    return copy.deepcopy(sft_model)

def returns_the_weights(sft_model, tokenizer, comparisons):
    return sft_model.state_dict()
'''


def test_graded_the_gradients_are_taken_next_to_the_learners_function(sandbox):
    """A gradient cannot travel back from the sandbox, so the backward pass runs there and only the report returns."""
    from course_lib.autograde import RemoteFunction

    assert sandbox.run_cell(LEARNER_CELL).ok
    checks.check_bradley_terry_loss(RemoteFunction(sandbox, "bradley_terry_loss"), seed=0)
    checks.check_dpo_loss(RemoteFunction(sandbox, "dpo_loss"), seed=0)
    with pytest.raises(AssertionError, match="gradients flow through"):
        checks.check_bradley_terry_loss(RemoteFunction(sandbox, "bt_detached"), seed=0)


def test_graded_the_capstone_takes_weights_not_a_model(sandbox):
    from course_lib.autograde import RemoteFunction

    assert sandbox.run_cell(LEARNER_CELL).ok
    with pytest.raises(AssertionError, match=r"policy.state_dict\(\) \(a dict of tensors\), got DecoderLM"):
        checks.check_aligned_policy(RemoteFunction(sandbox, "returns_the_model"))
    with pytest.raises(AssertionError, match=r"prefers the policy's answers to the SFT model's 50.0% of the time"):
        checks.check_aligned_policy(RemoteFunction(sandbox, "returns_the_weights"))
