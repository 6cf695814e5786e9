"""Measuring a language model: perplexity and exact-match accuracy (lesson 02; lesson 08 extends it).

- **Perplexity** is ``exp`` of the mean next-token cross-entropy on held-out text: the number
  of equally likely tokens the model is, on average, choosing between. A model that has
  learned nothing scores the vocabulary size; a perfect one scores 1.
- **Exact match** asks a question (a prompt), lets the model answer greedily, and counts the
  answers that are exactly right. It measures what perplexity hides: whether the single
  most likely answer is the correct one.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from course_lib.kvcache import generate
from course_lib.tokenizer import BOS_ID, EOS_ID


def document_ids(tokenizer, text: str) -> list[int]:
    """``<bos>`` + the tokens of ``text`` + ``<eos>``: how the course's models see one document. Defined in lesson 02."""
    return [BOS_ID, *tokenizer.encode(text), EOS_ID]


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_len: int = 256, batch_size: int = 32) -> float:
    """Perplexity of ``model`` on ``texts``, each scored as its own document (truncated to ``max_len`` tokens).

    Every predicted token counts once: ``exp(total cross-entropy / number of predicted tokens)``.
    Defined in lesson 02.
    """
    if not texts:
        raise ValueError("perplexity needs at least one text")
    # sorted by length, so that each batch pads little (the total does not depend on the order)
    docs = sorted((document_ids(tokenizer, t)[:max_len] for t in texts), key=len)
    total_nll, total_tokens = 0.0, 0
    model.eval()
    for start in range(0, len(docs), batch_size):
        batch = docs[start : start + batch_size]
        width = max(len(d) for d in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, doc in enumerate(batch):
            ids[row, : len(doc)] = torch.tensor(doc)
            targets[row, : len(doc)] = torch.tensor(doc)
        logits = model(ids).float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += int((targets[:, 1:] != -100).sum())
    return math.exp(total_nll / total_tokens)


def complete(model, tokenizer, prompts: list[str], max_new_tokens: int = 12, batch_size: int = 64, progress: bool = False) -> list[str]:
    """Greedy completions of ``prompts`` (each after ``<bos>``), cut at ``<eos>``. Defined in lesson 02.

    Prompts of equal token length are batched together, so no padding is needed.
    """
    encoded = [[BOS_ID, *tokenizer.encode(p)] for p in prompts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    answers: list[str | None] = [None] * len(prompts)
    groups = [(n, idx[s : s + batch_size]) for n, idx in sorted(by_length.items()) for s in range(0, len(idx), batch_size)]
    model.eval()
    for n, idx in tqdm(groups, desc="answering", disable=not progress):
        ids = torch.tensor([encoded[i] for i in idx])
        with torch.no_grad():
            out = generate(model, ids, max_new_tokens, strategy="greedy", eos_id=EOS_ID)
        for row, i in enumerate(idx):
            new = out[row, n:].tolist()
            if EOS_ID in new:
                new = new[: new.index(EOS_ID)]
            answers[i] = tokenizer.decode(new)
    return answers


def exact_match(model, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int = 12, progress: bool = False) -> float:
    """Fraction of ``(prompt, answer)`` pairs whose greedy completion equals ``answer`` exactly. Defined in lesson 02."""
    if not pairs:
        raise ValueError("exact_match needs at least one (prompt, answer) pair")
    got = complete(model, tokenizer, [p for p, _ in pairs], max_new_tokens, progress=progress)
    return sum(g == a for g, (_, a) in zip(got, pairs)) / len(pairs)
