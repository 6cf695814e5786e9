"""The checks of lessons 00-02 reject wrong answers with messages that say what went wrong, and accept honest
answers other than the solution's (tests/test_checks.py: they accept the solution; tests/test_mutants.py: the
test cells reject every mutant)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import kvcache
from course_lib.checks import attention as attention_checks
from course_lib.checks import basics as basics_checks
from course_lib.checks import models as models_checks
from course_lib.checks import tokenizer as tokenizer_checks
from course_lib.kvcache import KVCache
from tests.mutants import attention as attention_mutants
from tests.mutants import basics as basics_mutants
from tests.mutants import models as models_mutants

# --------------------------------------------------------------------------- wrong answers, and what the message says

WRONG = [
    (basics_checks.check_tensor_bytes, basics_mutants.bytes_from_a_dtype_table, r"dtype=torch\.int16.*should be"),
    (basics_checks.check_tensor_bytes_edge_cases, basics_mutants.expanded_dims_counted_once, r"expanded view .* should be 48, got 12"),
    (attention_checks.check_softmax, attention_mutants.softmax_default_dim_one, r"default dim \(-1\).*wrong values"),
    (attention_checks.check_softmax, attention_mutants.softmax_in_float32, r"float64.*wrong values"),
    (attention_checks.check_softmax_edge_cases, attention_mutants.softmax_zeros_on_the_cpu, r"meta device.*mixes devices"),
    (attention_checks.check_softmax_edge_cases, attention_mutants.softmax_clamped_max, r"very negative scores.*wrong values"),
    (attention_checks.check_scaled_dot_product_attention, attention_mutants.attention_additive_mask_on_the_cpu, r"meta device.*mixes devices"),
    (attention_checks.check_scaled_dot_product_attention, attention_mutants.attention_scale_from_a_float32_tensor, r"float64.*wrong values"),
    (attention_checks.check_scaled_dot_product_attention_edge_cases, attention_mutants.attention_exp_in_float64, r"very large scores.*contains nan"),
    (attention_checks.check_causal_mask, attention_mutants.causal_mask_from_a_precomputed_block, r"causal_mask\(2100, 2060\).*shape \(2100, 2060\)"),
    (attention_checks.check_causal_mask, attention_mutants.causal_mask_half_precision_positions, r"causal_mask\(2100, 2060\).*wrong entries"),
    (attention_checks.check_multi_head_attention, attention_mutants.mha_causal_by_default, r"without is_causal \(its default is False\)"),
    (attention_checks.check_multi_head_attention, attention_mutants.mha_causal_mask_on_the_cpu, r"meta device.*mixes devices"),
    (attention_checks.check_predict_equal_weights, attention_mutants.predict_weights_bool, r"should return a number.*got bool"),
    (attention_checks.check_predict_equal_weights, attention_mutants.predict_weights_uniform_percent, r"returned 12\.5, not within 1%.*equal exponentials"),
    (attention_checks.check_predict_score_growth, attention_mutants.predict_growth_linear, r"returned 2, not within 1%.*ordered pair"),
    (tokenizer_checks.check_merge_pair_edge_cases, models_mutants.merge_until_no_pair_left, r"\('a', 'b', 'b'\).*should be \('a', 'b'\), got \('a',\)"),
    (tokenizer_checks.check_merge_pair_edge_cases, models_mutants.merge_with_regex_on_spaces, r"'x y'.*should be"),
    (tokenizer_checks.check_merge_pair_edge_cases, models_mutants.merge_compares_with_is, r"should be"),
    (models_checks.check_next_token_loss_edge_cases, models_mutants.loss_zero_when_all_ignored, r"every target ignored.*should be nan.*got Tensor torch\.float32 \(\) tensor\(-?0\.\)"),
    (models_checks.check_next_token_loss_edge_cases, models_mutants.loss_log_of_softmax, r"thousands apart.*wrong values"),
    (models_checks.check_next_token_loss, models_mutants.loss_in_float32, r"float64.*wrong values"),
    (models_checks.check_mlm_mask, models_mutants.mlm_mask_random_tokens_int64, r"int32.*dtype torch\.int32.*got Tensor torch\.int64"),
    (models_checks.check_mlm_mask, models_mutants.mlm_mask_exactly_k_per_row, r"chosen independently.*variance is 0\.\d+ times a binomial's"),
    (models_checks.check_mlm_mask, models_mutants.mlm_mask_thresholds_for_fifteen_percent, r"0\.4, .*share of chosen positions that became the mask id"),
    (models_checks.check_mlm_mask, models_mutants.mlm_mask_seeds_the_global_rng, r"global random generator"),
    (models_checks.check_mlm_mask_edge_cases, models_mutants.mlm_mask_random_token_never_the_original, r"vocab_size=4.*should be about"),
    (models_checks.check_greedy_generate_edge_cases, models_mutants.generate_stops_at_eos_two, r"stopped after \d+ new tokens.*no end-of-sequence rule"),
    (models_checks.check_greedy_generate_edge_cases, models_mutants.generate_argmax_in_bfloat16, r"beats id \d+ by 0\.01 in the float32 logits"),
    (models_checks.check_greedy_generate_edge_cases, models_mutants.generate_in_the_prompt_dtype, r"int32 non-contiguous.*dtype torch\.int64, got torch\.int32"),
    (models_checks.check_decoder_block, models_mutants.block_rope_on_values, r"decoder_block\(x \(.*n_kv_heads=.*returns wrong values"),
    (models_checks.check_decoder_block, models_mutants.block_norm_without_eps, r"eps=.*returns wrong values"),
    (models_checks.check_predict_uniform_loss, models_mutants.uniform_loss_log2, r"not within 0\.01.*natural log"),
    (models_checks.check_predict_block_params_millions, models_mutants.block_params_kv_like_q, r"not within 1%.*n_kv_heads"),
]


@pytest.mark.parametrize("check,wrong,message", WRONG, ids=[w.__name__ for _, w, _ in WRONG])
def test_check_rejects_a_wrong_answer_and_says_why(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)


def test_an_answer_that_reseeds_the_global_generator_fails_where_the_global_state_is_out_of_sight(monkeypatch):
    """In a grading sandbox the check cannot see torch's global generator; the generator's own state still tells."""
    state = torch.get_rng_state()
    monkeypatch.setattr(torch, "get_rng_state", lambda: state.clone())
    with pytest.raises(AssertionError, match="had drawn 100 numbers"):
        models_checks.check_mlm_mask_edge_cases(models_mutants.mlm_mask_seeds_the_global_rng)


def test_the_greedy_checks_model_picks_every_special_id_and_close_calls():
    """The forced model makes the reference generate ids 0-14 at steps that are not the last, and near ties that bf16 breaks."""
    model, prompt = models_checks._tiny_model(200), torch.zeros(2, 3, dtype=torch.long)
    forced = models_checks._every_special_id(prompt_len=3)
    counting = models_checks._CountingModel(model, forced)
    with torch.no_grad():
        ids = kvcache.generate(counting, prompt, 30, strategy="greedy")
        logits = counting(ids[:, :-1])  # every position at once, without a cache
    assert set(range(15)) <= set(ids[:, 3:-1].flatten().tolist())
    for position, (winner, runner_up) in forced.items():
        assert (logits[:, position].argmax(-1) == winner).all()
        if runner_up is not None:
            for dtype in (torch.bfloat16, torch.float16):
                assert (logits[:, position].to(dtype).argmax(-1) == runner_up).all()


# --------------------------------------------------------------------------- honest answers other than the solution's


def tensor_bytes_nbytes(t):
    return t.nbytes


def tensor_bytes_from_the_shape(t):
    return math.prod(t.shape) * t.dtype.itemsize


def softmax_in_float64(x, dim=-1):
    y = x.double()
    e = torch.exp(y - y.amax(dim=dim, keepdim=True).nan_to_num(neginf=0.0))
    return (e / e.sum(dim=dim, keepdim=True)).nan_to_num(nan=0.0).to(x.dtype)


def softmax_with_nan_to_num_max(x, dim=-1):
    e = torch.exp(x - torch.nan_to_num(x.amax(dim=dim, keepdim=True), neginf=0.0))
    return e / e.sum(dim=dim, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)


def attention_with_einsum(q, k, v, attn_mask=None):
    scores = torch.einsum("...le,...se->...ls", q, k) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        scores = scores + torch.zeros_like(scores).masked_fill(attn_mask.logical_not(), float("-inf"))
    return torch.einsum("...ls,...sv->...lv", torch.softmax(scores, dim=-1).nan_to_num(nan=0.0), v)


def causal_mask_from_triu(n_q, n_k):
    return ~torch.ones(n_q, n_k, dtype=torch.bool).triu(diagonal=1)


def mha_with_fused_projection(x, w_q, w_k, w_v, w_o, n_heads, is_causal=False):
    b, s, d = x.shape
    q, k, v = (x @ torch.cat([w_q, w_k, w_v]).T).split(d, dim=-1)
    heads = [t.reshape(b, s, n_heads, d // n_heads).permute(0, 2, 1, 3) for t in (q, k, v)]
    mask = torch.ones(s, s, dtype=torch.bool, device=x.device).tril() if is_causal else None
    out = attention_with_einsum(*heads, attn_mask=mask)
    return out.permute(0, 2, 1, 3).reshape(b, s, d) @ w_o.T


def merge_pair_with_zip(word, pair, new_symbol):
    out, skip = [], False
    for i, (a, b) in enumerate(zip(word, word[1:] + ("",))):
        if skip:
            skip = False
        elif i + 1 < len(word) and a == pair[0] and b == pair[1]:
            out.append(new_symbol)
            skip = True
        else:
            out.append(a)
    return tuple(out)


def next_token_loss_with_cross_entropy(logits, targets, ignore_index=-100):
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), targets[:, 1:], ignore_index=ignore_index)


def mlm_mask_with_bernoulli(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    device = input_ids.device
    special = torch.zeros(input_ids.shape, dtype=torch.bool, device=device)
    for s in special_ids:
        special |= input_ids == int(s)
    chosen = torch.bernoulli(torch.full(input_ids.shape, float(mask_prob), device=device), generator=generator).bool() & ~special
    kind = torch.rand(input_ids.shape, generator=generator, device=device)
    random_tokens = torch.randint(0, vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype)
    masked = input_ids.clone()
    masked[chosen & (kind < 0.8)] = mask_id
    masked = torch.where(chosen & (kind >= 0.8) & (kind < 0.9), random_tokens, masked)
    labels = input_ids.masked_fill(~chosen, -100)
    return masked, labels


@torch.no_grad()
def greedy_generate_with_topk(model, input_ids, max_new_tokens):
    cache = KVCache(model.config.n_layers)
    out = torch.empty(input_ids.shape[0], input_ids.shape[1] + max_new_tokens, dtype=torch.long, device=input_ids.device)
    out[:, : input_ids.shape[1]] = input_ids
    logits = model(input_ids, cache=cache)[:, -1]
    for step in range(max_new_tokens):
        token = torch.topk(logits, 1, dim=-1).indices
        out[:, input_ids.shape[1] + step] = token[:, 0]
        if step + 1 < max_new_tokens:
            logits = model(token, cache=cache)[:, -1]
    return out



def decoder_block_by_hand(x, weights, n_heads, n_kv_heads, eps=1e-6, theta=10000.0):
    """Its own rotary angles, F.rms_norm, an explicit softmax with a -inf mask, and grouped heads by reshaping."""
    batch, length, d = x.shape
    hd, group = d // n_heads, n_heads // n_kv_heads
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv
    cos, sin = angles.cos().repeat(1, 2).to(x.dtype), angles.sin().repeat(1, 2).to(x.dtype)

    def rope(t):
        t1, t2 = t[..., : hd // 2], t[..., hd // 2 :]
        return t * cos + torch.cat([-t2, t1], dim=-1) * sin

    h = F.rms_norm(x, (d,), weights["attn_norm.weight"], eps)
    q = rope(F.linear(h, weights["attn.q_proj.weight"]).reshape(batch, length, n_kv_heads, group, hd).permute(0, 2, 3, 1, 4))
    k = rope(F.linear(h, weights["attn.k_proj.weight"]).reshape(batch, length, n_kv_heads, 1, hd).permute(0, 2, 3, 1, 4))
    v = F.linear(h, weights["attn.v_proj.weight"]).reshape(batch, length, n_kv_heads, 1, hd).permute(0, 2, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(dim=-1) @ v).permute(0, 3, 1, 2, 4).reshape(batch, length, d)
    x = x + F.linear(out, weights["attn.o_proj.weight"])
    h = F.rms_norm(x, (d,), weights["mlp_norm.weight"], eps)
    return x + F.linear(F.silu(F.linear(h, weights["mlp.gate_proj.weight"])) * F.linear(h, weights["mlp.up_proj.weight"]),
                        weights["mlp.down_proj.weight"])

HONEST = [
    ((basics_checks.check_tensor_bytes, basics_checks.check_tensor_bytes_edge_cases), tensor_bytes_nbytes),
    ((basics_checks.check_tensor_bytes, basics_checks.check_tensor_bytes_edge_cases), tensor_bytes_from_the_shape),
    ((attention_checks.check_softmax, attention_checks.check_softmax_edge_cases), softmax_in_float64),
    ((attention_checks.check_softmax, attention_checks.check_softmax_edge_cases), softmax_with_nan_to_num_max),
    ((attention_checks.check_scaled_dot_product_attention, attention_checks.check_scaled_dot_product_attention_edge_cases), attention_with_einsum),
    ((attention_checks.check_causal_mask, attention_checks.check_causal_mask_against_torch), causal_mask_from_triu),
    ((attention_checks.check_multi_head_attention, attention_checks.check_multi_head_attention_against_torch), mha_with_fused_projection),
    ((tokenizer_checks.check_merge_pair, tokenizer_checks.check_merge_pair_edge_cases), merge_pair_with_zip),
    ((models_checks.check_next_token_loss, models_checks.check_next_token_loss_edge_cases), next_token_loss_with_cross_entropy),
    ((models_checks.check_mlm_mask, models_checks.check_mlm_mask_edge_cases), mlm_mask_with_bernoulli),
    ((models_checks.check_greedy_generate, models_checks.check_greedy_generate_edge_cases), greedy_generate_with_topk),
    ((models_checks.check_decoder_block, models_checks.check_decoder_block_edge_cases), decoder_block_by_hand),
]


@pytest.mark.parametrize("checks,answer", HONEST, ids=[a.__name__ for _, a in HONEST])
def test_checks_accept_an_honest_answer_written_another_way(checks, answer):
    for _ in range(2):  # fresh random inputs each time
        for check in checks:
            check(answer)
