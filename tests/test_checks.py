"""The exercise checks themselves: they accept the reference and reject malformed answers."""

from __future__ import annotations

import pytest
import torch

from course_lib import attention, distill, distributed, finetune, flash, gptq, kvcache, memory, models, pruning, rlhf, speculative, tokenizer
from course_lib.checks import attention as attention_checks
from course_lib.checks import basics as basics_checks
from course_lib.checks import compression as compression_checks
from course_lib.checks import distributed as distributed_checks
from course_lib.checks import finetune as finetune_checks
from course_lib.checks import flash as flash_checks
from course_lib.checks import formats as formats_checks
from course_lib.checks import kvcache as kvcache_checks
from course_lib.checks import memory as memory_checks
from course_lib.checks import quant as quant_checks
from course_lib.checks import rag as rag_checks
from course_lib.checks import models as models_checks
from course_lib.checks import rlhf as rlhf_checks
from course_lib.checks import tokenizer as tokenizer_checks
from course_lib.checks.common import call, expect_tensor
from tests import answers


def solution(name: str):
    """The solution notebook's own answer for the exercise that defines ``name``."""
    return answers.solution_function(name)


CHECKS = [
    (attention_checks.check_softmax, "softmax"),
    (attention_checks.check_softmax_edge_cases, "softmax"),
    (attention_checks.check_causal_mask, "causal_mask"),
    (attention_checks.check_causal_mask_against_torch, "causal_mask"),
    (attention_checks.check_scaled_dot_product_attention, "scaled_dot_product_attention"),
    (attention_checks.check_scaled_dot_product_attention_edge_cases, "scaled_dot_product_attention"),
    (attention_checks.check_multi_head_attention, "multi_head_attention"),
    (attention_checks.check_multi_head_attention_against_torch, "multi_head_attention"),
    (attention_checks.check_predict_equal_weights, "predict_equal_weights"),
    (attention_checks.check_predict_score_growth, "predict_score_growth"),
    (basics_checks.check_tensor_bytes, "tensor_bytes"),
    (basics_checks.check_tensor_bytes_edge_cases, "tensor_bytes"),
    (tokenizer_checks.check_merge_pair, "merge_pair"),
    (tokenizer_checks.check_merge_pair_edge_cases, "merge_pair"),
    (models_checks.check_next_token_loss, "next_token_loss"),
    (models_checks.check_next_token_loss_edge_cases, "next_token_loss"),
    (models_checks.check_mlm_mask, "mlm_mask"),
    (models_checks.check_mlm_mask_edge_cases, "mlm_mask"),
    (models_checks.check_greedy_generate, "greedy_generate"),
    (models_checks.check_greedy_generate_edge_cases, "greedy_generate"),
    (models_checks.check_predict_uniform_loss, "predict_uniform_loss"),
    (models_checks.check_decoder_block, "decoder_block"),
    (models_checks.check_decoder_block_edge_cases, "decoder_block"),
    (models_checks.check_predict_block_params_millions, "predict_block_params_millions"),
    (memory_checks.check_llama_block_params, "llama_block_params"),
    (memory_checks.check_llama_block_params_against_transformers, "llama_block_params"),
    (memory_checks.check_model_state_bytes, "model_state_bytes"),
    (memory_checks.check_model_state_bytes_against_measurement, "model_state_bytes"),
    (memory_checks.check_kv_cache_bytes, "kv_cache_bytes"),
    (memory_checks.check_kv_cache_bytes_against_a_real_cache, "kv_cache_bytes"),
    (memory_checks.check_predict_adamw_bytes_per_param, "predict_adamw_bytes_per_param"),
    (memory_checks.check_predict_probs_growth, "predict_probs_growth"),
    (memory_checks.check_activation_bytes, "activation_bytes"),
    (memory_checks.check_activation_bytes_against_measurement, "activation_bytes"),
    (formats_checks.check_decode_fp16, "decode_fp16"),
    (formats_checks.check_decode_fp16_edge_cases, "decode_fp16"),
    (formats_checks.check_round_to_bf16, "round_to_bf16"),
    (formats_checks.check_round_to_bf16_edge_cases, "round_to_bf16"),
    (quant_checks.check_absmax_int8, ("absmax_quantize_int8", "absmax_dequantize_int8")),
    (quant_checks.check_absmax_int8_edge_cases, ("absmax_quantize_int8", "absmax_dequantize_int8")),
    (quant_checks.check_blockwise_int4, "quantize_int4_blocks"),
    (quant_checks.check_blockwise_int4_edge_cases, "quantize_int4_blocks"),
    (quant_checks.check_int4_packed, ("quantize_int4_packed", "dequantize_int4_packed")),
    (quant_checks.check_int4_packed_edge_cases, ("quantize_int4_packed", "dequantize_int4_packed")),
    (quant_checks.check_predict_int4_layer_mib, "predict_int4_layer_mib"),
    (flash_checks.check_online_softmax_update, "online_softmax_update"),
    (flash_checks.check_online_softmax_update_edge_cases, "online_softmax_update"),
    (flash_checks.check_flash_forward, "flash_forward"),
    (flash_checks.check_causal_tile_skip, "causal_tile_skip"),
    (flash_checks.check_causal_tile_skip_in_attention, "causal_tile_skip"),
    (flash_checks.check_predict_causal_skipped_fraction, "predict_causal_skipped_fraction"),
    (kvcache_checks.check_repeat_kv, "repeat_kv"),
    (kvcache_checks.check_repeat_kv_against_transformers, "repeat_kv"),
    (kvcache_checks.check_generate_with_static_cache, "generate_with_static_cache"),
    (kvcache_checks.check_generate_with_static_cache_against_transformers, "generate_with_static_cache"),
    (kvcache_checks.check_cached_attention_step, "cached_attention_step"),
    (kvcache_checks.check_cached_attention_step_decodes_like_full_attention, "cached_attention_step"),
    (kvcache_checks.check_predict_gqa8_cache_shrink, "predict_gqa8_cache_shrink"),
    (distributed_checks.check_ring_all_reduce, "ring_all_reduce"),
    (distributed_checks.check_shard, "shard"),
    (distributed_checks.check_unshard, "unshard"),
    (distributed_checks.check_zero_memory_per_gpu, "zero_memory_per_gpu"),
    (distributed_checks.check_average_gradients, "average_gradients"),
    (finetune_checks.check_mask_prompt, "mask_prompt"),
    (finetune_checks.check_lora_forward, "lora_forward"),
    (finetune_checks.check_merge_lora_weight, "merge_lora_weight"),
    (finetune_checks.check_lora_trainable_parameters, "lora_trainable_parameters"),
    (rlhf_checks.check_bradley_terry_loss, "bradley_terry_loss"),
    (rlhf_checks.check_kl_penalized_rewards, "kl_penalized_rewards"),
    (rlhf_checks.check_gae, "gae"),
    (rlhf_checks.check_dpo_loss, "dpo_loss"),
    (rlhf_checks.check_group_advantages, "group_advantages"),
    (compression_checks.check_mask_2_4, "mask_2_4"),
    (compression_checks.check_wanda_scores, "wanda_scores"),
    (compression_checks.check_gptq_column_step, "gptq_column_step"),
    (compression_checks.check_distillation_loss, "distillation_loss"),
    (compression_checks.check_accept_or_resample, "accept_or_resample"),
    (compression_checks.check_quantize_layer, "quantize_layer"),
    (rag_checks.check_chunk_words, "chunk_words"),
    (rag_checks.check_bm25_score, "bm25_score"),
    (rag_checks.check_cosine_top_k, "cosine_top_k"),
    (rag_checks.check_recall_and_mrr, ("recall_at_k", "mrr")),
    (rag_checks.check_fit_prompt, "fit_prompt"),
]

# Lessons 08 and 09's capstones train a model for each call, lesson 10's quantizes one, lesson 11's embeds hundreds of
# sentences (seconds, not milliseconds): tests/test_checks_finetune.py, tests/test_checks_rlhf.py,
# tests/test_checks_compression.py and tests/test_checks_rag.py run each once with the solution, instead of five times here.
TRAINING_CHECKS = [finetune_checks.check_reverse_adapter, finetune_checks.check_reverse_adapter_on_new_lists,
                   rlhf_checks.check_aligned_policy, rlhf_checks.check_aligned_policy_keeps_skills,
                   compression_checks.check_quantized_model, rag_checks.check_retrieve]


def test_every_check_of_every_test_cell_is_listed():
    """Each check that a solution notebook's test cell calls appears in CHECKS."""
    listed = {check.__name__ for check, _ in CHECKS} | {check.__name__ for check in TRAINING_CHECKS}
    assert answers.called_checks() <= listed, answers.called_checks() - listed


@pytest.mark.parametrize("check,names", CHECKS, ids=[f"{i}-{c.__name__}" for i, (c, _) in enumerate(CHECKS)])
def test_check_accepts_the_solution(check, names):
    functions = [solution(n) for n in names] if isinstance(names, tuple) else [solution(names)]
    for _ in range(5):  # fresh random inputs each time
        check(*functions)


@pytest.mark.parametrize(
    "check,reference",
    [
        (attention_checks.check_softmax, attention.softmax),
        (attention_checks.check_causal_mask, attention.causal_mask),
        (attention_checks.check_scaled_dot_product_attention, attention.scaled_dot_product_attention),
        (basics_checks.check_tensor_bytes, memory.tensor_bytes),
        (tokenizer_checks.check_merge_pair, tokenizer.merge_pair),
        (models_checks.check_next_token_loss, models.next_token_loss),
        (models_checks.check_mlm_mask, models.mlm_mask),
        (flash_checks.check_online_softmax_update, flash.online_softmax_update),
        (flash_checks.check_causal_tile_skip, flash.causal_tile_skip),
        (kvcache_checks.check_repeat_kv, attention.repeat_kv),
        (kvcache_checks.check_kv_cache_bytes_from_config, kvcache.kv_cache_bytes_from_config),
        (distributed_checks.check_ring_all_reduce, distributed.ring_all_reduce),
        (distributed_checks.check_shard, distributed.shard),
        (distributed_checks.check_unshard, distributed.unshard),
        (distributed_checks.check_zero_memory_per_gpu, distributed.zero_bytes_per_rank),
        (finetune_checks.check_mask_prompt, finetune.mask_prompt),
        (rlhf_checks.check_bradley_terry_loss, rlhf.bradley_terry_loss),
        (rlhf_checks.check_kl_penalized_rewards, rlhf.kl_penalized_rewards),
        (rlhf_checks.check_gae, rlhf.gae),
        (rlhf_checks.check_dpo_loss, rlhf.dpo_loss),
        (rlhf_checks.check_group_advantages, rlhf.group_advantages),
        (compression_checks.check_mask_2_4, pruning.n_m_mask),
        (compression_checks.check_wanda_scores, pruning.wanda_scores),
        (compression_checks.check_distillation_loss, distill.distillation_loss),
        (compression_checks.check_accept_or_resample, speculative.accept_or_resample),
        (compression_checks.check_quantize_layer, gptq.gptq),
    ],
)
def test_check_refuses_the_course_reference_itself(check, reference):
    with pytest.raises(AssertionError, match="write your own"):
        check(reference)


def test_same_seed_same_inputs():
    softmax = solution("softmax")
    seen = []
    attention_checks.check_softmax(lambda x, dim=-1: seen.append(x.clone()) or softmax(x, dim), seed=7)
    again = []
    attention_checks.check_softmax(lambda x, dim=-1: again.append(x.clone()) or softmax(x, dim), seed=7)
    assert len(seen) == len(again) and all(torch.equal(a, b) for a, b in zip(seen, again))


class AlwaysEqual(torch.Tensor):
    def __eq__(self, other):
        return True


def test_expect_tensor_rejects_look_alikes():
    expected = torch.ones(2, 3)
    with pytest.raises(AssertionError, match="should return a torch.Tensor"):
        expect_tensor(expected.as_subclass(AlwaysEqual), expected, "f(x)")
    with pytest.raises(AssertionError, match="should return a torch.Tensor"):
        expect_tensor(expected.numpy(), expected, "f(x)")
    with pytest.raises(AssertionError, match="dtype torch.float32"):
        expect_tensor(expected.double(), expected, "f(x)")
    with pytest.raises(AssertionError, match=r"shape \(2, 3\)"):
        expect_tensor(expected.T, expected, "f(x)")
    with pytest.raises(AssertionError, match="wrong values"):
        expect_tensor(expected * 1.01, expected, "f(x)")
    with pytest.raises(AssertionError, match="nan"):
        expect_tensor(expected * float("nan"), expected, "f(x)")
    with pytest.raises(AssertionError, match="wrong entries"):
        expect_tensor(torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool), "mask")


def test_call_detects_in_place_changes():
    def sneaky(x):
        x.mul_(2)
        return x

    with pytest.raises(AssertionError, match="changed its input tensor in place"):
        call(sneaky, torch.ones(3), what="sneaky(x)")


def test_failure_messages_name_the_call_and_the_seed():
    with pytest.raises(AssertionError, match=r"softmax\(x, dim=.*\(seed 11\)"):
        attention_checks.check_softmax(lambda x, dim=-1: solution("softmax")(x, dim) * 2, seed=11)


def test_expect_same_device_catches_a_new_tensor_on_the_cpu_and_spares_data_dependent_answers():
    from course_lib.checks.common import expect_same_device, on_meta

    (x,) = on_meta(torch.randn(3, 4).t())
    assert x.device.type == "meta" and x.stride() == (1, 4)
    expect_same_device(lambda t: t * 2, x, what="f(x)")
    expect_same_device(lambda t: t if t.abs().max() == 0 else t * 2, x, what="f(x)")  # needs values: not judged
    with pytest.raises(AssertionError, match="mixes devices"):
        expect_same_device(lambda t: t - torch.zeros(t.shape), x, what="f(x)")
    with pytest.raises(AssertionError, match="keep the input's device"):
        expect_same_device(lambda t: torch.zeros(t.shape), x, what="f(x)")


def test_call_sees_a_changed_dict_and_ignores_nan_inputs_left_alone():
    def fills_in(config):
        config.setdefault("num_key_value_heads", 8)
        return 1

    with pytest.raises(AssertionError, match="changed its input dict in place"):
        call(fills_in, {"num_attention_heads": 8}, what="fills_in(config)")
    x = torch.tensor([float("nan"), -0.0, 1.0])
    assert call(lambda t: t + 1, x, what="f(x)").shape == (3,)
    with pytest.raises(AssertionError, match="in place"):
        call(lambda t: t.neg_(), torch.tensor([0.0]), what="f(x)")  # 0.0 -> -0.0 is a change
