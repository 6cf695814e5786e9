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
        "test_generate_with_static_cache": (kv_checks.check_generate_with_static_cache,
                                            kv_checks.check_generate_with_static_cache_against_transformers),
        "test_predict_gqa8_cache_shrink": (kv_checks.check_predict_gqa8_cache_shrink,),
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


# --------------------------------------------------------------------------- mistakes only extreme inputs, layouts, devices or calls show


@pytest.mark.parametrize(
    "check,wrong,message",
    [
        (kv_checks.check_repeat_kv, mutants.repeat_kv_flatten_with_view, "non-contiguous view"),
        (kv_checks.check_repeat_kv, mutants.repeat_kv_flatten_with_minus_one, "empty cache"),
        (kv_checks.check_repeat_kv, mutants.repeat_kv_times_ones, "dtype torch.float16"),
        (kv_checks.check_repeat_kv, mutants.repeat_kv_renamed_arguments, "by keyword.*parameter names"),
        (kv_checks.check_kv_cache_bytes_from_config, mutants.kv_config_setdefault, r"changed its input dict in place.*config dict is only read"),
        (kv_checks.check_kv_cache_bytes_from_config, mutants.kv_config_pops_keys, "config dict is only read"),
        (kv_checks.check_kv_cache_bytes_from_config, mutants.kv_config_swapped_parameters, "bytes_per_value defaults to 2"),
        (kv_checks.check_kv_cache_bytes_from_config, mutants.kv_config_renamed_parameters, "parameter names"),
        (kv_checks.check_kv_cache_bytes_from_config, mutants.kv_config_float_for_half_bytes, "4-bit.*Python int"),
        (kv_checks.check_cached_attention_step, mutants.step_softmax_without_max, "thousands.*nan"),
        (kv_checks.check_cached_attention_step, mutants.step_logsumexp_without_max, "thousands"),
        (kv_checks.check_cached_attention_step, mutants.step_mask_on_cpu, "meta device"),
        (kv_checks.check_cached_attention_step, mutants.step_cat_into_new_buffer, "meta device"),
        (kv_checks.check_repeat_kv, mutants.repeat_kv_loop_into_buffer, "copied its input's data to the CPU"),
        (kv_checks.check_cached_attention_step, mutants.step_preallocated_cache, "copied its input's data to the CPU"),
    ],
)
def test_check_rejects_mistakes_that_only_some_inputs_show(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)


def test_a_config_mutation_is_seen_even_when_the_count_is_right():
    def fills_in(config, seq_len, batch_size=1, bytes_per_value=2):
        config["num_key_value_heads"] = config.get("num_key_value_heads") or config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        return int(2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * seq_len * batch_size * bytes_per_value)

    with pytest.raises(AssertionError, match="changed its input dict in place"):
        kv_checks.check_kv_cache_bytes_from_config(fills_in)


def test_cache_layouts_are_views_that_are_not_contiguous():
    gen = torch.Generator().manual_seed(0)
    for name, x in kv_checks._cache_layouts(gen, (2, 3, 4, 5), torch.float32).items():
        assert x.shape == (2, 3, 4, 5) and not x.is_contiguous(), name


# --------------------------------------------------------------------------- right answers written otherwise still pass


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, n_rep: x[:, torch.arange(x.shape[1] * n_rep) // n_rep],
        lambda x, n_rep: torch.stack([x] * n_rep, dim=2).flatten(1, 2),
        lambda x, n_rep: x.repeat_interleave(n_rep, dim=1).clone(),
    ],
    ids=["index", "stack", "repeat_interleave"],
)
def test_other_right_repeat_kvs_pass(fn):
    kv_checks.check_repeat_kv(fn)
    kv_checks.check_repeat_kv_against_transformers(fn)


def test_other_right_kv_config_counts_pass():
    import math

    def with_ceil(config, seq_len, batch_size=1, bytes_per_value=2):
        n_kv = config.get("num_key_value_heads") or config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        return math.ceil(2 * config["num_hidden_layers"] * n_kv * head_dim * seq_len * batch_size * bytes_per_value)

    def with_a_copy(config, seq_len, batch_size=1, bytes_per_value=2):
        config = dict(config)
        config["num_key_value_heads"] = config.get("num_key_value_heads") or config["num_attention_heads"]
        config["head_dim"] = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        return round(2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"]
                     * seq_len * batch_size * bytes_per_value)

    for fn in (with_ceil, with_a_copy):
        kv_checks.check_kv_cache_bytes_from_config(fn)
        kv_checks.check_kv_cache_bytes_from_config_against_transformers(fn)


def test_a_step_with_its_own_stable_softmax_passes():
    def step(q, k_new, v_new, k_cache, v_cache):
        k, v = torch.cat([k_cache, k_new], dim=-2), torch.cat([v_cache, v_new], dim=-2)
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        e = torch.exp(s - s.amax(dim=-1, keepdim=True))
        return (e / e.sum(dim=-1, keepdim=True)) @ v, torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)

    kv_checks.check_cached_attention_step(step)
    kv_checks.check_cached_attention_step_decodes_like_full_attention(step)


def test_every_config_mutant_fails_the_config_checks():
    for name, wrong in mutants.CONFIG_MUTANTS.items():
        failures = 0
        for check in (kv_checks.check_kv_cache_bytes_from_config, kv_checks.check_kv_cache_bytes_from_config_against_transformers):
            try:
                check(wrong)
            except Exception:  # noqa: BLE001
                failures += 1
        assert failures, f"{name} passes the checks of kv_cache_bytes_from_config"


def _static_generate_sdpa(model, input_ids, max_new_tokens):
    """Another right answer: one buffer per layer from torch.empty, SDPA with enable_gqa, the last token fed too."""
    from course_lib import kvcache

    import torch.nn.functional as F

    c = model.config
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    keys = [torch.empty(batch, c.n_kv_heads, total, c.head_dim, dtype=torch.float64) for _ in range(c.n_layers)]
    values = [torch.empty_like(k) for k in keys]
    ids = input_ids.clone()
    start, new = 0, input_ids
    with torch.no_grad():
        for _ in range(max_new_tokens):
            end = start + new.shape[1]
            positions = torch.arange(start, end)
            x = model.embed(new)
            for layer in range(c.n_layers):
                q, k, v = kvcache.layer_qkv(model, layer, x, positions)
                keys[layer][:, :, start:end], values[layer][:, :, start:end] = k, v
                mask = positions[:, None] >= torch.arange(end)[None, :]
                out = F.scaled_dot_product_attention(q, keys[layer][:, :, :end], values[layer][:, :, :end], attn_mask=mask,
                                                     enable_gqa=c.n_kv_heads != c.n_heads)
                x = kvcache.layer_output(model, layer, x, out)
            token = model.lm_head(model.norm(x))[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)    # growing the ids (not the cache) is fine
            start, new = end, token
    return ids


def test_other_right_static_generators_pass():
    kv_checks.check_generate_with_static_cache(_static_generate_sdpa)
    kv_checks.check_generate_with_static_cache_against_transformers(_static_generate_sdpa)


@pytest.mark.parametrize("wrong,message", [
    (mutants.static_recomputes_everything, "fed .* tokens per sequence"),
    (mutants.static_grows_by_cat, "grew a cache by concatenation"),
    (mutants.static_tiles_kv_heads, "should be"),
    (mutants.static_new_tokens_only, "the prompt and the new tokens"),
])
def test_static_cache_check_says_what_is_wrong(wrong, message):
    with pytest.raises(AssertionError, match=message):
        kv_checks.check_generate_with_static_cache(wrong)


def test_layer_helpers_rebuild_the_model_forward():
    from course_lib import models, kvcache

    torch.manual_seed(0)
    model = models.DecoderLM(models.DecoderConfig(vocab_size=30, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48)).double()
    ids = torch.randint(0, 30, (2, 5))
    x, positions = model.embed(ids), torch.arange(5)
    mask = positions[:, None] >= positions[None, :]
    for layer in range(model.config.n_layers):
        q, k, v = kvcache.layer_qkv(model, layer, x, positions)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        x = kvcache.layer_output(model, layer, x, out)
    torch.testing.assert_close(model.lm_head(model.norm(x)), model(ids))
    with pytest.raises(ValueError, match="positions"):
        kvcache.layer_qkv(model, 0, x, torch.arange(4))
    with pytest.raises(ValueError, match="attn_out"):
        kvcache.layer_output(model, 0, x, q[:, :2])


def test_graded_in_a_sandbox_the_cache_watch_runs_where_the_answer_runs():
    """The grader sees neither the sandbox's operators nor the hooks of its copy of the model: the watch and the
    token counter run next to the answer, and what they saw comes back as data."""
    import inspect

    from course_lib.autograde import RemoteFunction
    from course_lib.sandbox import Sandbox
    from tests import answers

    solution = next(answer for _, _, name, answer, _ in answers.graded_cells() if name == "generate_with_static_cache")
    wrong = "\n\n".join(inspect.getsource(f) for f in (mutants._static_generate, mutants.static_grows_by_cat,
                                                         mutants.static_recomputes_everything))
    with Sandbox(timeout=120) as sandbox:
        assert sandbox.run_cell("import math\nimport torch\nimport torch.nn.functional as F\n\n" + solution + "\n\n" + wrong).ok
        kv_checks.check_generate_with_static_cache(RemoteFunction(sandbox, "generate_with_static_cache"), seed=0)
        with pytest.raises(AssertionError, match="grew a cache by concatenation"):
            kv_checks.check_generate_with_static_cache(RemoteFunction(sandbox, "static_grows_by_cat"), seed=0)
        with pytest.raises(AssertionError, match="tokens per sequence through the layers"):
            kv_checks.check_generate_with_static_cache(RemoteFunction(sandbox, "static_recomputes_everything"), seed=0)
