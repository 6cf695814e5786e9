"""Wrong answers to lesson 06's exercises: repeat_kv, kv_cache_bytes_from_config, cached_attention_step."""

import math

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


MUTANTS = {
    "test_repeat_kv": {
        f.__name__: f
        for f in (repeat_kv_tiles, repeat_kv_wrong_dim, repeat_kv_ignores_n_rep, repeat_kv_expand_without_reshape,
                  repeat_kv_no_dim, repeat_kv_float32_buffer, repeat_kv_breaks_n_rep_1, repeat_kv_modulo)
    },
    "test_kv_cache_bytes_from_config": {
        f.__name__: f
        for f in (kv_config_ignores_kv_heads, kv_config_keys_only, kv_config_head_dim_from_hidden, kv_config_key_error,
                  kv_config_no_batch, kv_config_one_layer, kv_config_float_head_dim, kv_config_head_dim_per_kv_head,
                  kv_config_none_is_a_value)
    },
    "test_cached_attention_step": {
        f.__name__: f
        for f in (step_before_append, step_is_causal, step_unscaled, step_tiles_heads, step_prepends,
                  step_returns_old_cache, step_softmax_over_queries, step_returns_list)
    },
}
