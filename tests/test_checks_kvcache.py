"""The checks of lesson 06 (GQA and the KV cache) reject wrong answers with useful messages (tests/test_checks.py: they accept the reference)."""

from __future__ import annotations

import pytest
import torch

from course_lib.checks import kvcache as kv_checks
from tests.mutants import kvcache as mutants


def test_transformers_repeat_kv_is_refused():
    """Wrapping transformers' own repeat_kv is not an answer: the exercise is to write it."""
    from transformers.models.llama.modeling_llama import repeat_kv

    with pytest.raises(AssertionError, match="transformers"):
        kv_checks.check_repeat_kv(repeat_kv)
    with pytest.raises(AssertionError, match="transformers"):
        kv_checks.check_repeat_kv(lambda x, n_rep: repeat_kv(x, n_rep))


def test_sdpa_with_enable_gqa_passes_the_step_checks():
    """A short, correct answer: append, then PyTorch's grouped attention."""

    def step(q, k_new, v_new, k_cache, v_cache):
        k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True), k, v

    kv_checks.check_cached_attention_step(step)
    kv_checks.check_cached_attention_step_decodes_like_full_attention(step)


# --------------------------------------------------------------------------- wrong answers, and what the checks say


@pytest.mark.parametrize(
    "check,wrong,message",
    [
        (kv_checks.check_repeat_kv, mutants.repeat_kv_tiles, r"query heads \[0, 0, 1, 1, 2, 2\]|wrong values"),
        (kv_checks.check_repeat_kv, mutants.repeat_kv_ignores_n_rep, "should return shape"),
        (kv_checks.check_repeat_kv, mutants.repeat_kv_float32_buffer, "dtype torch.float64"),
        (kv_checks.check_repeat_kv_against_transformers, mutants.repeat_kv_modulo, "wrong values"),
        (kv_checks.check_kv_cache_bytes_from_config, mutants.kv_config_ignores_kv_heads, "should be"),
        (kv_checks.check_kv_cache_bytes_from_config, mutants.kv_config_head_dim_from_hidden, "Gemma-7B"),
        (kv_checks.check_kv_cache_bytes_from_config, mutants.kv_config_float_head_dim, "Python int"),
        (kv_checks.check_kv_cache_bytes_from_config_against_transformers, mutants.kv_config_keys_only, "transformers"),
        (kv_checks.check_cached_attention_step, mutants.step_is_causal, "out returned by"),
        (kv_checks.check_cached_attention_step, mutants.step_prepends, "k_cache returned by"),
        (kv_checks.check_cached_attention_step, mutants.step_returns_old_cache, r"shape"),
        (kv_checks.check_cached_attention_step, mutants.step_returns_list, "should return a tuple"),
        (kv_checks.check_cached_attention_step_decodes_like_full_attention, mutants.step_before_append, "row t of full causal"),
        (kv_checks.check_cached_attention_step_decodes_like_full_attention, mutants.step_tiles_heads, "GQA"),
    ],
)
def test_check_rejects_a_wrong_answer_with_a_useful_message(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)


@pytest.mark.parametrize("grade_id", sorted(mutants.MUTANTS))
def test_every_mutant_fails_some_check(grade_id):
    checks = {
        "test_repeat_kv": (kv_checks.check_repeat_kv, kv_checks.check_repeat_kv_against_transformers),
        "test_kv_cache_bytes_from_config": (kv_checks.check_kv_cache_bytes_from_config,
                                            kv_checks.check_kv_cache_bytes_from_config_against_transformers),
        "test_cached_attention_step": (kv_checks.check_cached_attention_step,
                                       kv_checks.check_cached_attention_step_decodes_like_full_attention),
    }[grade_id]
    for name, wrong in mutants.MUTANTS[grade_id].items():
        failures = 0
        for check in checks:
            try:
                check(wrong)
            except Exception:  # an AssertionError, or the mutant's own error (a KeyError, a shape error)
                failures += 1
        assert failures, f"{name} passes every check of {grade_id}"


def test_failure_messages_name_the_seed():
    with pytest.raises(AssertionError, match=r"\(seed 5\)"):
        kv_checks.check_cached_attention_step(mutants.step_unscaled, seed=5)
