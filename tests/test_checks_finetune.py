"""Lesson 08's checks: the capstone (one training of the solution), its refusals, and the hints of the other checks."""

from __future__ import annotations

import pytest
import torch

from course_lib import lora
from course_lib.checks import finetune as checks
from tests.mutants import finetune as mutants
from tests.test_checks import solution


def test_the_capstone_accepts_the_solution_and_its_adapter_generalises():
    adapter = checks.check_reverse_adapter(solution("train_reverse_adapter"))
    assert adapter["r"] <= checks.MAX_RANK
    assert checks.check_reverse_adapter_on_new_lists(adapter, seed=None, n_heldout=100) >= 0.6


def test_the_capstone_gives_the_same_pairs_for_the_same_seed_and_says_how_far_an_untrained_adapter_is():
    seen = []

    def untrained(pairs):
        seen.append(pairs)
        return mutants.adapter_untrained(pairs)

    for _ in range(2):
        with pytest.raises(AssertionError, match=r"reverses 0% of 20 new lists exactly; at least 60% is needed"):
            checks.check_reverse_adapter(untrained, seed=3, n_heldout=20)
    assert seen[0] == seen[1] and len(seen[0]) == 1000 and seen[0][0][0].startswith("Reverse: ")
    assert all(response.split() == instruction.split()[1:][::-1] for instruction, response in seen[0])


@pytest.mark.parametrize("change,message", [
    (lambda a: {k: v for k, v in a.items() if k != "alpha"}, "with the keys 'r', 'alpha', 'targets' and 'state'"),
    (lambda a: {**a, "r": 32}, "'r' should be an int from 1 to 16"),
    (lambda a: {**a, "r": 8.0}, "'r' should be an int from 1 to 16"),
    (lambda a: {**a, "alpha": -1}, "'alpha' should be a positive number"),
    (lambda a: {**a, "targets": ["q_proj", "w_q"]}, "'targets' should be a non-empty list of distinct names"),
    (lambda a: {**a, "targets": []}, "'targets' should be a non-empty list"),
    (lambda a: {**a, "state": {k: v.double() for k, v in a["state"].items()}}, "should be a finite float32 tensor"),
    (lambda a: {**a, "targets": ["q_proj", "k_proj"]}, "does not fit course-lm-small with r=8"),
    (lambda a: {**a, "state": {k: v[:, :2] if "lora_A" in k else v for k, v in a["state"].items()}}, "should have shape"),
])
def test_a_malformed_adapter_is_refused_with_what_is_wrong(change, message):
    adapter = change(mutants.adapter_untrained(None))
    with pytest.raises(AssertionError, match=message):
        checks.check_reverse_adapter_on_new_lists(adapter, seed=0, n_heldout=5)


def test_an_answer_that_raises_fails_with_the_call_named():
    def broken(pairs):
        raise RuntimeError("out of ideas")

    with pytest.raises(AssertionError, match=r"train_reverse_adapter\(pairs\) .* raised RuntimeError: out of ideas"):
        checks.check_reverse_adapter(broken, n_heldout=5)


@pytest.mark.parametrize("check,mutant,message", [
    (checks.check_mask_prompt, mutants.mask_keeps_last_prompt_token, "the first response token is at prompt_length"),
    (checks.check_mask_prompt, mutants.mask_padding_by_id, "a real token may have the same id as <pad>"),
    (checks.check_lora_forward, mutants.lora_forward_unscaled, "not scaled by alpha / r"),
    (checks.check_merge_lora_weight, mutants.merge_alpha_only, "scaled by alpha alone"),
    (checks.check_lora_trainable_parameters, mutants.count_ignores_gqa, "with grouped-query attention"),
    (checks.check_merge_lora_weight, mutants.merge_in_place, "changed its input tensor in place"),
])
def test_the_checks_hint_at_the_usual_mistakes(check, mutant, message):
    with pytest.raises(AssertionError, match=message):
        check(mutant, seed=0)


def test_the_lora_references_of_the_checks_agree_with_the_course_layer():
    """The checks' float64 formula is what course_lib.lora's layer computes (and so what peft computes: tests/test_lora.py)."""
    gen = torch.Generator().manual_seed(0)
    x, weight, bias, a, b = checks._lora_inputs(gen, torch.float64, (2, 3), 9, 5, 3)
    base = torch.nn.Linear(9, 5, dtype=torch.float64)
    layer = lora.LoRALinear(base, r=3, alpha=6.0)
    with torch.no_grad():
        base.weight.copy_(weight), base.bias.copy_(bias)
        layer.lora_A["default"].weight.copy_(a), layer.lora_B["default"].weight.copy_(b)
        torch.testing.assert_close(layer(x), checks._lora_reference(x, weight, bias, a, b, 6.0))
        layer.merge()
        torch.testing.assert_close(layer.base_layer.weight, weight + 2.0 * (b @ a))
