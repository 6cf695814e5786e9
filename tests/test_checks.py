"""The exercise checks themselves: they accept the reference and reject malformed answers."""

from __future__ import annotations

import pytest
import torch

from course_lib import attention, flash, formats, kvcache, memory, models, quant, tokenizer
from course_lib.checks import attention as attention_checks
from course_lib.checks import basics as basics_checks
from course_lib.checks import flash as flash_checks
from course_lib.checks import formats as formats_checks
from course_lib.checks import kvcache as kvcache_checks
from course_lib.checks import memory as memory_checks
from course_lib.checks import quant as quant_checks
from course_lib.checks import models as models_checks
from course_lib.checks import tokenizer as tokenizer_checks
from course_lib.checks.common import call, expect_tensor


def wrapped(fn):
    return lambda *args, **kwargs: fn(*args, **kwargs)


def reference_greedy(model, input_ids, max_new_tokens):
    cache = kvcache.KVCache(model.config.n_layers)
    logits, ids = model(input_ids, cache=cache), input_ids
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        if step < max_new_tokens - 1:
            logits = model(token, cache=cache)
    return ids


def reference_block_params(d_model, n_heads, n_kv_heads, d_ff):
    shape = memory.ModelShape(vocab_size=10, d_model=d_model, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff)
    return memory.block_params(shape)


def reference_model_states(n_params, optimizer, precision):
    w = memory.precision_bytes(precision)[0]
    states = memory.optimizer_state_bytes(n_params, optimizer, precision)
    return {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": states}


def reference_kv_bytes(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    return memory.kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_element)


def reference_bf16(x):
    return torch.from_numpy(formats.round_to(x.double().numpy(), formats.BF16)).float()


CHECKS = [
    (attention_checks.check_softmax, wrapped(attention.softmax)),
    (attention_checks.check_softmax_edge_cases, wrapped(attention.softmax)),
    (attention_checks.check_causal_mask, wrapped(attention.causal_mask)),
    (attention_checks.check_causal_mask_against_torch, wrapped(attention.causal_mask)),
    (attention_checks.check_scaled_dot_product_attention, wrapped(attention.scaled_dot_product_attention)),
    (attention_checks.check_scaled_dot_product_attention_edge_cases, wrapped(attention.scaled_dot_product_attention)),
    (attention_checks.check_multi_head_attention, attention_checks.reference_multi_head_attention),
    (attention_checks.check_multi_head_attention_against_torch, attention_checks.reference_multi_head_attention),
    (basics_checks.check_tensor_bytes, wrapped(memory.tensor_bytes)),
    (basics_checks.check_tensor_bytes_edge_cases, wrapped(memory.tensor_bytes)),
    (tokenizer_checks.check_merge_pair, wrapped(tokenizer.merge_pair)),
    (tokenizer_checks.check_merge_pair_edge_cases, wrapped(tokenizer.merge_pair)),
    (models_checks.check_next_token_loss, wrapped(models.next_token_loss)),
    (models_checks.check_next_token_loss_edge_cases, wrapped(models.next_token_loss)),
    (models_checks.check_mlm_mask, wrapped(models.mlm_mask)),
    (models_checks.check_mlm_mask_edge_cases, wrapped(models.mlm_mask)),
    (models_checks.check_greedy_generate, reference_greedy),
    (models_checks.check_greedy_generate_edge_cases, reference_greedy),
    (memory_checks.check_llama_block_params, reference_block_params),
    (memory_checks.check_llama_block_params_against_transformers, reference_block_params),
    (memory_checks.check_model_state_bytes, reference_model_states),
    (memory_checks.check_model_state_bytes_against_measurement, reference_model_states),
    (memory_checks.check_kv_cache_bytes, reference_kv_bytes),
    (memory_checks.check_kv_cache_bytes_against_a_real_cache, reference_kv_bytes),
    (formats_checks.check_decode_fp16, lambda bits: formats.decode(bits, formats.FP16)),
    (formats_checks.check_decode_fp16_edge_cases, lambda bits: formats.decode(bits, formats.FP16)),
    (formats_checks.check_round_to_bf16, reference_bf16),
    (formats_checks.check_round_to_bf16_edge_cases, reference_bf16),
    (lambda f: quant_checks.check_absmax_int8(*f), (lambda w: quant.absmax_quantize(w), quant.absmax_dequantize)),
    (lambda f: quant_checks.check_absmax_int8_edge_cases(*f), (lambda w: quant.absmax_quantize(w), quant.absmax_dequantize)),
    (quant_checks.check_blockwise_int4, lambda w, block_size=64: quant.absmax_quantize(w, bits=4, block_size=block_size)),
    (quant_checks.check_blockwise_int4_edge_cases, lambda w, block_size=64: quant.absmax_quantize(w, bits=4, block_size=block_size)),
    (flash_checks.check_online_softmax_update, wrapped(flash.online_softmax_update)),
    (flash_checks.check_online_softmax_update_edge_cases, wrapped(flash.online_softmax_update)),
    (flash_checks.check_forward_tile_step, wrapped(flash.forward_tile_step)),
    (flash_checks.check_forward_tile_step_edge_cases, wrapped(flash.forward_tile_step)),
    (flash_checks.check_causal_tile_skip, wrapped(flash.causal_tile_skip)),
    (flash_checks.check_causal_tile_skip_in_attention, wrapped(flash.causal_tile_skip)),
    (kvcache_checks.check_repeat_kv, wrapped(attention.repeat_kv)),
    (kvcache_checks.check_repeat_kv_against_transformers, wrapped(attention.repeat_kv)),
    (kvcache_checks.check_kv_cache_bytes_from_config, wrapped(kvcache.kv_cache_bytes_from_config)),
    (kvcache_checks.check_kv_cache_bytes_from_config_against_transformers, wrapped(kvcache.kv_cache_bytes_from_config)),
    (kvcache_checks.check_cached_attention_step, kvcache_checks.reference_cached_attention_step),
    (kvcache_checks.check_cached_attention_step_decodes_like_full_attention, kvcache_checks.reference_cached_attention_step),
]


@pytest.mark.parametrize("check,reference", CHECKS, ids=[f"{i}-{c.__name__}" for i, (c, _) in enumerate(CHECKS)])
def test_check_accepts_the_reference(check, reference):
    for _ in range(5):  # fresh random inputs each time
        check(reference)


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
        (flash_checks.check_forward_tile_step, flash.forward_tile_step),
        (flash_checks.check_causal_tile_skip, flash.causal_tile_skip),
        (kvcache_checks.check_repeat_kv, attention.repeat_kv),
        (kvcache_checks.check_kv_cache_bytes_from_config, kvcache.kv_cache_bytes_from_config),
    ],
)
def test_check_refuses_the_course_reference_itself(check, reference):
    with pytest.raises(AssertionError, match="write your own"):
        check(reference)


def test_same_seed_same_inputs():
    seen = []
    attention_checks.check_softmax(lambda x, dim=-1: seen.append(x.clone()) or attention.softmax(x, dim), seed=7)
    again = []
    attention_checks.check_softmax(lambda x, dim=-1: again.append(x.clone()) or attention.softmax(x, dim), seed=7)
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
        attention_checks.check_softmax(lambda x, dim=-1: attention.softmax(x, dim) * 2, seed=11)
