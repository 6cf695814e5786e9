"""Wrong answers to lesson 08's exercises: mask_prompt, lora_forward, merge_lora_weight, lora_trainable_parameters,
train_reverse_adapter."""

import torch

# --------------------------------------------------------------------------- mask_prompt


def _mask(input_ids, prompt_lengths, lengths, first=lambda p: p, last=lambda n: n, fill=-100):
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    keep = (positions >= first(prompt_lengths)[:, None]) & (positions < last(lengths)[:, None])
    return torch.where(keep, input_ids, torch.full_like(input_ids, fill))


def mask_keeps_last_prompt_token(input_ids, prompt_lengths, lengths):
    """Off by one: the last prompt token is trained on too."""
    return _mask(input_ids, prompt_lengths, lengths, first=lambda p: (p - 1).clamp(min=0))


def mask_drops_first_response_token(input_ids, prompt_lengths, lengths):
    """Off by one the other way: the first response token is masked."""
    return _mask(input_ids, prompt_lengths, lengths, first=lambda p: p + 1)


def mask_drops_eos(input_ids, prompt_lengths, lengths):
    """The last real token (<eos>) is masked: the model never learns to stop."""
    return _mask(input_ids, prompt_lengths, lengths, last=lambda n: n - 1)


def mask_padding_by_id(input_ids, prompt_lengths, lengths):
    """Padding found by its id (0) instead of the lengths: a real token 0 in a response is lost."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    keep = (positions >= prompt_lengths[:, None]) & (input_ids != 0)
    return torch.where(keep, input_ids, torch.full_like(input_ids, -100))


def mask_forgets_padding(input_ids, prompt_lengths, lengths):
    """Only the prompt is masked; the padding is trained on."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return torch.where(positions >= prompt_lengths[:, None], input_ids, torch.full_like(input_ids, -100))


def mask_inverted(input_ids, prompt_lengths, lengths):
    """Keeps the prompt and masks the response."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    keep = positions < prompt_lengths[:, None]
    return torch.where(keep, input_ids, torch.full_like(input_ids, -100))


def mask_fills_minus_one(input_ids, prompt_lengths, lengths):
    """-1 instead of -100 (cross_entropy's ignore_index)."""
    return _mask(input_ids, prompt_lengths, lengths, fill=-1)


def mask_in_place(input_ids, prompt_lengths, lengths):
    """Right labels, written into input_ids itself."""
    labels = _mask(input_ids, prompt_lengths, lengths)
    input_ids.copy_(labels)
    return input_ids


def mask_on_cpu(input_ids, prompt_lengths, lengths):
    """Builds the positions on the CPU whatever the input's device."""
    positions = torch.arange(input_ids.shape[1])
    keep = (positions >= prompt_lengths[:, None].cpu()) & (positions < lengths[:, None].cpu())
    return torch.where(keep, input_ids.cpu(), torch.full_like(input_ids.cpu(), -100))


def mask_with_view(input_ids, prompt_lengths, lengths):
    """Flattens with view, which fails on a non-contiguous tensor."""
    flat = input_ids.view(-1)
    return _mask(flat.view(input_ids.shape), prompt_lengths, lengths)


# --------------------------------------------------------------------------- lora_forward


def lora_forward_unscaled(x, weight, bias, lora_A, lora_B, alpha):
    """Forgets the alpha / r scaling."""
    out = x @ weight.T + (x @ lora_A.T) @ lora_B.T
    return out if bias is None else out + bias


def lora_forward_alpha_only(x, weight, bias, lora_A, lora_B, alpha):
    """Scales by alpha, not alpha / r."""
    out = x @ weight.T + alpha * ((x @ lora_A.T) @ lora_B.T)
    return out if bias is None else out + bias


def lora_forward_r_over_alpha(x, weight, bias, lora_A, lora_B, alpha):
    """Scales by r / alpha."""
    r = lora_A.shape[0]
    out = x @ weight.T + (r / alpha) * ((x @ lora_A.T) @ lora_B.T)
    return out if bias is None else out + bias


def lora_forward_rank_from_in_features(x, weight, bias, lora_A, lora_B, alpha):
    """Takes r from the wrong dimension of A."""
    r = lora_A.shape[1]
    out = x @ weight.T + (alpha / r) * ((x @ lora_A.T) @ lora_B.T)
    return out if bias is None else out + bias


def lora_forward_no_bias(x, weight, bias, lora_A, lora_B, alpha):
    """Drops the bias."""
    r = lora_A.shape[0]
    return x @ weight.T + (alpha / r) * ((x @ lora_A.T) @ lora_B.T)


def lora_forward_update_only(x, weight, bias, lora_A, lora_B, alpha):
    """Returns the update without the frozen layer's output."""
    r = lora_A.shape[0]
    return (alpha / r) * ((x @ lora_A.T) @ lora_B.T)


def lora_forward_in_float32(x, weight, bias, lora_A, lora_B, alpha):
    """Computes in float32 and returns float32 whatever x's dtype."""
    r = lora_A.shape[0]
    x, weight, lora_A, lora_B = x.float(), weight.float(), lora_A.float(), lora_B.float()
    out = x @ weight.T + (alpha / r) * ((x @ lora_A.T) @ lora_B.T)
    return out if bias is None else out + bias.float()


def lora_forward_2d_only(x, weight, bias, lora_A, lora_B, alpha):
    """Uses torch.mm, which takes only 2-D inputs."""
    r = lora_A.shape[0]
    out = torch.mm(x, weight.T) + (alpha / r) * torch.mm(torch.mm(x, lora_A.T), lora_B.T)
    return out if bias is None else out + bias


# --------------------------------------------------------------------------- merge_lora_weight


def merge_unscaled(weight, lora_A, lora_B, alpha):
    """Forgets the alpha / r scaling."""
    return weight + lora_B @ lora_A


def merge_alpha_only(weight, lora_A, lora_B, alpha):
    """Scales by alpha, not alpha / r."""
    return weight + alpha * (lora_B @ lora_A)


def merge_in_place(weight, lora_A, lora_B, alpha):
    """Right values, added into weight itself."""
    r = lora_A.shape[0]
    weight += (alpha / r) * (lora_B @ lora_A)
    return weight


def merge_in_float64(weight, lora_A, lora_B, alpha):
    """Returns float64 whatever weight's dtype."""
    r = lora_A.shape[0]
    return weight.double() + (alpha / r) * (lora_B.double() @ lora_A.double())


def merge_subtracts(weight, lora_A, lora_B, alpha):
    """Un-merges instead of merging."""
    r = lora_A.shape[0]
    return weight - (alpha / r) * (lora_B @ lora_A)


def merge_transposed_update(weight, lora_A, lora_B, alpha):
    """Adds (B A)^T, which has the right shape only for square weights."""
    r = lora_A.shape[0]
    return weight + (alpha / r) * (lora_B @ lora_A).T


# --------------------------------------------------------------------------- lora_trainable_parameters


def _sizes(config, kv_from_heads=False):
    d, ff = config["d_model"], config["d_ff"]
    head_dim = d // config["n_heads"]
    q = config["n_heads"] * head_dim
    kv = q if kv_from_heads else config["n_kv_heads"] * head_dim
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}


def count_full_matrices(config, r, targets):
    """Counts in * out (full fine-tuning of those matrices), not r * (in + out)."""
    sizes = _sizes(config)
    return config["n_layers"] * sum(sizes[t][0] * sizes[t][1] for t in targets)


def count_ignores_gqa(config, r, targets):
    """k_proj and v_proj as wide as q_proj."""
    sizes = _sizes(config, kv_from_heads=True)
    return config["n_layers"] * sum(r * (sizes[t][0] + sizes[t][1]) for t in targets)


def count_one_layer(config, r, targets):
    """Forgets the number of layers."""
    sizes = _sizes(config)
    return sum(r * (sizes[t][0] + sizes[t][1]) for t in targets)


def count_a_only(config, r, targets):
    """Counts A (r x in) and forgets B."""
    sizes = _sizes(config)
    return config["n_layers"] * sum(r * sizes[t][0] for t in targets)


def count_all_seven(config, r, targets):
    """Counts every projection whatever the targets."""
    sizes = _sizes(config)
    return config["n_layers"] * sum(r * (i + o) for i, o in sizes.values())


def count_as_float(config, r, targets):
    """Right number, as a float."""
    sizes = _sizes(config)
    return float(config["n_layers"] * sum(r * (sizes[t][0] + sizes[t][1]) for t in targets))


def count_d_model_for_mlp(config, r, targets):
    """The MLP's projections counted as d_model x d_model."""
    sizes = _sizes(config)
    d = config["d_model"]
    sizes.update({"gate_proj": (d, d), "up_proj": (d, d), "down_proj": (d, d)})
    return config["n_layers"] * sum(r * (sizes[t][0] + sizes[t][1]) for t in targets)


# --------------------------------------------------------------------------- train_reverse_adapter


def _fresh_adapter(r=8, targets=("q_proj", "v_proj"), train_steps=0, pairs=None):
    from course_lib import finetune, lora
    from course_lib.models import load_pretrained
    from course_lib.tokenizer import course_tokenizer

    model = load_pretrained("course-lm-small")
    lora.inject_lora(model, r=r, alpha=2 * r, targets=targets)
    if train_steps:
        finetune.finetune(model, course_tokenizer(0), pairs, steps=train_steps, lr=3e-3, batch_size=16, progress=False)
    return model, {"r": r, "alpha": 2 * r, "targets": list(targets), "state": lora.adapter_state_dict(model)}


def adapter_untrained(pairs):
    """Returns a fresh adapter (B = 0): the base model, which cannot reverse anything."""
    return _fresh_adapter()[1]


def adapter_too_few_steps(pairs):
    """Trains 20 steps: far from enough."""
    return _fresh_adapter(train_steps=20, pairs=pairs)[1]


def adapter_rank_too_high(pairs):
    """Rank 64: more than the 16 the exercise allows (close to fine-tuning whole matrices)."""
    return _fresh_adapter(r=64)[1]


def adapter_peft_names(pairs):
    """The state under peft's names instead of the course's."""
    from course_lib import lora

    adapter = _fresh_adapter()[1]
    adapter["state"] = lora.to_peft_names(adapter["state"], 3)
    return adapter


def adapter_wrong_targets(pairs):
    """Declares targets that do not match the state it returns."""
    adapter = _fresh_adapter()[1]
    adapter["targets"] = ["q_proj", "k_proj"]
    return adapter


def adapter_model_instead_of_dict(pairs):
    """Returns the model, not the adapter dict."""
    return _fresh_adapter()[0]


def adapter_nan(pairs):
    """A state holding NaN."""
    adapter = _fresh_adapter()[1]
    first = next(iter(adapter["state"]))
    adapter["state"][first] = adapter["state"][first] * float("nan")
    return adapter


MUTANTS = {
    "test_mask_prompt": {
        f.__name__: f
        for f in (mask_keeps_last_prompt_token, mask_drops_first_response_token, mask_drops_eos, mask_padding_by_id,
                  mask_forgets_padding, mask_inverted, mask_fills_minus_one, mask_in_place, mask_on_cpu, mask_with_view)
    },
    "test_lora_forward": {
        f.__name__: f
        for f in (lora_forward_unscaled, lora_forward_alpha_only, lora_forward_r_over_alpha, lora_forward_rank_from_in_features,
                  lora_forward_no_bias, lora_forward_update_only, lora_forward_in_float32, lora_forward_2d_only)
    },
    "test_merge_lora_weight": {
        f.__name__: f
        for f in (merge_unscaled, merge_alpha_only, merge_in_place, merge_in_float64, merge_subtracts, merge_transposed_update)
    },
    "test_lora_trainable_parameters": {
        f.__name__: f
        for f in (count_full_matrices, count_ignores_gqa, count_one_layer, count_a_only, count_all_seven, count_as_float,
                  count_d_model_for_mlp)
    },
    "test_train_reverse_adapter": {
        f.__name__: f
        for f in (adapter_untrained, adapter_too_few_steps, adapter_rank_too_high, adapter_peft_names, adapter_wrong_targets,
                  adapter_model_instead_of_dict, adapter_nan)
    },
}
