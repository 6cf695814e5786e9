"""Checks for lesson 02's model exercises: the next-token loss, BERT's masking rule, and cached greedy generation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib import kvcache, models
from course_lib.checks.common import call, expect_same_device, expect_tensor, new_generator, on_meta, randint
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


def _expect_loss(got, expected: torch.Tensor, what: str) -> None:
    """Like ``expect_tensor`` for a 0-dim loss; float64 losses must be as exact as float64 allows, and nan must stay nan."""
    if torch.isnan(expected):
        if type(got) is not torch.Tensor or got.dtype != expected.dtype or got.shape != () or not torch.isnan(got):
            shown = f"{type(got).__name__} {getattr(got, 'dtype', '')} {tuple(getattr(got, 'shape', ()))} {got!r}"
            raise AssertionError(f"{what} should be nan as a 0-dim {expected.dtype} tensor (no target counts), got {shown}")
        return
    tolerance = {"atol": 1e-12, "rtol": 1e-9} if expected.dtype == torch.float64 else {}
    expect_tensor(got, expected, what, **tolerance)


def _seq_first_layout(t: torch.Tensor) -> torch.Tensor:
    """The same values laid out in memory as (seq, batch, ...): a non-contiguous view, as ``x.transpose(0, 1)`` gives."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def check_next_token_loss(next_token_loss, seed: int | None = None, n_cases: int = 10) -> None:
    """``next_token_loss(logits, targets, ignore_index=-100)`` against the reference, with and without ignored targets.

    float32 and float64 logits, contiguous or not, and inputs on another device.
    """
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
        if case % 3 == 1:  # with two or more sequences, so that the layout is really non-contiguous
            logits, targets = torch.cat([logits, logits.flip(0)]), torch.cat([targets, targets.flip(0)])
            logits, targets = _seq_first_layout(logits), _seq_first_layout(targets)
        layout = "" if logits.is_contiguous() else ", both non-contiguous"
        what = f"next_token_loss(logits {tuple(logits.shape)} {dtype}, targets {tuple(targets.shape)}{layout}) (seed {seed})"
        got = call(next_token_loss, logits, targets, what=what)
        _expect_loss(got, models.next_token_loss(logits, targets), what)
    what = "next_token_loss(logits, targets) for logits and targets on another device (PyTorch's meta device stands in for a GPU)"
    expect_same_device(next_token_loss, *on_meta(logits, targets), what=what)


def check_next_token_loss_edge_cases(next_token_loss) -> None:
    """Custom ignore indices (by keyword and by position), every target ignored (nan), far-apart logits, a known value,
    and agreement with transformers' Llama loss."""
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
    _expect_loss(call(next_token_loss, logits, targets, ignore_index=0, what=what), models.next_token_loss(logits, targets, ignore_index=0), what)

    targets = torch.randint(0, 11, (3, 6), generator=gen)
    targets[1, 2:] = 7
    what = "next_token_loss(logits, targets, 7) with padding id 7 given by position"
    _expect_loss(call(next_token_loss, logits, targets, 7, what=what), models.next_token_loss(logits, targets, ignore_index=7), what)

    targets = torch.randint(0, 11, (3, 6), generator=gen)
    targets[2, 1:] = -1
    what = "next_token_loss(logits, targets, ignore_index=-1) with padding id -1"
    _expect_loss(call(next_token_loss, logits, targets, ignore_index=-1, what=what), models.next_token_loss(logits, targets, ignore_index=-1), what)

    for dtype in (torch.float32, torch.float64):
        logits = torch.randn(2, 4, 5, generator=gen, dtype=dtype)
        targets = torch.full((2, 4), -100)
        targets[:, 0] = 3  # the first token is never a target
        what = f"next_token_loss with every target ignored ({dtype} logits): the mean over no targets"
        _expect_loss(call(next_token_loss, logits, targets, what=what), torch.tensor(float("nan"), dtype=dtype), what)

    for dtype in (torch.float32, torch.float64):
        logits = (torch.randn(2, 6, 9, generator=gen, dtype=torch.float64) * 2000).to(dtype)
        targets = torch.randint(0, 9, (2, 6), generator=gen)
        what = f"next_token_loss on {dtype} logits thousands apart (some targets have probability below 1e-300)"
        _expect_loss(call(next_token_loss, logits, targets, what=what), models.next_token_loss(logits, targets), what)

    # the same number as a Hugging Face causal LM computes from labels
    logits = torch.randn(2, 7, 13, generator=gen)
    targets = torch.randint(0, 13, (2, 7), generator=gen)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 13), targets[:, 1:].reshape(-1))
    what = "next_token_loss compared with cross_entropy(logits[:, :-1], targets[:, 1:])"
    expect_tensor(call(next_token_loss, logits, targets, what=what), expected, what)


# --------------------------------------------------------------------------- BERT's masking rule


def _mlm_ids(n_rows: int, seed: int, special_ids, vocab_size: int, mask_id: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``(n_rows, 100)`` ids: ordinary tokens above ``mask_id``, with a special token in about 1 position in 10."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(mask_id + 1, vocab_size, (n_rows, 100), generator=gen)
    specials = torch.tensor([int(s) for s in special_ids], dtype=torch.int64)
    if len(specials):
        sprinkle = torch.rand(ids.shape, generator=gen) < 0.1
        ids = torch.where(sprinkle, specials[torch.randint(0, len(specials), ids.shape, generator=gen)], ids)
    return ids.to(dtype)


def _call_mlm(mlm_mask, ids, *args, what: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``mlm_mask(ids, *args, **kwargs)``, failing if it changed an argument (``call`` sees tensors and lists), drew from
    torch's global random generator although a generator was given, or returned anything but two tensors of ``ids``'
    shape, dtype and device."""
    global_before = torch.get_rng_state() if kwargs.get("generator") is not None else None
    result = call(mlm_mask, ids, *args, what=what, **kwargs)
    if global_before is not None and not torch.equal(global_before, torch.get_rng_state()):
        raise AssertionError(f"{what} used (or reseeded) torch's global random generator: draw every random number from the "
                             "generator it is given, e.g. torch.rand(..., generator=generator)")
    if type(result) is not tuple or len(result) != 2:
        raise AssertionError(f"{what} should return a tuple (masked_input_ids, labels), got {type(result).__name__}")
    for name, t in zip(("masked_input_ids", "labels"), result):
        if type(t) is not torch.Tensor or t.dtype != ids.dtype or t.shape != ids.shape or t.device != ids.device:
            raise AssertionError(
                f"{what} should return {name} as a tensor of shape {tuple(ids.shape)} and dtype {ids.dtype} on {ids.device}, "
                f"got {type(t).__name__} {getattr(t, 'dtype', '')} {tuple(getattr(t, 'shape', ()))} {getattr(t, 'device', '')}")
    return result


def _expect_mlm_rule(ids, masked, labels, special_ids, what: str) -> torch.Tensor:
    """Labels hold the original token where chosen and -100 elsewhere, unchosen positions keep their token, specials are
    never chosen; returns the chosen positions."""
    chosen = labels != -100
    if not torch.equal(labels[chosen], ids[chosen]):
        raise AssertionError(f"{what}: labels must hold the original token at every chosen position and -100 elsewhere")
    if not torch.equal(masked[~chosen], ids[~chosen]):
        raise AssertionError(f"{what}: positions that were not chosen must keep their token (and have label -100)")
    special = torch.isin(ids, torch.tensor([int(s) for s in special_ids], dtype=ids.dtype))
    if chosen[special].any():
        raise AssertionError(f"{what}: special tokens (here ids {[int(s) for s in special_ids]}) must never be chosen")
    return chosen


def _expect_rate(got: float, expected: float, n: int, what: str) -> None:
    """Fail unless a share measured over ``n`` independent draws is within five standard deviations of ``expected``."""
    tolerance = 5 * math.sqrt(expected * (1 - expected) / n)
    if abs(got - expected) > tolerance:
        raise AssertionError(f"{what} should be about {expected:.1%} (within {tolerance:.1%} over {n:,} draws), got {got:.1%}")


def _expect_mlm_rates(ids, masked, chosen, eligible, mask_prob: float, mask_id: int, vocab_size: int, what: str) -> None:
    """The share of eligible tokens chosen is ``mask_prob``; of the chosen, 80 % become ``mask_id``, 10 % a uniform random
    token (which may equal the original or the mask id) and 10 % keep their token."""
    n_eligible = int(eligible.sum())
    _expect_rate(chosen.sum().item() / n_eligible, mask_prob, n_eligible, f"{what}: the share of the non-special tokens chosen")
    n = int(chosen.sum())
    original, new = ids[chosen], masked[chosen]
    to_mask = (new == mask_id).sum().item() / n
    kept = (new == original).sum().item() / n
    _expect_rate(to_mask, 0.8 + 0.1 / vocab_size, n, f"{what}: the share of chosen positions that became the mask id "
                 f"(80 % and the random tokens that hit it, 1 in {vocab_size})")
    _expect_rate(kept, 0.1 + 0.1 / vocab_size, n, f"{what}: the share of chosen positions that kept their token "
                 f"(10 % and the random tokens equal to it, 1 in {vocab_size})")
    _expect_rate(1 - to_mask - kept, 0.1 * (vocab_size - 2) / vocab_size, n, f"{what}: the share of chosen positions that got another token")


def _expect_independent_choice(chosen, eligible, mask_prob: float, what: str) -> None:
    """Each position is chosen on its own: positions spread over the sequence, and the count per row varies like a
    binomial's (an answer that picks a fixed share of each row has almost no variation)."""
    by_column = chosen.view(chosen.shape[0], 10, -1).sum(dim=(0, 2)) / eligible.view(eligible.shape[0], 10, -1).sum(dim=(0, 2))
    if (by_column - mask_prob).abs().max() > 0.02:
        raise AssertionError(f"{what}: positions must be chosen at random, each with probability {mask_prob:.0%}; "
                             f"by tenth of the sequence got {[round(r, 3) for r in by_column.tolist()]}")
    n_eligible = eligible.sum(1).double()
    spread = ((chosen.sum(1) - mask_prob * n_eligible) ** 2).sum() / (mask_prob * (1 - mask_prob) * n_eligible).sum()
    if not 0.75 < spread < 1.25:
        raise AssertionError(f"{what}: each position must be chosen independently with probability {mask_prob:.0%}, so the "
                             f"number chosen per row varies (like a binomial); its variance is {spread:.2f} times a binomial's")


def check_mlm_mask(mlm_mask, seed: int | None = None) -> None:
    """``mlm_mask(input_ids, mask_prob, *, mask_id, vocab_size, special_ids, generator)``: types, labels, and the 15 % / 80-10-10 rates.

    Rates are measured on 200,000 tokens with the default ``mask_prob`` and on 60,000 non-contiguous int32 tokens with
    ``mask_prob=0.4`` given by position and ``special_ids`` as a tensor; the tolerances are five standard deviations.
    """
    mlm_mask = watched(mlm_mask, MLM_MASK)
    _, seed = new_generator(seed)
    special = (0, 1, 2)
    ids = _mlm_ids(2000, seed, special, vocab_size=50, mask_id=4)
    what = (f"mlm_mask(input_ids (2000, 100) int64, mask_id=4, vocab_size=50, special_ids={special}, generator=...) "
            f"with the default mask_prob (seed {seed})")
    masked, labels = _call_mlm(mlm_mask, ids, what=what, mask_id=4, vocab_size=50, special_ids=special,
                               generator=torch.Generator().manual_seed(seed + 1))
    chosen = _expect_mlm_rule(ids, masked, labels, special, what)
    eligible = ~torch.isin(ids, torch.tensor(special))
    _expect_mlm_rates(ids, masked, chosen, eligible, 0.15, 4, 50, what)
    _expect_independent_choice(chosen, eligible, 0.15, what)

    special = torch.tensor([0, 3])
    ids = _mlm_ids(600, seed + 2, special, vocab_size=30, mask_id=1, dtype=torch.int32).t().contiguous().t()
    what = (f"mlm_mask(input_ids (600, 100) int32 non-contiguous, 0.4, mask_id=1, vocab_size=30, "
            f"special_ids=torch.tensor([0, 3]), generator=...) (seed {seed})")
    masked, labels = _call_mlm(mlm_mask, ids, 0.4, what=what, mask_id=1, vocab_size=30, special_ids=special,
                               generator=torch.Generator().manual_seed(seed + 3))
    chosen = _expect_mlm_rule(ids, masked, labels, special, what)
    _expect_mlm_rates(ids, masked, chosen, ~torch.isin(ids, special.int()), 0.4, 1, 30, what)


def check_mlm_mask_edge_cases(mlm_mask) -> None:
    """mask_prob 1 with the default special_ids, uniform random tokens, the generator as the only source of randomness,
    mask_prob 0, empty and all-special inputs, no generator, and inputs on another device."""
    mlm_mask = watched(mlm_mask, MLM_MASK)
    ids = torch.tensor([0, 2, 3])[torch.randint(0, 3, (800, 100), generator=torch.Generator().manual_seed(7))]
    what = "mlm_mask(input_ids (800, 100) of ids 0, 2, 3, 1.0, mask_id=1, vocab_size=4, generator=...) with the default special_ids (none)"
    masked, labels = _call_mlm(mlm_mask, ids, 1.0, what=what, mask_id=1, vocab_size=4, generator=torch.Generator().manual_seed(8))
    chosen = _expect_mlm_rule(ids, masked, labels, (), what)
    _expect_mlm_rates(ids, masked, chosen, torch.ones_like(chosen), 1.0, 1, 4, what)

    ids = _mlm_ids(3000, 5, (0,), vocab_size=10, mask_id=1)
    what = "mlm_mask(input_ids (3000, 100), 0.15, mask_id=1, vocab_size=10, special_ids=[0], generator=...)"
    masked, labels = _call_mlm(mlm_mask, ids, 0.15, what=what, mask_id=1, vocab_size=10, special_ids=[0], generator=torch.Generator().manual_seed(6))
    chosen = _expect_mlm_rule(ids, masked, labels, (0,), what)
    replaced = masked[chosen & (masked != ids) & (masked != 1)]
    counts = torch.bincount(replaced, minlength=10).float()[[0, *range(2, 10)]]
    if replaced.numel() < 2000 or (counts / counts.mean() - 1).abs().max() > 0.35:
        raise AssertionError(f"{what}: random replacement tokens should be drawn uniformly from the vocabulary, got counts {counts.tolist()}")

    _expect_randomness_from_the_generator(mlm_mask)

    ids = torch.randint(3, 50, (8, 40), generator=torch.Generator().manual_seed(0))
    what = "mlm_mask(input_ids, 0.0, ...)"
    none, labels = _call_mlm(mlm_mask, ids, 0.0, what=what, mask_id=4, vocab_size=50, special_ids=(0,), generator=torch.Generator().manual_seed(3))
    if not torch.equal(none, ids) or (labels != -100).any():
        raise AssertionError(f"{what}: with mask_prob=0 nothing is chosen")
    for name, case in (("empty input_ids of shape (2, 0)", torch.zeros(2, 0, dtype=torch.int64)),
                       ("input_ids that are all special", torch.tensor([[0, 2, 2], [2, 0, 0]]))):
        what = f"mlm_mask on {name}, 0.5, special_ids=(0, 2)"
        masked, labels = _call_mlm(mlm_mask, case, 0.5, what=what, mask_id=4, vocab_size=50, special_ids=(0, 2), generator=torch.Generator().manual_seed(4))
        if not torch.equal(masked, case) or (labels != -100).any():
            raise AssertionError(f"{what}: nothing can be chosen, so masked_input_ids equals input_ids and labels are all -100")
    what = "mlm_mask(input_ids, 0.5, mask_id=4, vocab_size=50) without a generator"
    with torch.random.fork_rng(devices=[]):
        masked, labels = _call_mlm(mlm_mask, ids, 0.5, what=what, mask_id=4, vocab_size=50)
    _expect_mlm_rule(ids, masked, labels, (), what)
    what = "mlm_mask(input_ids, 0.15, mask_id=4, vocab_size=50, special_ids=(0,)) for input_ids on another device (PyTorch's meta device stands in for a GPU)"
    expect_same_device(mlm_mask, *on_meta(ids), 0.15, mask_id=4, vocab_size=50, special_ids=(0,), what=what)


def _expect_randomness_from_the_generator(mlm_mask) -> None:
    """The same generator state gives the same result whatever torch's global generator holds; a generator that has
    drawn before gives another result (so an answer may not reseed a generator of its own from the given one's seed)."""
    ids = torch.randint(5, 50, (16, 50), generator=torch.Generator().manual_seed(0))
    kwargs = {"mask_id": 4, "vocab_size": 50, "special_ids": (0,)}
    what = "mlm_mask(input_ids, 0.15, ..., generator=torch.Generator().manual_seed(3))"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        a = _call_mlm(mlm_mask, ids, 0.15, what=what, generator=torch.Generator().manual_seed(3), **kwargs)
        torch.manual_seed(2)
        b = _call_mlm(mlm_mask, ids, 0.15, what=what, generator=torch.Generator().manual_seed(3), **kwargs)
    if not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])):
        raise AssertionError(f"{what} gave two different results for the same generator seed: mlm_mask must draw all its "
                             "randomness from the generator it is given (same seed, same result)")
    used = torch.Generator().manual_seed(3)
    torch.rand(100, generator=used)
    c = _call_mlm(mlm_mask, ids, 0.15, what=what + " after the generator drew 100 numbers", generator=used, **kwargs)
    if torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]):
        raise AssertionError(f"{what} gave the same result for a fresh generator and for one that had drawn 100 numbers: "
                             "draw from the generator itself (its current state), not from a copy seeded with its seed")


# --------------------------------------------------------------------------- cached greedy generation


class _CountingModel(torch.nn.Module):
    """Wraps a causal LM, records how many tokens each call feeds it and whether a cache came along, and can force its choices.

    ``forced`` maps a position to ``(winner, runner_up)``: the logits there (the guess for the next token) make
    ``winner`` the argmax, clearly when ``runner_up`` is None, else by 0.01 over ``runner_up``, less than bf16's and
    fp16's precision at that size (``runner_up`` has the lower id, so rounding the logits makes it win the tie).
    """

    FORCED_LOGIT = 256.0  # a bf16 and fp16 number; 256.01 rounds to it in both

    def __init__(self, model, forced: dict[int, tuple[int, int | None]] | None = None):
        super().__init__()
        self.model = model
        self.config = model.config
        self.forced = dict(forced or {})
        self.calls: list[tuple[int, bool]] = []

    def forward(self, input_ids, cache=None):
        self.calls.append((int(input_ids.shape[1]), cache is not None))
        start = 0 if cache is None else len(cache)  # the position of the first token fed
        return self._force(self.model(input_ids, cache=cache), start)

    def _force(self, logits: torch.Tensor, start: int) -> torch.Tensor:
        """``logits`` for positions ``start ...`` with the forced choices made (a new tensor)."""
        rows = [j for j in range(logits.shape[1]) if start + j in self.forced]
        if not rows:
            return logits
        logits = logits.clone()
        for j in rows:
            winner, runner_up = self.forced[start + j]
            scores = logits[:, j].clamp(max=self.FORCED_LOGIT - 16)
            scores[:, winner] = self.FORCED_LOGIT + (8.0 if runner_up is None else 0.01)
            if runner_up is not None:
                scores[:, runner_up] = self.FORCED_LOGIT
            logits[:, j] = scores
        return logits

    def sandbox_state(self) -> list[tuple[int, bool]]:
        """What a grading sandbox sends back after the learner's function used this model: the calls."""
        return list(self.calls)

    def restore_sandbox_state(self, calls) -> None:
        """Take the calls the learner's function made in the sandbox (checked to be plain data)."""
        if not (isinstance(calls, list) and all(isinstance(c, tuple) and len(c) == 2 and type(c[0]) is int
                                                and type(c[1]) is bool for c in calls)):
            raise AssertionError("the model's record of its calls came back malformed from the sandbox")
        self.calls = calls


_SPECIAL_IDS = tuple(range(15))  # the course tokenizer's <pad> 0, <bos> 1, <eos> 2, <unk> 3, <mask> 4, <extra_id_0..9> 5-14


def _tiny_model(seed: int, n_kv_heads: int = 2, vocab_size: int = 37, d_model: int = 32) -> models.DecoderLM:
    """A small random DecoderLM whose config names pad, bos and eos ids as the course's (0, 1, 2); the global RNG is left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = models.DecoderConfig(vocab_size=vocab_size, d_model=d_model, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=48,
                                      max_seq_len=64, init_std=0.3, pad_id=0, bos_id=1, eos_id=2)
        return models.DecoderLM(config).eval()


def _random_forcing(gen, prompt_len: int, n_new: int, vocab_size: int) -> dict[int, tuple[int, int | None]]:
    """For about a third of the steps a special id, for another third a near tie (see :class:`_CountingModel`)."""
    forced = {}
    for step in range(n_new):
        kind = randint(gen, 0, 2)
        if kind == 0:
            forced[prompt_len - 1 + step] = (randint(gen, 0, len(_SPECIAL_IDS) - 1), None)
        elif kind == 1:
            winner = randint(gen, len(_SPECIAL_IDS) + 1, vocab_size - 1)
            forced[prompt_len - 1 + step] = (winner, randint(gen, len(_SPECIAL_IDS), winner - 1))
    return forced


def _every_special_id(prompt_len: int) -> dict[int, tuple[int, int | None]]:
    """Forcing for 30 new tokens: every special id, <eos> (2) first, each followed by a near tie."""
    forced = {}
    for i, special in enumerate((2, 0, 1, 3) + _SPECIAL_IDS[4:]):
        forced[prompt_len - 1 + 2 * i] = (special, None)
        winner = 16 + (7 * i) % 21
        forced[prompt_len + 2 * i] = (winner, 15 + (5 * i) % (winner - 15))
    return forced


def _explain_forcing(got, expected: torch.Tensor, forced: dict, prompt_len: int) -> str:
    """Hints for a wrong result: an early stop or a change after a forced special id, and forced steps the answer missed."""
    if not (isinstance(got, torch.Tensor) and got.dim() == 2 and got.shape[0] == expected.shape[0] and not got.is_floating_point()):
        return ""
    got_new, expected_new = got[:, prompt_len:].cpu(), expected[:, prompt_len:]
    n = min(got_new.shape[1], expected_new.shape[1])
    differs = (got_new[:, :n] != expected_new[:, :n]).any(0).nonzero()
    first_wrong = int(differs[0]) if len(differs) else n
    specials_before = [position - prompt_len + 1 for position, (winner, runner_up) in sorted(forced.items())
                       if runner_up is None and position - prompt_len + 1 < first_wrong]
    lines = []
    if got_new.shape[1] < expected_new.shape[1] and first_wrong == n and n > 0:
        lines.append(f"it stopped after {n} new tokens, the last one {got_new[:, n - 1].tolist()}: greedy_generate has no "
                     "end-of-sequence rule, it returns max_new_tokens new tokens, each the argmax")
    elif first_wrong < n and specials_before and prompt_len - 1 + first_wrong not in forced:
        step = specials_before[-1]
        lines.append(f"the model made id {expected_new[0, step].item()} the argmax at new token {step} and the result goes wrong "
                     f"after it: greedy_generate has no end-of-sequence rule, it takes the argmax at every step until max_new_tokens")
    for position, (winner, runner_up) in sorted(forced.items()):
        step = position - prompt_len + 1
        if step < n and not bool((got_new[:, step] == winner).all()):
            if runner_up is None:
                lines.append(f"new token {step}: the logits make id {winner} the argmax, got {got_new[:, step].tolist()}")
            else:
                lines.append(f"new token {step}: id {winner} beats id {runner_up} by 0.01 in the float32 logits (they tie in bf16 "
                             f"and fp16), got {got_new[:, step].tolist()}: take the argmax of the logits as they are")
        if len(lines) == 3:
            break
    return ("\n" + "\n".join(lines)) if lines else ""


def _expect_greedy(greedy_generate, model, prompt: torch.Tensor, n_new: int, forced: dict, what: str, *, by_keyword: bool = False) -> None:
    """Run the answer on ``model`` (wrapped, with ``forced`` choices) and compare with the reference's greedy tokens and calls."""
    counting = _CountingModel(model, forced)
    with torch.no_grad():
        if by_keyword:
            got = call(greedy_generate, model=counting, input_ids=prompt, max_new_tokens=n_new, what=what)
        else:
            got = call(greedy_generate, counting, prompt, n_new, what=what)
        expected = kvcache.generate(_CountingModel(model, forced), prompt, n_new, strategy="greedy")
    try:
        expect_tensor(got, expected, what)
    except AssertionError as err:
        raise AssertionError(str(err) + _explain_forcing(got, expected, forced, prompt.shape[1])) from None
    fed = [n for n, _ in counting.calls]
    if not all(with_cache for _, with_cache in counting.calls):
        raise AssertionError(f"{what}: every call of the model must pass the KV cache (cache=...)")
    if fed != [prompt.shape[1]] + [1] * (n_new - 1):
        raise AssertionError(
            f"{what}: the model should see the prompt once and then one new token per step, "
            f"i.e. calls of {[prompt.shape[1]] + [1] * (n_new - 1)} tokens; it was called with {fed}"
        )


def check_greedy_generate(greedy_generate, seed: int | None = None) -> None:
    """``greedy_generate(model, input_ids, max_new_tokens)``: the reference's greedy tokens, using the KV cache.

    The model is wrapped so that the check can count the tokens fed to it (the prompt once, then one token per step,
    always with the cache) and force its choice at some steps: special ids such as <eos> (2), and near ties.
    """
    greedy_generate = watched(greedy_generate, GREEDY_GENERATE)
    gen, seed = new_generator(seed)
    for case in range(4):
        model = _tiny_model(seed + case, n_kv_heads=(4, 2, 1, 2)[case])
        batch, prompt_len, n_new = randint(gen, 1, 3), randint(gen, 1, 6), randint(gen, 1, 8)
        prompt = torch.randint(0, 37, (batch, prompt_len), generator=gen)
        forced = _random_forcing(gen, prompt_len, n_new, vocab_size=37)
        what = f"greedy_generate(model, prompt {tuple(prompt.shape)}, max_new_tokens={n_new}) (seed {seed})"
        _expect_greedy(greedy_generate, model, prompt, n_new, forced, what)


def check_greedy_generate_edge_cases(greedy_generate) -> None:
    """An int32 non-contiguous prompt, keyword arguments, an end-of-text id of GPT-2's vocabulary, every special id of the
    course tokenizer and near ties, one new token, a one-token prompt, and a longer run."""
    greedy_generate = watched(greedy_generate, GREEDY_GENERATE)
    prompt = torch.randint(0, 37, (4, 2), generator=torch.Generator().manual_seed(2), dtype=torch.int32).t()
    what = "greedy_generate(model, prompt (2, 4) int32 non-contiguous, max_new_tokens=3) (the result is int64 all the same)"
    _expect_greedy(greedy_generate, _tiny_model(201), prompt, 3, {4: (2, None)}, what)

    prompt = torch.randint(0, 37, (1, 3), generator=torch.Generator().manual_seed(3))
    what = "greedy_generate(model=model, input_ids=prompt, max_new_tokens=4) called with keyword arguments"
    _expect_greedy(greedy_generate, _tiny_model(202), prompt, 4, {2: (0, None)}, what, by_keyword=True)

    model = _tiny_model(203, vocab_size=50257, d_model=8)
    prompt = torch.randint(0, 50257, (2, 2), generator=torch.Generator().manual_seed(4))
    what = "greedy_generate(model, prompt (2, 2), max_new_tokens=4) with GPT-2's vocabulary size, where the model picks 50256 (<|endoftext|>)"
    _expect_greedy(greedy_generate, model, prompt, 4, {1: (50256, None), 3: (50256, None)}, what)

    prompt = torch.randint(0, 37, (2, 3), generator=torch.Generator().manual_seed(1))
    what = "greedy_generate(model, prompt (2, 3), max_new_tokens=30) where the model picks every special id 0-14 and has near ties"
    _expect_greedy(greedy_generate, _tiny_model(200), prompt, 30, _every_special_id(prompt_len=3), what)

    for prompt_len, n_new in ((3, 1), (1, 5), (7, 20)):
        model = _tiny_model(100 + prompt_len)
        prompt = torch.randint(0, 37, (2, prompt_len), generator=torch.Generator().manual_seed(n_new))
        _expect_greedy(greedy_generate, model, prompt, n_new, {}, f"greedy_generate(model, prompt (2, {prompt_len}), max_new_tokens={n_new})")


# --------------------------------------------------------------------------- capstone: one decoder block

DECODER_BLOCK = Rules(
    "decoder_block",
    references=(
        "course_lib.models:DecoderBlock", "course_lib.models:RotarySelfAttention", "course_lib.models:SwiGLU",
        "course_lib.models:RMSNorm", "course_lib.models:DecoderLM", "course_lib.models:feed_forward",
    ),
    modules=("course_lib.attention", "course_lib.kvcache", "transformers"),
    why="The exercise is to write the block's steps yourself (rope_cos_sin, apply_rope and "
        "torch.nn.functional.scaled_dot_product_attention are allowed).",
)
DECODER_BLOCK_NAMES = (
    "attn_norm.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.o_proj.weight",
    "mlp_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
)


def _random_block(gen, *, n_heads: int, n_kv_heads: int, head_dim: int, d_ff: int, eps: float, theta: float,
                  dtype: torch.dtype) -> tuple[models.DecoderBlock, dict[str, torch.Tensor]]:
    """A course DecoderBlock with random weights (norm gains too) and its state_dict as plain tensors."""
    config = models.DecoderConfig(vocab_size=8, d_model=n_heads * head_dim, n_layers=1, n_heads=n_heads,
                                  n_kv_heads=n_kv_heads, d_ff=d_ff, rope_theta=theta, norm_eps=eps)
    block = models.DecoderBlock(config, 0).to(dtype)
    weights = {}
    for name, p in block.named_parameters():
        if name.endswith("norm.weight"):
            value = 1 + 0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
        else:
            value = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[1])
        with torch.no_grad():
            p.copy_(value.to(dtype))
        weights[name] = p.detach().clone()
    return block.eval(), weights


def _reference_block(block: models.DecoderBlock, x: torch.Tensor, theta: float) -> torch.Tensor:
    cos, sin = models.rope_cos_sin(torch.arange(x.shape[1]), block.attn.head_dim, theta, dtype=x.dtype)
    with torch.no_grad():
        return block(x, cos, sin)


def _block_tolerance(dtype: torch.dtype) -> dict:
    # float64 is held to 1e-6, not 1e-10: the rotary angles are computed in float32 (as in Llama), and an answer
    # that computes them another way (theta ** -f rather than 1 / theta ** f) differs by about 1e-8.
    return {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}


def _call_block(decoder_block, x, weights, n_heads, n_kv_heads, eps, theta, what):
    from course_lib.checks.common import call_explained

    return call_explained(decoder_block, x, weights, n_heads, n_kv_heads, eps=eps, theta=theta, what=what)


def check_decoder_block(decoder_block, seed: int | None = None, n_cases: int = 8) -> None:
    """``decoder_block(x, weights, n_heads, n_kv_heads, eps=..., theta=...)`` against the course's ``DecoderBlock``.

    Random sizes (MHA, GQA, MQA), float32 and float64, batch and length 1, small inputs with a
    large eps (RMSNorm's eps matters), inputs not modified, and causality: changing the last
    token does not change the outputs before it. Tolerance: atol 2e-5, rtol 1e-4 in float32;
    atol 1e-6, rtol 1e-5 in float64 (the rotary angles are float32 in both).
    """
    decoder_block = watched(decoder_block, DECODER_BLOCK)
    gen, seed = new_generator(seed)
    for case in range(n_cases):
        n_heads = (1, 2, 4, 4, 2, 6)[randint(gen, 0, 5)]
        divisors = [k for k in range(1, n_heads + 1) if n_heads % k == 0]
        n_kv_heads = divisors[randint(gen, 0, len(divisors) - 1)]
        if case == 1:
            n_heads, n_kv_heads = 4, 2  # grouped-query attention, always
        head_dim = (2, 4, 8)[randint(gen, 0, 2)]
        d_ff = randint(gen, 3, 24)
        dtype = (torch.float32, torch.float64)[case % 2]
        batch, length = (1, 1) if case == 2 else (randint(gen, 1, 3), randint(gen, 2, 9))
        eps, theta = ((1e-6, 10000.0), (1e-5, 500.0), (0.5, 10000.0))[case % 3]
        scale = 0.05 if case % 3 == 2 else 1.0  # small activations: eps changes the result
        block, weights = _random_block(gen, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff,
                                       eps=eps, theta=theta, dtype=dtype)
        x = (scale * torch.randn(batch, length, n_heads * head_dim, generator=gen, dtype=torch.float64)).to(dtype)
        what = (f"decoder_block(x {tuple(x.shape)} {dtype}, weights, n_heads={n_heads}, n_kv_heads={n_kv_heads}, "
                f"eps={eps}, theta={theta}) with d_ff={d_ff} (seed {seed})")
        got = _call_block(decoder_block, x, weights, n_heads, n_kv_heads, eps, theta, what)
        expect_tensor(got, _reference_block(block, x, theta), what, **_block_tolerance(dtype))
        if length >= 2:  # causality: a new last token changes nothing before it
            changed = x.clone()
            changed[:, -1] = (scale * torch.randn(batch, x.shape[-1], generator=gen, dtype=torch.float64)).to(dtype)
            again = _call_block(decoder_block, changed, weights, n_heads, n_kv_heads, eps, theta, what)
            if not torch.allclose(again[:, :-1], got[:, :-1], **_block_tolerance(dtype)):
                raise AssertionError(f"{what}: changing only the last token changed the outputs at earlier positions; "
                                     "a decoder block must be causal (position t attends to positions <= t only)")


def _hf_layer(block: models.DecoderBlock, config: models.DecoderConfig):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    hf_config = models.to_llama_config(config)
    hf_config._attn_implementation = "eager"
    layer = LlamaDecoderLayer(hf_config, 0).to(next(block.parameters()).dtype).eval()
    renamed = {models.llama_name_map(1)[f"blocks.0.{k}"].removeprefix("model.layers.0."): v
               for k, v in block.state_dict().items()}
    layer.load_state_dict(renamed)
    return layer


def check_decoder_block_edge_cases(decoder_block) -> None:
    """Agreement with transformers' ``LlamaDecoderLayer`` given the same weights, default eps and theta, and a wrong weights dict."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    decoder_block = watched(decoder_block, DECODER_BLOCK)
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        block, weights = _random_block(gen, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=40, eps=1e-6, theta=10000.0, dtype=dtype)
        config = models.DecoderConfig(vocab_size=8, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=40)
        layer = _hf_layer(block, config)
        x = torch.randn(2, 7, 32, generator=gen, dtype=torch.float64).to(dtype)
        positions = torch.arange(7)[None]
        cos, sin = LlamaRotaryEmbedding(models.to_llama_config(config))(x, positions)
        mask = torch.full((7, 7), float("-inf"), dtype=dtype).triu(1)[None, None]
        with torch.no_grad():
            theirs = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=(cos, sin))
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        what = f"decoder_block(x (2, 7, 32) {dtype}, weights, 4, 2) with the default eps and theta, against transformers' LlamaDecoderLayer"
        got = _call_block_defaults(decoder_block, x, weights, 4, 2, what=what)
        expect_tensor(got, theirs, what, **_block_tolerance(dtype))
    missing = {k: v for k, v in weights.items() if k != "mlp.up_proj.weight"}
    try:
        decoder_block(x, missing, 4, 2)
    except (KeyError, ValueError):
        pass
    else:
        raise AssertionError("decoder_block(x, weights without 'mlp.up_proj.weight', 4, 2) should raise KeyError or ValueError")


def _call_block_defaults(decoder_block, x, weights, n_heads, n_kv_heads, what):
    from course_lib.checks.common import call_explained

    return call_explained(decoder_block, x, weights, n_heads, n_kv_heads, what=what)


# --------------------------------------------------------------------------- predictions

PREDICTION = Rules(
    "prediction", modules=("course_lib.models", "course_lib.tokenizer", "course_lib.memory"),
    why="A prediction is a number you work out before running the lesson's cells, not computed with the course's code.",
)


def _prediction(fn, name: str):
    got = watched(fn, PREDICTION)()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"{name}() should return a number (an int or a float), got {type(got).__name__} ({got!r})")
    return got


def check_predict_uniform_loss(predict_uniform_loss) -> None:
    """The prediction: the next-token loss (nats) of a uniform guess over the course tokenizer's vocabulary, within 0.01."""
    from course_lib import tokenizer

    vocab_size = tokenizer.DEFAULT_VOCAB_SIZE
    expected = models.next_token_loss(torch.zeros(1, 2, vocab_size), torch.zeros(1, 2, dtype=torch.long)).item()
    got = _prediction(predict_uniform_loss, "predict_uniform_loss")
    if not abs(got - expected) <= 0.01:
        raise AssertionError(f"predict_uniform_loss() returned {got}, not within 0.01 of the lesson's value: each token "
                             f"gets probability 1/{vocab_size}, and the loss is minus the natural log of that")


def check_predict_block_params_millions(predict_block_params_millions) -> None:
    """The prediction: parameters (millions) of one block with d 4096, 32/8 heads, d_ff 14336, within 1%."""
    config = models.DecoderConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336)
    with torch.device("meta"):
        expected = sum(p.numel() for p in models.DecoderBlock(config, 0).parameters()) / 1e6
    got = _prediction(predict_block_params_millions, "predict_block_params_millions")
    if not abs(got - expected) <= 0.01 * expected:
        raise AssertionError(f"predict_block_params_millions() returned {got}, not within 1% of the lesson's count: "
                             "W_q and W_o are d x d, W_k and W_v are (n_kv_heads * head_dim) x d, the MLP has three "
                             "d x d_ff matrices, and the two norms d gains each")
