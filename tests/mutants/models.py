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


def merge_with_regex_on_spaces(word, pair, new_symbol):
    """Sennrich's regex on the symbols joined by spaces: wrong when a symbol contains a space."""
    import re

    pattern = re.compile(r"(?<!\S)" + re.escape(" ".join(pair)) + r"(?!\S)")
    return tuple(pattern.sub(new_symbol, " ".join(word)).split())


def merge_until_no_pair_left(word, pair, new_symbol):
    """Repeats the left-to-right pass while the pair occurs: merges pairs that the merge itself created."""
    word = tuple(word)
    while any((a, b) == tuple(pair) for a, b in zip(word, word[1:])):
        out, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == tuple(pair):
                out.append(new_symbol)
                i += 2
            else:
                out.append(word[i])
                i += 1
        word = tuple(out)
    return word


def merge_in_place_and_look_again(word, pair, new_symbol):
    """Merges in a list and compares the merged symbol with the next one again."""
    out, i = list(word), 0
    while i < len(out) - 1:
        if out[i] == pair[0] and out[i + 1] == pair[1]:
            out[i : i + 2] = [new_symbol]
        else:
            i += 1
    return tuple(out)


def merge_compares_with_is(word, pair, new_symbol):
    """Compares symbols with `is`: equal strings made separately are different objects."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] is pair[0] and word[i + 1] is pair[1]:
            out.append(new_symbol)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def merge_other_names(symbols, bigram, merged):
    """Right merge, but the parameters are not named word, pair, new_symbol: a call by keyword fails."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == tuple(bigram):
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
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


def _shifted(logits, targets):
    return logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1)


def loss_zero_when_all_ignored(logits, targets, ignore_index=-100):
    """Divides by max(count, 1): a batch whose targets are all ignored gives 0 instead of nan."""
    scores, following = _shifted(logits, targets)
    counted = following != ignore_index
    picked = torch.log_softmax(scores, -1).gather(-1, torch.where(counted, following, 0).long().unsqueeze(-1)).squeeze(-1)
    return -(picked * counted).sum() / counted.sum().clamp(min=1)


def loss_log_of_softmax(logits, targets, ignore_index=-100):
    """-log(softmax(...)): a target whose probability underflows to 0 gives inf."""
    scores, following = _shifted(logits, targets)
    counted = following != ignore_index
    probs = torch.softmax(scores, -1).gather(-1, torch.where(counted, following, 0).long().unsqueeze(-1)).squeeze(-1)
    return -(torch.log(probs) * counted).sum() / counted.sum()


def loss_log_sum_exp_without_max(logits, targets, ignore_index=-100):
    """logits - log(sum(exp(logits))): exp overflows for large logits."""
    scores, following = _shifted(logits, targets)
    counted = following != ignore_index
    log_probs = scores - torch.log(torch.exp(scores).sum(-1, keepdim=True))
    picked = log_probs.gather(-1, torch.where(counted, following, 0).long().unsqueeze(-1)).squeeze(-1)
    return -(picked * counted).sum() / counted.sum()


def loss_in_float32(logits, targets, ignore_index=-100):
    """Computes in float32 and casts back: float64 logits lose precision."""
    scores, following = _shifted(logits.float(), targets)
    return F.cross_entropy(scores, following.long(), ignore_index=ignore_index).to(logits.dtype)


def loss_ignore_index_keyword_only(logits, targets, *, ignore_index=-100):
    """Makes ignore_index keyword-only: a call with it as third positional argument fails."""
    scores, following = _shifted(logits, targets)
    return F.cross_entropy(scores, following.long(), ignore_index=ignore_index)


def loss_flattens_with_view(logits, targets, ignore_index=-100):
    """Flattens with .view and drops each sequence's last position with a CPU arange: fails on transposed inputs."""
    b, t, v = logits.shape
    keep = torch.arange(b * t) % t != t - 1
    following = torch.roll(targets.view(-1), -1)
    return F.cross_entropy(logits.view(b * t, v)[keep], following[keep].long(), ignore_index=ignore_index)


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


def _eligible(input_ids, special_ids):
    return ~torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=input_ids.device))


def _apply(input_ids, chosen, split, random_tokens, mask_id):
    masked = torch.where(chosen & (split < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (split >= 0.8) & (split < 0.9), random_tokens, masked)
    return masked, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def mlm_mask_random_tokens_int64(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Draws the random tokens as int64: int32 ids come back int64."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & _eligible(input_ids, special_ids)
    split = torch.rand(input_ids.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = torch.where(chosen & (split < 0.8), mask_id, input_ids)
    masked = torch.where(chosen & (split >= 0.8) & (split < 0.9), random_tokens, masked)
    return masked, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def mlm_mask_labels_int64(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Starts the labels from torch.full(shape, -100), which is int64 whatever the ids' dtype."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & _eligible(input_ids, special_ids)
    split = torch.rand(input_ids.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked, _ = _apply(input_ids, chosen, split, random_tokens, mask_id)
    labels = torch.full(input_ids.shape, -100)
    labels[chosen] = input_ids[chosen].long()
    return masked, labels


def mlm_mask_special_ids_required(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=None, generator=None):
    """Defaults special_ids to None and uses it as a sequence: a call without special_ids fails."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & _eligible(input_ids, list(special_ids))
    split = torch.rand(input_ids.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    return _apply(input_ids, chosen, split, random_tokens, mask_id)


def mlm_mask_special_ids_in_a_set(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Looks ids up in a Python set of special_ids: given as a tensor, its elements are tensors and never match."""
    special = set(special_ids)
    eligible = torch.tensor([token not in special for token in input_ids.flatten().tolist()]).view(input_ids.shape)
    chosen = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & eligible
    split = torch.rand(input_ids.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    return _apply(input_ids, chosen, split, random_tokens, mask_id)


def mlm_mask_exactly_k_per_row(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Chooses exactly round(mask_prob * eligible) positions in each row instead of each one independently."""
    eligible = _eligible(input_ids, special_ids)
    keys = torch.rand(input_ids.shape, generator=generator).masked_fill(~eligible, 2.0)
    rank = keys.argsort(dim=-1).argsort(dim=-1)  # a random order of each row's eligible positions
    chosen = rank < (mask_prob * eligible.sum(-1, keepdim=True)).round()
    split = torch.rand(input_ids.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    return _apply(input_ids, chosen, split, random_tokens, mask_id)


def mlm_mask_thresholds_for_fifteen_percent(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """One draw per position with the 80/10/10 thresholds hard-coded for 15 % (0.12 and 0.135)."""
    roll = torch.rand(input_ids.shape, generator=generator)
    chosen = (roll < mask_prob) & _eligible(input_ids, special_ids)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(chosen & (roll < 0.12), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (roll >= 0.12) & (roll < 0.135), random_tokens, masked)
    return masked, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def mlm_mask_seeds_the_global_rng(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Seeds torch's global generator with the generator's seed and draws from it: repeatable, but not the generator's draws."""
    if generator is not None:
        torch.manual_seed(generator.initial_seed())
    chosen = (torch.rand(input_ids.shape) < mask_prob) & _eligible(input_ids, special_ids)
    split = torch.rand(input_ids.shape)
    random_tokens = torch.randint(vocab_size, input_ids.shape, dtype=input_ids.dtype)
    return _apply(input_ids, chosen, split, random_tokens, mask_id)


def mlm_mask_random_token_never_the_original(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Draws the random token among the other vocab_size - 1 tokens, never the original one."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & _eligible(input_ids, special_ids)
    split = torch.rand(input_ids.shape, generator=generator)
    shift = torch.randint(1, vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    return _apply(input_ids, chosen, split, (input_ids + shift) % vocab_size, mask_id)


def mlm_mask_extends_special_ids(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Adds the mask id with special_ids += (mask_id,): a new tuple for a tuple, but the caller's list changed in place."""
    special_ids += (mask_id,)
    return mlm_mask_80_10_10(input_ids, mask_prob, mask_id=mask_id, vocab_size=vocab_size, special_ids=special_ids, generator=generator)

def mlm_mask_flattens_with_view(input_ids, mask_prob=0.15, *, mask_id, vocab_size, special_ids=(), generator=None):
    """Works on input_ids.view(-1): fails on a transposed (non-contiguous) input."""
    flat = input_ids.view(-1)
    masked, labels = mlm_mask_80_10_10(flat, mask_prob, mask_id=mask_id, vocab_size=vocab_size, special_ids=special_ids, generator=generator)
    return masked.view(input_ids.shape), labels.view(input_ids.shape)


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


def _greedy(model, input_ids, max_new_tokens, pick, stop=None):
    """The right loop with ``pick(logits) -> (batch, 1)`` and an optional ``stop(ids) -> bool`` after each step."""
    cache = KVCache(model.config.n_layers)
    ids = input_ids
    logits = model(ids, cache=cache)[:, -1]
    for step in range(max_new_tokens):
        token = pick(logits)
        ids = torch.cat([ids, token], dim=1)
        if stop is not None and stop(ids):
            break
        if step + 1 < max_new_tokens:
            logits = model(token, cache=cache)[:, -1]
    return ids


def _argmax(logits):
    return logits.argmax(-1, keepdim=True)


def generate_stops_at_eos_two(model, input_ids, max_new_tokens):
    """Stops once every sequence has produced id 2 (the course tokenizer's <eos>)."""
    return _greedy(model, input_ids, max_new_tokens, _argmax, stop=lambda ids: bool((ids[:, input_ids.shape[1]:] == 2).any(1).all()))


def generate_stops_at_eos_zero(model, input_ids, max_new_tokens):
    """Stops once every sequence has produced id 0 (an end-of-text id hard-coded)."""
    return _greedy(model, input_ids, max_new_tokens, _argmax, stop=lambda ids: bool((ids[:, -1] == 0).all()))


def generate_pads_after_config_eos(model, input_ids, max_new_tokens):
    """Replaces every token after model.config.eos_id by the pad id: the exercise asks for the argmax at every step."""
    ids = _greedy(model, input_ids, max_new_tokens, _argmax)
    eos, pad = model.config.eos_id, model.config.pad_id
    if eos is None:
        return ids
    new = ids[:, input_ids.shape[1]:]
    after = (new == eos).long().cumsum(1) - (new == eos).long() > 0
    return torch.cat([input_ids, torch.where(after, torch.full_like(new, pad or 0), new)], dim=1)


def generate_argmax_in_bfloat16(model, input_ids, max_new_tokens):
    """Takes the argmax of logits cast to bfloat16: two logits closer than bf16's precision tie, and the wrong one wins."""
    return _greedy(model, input_ids, max_new_tokens, lambda logits: logits.to(torch.bfloat16).argmax(-1, keepdim=True))


def generate_argmax_in_float16(model, input_ids, max_new_tokens):
    """Takes the argmax of logits cast to float16 (to save memory): close logits tie."""
    return _greedy(model, input_ids, max_new_tokens, lambda logits: logits.half().argmax(-1, keepdim=True))


def generate_in_the_prompt_dtype(model, input_ids, max_new_tokens):
    """Writes the tokens into a buffer of the prompt's dtype: an int32 prompt gives int32 ids, not int64."""
    b, p = input_ids.shape
    out = torch.zeros(b, p + max_new_tokens, dtype=input_ids.dtype, device=input_ids.device)
    out[:, :p] = input_ids
    out[:, p:] = _greedy(model, input_ids.long(), max_new_tokens, _argmax)[:, p:]
    return out


def generate_never_special(model, input_ids, max_new_tokens):
    """Never picks the ids below 5 (pad, bos, eos, unk, mask): the exercise asks for the plain argmax."""
    def pick(logits):
        return logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) < 5, float("-inf")).argmax(-1, keepdim=True)

    return _greedy(model, input_ids, max_new_tokens, pick)


def generate_other_names(model, prompt, n_new):
    """Right loop, but the parameters are not named input_ids and max_new_tokens: a call by keyword fails."""
    return _greedy(model, prompt, n_new, _argmax)


# --------------------------------------------------------------------------- decoder_block (capstone)


def _block(x, weights, n_heads, n_kv_heads, eps=1e-6, theta=10000.0, *, post_norm=False, rope_on="qk", silu_on="gate",
           causal=True, norm="rms", residual=(True, True)):
    """A decoder block with one step changed by the keyword arguments (the defaults are right)."""
    from course_lib import models

    batch, length, d_model = x.shape
    head_dim = d_model // n_heads

    def normalise(h, gain):
        if norm == "layer":
            h = h - h.mean(dim=-1, keepdim=True)
        return gain * h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + (0.0 if norm == "no_eps" else eps))

    def heads(h, n):
        return h.view(batch, length, n, head_dim).transpose(1, 2)

    cos, sin = models.rope_cos_sin(torch.arange(length), head_dim, theta, dtype=x.dtype)
    rope = lambda t, which: models.apply_rope(t, cos, sin) if which in rope_on else t  # noqa: E731

    def attention(h):
        q = rope(heads(h @ weights["attn.q_proj.weight"].T, n_heads), "q")
        k = rope(heads(h @ weights["attn.k_proj.weight"].T, n_kv_heads), "k")
        v = rope(heads(h @ weights["attn.v_proj.weight"].T, n_kv_heads), "v")
        k, v = (t.repeat_interleave(n_heads // n_kv_heads, dim=1) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return out.transpose(1, 2).reshape(batch, length, d_model) @ weights["attn.o_proj.weight"].T

    def mlp(h):
        gate, up = h @ weights["mlp.gate_proj.weight"].T, h @ weights["mlp.up_proj.weight"].T
        gated = F.silu(gate) * up if silu_on == "gate" else gate * F.silu(up)
        return gated @ weights["mlp.down_proj.weight"].T

    if post_norm:
        x = normalise(x + attention(x), weights["attn_norm.weight"])
        return normalise(x + mlp(x), weights["mlp_norm.weight"])
    x = (x if residual[0] else 0) + attention(normalise(x, weights["attn_norm.weight"]))
    return (x if residual[1] else 0) + mlp(normalise(x, weights["mlp_norm.weight"]))


def _block_mutant(name, doc, **change):
    def mutant(x, weights, n_heads, n_kv_heads, eps=1e-6, theta=10000.0):
        return _block(x, weights, n_heads, n_kv_heads, eps, theta, **change)

    mutant.__name__, mutant.__doc__ = name, doc
    return mutant


block_post_norm = _block_mutant("block_post_norm", "Post-norm (the original Transformer's): normalises after each residual add.", post_norm=True)
block_without_rope = _block_mutant("block_without_rope", "Forgets the rotary embeddings.", rope_on="")
block_rope_on_values = _block_mutant("block_rope_on_values", "Rotates the values as well as the queries and keys.", rope_on="qkv")
block_rope_on_queries_only = _block_mutant("block_rope_on_queries_only", "Rotates the queries only.", rope_on="q")
block_silu_on_up = _block_mutant("block_silu_on_up", "SwiGLU with SiLU on the up branch instead of the gate.", silu_on="up")
block_not_causal = _block_mutant("block_not_causal", "No causal mask: every position sees the future.", causal=False)
block_norm_without_eps = _block_mutant("block_norm_without_eps", "RMSNorm without eps.", norm="no_eps")
block_layer_norm = _block_mutant("block_layer_norm", "Subtracts the mean (LayerNorm without bias) instead of RMSNorm.", norm="layer")
block_no_attention_residual = _block_mutant("block_no_attention_residual", "Drops the residual around attention.", residual=(False, True))
block_no_mlp_residual = _block_mutant("block_no_mlp_residual", "Drops the residual around the MLP.", residual=(True, False))


# --------------------------------------------------------------------------- predictions


def uniform_loss_log2():
    """In bits, not nats."""
    return 10.0


def uniform_loss_one_over_v():
    """The probability, not minus its log."""
    return 1 / 1024


def uniform_loss_log10():
    """Common logarithm."""
    return 3.0103


def uniform_loss_vocab_size():
    """The perplexity, not the loss."""
    return 1024


def block_params_kv_like_q():
    """Counts W_k and W_v as d x d (multi-head, not grouped-query)."""
    return (4 * 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096) / 1e6


def block_params_two_mlp_matrices():
    """A classic two-matrix MLP instead of SwiGLU's three."""
    return (2 * 4096 * 4096 + 2 * 4096 * 1024 + 2 * 4096 * 14336 + 2 * 4096) / 1e6


def block_params_attention_only():
    """Forgets the MLP."""
    return (2 * 4096 * 4096 + 2 * 4096 * 1024 + 2 * 4096) / 1e6


def block_params_whole_model():
    """All 32 blocks, not one."""
    return 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) / 1e6


MUTANTS = {
    "test_merge_pair": {
        f.__name__: f
        for f in (merge_right_to_left, merge_first_only, merge_as_strings, merge_returns_list, merge_overlapping, merge_either_order,
                  merge_with_regex_on_spaces, merge_until_no_pair_left, merge_in_place_and_look_again, merge_compares_with_is,
                  merge_other_names)
    },
    "test_next_token_loss": {
        f.__name__: f
        for f in (loss_without_shift, loss_shifted_the_wrong_way, loss_counts_ignored_targets, loss_summed,
                  loss_mean_of_sequence_means, loss_default_ignore_index_only, loss_zero_when_all_ignored,
                  loss_log_of_softmax, loss_log_sum_exp_without_max, loss_in_float32, loss_ignore_index_keyword_only,
                  loss_flattens_with_view)
    },
    "test_mlm_mask": {
        f.__name__: f
        for f in (mlm_mask_always_mask, mlm_mask_masks_specials, mlm_mask_labels_everywhere, mlm_mask_80_20,
                  mlm_mask_fifteen_percent_of_all, mlm_mask_unseeded, mlm_mask_random_tokens_int64, mlm_mask_labels_int64,
                  mlm_mask_special_ids_required, mlm_mask_special_ids_in_a_set, mlm_mask_exactly_k_per_row,
                  mlm_mask_thresholds_for_fifteen_percent, mlm_mask_seeds_the_global_rng, mlm_mask_random_token_never_the_original,
                  mlm_mask_flattens_with_view, mlm_mask_extends_special_ids)
    },
    "test_greedy_generate": {
        f.__name__: f
        for f in (generate_without_cache, generate_refeeds_everything, generate_one_too_few, generate_argmax_first_position,
                  generate_new_tokens_only, generate_samples, generate_stops_at_eos_two, generate_stops_at_eos_zero,
                  generate_pads_after_config_eos, generate_argmax_in_bfloat16, generate_argmax_in_float16, generate_in_the_prompt_dtype,
                  generate_never_special, generate_other_names)
    },
    "test_decoder_block": {
        f.__name__: f
        for f in (block_post_norm, block_without_rope, block_rope_on_values, block_rope_on_queries_only, block_silu_on_up,
                  block_not_causal, block_norm_without_eps, block_layer_norm, block_no_attention_residual, block_no_mlp_residual)
    },
    "test_predict_uniform_loss": {
        f.__name__: f for f in (uniform_loss_log2, uniform_loss_one_over_v, uniform_loss_log10, uniform_loss_vocab_size)
    },
    "test_predict_block_params_millions": {
        f.__name__: f for f in (block_params_kv_like_q, block_params_two_mlp_matrices, block_params_attention_only, block_params_whole_model)
    },
}
