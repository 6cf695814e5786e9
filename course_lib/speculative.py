"""Speculative decoding: a small model drafts, the large one checks several tokens in one pass (lesson 10).

Decoding one token at a time reads every weight of the model once per token; on a GPU that
reading, not the arithmetic, sets the speed (lesson 06). A *draft* model, much smaller,
proposes ``k`` tokens; the *target* model scores all of them in one forward pass (``k + 1``
positions for about the price of one, when reading weights dominates) and keeps the longest
prefix it agrees with, plus one token of its own. With greedy decoding the output is exactly
the target's own greedy output (:func:`speculative_generate`); with sampling, the acceptance
rule of Leviathan et al. (2023) and Chen et al. (2023) (:func:`accept_or_resample`) keeps the
target's distribution exactly.

What is counted: target forward passes per generated token (below 1 is the gain) and the
share of drafted tokens accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib.kvcache import KVCache


@dataclass
class SpeculativeStats:
    """What one speculative generation did: tokens generated, target and draft forward passes, tokens drafted and accepted."""

    generated: int = 0
    target_passes: int = 0
    draft_passes: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Share of drafted tokens the target agreed with."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def target_passes_per_token(self) -> float:
        """Target forward passes per generated token (plain decoding: 1)."""
        return self.target_passes / self.generated if self.generated else 0.0


def _feed(model, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run ``model`` on the positions of ``ids`` (1, n) that ``cache`` does not hold yet; logits (new, vocab)."""
    return model(ids[:, len(cache):], cache=cache)[0]


@torch.no_grad()
def speculative_generate(target, draft, input_ids: torch.Tensor, max_new_tokens: int, draft_len: int = 4,
                         eos_id: int | None = None) -> tuple[torch.Tensor, SpeculativeStats]:
    """Greedy speculative decoding of one prompt ``input_ids`` (1, prompt_len), long.

    Each round the draft proposes ``draft_len`` tokens greedily; the target scores them in one
    pass; the longest agreeing prefix is kept, then the target's own next token (its correction,
    or a bonus token when all were accepted). Both models' KV caches are cut back to what was
    kept. Returns ``(ids (1, prompt_len + generated), stats)``: the ids equal
    ``generate(target, input_ids, max_new_tokens, eos_id=eos_id)`` (greedy), up to floating-point
    ties between the target's top two logits.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1 \
            or input_ids.shape[1] == 0 or input_ids.is_floating_point():
        raise ValueError(f"input_ids should be a (1, prompt_len) integer tensor, one prompt, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    if isinstance(draft_len, bool) or not isinstance(draft_len, int) or draft_len < 1:
        raise ValueError(f"draft_len should be an int >= 1, got {draft_len!r}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"the draft and the target must share a vocabulary, got {draft.config.vocab_size} and "
                         f"{target.config.vocab_size} tokens")
    target.eval(), draft.eval()
    ids = input_ids.long()
    end = ids.shape[1] + max_new_tokens
    target_cache, draft_cache = KVCache(target.config.n_layers), KVCache(draft.config.n_layers)
    stats = SpeculativeStats()
    while ids.shape[1] < end and not (eos_id is not None and ids.shape[1] > input_ids.shape[1] and ids[0, -1] == eos_id):
        k = min(draft_len, end - ids.shape[1] - 1)  # the target adds one token of its own
        proposal = ids
        for _ in range(k):
            token = _feed(draft, proposal, draft_cache)[-1].argmax()
            proposal = torch.cat([proposal, token.reshape(1, 1)], dim=1)
            stats.draft_passes += 1
        verdicts = _feed(target, proposal, target_cache)[-(k + 1):].argmax(dim=-1)  # the target's choice after each
        stats.target_passes += 1
        drafted = proposal[0, ids.shape[1]:]
        agree = int((drafted == verdicts[:k]).long().cumprod(0).sum()) if k else 0
        new = torch.cat([drafted[:agree], verdicts[agree:agree + 1]])
        if eos_id is not None and (new == eos_id).any():
            new = new[:int((new == eos_id).nonzero()[0]) + 1]
        stats.drafted, stats.accepted = stats.drafted + k, stats.accepted + min(agree, len(new))
        ids = torch.cat([ids, new.reshape(1, -1)], dim=1)
        for cache in (target_cache, draft_cache):  # forget what was not kept; the last token is fed next round
            cache.crop(min(len(cache), ids.shape[1] - 1))
    stats.generated = ids.shape[1] - input_ids.shape[1]
    return ids, stats


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, token: int, generator: torch.Generator | None = None) -> tuple[bool, int]:
    """The speculative sampling rule for one drafted ``token`` drawn from the draft's distribution ``q``.

    ``p`` and ``q`` are probability vectors (vocab,). Accept with probability ``min(1, p[x] / q[x])``;
    otherwise draw a replacement from ``max(0, p - q)``, normalised. Either way the token that comes
    out is distributed as ``p``. Returns ``(accepted, token)``.
    """
    if p.dim() != 1 or p.shape != q.shape:
        raise ValueError(f"p and q should be probability vectors of one shape (vocab,), got {tuple(p.shape)} and {tuple(q.shape)}")
    u = torch.rand((), generator=generator, dtype=torch.float64)
    if u * q[token] < p[token]:  # u < p/q, without dividing by a zero q
        return True, token
    residual = (p - q).clamp(min=0)
    return False, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
