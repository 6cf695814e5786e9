"""Checks for lesson 02's model exercises: the next-token loss, BERT's masking rule, and cached greedy generation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib import kvcache, models
from course_lib.checks.common import call, expect_tensor, new_generator, randint
from course_lib.checks.guard import Rules, watched

# --------------------------------------------------------------------------- next-token loss


NEXT_TOKEN_LOSS = Rules(
    "next_token_loss", references=("course_lib.models:next_token_loss",), modules=("transformers.loss",),
)
MLM_MASK = Rules("mlm_mask", references=("course_lib.models:mlm_mask",), modules=("transformers.data",))
GREEDY_GENERATE = Rules(
    "greedy_generate",
    references=("course_lib.kvcache:generate", "course_lib.kvcache:decode_step", "course_lib.kvcache:sample_next_token"),
    modules=("transformers.generation",),
    allowed=("course_lib.checks.models:_CountingModel",),
    why="The exercise is to write the decoding loop yourself: the prompt once, then one token per step with the cache.",
)


def check_next_token_loss(next_token_loss, seed: int | None = None, n_cases: int = 10) -> None:
    """``next_token_loss(logits, targets, ignore_index=-100)`` against the reference, with and without ignored targets."""
    next_token_loss = watched(next_token_loss, NEXT_TOKEN_LOSS)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        b, t, v = randint(gen, 1, 4), randint(gen, 2, 9), randint(gen, 3, 17)
        dtype = (torch.float32, torch.float64)[case % 2]
        logits = (torch.randn(b, t, v, generator=gen, dtype=torch.float64) * 3).to(dtype)
        targets = torch.randint(0, v, (b, t), generator=gen)
        if case % 3 == 2:  # pad the end of each sequence with -100
            for row in range(b):
                targets[row, randint(gen, 2, t) :] = -100  # position 1 keeps a target
        what = f"next_token_loss(logits {tuple(logits.shape)} {dtype}, targets {tuple(targets.shape)}) (seed {seed})"
        got = call(next_token_loss, logits, targets, what=what)
        expect_tensor(got, models.next_token_loss(logits, targets), what)


def check_next_token_loss_edge_cases(next_token_loss) -> None:
    """A custom ignore index, a known value (uniform logits give log V), and agreement with transformers' Llama loss."""
    next_token_loss = watched(next_token_loss, NEXT_TOKEN_LOSS)
    logits = torch.zeros(2, 5, 8)
    targets = torch.randint(0, 8, (2, 5), generator=torch.Generator().manual_seed(0))
    what = "next_token_loss on uniform logits over 8 tokens (should be log 8)"
    expect_tensor(call(next_token_loss, logits, targets, what=what), torch.tensor(math.log(8)), what)

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 11, generator=gen, dtype=torch.float64)
    targets = torch.randint(1, 11, (3, 6), generator=gen)
    targets[0, 3:] = 0
    what = "next_token_loss(logits, targets, ignore_index=0) with padding id 0"
    expect_tensor(call(next_token_loss, logits, targets, ignore_index=0, what=what), models.next_token_loss(logits, targets, ignore_index=0), what)

    # the same number as a Hugging Face causal LM computes from labels
    logits = torch.randn(2, 7, 13, generator=gen)
    targets = torch.randint(0, 13, (2, 7), generator=gen)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 13), targets[:, 1:].reshape(-1))
    what = "next_token_loss compared with cross_entropy(logits[:, :-1], targets[:, 1:])"
    expect_tensor(call(next_token_loss, logits, targets, what=what), expected, what)


# --------------------------------------------------------------------------- BERT's masking rule


def _mlm_statistics(mlm_mask, n_tokens: int, seed: int, special_ids, vocab_size: int = 50, mask_id: int = 4):
    gen = torch.Generator().manual_seed(seed)
    # ordinary tokens above the mask id, with special tokens sprinkled in (about 1 in 10)
    ids = torch.randint(mask_id + 1, vocab_size, (n_tokens // 100, 100), generator=gen)
    sprinkle = torch.rand(ids.shape, generator=gen) < 0.1
    specials = torch.tensor(special_ids)[torch.randint(0, len(special_ids), ids.shape, generator=gen)]
    ids = torch.where(sprinkle, specials, ids)
    masked, labels = mlm_mask(ids, 0.15, mask_id=mask_id, vocab_size=vocab_size, special_ids=special_ids, generator=torch.Generator().manual_seed(seed + 1))
    return ids, masked, labels


def check_mlm_mask(mlm_mask, seed: int | None = None) -> None:
    """``mlm_mask(input_ids, mask_prob, *, mask_id, vocab_size, special_ids, generator)``: types, labels, and the 15 % / 80-10-10 rates.

    Rates are measured on 200,000 tokens; the tolerances are about five standard deviations.
    """
    mlm_mask = watched(mlm_mask, MLM_MASK)
    _, seed = new_generator(seed)
    special = (0, 1, 2)
    ids, masked, labels = _mlm_statistics(mlm_mask, 200_000, seed, special)
    for name, t in (("masked_input_ids", masked), ("labels", labels)):
        if type(t) is not torch.Tensor or t.dtype != ids.dtype or t.shape != ids.shape:
            raise AssertionError(f"mlm_mask should return {name} as a tensor of shape {tuple(ids.shape)} and dtype {ids.dtype}, got {type(t).__name__} {getattr(t, 'dtype', '')} {tuple(getattr(t, 'shape', ()))}")
    chosen = labels != -100
    if not torch.equal(labels[chosen], ids[chosen]):
        raise AssertionError("labels must hold the original token at every chosen position")
    if not torch.equal(masked[~chosen], ids[~chosen]):
        raise AssertionError("positions that were not chosen must keep their token (and have label -100)")
    eligible = ~torch.isin(ids, torch.tensor(special))
    if chosen[~eligible].any():
        raise AssertionError("special tokens (here ids 0, 1, 2) must never be chosen")
    rate = chosen.sum().item() / eligible.sum().item()
    if abs(rate - 0.15) > 0.004:
        raise AssertionError(f"about 15 % of the non-special tokens should be chosen, got {rate:.1%} (seed {seed})")
    by_column = chosen.view(chosen.shape[0], 10, -1).sum(dim=(0, 2)) / eligible.view(eligible.shape[0], 10, -1).sum(dim=(0, 2))
    if (by_column - 0.15).abs().max() > 0.02:
        raise AssertionError(f"positions must be chosen at random, each with probability 15 %; by tenth of the sequence got {[round(r, 3) for r in by_column.tolist()]}")
    n = chosen.sum().item()
    to_mask = (masked[chosen] == 4).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    random_other = 1 - to_mask - unchanged
    # a random replacement can hit the mask id or the original token: 1/50 of the 10 % each
    if abs(to_mask - (0.8 + 0.1 / 50)) > 0.012:
        raise AssertionError(f"about 80 % of the chosen positions should become the mask id, got {to_mask:.1%} of {n}")
    if abs(unchanged - (0.1 + 0.1 / 50)) > 0.01:
        raise AssertionError(f"about 10 % of the chosen positions should keep their token, got {unchanged:.1%} of {n}")
    if abs(random_other - 0.1 * 48 / 50) > 0.01:
        raise AssertionError(f"about 10 % of the chosen positions should get a random token, got {random_other:.1%} of {n}")


def check_mlm_mask_edge_cases(mlm_mask) -> None:
    """The random tokens are uniform over the vocabulary, the generator makes it repeatable, and the input is not modified."""
    mlm_mask = watched(mlm_mask, MLM_MASK)
    ids, masked, labels = _mlm_statistics(mlm_mask, 300_000, 5, special_ids=(0,), vocab_size=10, mask_id=1)
    chosen = labels != -100
    replaced = masked[chosen & (masked != ids) & (masked != 1)]
    counts = torch.bincount(replaced, minlength=10).float()[[0, *range(2, 10)]]
    if replaced.numel() < 2000 or (counts / counts.mean() - 1).abs().max() > 0.35:
        raise AssertionError(f"random replacement tokens should be drawn uniformly from the vocabulary, got counts {counts.tolist()}")
    ids = torch.randint(3, 50, (8, 40), generator=torch.Generator().manual_seed(0))
    before = ids.clone()
    a = mlm_mask(ids, 0.15, mask_id=4, vocab_size=50, special_ids=(0,), generator=torch.Generator().manual_seed(3))
    if not torch.equal(ids, before):
        raise AssertionError("mlm_mask changed its input tensor in place")
    b = mlm_mask(ids, 0.15, mask_id=4, vocab_size=50, special_ids=(0,), generator=torch.Generator().manual_seed(3))
    if not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])):
        raise AssertionError("mlm_mask must draw all its randomness from the generator it is given (same seed, same result)")
    none, labels = mlm_mask(ids, 0.0, mask_id=4, vocab_size=50, special_ids=(0,), generator=torch.Generator().manual_seed(3))
    if not torch.equal(none, ids) or (labels != -100).any():
        raise AssertionError("with mask_prob=0 nothing is chosen")


# --------------------------------------------------------------------------- cached greedy generation


class _CountingModel(torch.nn.Module):
    """Wraps a causal LM and records how many tokens each call feeds it, and whether a cache came along."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config
        self.calls: list[tuple[int, bool]] = []

    def forward(self, input_ids, cache=None):
        self.calls.append((int(input_ids.shape[1]), cache is not None))
        return self.model(input_ids, cache=cache)


def _tiny_model(seed: int, n_kv_heads: int = 2) -> models.DecoderLM:
    torch.manual_seed(seed)
    config = models.DecoderConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=48, max_seq_len=64, init_std=0.3)
    return models.DecoderLM(config).eval()


def check_greedy_generate(greedy_generate, seed: int | None = None) -> None:
    """``greedy_generate(model, input_ids, max_new_tokens)``: the reference's greedy tokens, using the KV cache.

    The model is wrapped so that the check can count the tokens fed to it: the prompt once,
    then one token per step, always with the cache.
    """
    greedy_generate = watched(greedy_generate, GREEDY_GENERATE)
    gen, seed = new_generator(seed)
    for case in range(4):
        model = _tiny_model(seed + case, n_kv_heads=(4, 2, 1, 2)[case])
        batch, prompt_len, n_new = randint(gen, 1, 3), randint(gen, 1, 6), randint(gen, 1, 8)
        prompt = torch.randint(0, 37, (batch, prompt_len), generator=gen)
        counting = _CountingModel(model)
        what = f"greedy_generate(model, prompt {tuple(prompt.shape)}, max_new_tokens={n_new}) (seed {seed})"
        with torch.no_grad():
            got = call(greedy_generate, counting, prompt, n_new, what=what)
            expected = kvcache.generate(model, prompt, n_new, strategy="greedy")
        expect_tensor(got, expected, what)
        fed = [n for n, _ in counting.calls]
        if not all(with_cache for _, with_cache in counting.calls):
            raise AssertionError(f"{what}: every call of the model must pass the KV cache (cache=...)")
        if fed != [prompt_len] + [1] * (n_new - 1):
            raise AssertionError(
                f"{what}: the model should see the prompt once and then one new token per step, "
                f"i.e. calls of {[prompt_len] + [1] * (n_new - 1)} tokens; it was called with {fed}"
            )


def check_greedy_generate_edge_cases(greedy_generate) -> None:
    """One new token, a one-token prompt, and a longer run with a bigger model."""
    greedy_generate = watched(greedy_generate, GREEDY_GENERATE)
    for prompt_len, n_new in ((3, 1), (1, 5), (7, 20)):
        model = _tiny_model(100 + prompt_len)
        prompt = torch.randint(0, 37, (2, prompt_len), generator=torch.Generator().manual_seed(n_new))
        what = f"greedy_generate(model, prompt (2, {prompt_len}), max_new_tokens={n_new})"
        with torch.no_grad():
            got = call(greedy_generate, _CountingModel(model), prompt, n_new, what=what)
            expect_tensor(got, kvcache.generate(model, prompt, n_new, strategy="greedy"), what)
