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


def block_params_one_norm(d_model, n_heads, n_kv_heads, d_ff):
    """Counts one RMSNorm per block instead of two (before attention and before the MLP)."""
    kv = d_model // n_heads * n_kv_heads
    return 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff + d_model


def block_params_kv_divides(d_model, n_heads, n_kv_heads, d_ff):
    """Sizes k and v as d_model // n_kv_heads (divides by the kv heads instead of multiplying by head_dim)."""
    kv = d_model // n_kv_heads
    return 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff + 2 * d_model


def block_params_swapped_heads(d_model, n_kv_heads, n_heads, d_ff):
    """Takes the arguments in the order (d_model, n_kv_heads, n_heads, d_ff)."""
    kv = d_model // n_heads * n_kv_heads
    return 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff + 2 * d_model


def block_params_head_dim_128(d_model, n_heads, n_kv_heads, d_ff):
    """Assumes Llama's head_dim of 128 instead of d_model // n_heads."""
    kv = 128 * n_kv_heads
    return 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff + 2 * d_model


def block_params_o_proj_kv(d_model, n_heads, n_kv_heads, d_ff):
    """Sizes o_proj like k and v (kv width x d_model) instead of d_model x d_model."""
    kv = d_model // n_heads * n_kv_heads
    return d_model * d_model + 3 * d_model * kv + 3 * d_model * d_ff + 2 * d_model


def block_params_float_then_int(d_model, n_heads, n_kv_heads, d_ff):
    """head_dim = d_model / n_heads (a float), int() at the end: exact only below 2**53."""
    head_dim = d_model / n_heads
    return int(2 * d_model * d_model + 2 * d_model * n_kv_heads * head_dim + 3 * d_model * d_ff + 2 * d_model)


def block_params_numpy_int(d_model, n_heads, n_kv_heads, d_ff):
    """Returns numpy's int64 (from np.prod) instead of a Python int."""
    import numpy as np

    kv = d_model // n_heads * n_kv_heads
    return np.prod([2, d_model, d_model]) + np.prod([2, d_model, kv]) + np.prod([3, d_model, d_ff]) + 2 * d_model


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


def states_bits_over_8(n_params, optimizer, precision):
    """Bytes as bits / 8 (a float), int() at the end: exact only below 2**53."""
    bits = {"fp32": 32, "bf16": 16, "bf16-mixed": 32}[precision]
    per = n_params * bits / 8
    return {"weights": int(per), "gradients": int(per), "optimizer_states": int(_STATES[optimizer] * per)}


def states_mixed_bf16_gradients(n_params, optimizer, precision):
    """Mixed precision with bf16 gradients (autocast leaves the gradients of fp32 parameters fp32)."""
    w = _BYTES[precision]
    g = 2 if precision == "bf16-mixed" else w
    return {"weights": n_params * w, "gradients": n_params * g, "optimizer_states": _STATES[optimizer] * n_params * w}


def states_mixed_counts_bf16_copy(n_params, optimizer, precision):
    """Adds autocast's bf16 copy to the mixed-precision weights (6 bytes), which the contract leaves out."""
    w = _BYTES[precision]
    extra = 2 if precision == "bf16-mixed" else 0
    return {"weights": n_params * (w + extra), "gradients": n_params * w, "optimizer_states": _STATES[optimizer] * n_params * w}


def states_adamw_master_copy(n_params, optimizer, precision):
    """Counts three AdamW buffers (a copy of the weights besides the two moments)."""
    w = _BYTES[precision]
    buffers = {"sgd": 0, "sgd-momentum": 1, "adamw": 3}[optimizer]
    return {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": buffers * n_params * w}


def states_true_division(n_params, optimizer, precision):
    """Divides with / (bytes per parameter as 32 / 8): float results."""
    w = {"fp32": 32, "bf16": 16, "bf16-mixed": 32}[precision] / 8
    return {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": _STATES[optimizer] * n_params * w}


def states_with_total(n_params, optimizer, precision):
    """Adds a "total" key to the dict."""
    w = _BYTES[precision]
    out = {"weights": n_params * w, "gradients": n_params * w, "optimizer_states": _STATES[optimizer] * n_params * w}
    return {**out, "total": sum(out.values())}


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


def kv_bytes_default_fp32(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=4):
    """Defaults to 4 bytes per element (fp32) instead of the documented 2 (bf16)."""
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_element


def kv_bytes_defaults_swapped(n_layers, n_heads, n_kv_heads, head_dim, seq_len, bytes_per_element=2, batch_size=1):
    """Puts bytes_per_element before batch_size: a positional batch size is taken as bytes."""
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_element


def kv_bytes_float_then_int(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    """Multiplies in floats (2.0 * ...) and converts with int(): exact only below 2**53."""
    return int(2.0 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_element)


def kv_bytes_group_size(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    """Uses the group size n_heads // n_kv_heads instead of the number of kv heads."""
    return 2 * n_layers * (n_heads // n_kv_heads) * head_dim * seq_len * batch_size * bytes_per_element


def kv_bytes_head_dim_from_heads(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    """Treats head_dim as the model width and divides it by n_heads again."""
    return 2 * n_layers * n_kv_heads * (head_dim // n_heads) * seq_len * batch_size * bytes_per_element


def kv_bytes_numpy(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size=1, bytes_per_element=2):
    """Returns numpy's int64 (from np.prod) instead of a Python int."""
    import numpy as np

    return np.prod([2, n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_element])


MUTANTS = {
    "test_llama_block_params": {
        f.__name__: f
        for f in (block_params_without_norms, block_params_mha_sized_kv, block_params_two_matrix_mlp, block_params_with_biases,
                  block_params_layernorm, block_params_float, block_params_one_norm, block_params_kv_divides,
                  block_params_swapped_heads, block_params_head_dim_128, block_params_o_proj_kv, block_params_float_then_int,
                  block_params_numpy_int)
    },
    "test_model_state_bytes": {
        f.__name__: f
        for f in (states_mixed_as_half, states_adam_one_moment, states_always_fp32, states_no_gradients_for_sgd,
                  states_source_table, states_momentum_free, states_bits_over_8, states_mixed_bf16_gradients,
                  states_mixed_counts_bf16_copy, states_adamw_master_copy, states_true_division, states_with_total)
    },
    "test_kv_cache_bytes": {
        f.__name__: f
        for f in (kv_bytes_keys_only, kv_bytes_query_heads, kv_bytes_no_batch, kv_bytes_elements, kv_bytes_float, kv_bytes_one_layer,
                  kv_bytes_default_fp32, kv_bytes_defaults_swapped, kv_bytes_float_then_int, kv_bytes_group_size,
                  kv_bytes_head_dim_from_heads, kv_bytes_numpy)
    },
}


# ---------------------------------------------------------------- capstone: activation_bytes


def _activation_bytes(shape, batch_size, seq_len, attention="eager", checkpointing=False, *, probs=True, logit_bytes=4,
                      logit_width=None, recompute=True, kv=None, batch=True, rope_in_checkpoints=False, validate=True,
                      norm_elements=None, as_float=False):
    """The answer, with one thing done wrong at a time (the keyword-only switches)."""
    if validate:
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
    h, f, layers, a, d_h = shape.d_model, shape.d_ff, shape.n_layers, shape.n_heads, shape.head_dim
    k = shape.n_kv_heads if kv is None else kv(shape)
    tokens = (batch_size if batch else 1) * seq_len
    norm = 3 * h + 1 if norm_elements is None else norm_elements(h)
    attn = 4 * a * d_h + (a * seq_len if probs else 0) if attention == "eager" else 2 * a * d_h + 2 * k * d_h + a
    block = 4 * tokens * (2 * norm + attn + 4 * f)
    width = shape.vocab_size if logit_width is None else logit_width(shape)
    outside = 8 * tokens + 4 * tokens * norm + logit_bytes * tokens * width + 8 * tokens + 4
    rope = 8 * seq_len * d_h
    if checkpointing:
        total = layers * 4 * h * tokens + (block if recompute else 0) + outside + (rope if rope_in_checkpoints else 0)
    else:
        total = layers * block + rope + outside
    return total / 1 if as_float else total


def activation_no_probs(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """Forgets eager attention's probabilities (the a * s term per token, s^2 per sequence)."""
    return _activation_bytes(shape, batch_size, seq_len, attention, checkpointing, probs=False)


def activation_logits_bf16(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """Counts the log-probabilities of the loss in 2 bytes (transformers upcasts them to fp32)."""
    return _activation_bytes(shape, batch_size, seq_len, attention, checkpointing, logit_bytes=2)


def activation_logits_d_model(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """Sizes the logits by d_model instead of the vocabulary."""
    return _activation_bytes(shape, batch_size, seq_len, attention, checkpointing, logit_width=lambda s: s.d_model)


def activation_no_recompute(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """With checkpointing, forgets the block recomputed during backward."""
    return _activation_bytes(shape, batch_size, seq_len, attention, checkpointing, recompute=False)


def activation_kv_as_heads(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """Sizes SDPA's k and v with the query heads instead of the kv heads."""
    return _activation_bytes(shape, batch_size, seq_len, attention, checkpointing, kv=lambda s: s.n_heads)


def activation_per_sequence(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """Counts one sequence, not the whole batch."""
    return _activation_bytes(shape, batch_size, seq_len, attention, checkpointing, batch=False)


def activation_rope_in_checkpoints(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """Keeps counting the RoPE tables with checkpointing (the blocks recompute them)."""
    return _activation_bytes(shape, batch_size, seq_len, attention, checkpointing, rope_in_checkpoints=True)


def activation_norm_output_only(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """Counts only the output of each RMSNorm (h), not its input, 1/rms and x / rms."""
    return _activation_bytes(shape, batch_size, seq_len, attention, checkpointing, norm_elements=lambda h: h)


def activation_accepts_bool(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """Rejects only sizes below 1: True passes as a batch of one."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError("batch_size and seq_len must be positive")
    return _activation_bytes(shape, int(batch_size), int(seq_len), attention, checkpointing, validate=False)


def activation_float(shape, batch_size, seq_len, attention="eager", checkpointing=False):
    """Returns a float (bytes computed with /)."""
    return _activation_bytes(shape, batch_size, seq_len, attention, checkpointing, as_float=True)


MUTANTS["test_activation_bytes"] = {
    f.__name__: f
    for f in (activation_no_probs, activation_logits_bf16, activation_logits_d_model, activation_no_recompute,
              activation_kv_as_heads, activation_per_sequence, activation_rope_in_checkpoints, activation_norm_output_only,
              activation_accepts_bool, activation_float)
}


# ---------------------------------------------------------------- predictions


def predict_adamw_source_total():
    """The source's whole training total, activations included."""
    return 24


def predict_adamw_optimizer_only():
    """Counts the steps' extra only (Adam's states and the gradients, not the weights)."""
    return 12


def predict_adamw_one_moment():
    """Adam with one state instead of two."""
    return 12.0


def predict_adamw_mixed_halved():
    """Halves everything, as if fp32 were 2 bytes."""
    return 8


def predict_probs_linear():
    """Linear in the sequence, like everything else."""
    return 2


def predict_probs_cubic():
    return 8


def predict_probs_per_token_only():
    """Per token the probabilities double; forgets that the tokens double too."""
    return 2.0


def predict_probs_bool():
    return True


MUTANTS["test_predict_adamw_bytes_per_param"] = {
    f.__name__: f for f in (predict_adamw_source_total, predict_adamw_optimizer_only, predict_adamw_one_moment, predict_adamw_mixed_halved)
}
MUTANTS["test_predict_probs_growth"] = {
    f.__name__: f for f in (predict_probs_linear, predict_probs_cubic, predict_probs_per_token_only, predict_probs_bool)
}
