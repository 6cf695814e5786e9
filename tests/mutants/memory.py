"""Wrong answers to lesson 03's exercises: a Llama block's parameters, model-state bytes, KV-cache bytes."""


def block_params_without_norms(d_model, n_heads, n_kv_heads, d_ff):
    kv = d_model // n_heads * n_kv_heads
    return 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff


def block_params_mha_sized_kv(d_model, n_heads, n_kv_heads, d_ff):
    """Ignores n_kv_heads: k and v as wide as q."""
    return 4 * d_model * d_model + 3 * d_model * d_ff + 2 * d_model


def block_params_two_matrix_mlp(d_model, n_heads, n_kv_heads, d_ff):
    """A GPT-style MLP (two matrices) instead of SwiGLU's three."""
    kv = d_model // n_heads * n_kv_heads
    return 2 * d_model * d_model + 2 * d_model * kv + 2 * d_model * d_ff + 2 * d_model


def block_params_with_biases(d_model, n_heads, n_kv_heads, d_ff):
    """Adds biases, which Llama does not have."""
    kv = d_model // n_heads * n_kv_heads
    return 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff + 2 * d_model + (2 * d_model + 2 * kv) + (2 * d_ff + d_model)


def block_params_layernorm(d_model, n_heads, n_kv_heads, d_ff):
    """Counts LayerNorm (gain and bias) instead of RMSNorm (gain only)."""
    kv = d_model // n_heads * n_kv_heads
    return 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff + 4 * d_model


def block_params_float(d_model, n_heads, n_kv_heads, d_ff):
    kv = d_model / n_heads * n_kv_heads
    return 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff + 2 * d_model


# --------------------------------------------------------------------------- model_state_bytes

_BYTES = {"fp32": 4, "bf16": 2, "bf16-mixed": 4}
_STATES = {"sgd": 0, "sgd-momentum": 1, "adamw": 2}


def states_mixed_as_half(n_params, optimizer, precision):
    """Thinks mixed precision stores 2-byte weights and gradients (autocast keeps fp32 master weights)."""
    w = {"fp32": 4, "bf16": 2, "bf16-mixed": 2}[precision]
    return {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": _STATES[optimizer] * n_params * _BYTES[precision]}


def states_adam_one_moment(n_params, optimizer, precision):
    w = _BYTES[precision]
    return {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": min(_STATES[optimizer], 1) * n_params * w}


def states_always_fp32(n_params, optimizer, precision):
    """Optimizer states in fp32 even for a pure bf16 model."""
    w = _BYTES[precision]
    return {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": _STATES[optimizer] * n_params * 4}


def states_no_gradients_for_sgd(n_params, optimizer, precision):
    w = _BYTES[precision]
    grads = 0 if optimizer == "sgd" else n_params * w
    return {"weights": n_params * w, "gradients": grads, "optimizer_states": _STATES[optimizer] * n_params * w}


def states_source_table(n_params, optimizer, precision):
    """The source's table: 8 bytes of Adam states per parameter whatever the optimizer or precision."""
    w = _BYTES[precision]
    return {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": 8 * n_params}


def states_momentum_free(n_params, optimizer, precision):
    """Forgets SGD's momentum buffer."""
    w = _BYTES[precision]
    return {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": (2 if optimizer == "adamw" else 0) * n_params * w}


# --------------------------------------------------------------------------- kv_cache_bytes


def kv_bytes_keys_only(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    return n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_element


def kv_bytes_query_heads(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    """Uses n_heads: the size of an MHA cache, not a GQA one."""
    return 2 * n_layers * n_heads * head_dim * seq_len * batch_size * bytes_per_element


def kv_bytes_no_batch(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * bytes_per_element


def kv_bytes_elements(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    """Counts elements, not bytes."""
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size


def kv_bytes_float(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    return 2.0 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_element


def kv_bytes_one_layer(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    return 2 * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_element


MUTANTS = {
    "test_llama_block_params": {
        f.__name__: f
        for f in (block_params_without_norms, block_params_mha_sized_kv, block_params_two_matrix_mlp, block_params_with_biases,
                  block_params_layernorm, block_params_float)
    },
    "test_model_state_bytes": {
        f.__name__: f
        for f in (states_mixed_as_half, states_adam_one_moment, states_always_fp32, states_no_gradients_for_sgd,
                  states_source_table, states_momentum_free)
    },
    "test_kv_cache_bytes": {
        f.__name__: f
        for f in (kv_bytes_keys_only, kv_bytes_query_heads, kv_bytes_no_batch, kv_bytes_elements, kv_bytes_float, kv_bytes_one_layer)
    },
}
