"""Wrong answers to lesson 02's exercises: a BPE merge step, the next-token loss, BERT's masking rule, cached greedy generation."""

import torch
import torch.nn.functional as F

from course_lib.kvcache import KVCache

# --------------------------------------------------------------------------- merge_pair


def merge_right_to_left(word, pair, new_symbol):
    """Scans from the right: ('a','a','a') becomes ('a','aa')."""
    out = list(word)
    i = len(out) - 2
    while i >= 0:
        if out[i] == pair[0] and out[i + 1] == pair[1]:
            out[i : i + 2] = [new_symbol]
            i -= 2
        else:
            i -= 1
    return tuple(out)


def merge_first_only(word, pair, new_symbol):
    """Merges only the first occurrence."""
    for i in range(len(word) - 1):
        if (word[i], word[i + 1]) == pair:
            return word[:i] + (new_symbol,) + word[i + 2 :]
    return tuple(word)


def merge_as_strings(word, pair, new_symbol):
    """Joins the symbols with spaces and uses str.replace: wrong when symbols are longer than one character."""
    text = " ".join(word).replace(f"{pair[0]} {pair[1]}", new_symbol)
    return tuple(text.split(" ")) if text else ()


def merge_returns_list(word, pair, new_symbol):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_symbol)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def merge_overlapping(word, pair, new_symbol):
    """Steps one symbol after a merge instead of two, so ('a','a','a') merges twice."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_symbol)
            i += 1
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def merge_either_order(word, pair, new_symbol):
    """Also merges the reversed pair."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and {(word[i], word[i + 1]), (word[i + 1], word[i])} & {pair}:
            out.append(new_symbol)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


# --------------------------------------------------------------------------- next_token_loss


def loss_without_shift(logits, targets, ignore_index=-100):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)


def loss_shifted_the_wrong_way(logits, targets, ignore_index=-100):
    return F.cross_entropy(logits[:, 1:].reshape(-1, logits.shape[-1]), targets[:, :-1].reshape(-1), ignore_index=ignore_index)


def loss_counts_ignored_targets(logits, targets, ignore_index=-100):
    """Replaces ignored targets by token 0 instead of leaving them out."""
    t = targets[:, 1:].clamp_min(0)
    t = torch.where(targets[:, 1:] == ignore_index, torch.zeros_like(t), t)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), t.reshape(-1))


def loss_summed(logits, targets, ignore_index=-100):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1), ignore_index=ignore_index, reduction="sum")


def loss_mean_of_sequence_means(logits, targets, ignore_index=-100):
    """Averages each sequence first: sequences with padding weigh more per token."""
    per = [F.cross_entropy(logits[b, :-1], targets[b, 1:], ignore_index=ignore_index) for b in range(logits.shape[0])]
    return torch.stack(per).mean()


def loss_default_ignore_index_only(logits, targets, ignore_index=-100):
    """Ignores the ignore_index argument."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1))


# --------------------------------------------------------------------------- mlm_mask


def _choose(input_ids, mask_prob, special_ids, generator):
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    return (torch.rand(input_ids.shape, generator=generator) < mask_prob) & ~special


def mlm_mask_always_mask(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Every chosen position becomes [MASK] (no 10 % random, no 10 % unchanged)."""
    chosen = _choose(input_ids, mask_prob, special_ids, generator)
    return torch.where(chosen, torch.full_like(input_ids, mask_id), input_ids), torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def mlm_mask_masks_specials(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Forgets to protect the special tokens."""
    chosen = torch.rand(input_ids.shape, generator=generator) < mask_prob
    split = torch.rand(input_ids.shape, generator=generator)
    rand = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(chosen & (split < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (split >= 0.8) & (split < 0.9), rand, masked)
    return masked, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def mlm_mask_labels_everywhere(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Right masking, but labels at every position instead of -100 at unchosen ones."""
    chosen = _choose(input_ids, mask_prob, special_ids, generator)
    split = torch.rand(input_ids.shape, generator=generator)
    rand = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(chosen & (split < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (split >= 0.8) & (split < 0.9), rand, masked)
    return masked, input_ids.clone()


def mlm_mask_80_20(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """80 % [MASK] and 20 % random, none unchanged."""
    chosen = _choose(input_ids, mask_prob, special_ids, generator)
    split = torch.rand(input_ids.shape, generator=generator)
    rand = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(chosen & (split < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (split >= 0.8), rand, masked)
    return masked, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def mlm_mask_fifteen_percent_of_all(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Masks exactly the first 15 % of each row: not random."""
    chosen = torch.zeros_like(input_ids, dtype=torch.bool)
    chosen[..., : round(mask_prob * input_ids.shape[-1])] = True
    chosen &= ~torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    split = torch.rand(input_ids.shape, generator=generator)
    rand = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(chosen & (split < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (split >= 0.8) & (split < 0.9), rand, masked)
    return masked, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def mlm_mask_unseeded(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Right rule, but ignores the generator: not repeatable."""
    return mlm_mask_80_10_10(input_ids, mask_prob, mask_id=mask_id, vocab_size=vocab_size, special_ids=special_ids, generator=None)


def mlm_mask_80_10_10(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    chosen = _choose(input_ids, mask_prob, special_ids, generator)
    split = torch.rand(input_ids.shape, generator=generator)
    rand = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(chosen & (split < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (split >= 0.8) & (split < 0.9), rand, masked)
    return masked, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


# --------------------------------------------------------------------------- greedy_generate


def generate_without_cache(model, input_ids, max_new_tokens):
    """Right tokens, but recomputes the whole sequence at every step."""
    ids = input_ids
    for _ in range(max_new_tokens):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def generate_refeeds_everything(model, input_ids, max_new_tokens):
    """Passes a cache but feeds the whole sequence again each step: the cache then holds every position twice."""
    ids, cache = input_ids, KVCache(model.config.n_layers)
    for _ in range(max_new_tokens):
        ids = torch.cat([ids, model(ids, cache=cache)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def generate_one_too_few(model, input_ids, max_new_tokens):
    ids, cache = input_ids, KVCache(model.config.n_layers)
    logits = model(ids, cache=cache)
    for _ in range(max_new_tokens - 1):
        token = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        logits = model(token, cache=cache)
    return ids


def generate_argmax_first_position(model, input_ids, max_new_tokens):
    """Takes the prediction at the first position of each call instead of the last."""
    ids, cache = input_ids, KVCache(model.config.n_layers)
    logits = model(ids, cache=cache)
    for step in range(max_new_tokens):
        token = logits[:, 0].argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        if step < max_new_tokens - 1:
            logits = model(token, cache=cache)
    return ids


def generate_new_tokens_only(model, input_ids, max_new_tokens):
    """Returns only the generated tokens, without the prompt."""
    ids, cache = input_ids, KVCache(model.config.n_layers)
    logits, new = model(ids, cache=cache), []
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(-1, keepdim=True)
        new.append(token)
        if step < max_new_tokens - 1:
            logits = model(token, cache=cache)
    return torch.cat(new, dim=1)


def generate_samples(model, input_ids, max_new_tokens):
    """Samples from the softmax instead of taking the argmax."""
    ids, cache = input_ids, KVCache(model.config.n_layers)
    logits = model(ids, cache=cache)
    for step in range(max_new_tokens):
        token = torch.multinomial(torch.softmax(logits[:, -1], -1), 1)
        ids = torch.cat([ids, token], dim=1)
        if step < max_new_tokens - 1:
            logits = model(token, cache=cache)
    return ids


MUTANTS = {
    "test_merge_pair": {
        f.__name__: f
        for f in (merge_right_to_left, merge_first_only, merge_as_strings, merge_returns_list, merge_overlapping, merge_either_order)
    },
    "test_next_token_loss": {
        f.__name__: f
        for f in (loss_without_shift, loss_shifted_the_wrong_way, loss_counts_ignored_targets, loss_summed,
                  loss_mean_of_sequence_means, loss_default_ignore_index_only)
    },
    "test_mlm_mask": {
        f.__name__: f
        for f in (mlm_mask_always_mask, mlm_mask_masks_specials, mlm_mask_labels_everywhere, mlm_mask_80_20,
                  mlm_mask_fifteen_percent_of_all, mlm_mask_unseeded)
    },
    "test_greedy_generate": {
        f.__name__: f
        for f in (generate_without_cache, generate_refeeds_everything, generate_one_too_few, generate_argmax_first_position,
                  generate_new_tokens_only, generate_samples)
    },
}
