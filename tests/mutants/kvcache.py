"""Wrong answers to lesson 06's exercises: repeat_kv, cached_attention_step, generate_with_static_cache.

The kv_cache_bytes_from_config mutants stay for the checks of that function (tests/test_checks_kvcache.py).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- repeat_kv


def repeat_kv_tiles(x, n_rep):
    """``x.repeat``: heads 0, 1, 2, 0, 1, 2 instead of 0, 0, 1, 1, 2, 2 (wrong grouping)."""
    return x.repeat(1, n_rep, 1, 1)


def repeat_kv_wrong_dim(x, n_rep):
    """Repeats along the sequence instead of the heads."""
    return x.repeat_interleave(n_rep, dim=2)


def repeat_kv_ignores_n_rep(x, n_rep):
    return x


def repeat_kv_expand_without_reshape(x, n_rep):
    """Leaves the 5-D expanded view ``(B, H_kv, n_rep, S, D)``."""
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d)


def repeat_kv_no_dim(x, n_rep):
    """``repeat_interleave`` without ``dim`` flattens the tensor."""
    return x.repeat_interleave(n_rep)


def repeat_kv_float32_buffer(x, n_rep):
    """Right values, but fills a float32 buffer: float64 inputs lose their dtype."""
    b, h, s, d = x.shape
    out = torch.empty(b, h * n_rep, s, d)
    for i in range(h * n_rep):
        out[:, i] = x[:, i // n_rep]
    return out


def repeat_kv_breaks_n_rep_1(x, n_rep):
    """Drops the last head when ``n_rep == 1`` (an off-by-one in a loop over repeats)."""
    if n_rep == 1:
        return x[:, :-1] if x.shape[1] > 1 else x[:, :, :-1]
    return x.repeat_interleave(n_rep, dim=1)


def repeat_kv_modulo(x, n_rep):
    """Head ``h`` of the result from head ``h % H_kv`` (tiling again, by indexing)."""
    h = x.shape[1]
    return x[:, torch.arange(h * n_rep) % h]


def repeat_kv_flatten_with_view(x, n_rep):
    """Flattens (seq, head_dim) with x.view(b, h, s * d): fails for a non-contiguous x (a cache stored as (B, S, H, D) and transposed)."""
    b, h, s, d = x.shape
    return x.view(b, h, s * d).repeat_interleave(n_rep, dim=1).view(b, h * n_rep, s, d)


def repeat_kv_flatten_with_minus_one(x, n_rep):
    """Flattens batch and heads with reshape(-1, s, d): fails for an empty cache (s = 0 leaves the -1 undetermined)."""
    b, h, s, d = x.shape
    return x.reshape(-1, s, d).repeat_interleave(n_rep, dim=0).reshape(b, h * n_rep, s, d)


def repeat_kv_times_ones(x, n_rep):
    """Repeats by multiplying with torch.ones(n_rep, 1, 1): made on the CPU in float32 (wrong dtype for fp16/bf16, wrong device)."""
    b, h, s, d = x.shape
    return (x[:, :, None] * torch.ones(n_rep, 1, 1)).reshape(b, h * n_rep, s, d)


def repeat_kv_unsqueeze_in_place(x, n_rep):
    """Adds the repeat axis with x.unsqueeze_(2): changes the caller's tensor."""
    b, h, s, d = x.shape
    return x.unsqueeze_(2).expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def repeat_kv_upcasts(x, n_rep):
    """Computes in float32 (x.float()): float64 and half-precision caches lose their dtype."""
    return x.float().repeat_interleave(n_rep, dim=1)


def repeat_kv_loop_into_buffer(x, n_rep):
    """Right values and dtype, but fills a buffer made with torch.empty(..., dtype=x.dtype) on the CPU: a GPU cache comes back on the CPU."""
    b, h, s, d = x.shape
    out = torch.empty(b, h * n_rep, s, d, dtype=x.dtype)
    for i in range(h * n_rep):
        out[:, i] = x[:, i // n_rep]
    return out


def repeat_kv_renamed_arguments(kv, repeats):
    """Right values, but renames the documented arguments: a call by keyword (x=..., n_rep=...) fails."""
    return kv.repeat_interleave(repeats, dim=1)


# --------------------------------------------------------------------------- kv_cache_bytes_from_config


def _heads(config):
    return config.get("num_key_value_heads") or config["num_attention_heads"]


def _head_dim(config):
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def kv_config_ignores_kv_heads(config, seq_len, batch_size=1, bytes_per_value=2):
    """Sizes every cache as multi-head attention."""
    return 2 * config["num_hidden_layers"] * config["num_attention_heads"] * _head_dim(config) * seq_len * batch_size * bytes_per_value


def kv_config_keys_only(config, seq_len, batch_size=1, bytes_per_value=2):
    """Forgets the factor 2: counts the keys and not the values."""
    return config["num_hidden_layers"] * _heads(config) * _head_dim(config) * seq_len * batch_size * bytes_per_value


def kv_config_head_dim_from_hidden(config, seq_len, batch_size=1, bytes_per_value=2):
    """Ignores a ``head_dim`` the config sets (Gemma's 256)."""
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * _heads(config) * head_dim * seq_len * batch_size * bytes_per_value


def kv_config_key_error(config, seq_len, batch_size=1, bytes_per_value=2):
    """``config["num_key_value_heads"]``: KeyError for a multi-head attention config that omits it."""
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * _head_dim(config) * seq_len * batch_size * bytes_per_value


def kv_config_no_batch(config, seq_len, batch_size=1, bytes_per_value=2):
    return 2 * config["num_hidden_layers"] * _heads(config) * _head_dim(config) * seq_len * bytes_per_value


def kv_config_one_layer(config, seq_len, batch_size=1, bytes_per_value=2):
    return 2 * _heads(config) * _head_dim(config) * seq_len * batch_size * bytes_per_value


def kv_config_float_head_dim(config, seq_len, batch_size=1, bytes_per_value=2):
    """``hidden_size / num_attention_heads``: a float, so the result is a float."""
    head_dim = config.get("head_dim") or config["hidden_size"] / config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * _heads(config) * head_dim * seq_len * batch_size * bytes_per_value


def kv_config_head_dim_per_kv_head(config, seq_len, batch_size=1, bytes_per_value=2):
    """Divides the width by the kv heads: ``hidden_size // num_key_value_heads``."""
    head_dim = config.get("head_dim") or config["hidden_size"] // _heads(config)
    return 2 * config["num_hidden_layers"] * _heads(config) * head_dim * seq_len * batch_size * bytes_per_value


def kv_config_none_is_a_value(config, seq_len, batch_size=1, bytes_per_value=2):
    """``config.get(key, default)``: a key present with the value None gives None, then a TypeError."""
    n_kv = config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
    return 2 * config["num_hidden_layers"] * n_kv * head_dim * seq_len * batch_size * bytes_per_value


def kv_config_setdefault(config, seq_len, batch_size=1, bytes_per_value=2):
    """Right count, but fills in the caller's config: config.setdefault("num_key_value_heads", ...)."""
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    return 2 * config["num_hidden_layers"] * _heads(config) * _head_dim(config) * seq_len * batch_size * bytes_per_value


def kv_config_writes_head_dim(config, seq_len, batch_size=1, bytes_per_value=2):
    """Right count, but writes the derived head_dim back into the caller's config."""
    if config.get("head_dim") is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * _heads(config) * config["head_dim"] * seq_len * batch_size * bytes_per_value


def kv_config_pops_keys(config, seq_len, batch_size=1, bytes_per_value=2):
    """Right count, but reads the optional keys with config.pop(...), removing them from the caller's config."""
    n_kv = config.pop("num_key_value_heads", None) or config["num_attention_heads"]
    head_dim = config.pop("head_dim", None) or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * n_kv * head_dim * seq_len * batch_size * bytes_per_value


def kv_config_swapped_parameters(config, seq_len, bytes_per_value=2, batch_size=1):
    """Takes bytes_per_value before batch_size: f(config, seq_len, 8) counts 8 bytes per value for one sequence."""
    return 2 * config["num_hidden_layers"] * _heads(config) * _head_dim(config) * seq_len * batch_size * bytes_per_value


def kv_config_renamed_parameters(config, seq_len, batch=1, dtype_bytes=2):
    """Right count, but renames batch_size and bytes_per_value: a call by keyword fails."""
    return 2 * config["num_hidden_layers"] * _heads(config) * _head_dim(config) * seq_len * batch * dtype_bytes


def kv_config_float_for_half_bytes(config, seq_len, batch_size=1, bytes_per_value=2):
    """Returns a float for a fractional bytes_per_value (0.5 for 4-bit): 2 * ... * 0.5 is a float."""
    return 2 * config["num_hidden_layers"] * _heads(config) * _head_dim(config) * seq_len * batch_size * bytes_per_value


def kv_config_numpy_product(config, seq_len, batch_size=1, bytes_per_value=2):
    """Multiplies with numpy.prod: returns numpy.int64, not a Python int."""
    return np.prod([2, config["num_hidden_layers"], _heads(config), _head_dim(config), seq_len, batch_size, bytes_per_value])


# --------------------------------------------------------------------------- cached_attention_step


def _grouped(x, group):
    return x.repeat_interleave(group, dim=1)


def step_before_append(q, k_new, v_new, k_cache, v_cache):
    """Attends to the old cache only: the new token does not see itself (nan for an empty cache)."""
    group = q.shape[1] // k_cache.shape[1]
    out = F.scaled_dot_product_attention(q, _grouped(k_cache, group), _grouped(v_cache, group))
    return out, torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)


def step_is_causal(q, k_new, v_new, k_cache, v_cache):
    """``is_causal=True`` with one query: PyTorch's mask is aligned top-left, so it sees only the first key."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, _grouped(k, group), _grouped(v, group), is_causal=True), k, v


def step_unscaled(q, k_new, v_new, k_cache, v_cache):
    """Forgets 1/sqrt(D)."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    weights = torch.softmax(q @ _grouped(k, group).transpose(-2, -1), dim=-1)
    return weights @ _grouped(v, group), k, v


def step_tiles_heads(q, k_new, v_new, k_cache, v_cache):
    """Groups query heads by ``repeat`` (tiling) instead of ``repeat_interleave``."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)), k, v


def step_prepends(q, k_new, v_new, k_cache, v_cache):
    """Puts the new key and value at the start of the cache (the output is right, the cache's order is not)."""
    k, v = torch.cat([k_new, k_cache], dim=2), torch.cat([v_new, v_cache], dim=2)
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, _grouped(k, group), _grouped(v, group)), k, v


def step_returns_old_cache(q, k_new, v_new, k_cache, v_cache):
    """Attends correctly but returns the caches it was given, so the next step forgets this token."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, _grouped(k, group), _grouped(v, group)), k_cache, v_cache


def step_softmax_over_queries(q, k_new, v_new, k_cache, v_cache):
    """Softmax over dim -2 (the one query): every weight is 1, the output is the sum of the values."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    scores = q @ _grouped(k, group).transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-2) @ _grouped(v, group), k, v


def step_returns_list(q, k_new, v_new, k_cache, v_cache):
    """Right values, returned as a list rather than a tuple."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    return [F.scaled_dot_product_attention(q, _grouped(k, group), _grouped(v, group)), k, v]


def step_softmax_without_max(q, k_new, v_new, k_cache, v_cache):
    """Softmax as exp(s) / sum(exp(s)) without subtracting the maximum: inf / inf = nan for scores in the hundreds."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    e = torch.exp(q @ _grouped(k, group).transpose(-2, -1) / math.sqrt(q.shape[-1]))
    return e / e.sum(dim=-1, keepdim=True) @ _grouped(v, group), k, v


def step_logsumexp_without_max(q, k_new, v_new, k_cache, v_cache):
    """Normalises by log(sum(exp(s))) computed without the maximum: exp overflows for scores in the hundreds."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    s = q @ _grouped(k, group).transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.exp(s - torch.log(torch.exp(s).sum(dim=-1, keepdim=True))) @ _grouped(v, group), k, v


def step_cat_into_new_buffer(q, k_new, v_new, k_cache, v_cache):
    """Right values, but grows the caches with torch.cat(..., out=torch.empty(...)): the buffers live on the CPU."""
    b, h_kv, t, d = k_cache.shape
    k, v = torch.empty(b, h_kv, t + 1, d, dtype=q.dtype), torch.empty(b, h_kv, t + 1, d, dtype=q.dtype)
    torch.cat([k_cache, k_new], dim=2, out=k)
    torch.cat([v_cache, v_new], dim=2, out=v)
    group = q.shape[1] // h_kv
    return F.scaled_dot_product_attention(q, _grouped(k, group), _grouped(v, group)), k, v


def step_resizes_cache_in_place(q, k_new, v_new, k_cache, v_cache):
    """Right values, but grows the caller's caches in place (resize_, then writes the new token at the end)."""
    t = k_cache.shape[2]
    for cache, new in ((k_cache, k_new), (v_cache, v_new)):
        old = cache.clone()
        cache.resize_(cache.shape[0], cache.shape[1], t + 1, cache.shape[3])
        cache[:, :, :t] = old
        cache[:, :, t:] = new
    group = q.shape[1] // k_cache.shape[1]
    return F.scaled_dot_product_attention(q, _grouped(k_cache, group), _grouped(v_cache, group)), k_cache, v_cache


def step_preallocated_cache(q, k_new, v_new, k_cache, v_cache):
    """Right values, but copies the caches into buffers made with torch.zeros(..., dtype=q.dtype) on the CPU."""
    b, h_kv, t, d = k_cache.shape
    k, v = torch.zeros(b, h_kv, t + 1, d, dtype=q.dtype), torch.zeros(b, h_kv, t + 1, d, dtype=q.dtype)
    k[:, :, :t], k[:, :, t:] = k_cache, k_new
    v[:, :, :t], v[:, :, t:] = v_cache, v_new
    group = q.shape[1] // h_kv
    return F.scaled_dot_product_attention(q, _grouped(k, group), _grouped(v, group)), k, v


def step_mask_on_cpu(q, k_new, v_new, k_cache, v_cache):
    """Right values, but passes an all-True mask made with torch.ones(...) on the CPU."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    mask = torch.ones(1, k.shape[2], dtype=torch.bool)
    return F.scaled_dot_product_attention(q, _grouped(k, group), _grouped(v, group), attn_mask=mask), k, v


def step_scales_q_in_place(q, k_new, v_new, k_cache, v_cache):
    """Right values, but divides the caller's q by sqrt(D) in place (q /= ...)."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    q /= math.sqrt(q.shape[-1])
    return torch.softmax(q @ _grouped(k, group).transpose(-2, -1), dim=-1) @ _grouped(v, group), k, v


def step_scale_by_cache_length(q, k_new, v_new, k_cache, v_cache):
    """Divides the scores by sqrt(T + 1), the number of keys, instead of sqrt(head_dim)."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    weights = torch.softmax(q @ _grouped(k, group).transpose(-2, -1) / math.sqrt(k.shape[2]), dim=-1)
    return weights @ _grouped(v, group), k, v


def step_float32_scores(q, k_new, v_new, k_cache, v_cache):
    """Computes the attention in float32 (.float()): float64 inputs give a float32 output."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q.float(), _grouped(k, group).float(), _grouped(v, group).float()), k, v


def step_softmax_in_float32(q, k_new, v_new, k_cache, v_cache):
    """Takes the softmax in float32 and casts back: right dtype, but float64 inputs lose their precision."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    scores = (q @ _grouped(k, group).transpose(-2, -1) / math.sqrt(q.shape[-1])).float()
    return torch.softmax(scores, dim=-1).to(q.dtype) @ _grouped(v, group), k, v


def step_cache_in_float32(q, k_new, v_new, k_cache, v_cache):
    """Right output, but grows the caches in float32 (torch.cat with a float32 buffer)."""
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    group = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, _grouped(k, group), _grouped(v, group))
    return out, k.float(), v.float()


# --------------------------------------------------------------------------- generate_with_static_cache (the capstone)


def _static_generate(model, input_ids, max_new_tokens, *, recompute=False, grow=False, window=0, tile=False, no_offset=False):
    """The static-cache loop, with one mistake switched on."""
    from course_lib import kvcache

    config = model.config
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    group = config.n_heads // config.n_kv_heads
    shape = (config.n_layers, batch, config.n_kv_heads, total, config.head_dim)
    k_cache = torch.zeros(shape, dtype=model.embed.weight.dtype)
    v_cache = torch.zeros(shape, dtype=model.embed.weight.dtype)
    grown = [[None, None] for _ in range(config.n_layers)]
    out = torch.empty(batch, total, dtype=torch.long)
    out[:, :prompt_len] = input_ids
    with torch.no_grad():
        start, new = 0, input_ids
        for t in range(prompt_len, total):
            if recompute:
                start, new = 0, out[:, :t]
            end = start + new.shape[1]
            positions = torch.arange(start, end)
            mask = positions[:, None] >= torch.arange(end)[None, :]
            x = model.embed(new)
            for layer in range(config.n_layers):
                q, k, v = kvcache.layer_qkv(model, layer, x, torch.arange(new.shape[1]) if no_offset else positions)
                if grow:
                    old_k, old_v = grown[layer]
                    grown[layer] = [k if old_k is None else torch.cat([old_k, k], dim=2),
                                    v if old_v is None else torch.cat([old_v, v], dim=2)]
                    keys, values = grown[layer]
                else:
                    k_cache[layer, :, :, start:end] = k
                    v_cache[layer, :, :, start:end] = v
                    keys, values = k_cache[layer, :, :, :end + window], v_cache[layer, :, :, :end + window]
                n_keys = keys.shape[2]
                if tile:
                    keys, values = keys.repeat(1, group, 1, 1), values.repeat(1, group, 1, 1)
                else:
                    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
                scores = q @ keys.transpose(-2, -1) / math.sqrt(config.head_dim)
                full_mask = torch.ones(end - start, n_keys, dtype=torch.bool)
                full_mask[:, :min(end, n_keys)] = mask[:, :n_keys]
                scores = scores.masked_fill(~full_mask, float("-inf"))
                x = kvcache.layer_output(model, layer, x, torch.softmax(scores, dim=-1) @ values)
            out[:, t] = model.lm_head(model.norm(x[:, -1])).argmax(dim=-1)
            new, start = out[:, t:t + 1], end
    return out


def static_recomputes_everything(model, input_ids, max_new_tokens):
    return _static_generate(model, input_ids, max_new_tokens, recompute=True)


def static_grows_by_cat(model, input_ids, max_new_tokens):
    return _static_generate(model, input_ids, max_new_tokens, grow=True)


def static_misses_the_newest(model, input_ids, max_new_tokens):
    return _static_generate(model, input_ids, max_new_tokens, window=-1)


def static_reads_an_unwritten_slot(model, input_ids, max_new_tokens):
    return _static_generate(model, input_ids, max_new_tokens, window=1)


def static_tiles_kv_heads(model, input_ids, max_new_tokens):
    return _static_generate(model, input_ids, max_new_tokens, tile=True)


def static_forgets_rope_offset(model, input_ids, max_new_tokens):
    return _static_generate(model, input_ids, max_new_tokens, no_offset=True)


def static_new_tokens_only(model, input_ids, max_new_tokens):
    return _static_generate(model, input_ids, max_new_tokens)[:, input_ids.shape[1]:]


# --------------------------------------------------------------------------- predict_gqa8_cache_shrink


def predict_shrink_kv_heads():
    return 8          # the number of key/value heads, not the ratio


def predict_shrink_inverted():
    return 0.25       # GQA's share of the MHA cache, not how many times smaller


def predict_shrink_query_heads():
    return 32


def predict_shrink_bool():
    return True


MUTANTS = {
    "test_repeat_kv": {
        f.__name__: f
        for f in (repeat_kv_tiles, repeat_kv_wrong_dim, repeat_kv_ignores_n_rep, repeat_kv_expand_without_reshape,
                  repeat_kv_no_dim, repeat_kv_float32_buffer, repeat_kv_breaks_n_rep_1, repeat_kv_modulo,
                  repeat_kv_flatten_with_view, repeat_kv_flatten_with_minus_one, repeat_kv_times_ones, repeat_kv_unsqueeze_in_place,
                  repeat_kv_upcasts, repeat_kv_renamed_arguments, repeat_kv_loop_into_buffer)
    },
    "test_generate_with_static_cache": {
        f.__name__: f
        for f in (static_recomputes_everything, static_grows_by_cat, static_misses_the_newest, static_reads_an_unwritten_slot,
                  static_tiles_kv_heads, static_forgets_rope_offset, static_new_tokens_only)
    },
    "test_predict_gqa8_cache_shrink": {
        f.__name__: f for f in (predict_shrink_kv_heads, predict_shrink_inverted, predict_shrink_query_heads, predict_shrink_bool)
    },
    "test_cached_attention_step": {
        f.__name__: f
        for f in (step_before_append, step_is_causal, step_unscaled, step_tiles_heads, step_prepends,
                  step_returns_old_cache, step_softmax_over_queries, step_returns_list,
                  step_softmax_without_max, step_logsumexp_without_max, step_cat_into_new_buffer, step_mask_on_cpu,
                  step_resizes_cache_in_place, step_preallocated_cache,
                  step_scales_q_in_place, step_scale_by_cache_length, step_float32_scores, step_cache_in_float32,
                  step_softmax_in_float32)
    },
}

# The checks of course_lib.kvcache.kv_cache_bytes_from_config (no longer an exercise: lesson 03 writes the formula)
# keep their wrong answers, tested in tests/test_checks_kvcache.py.
CONFIG_MUTANTS = {
    f.__name__: f
    for f in (kv_config_ignores_kv_heads, kv_config_keys_only, kv_config_head_dim_from_hidden, kv_config_key_error,
              kv_config_no_batch, kv_config_one_layer, kv_config_float_head_dim, kv_config_head_dim_per_kv_head,
              kv_config_none_is_a_value,
              kv_config_setdefault, kv_config_writes_head_dim, kv_config_pops_keys, kv_config_swapped_parameters,
              kv_config_renamed_parameters, kv_config_float_for_half_bytes, kv_config_numpy_product)
}
