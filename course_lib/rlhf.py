"""Lesson 09: learning from preferences (RLHF) and from verifiable rewards, on the course's own models.

Supervised fine-tuning (lesson 08) copies demonstrations. Some things are easier to *judge*
than to demonstrate: of two answers, which is better? This module builds the whole loop small
enough to run on a laptop CPU.

- **Preference data** (:func:`preference_data`): a question about the synthetic world and two
  answers, labelled by a hidden rule (:func:`rule_prefers`: a true answer beats a false one; of
  two answers equally true, the shorter wins) and then corrupted: each label is flipped with
  probability ``noise``. The "human" is a rule with noise, so every alignment result can be
  measured exactly against the rule itself.
- **The reward model** (:class:`RewardModel`): the course decoder with a scalar head on the last
  token, trained with the Bradley-Terry loss (:func:`bradley_terry_loss`).
- **PPO** (:func:`ppo_train`): sample answers from the policy, score them with the reward model,
  subtract a per-token KL penalty to the frozen SFT model (:func:`kl_penalized_rewards`),
  estimate advantages with GAE (:func:`gae`) and take clipped policy-gradient steps
  (:func:`ppo_policy_loss`).
- **DPO** (:func:`dpo_loss`, :func:`dpo_train`): no reward model, no sampling: a classification
  loss on the preference pairs themselves, written with the log-probability ratios of the policy
  to the reference.
- **GRPO** (:func:`grpo_train`): for tasks whose answers can be checked (sums, sorting), sample a
  group of answers per prompt, reward exact correctness, and use each answer's reward relative to
  its group (:func:`group_advantages`) instead of a value model.

Shapes: a batch of ``B`` sequences is ``ids`` ``(B, L)`` int64, right-padded with ``<pad>``;
everything about the *response* tokens is ``(B, T)`` with a boolean ``mask`` ``(B, T)`` that is
True from the first response token up to and including ``<eos>``.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from course_lib.data import QUESTIONS, Fact, build_corpus, fact_sentence
from course_lib.finetune import ONE_WORD_RELATIONS, chat_prompt, encode_pair, finetune
from course_lib.kvcache import generate
from course_lib.tokenizer import BOS_ID, EOS_ID, PAD_ID
from course_lib.train import TrainConfig, train

# --------------------------------------------------------------------------- the hidden rule


def _words(answer: str) -> list[str]:
    return answer.replace(".", " ").replace("'s", " ").split()


def _relation_values(facts: list[Fact]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for f in facts:
        if f.relation in ONE_WORD_RELATIONS and f.obj not in values.setdefault(f.relation, []):
            values[f.relation].append(f.obj)
    return values


_VALUES: dict[str, list[str]] | None = None


def relation_values() -> dict[str, list[str]]:
    """Every value each one-word relation takes in the world (``{"lives_in": [cities...], ...}``). Defined in lesson 09."""
    global _VALUES
    if _VALUES is None:
        _VALUES = _relation_values(build_corpus(0).world.facts)
    return _VALUES


def is_true(fact: Fact, answer: str) -> bool:
    """Does ``answer`` state ``fact``? True when it names ``fact.obj`` and no other value of the same relation.

    ``"Quenta"`` and ``"Zorbin Kalu lives in Quenta."`` are true of ``Fact("Zorbin Kalu", "lives_in",
    "Quenta")``; ``""``, ``"Braldor"`` and ``"Quenta or Braldor"`` are not. Defined in lesson 09.
    """
    words = set(_words(answer))
    others = set(relation_values().get(fact.relation, [])) - {fact.obj}
    return fact.obj in words and not (words & others)


def rule_key(fact: Fact, answer: str) -> tuple[int, int]:
    """What the hidden rule compares: ``(is_true, -number_of_words)``; the larger key wins. Defined in lesson 09."""
    return int(is_true(fact, answer)), -len(_words(answer))


def rule_prefers(fact: Fact, a: str, b: str) -> float:
    """The hidden rule's verdict on answers ``a`` and ``b`` to the question about ``fact``.

    1.0 if ``a`` wins (true beats false; equally true, fewer words wins), 0.0 if ``b`` wins, 0.5 for a tie.
    Defined in lesson 09.
    """
    ka, kb = rule_key(fact, a), rule_key(fact, b)
    return 1.0 if ka > kb else 0.0 if ka < kb else 0.5


# --------------------------------------------------------------------------- preference data


@dataclass(frozen=True)
class Preference:
    """One labelled comparison: the annotator preferred ``chosen`` to ``rejected`` as an answer to ``question``.

    ``flipped`` is True when the label disagrees with the hidden rule (annotator noise): then the
    rule prefers ``rejected``. ``fact`` is what the question asks about. Defined in lesson 09.
    """

    question: str
    chosen: str
    rejected: str
    fact: Fact
    flipped: bool
    kind: str = ""


def answer_styles(fact: Fact, false_obj: str) -> dict[str, str]:
    """Four answers to the question about ``fact``, from best to worst under the hidden rule.

    ``{"true_short": "Quenta", "true_long": "Zorbin Kalu lives in Quenta.", "false_short":
    "Braldor", "false_long": "Zorbin Kalu lives in Braldor."}``. Defined in lesson 09.
    """
    false_fact = Fact(fact.subject, fact.relation, false_obj)
    return {"true_short": fact.obj, "true_long": fact_sentence(fact, 0),
            "false_short": false_obj, "false_long": fact_sentence(false_fact, 0)}


def question_facts() -> dict[str, list[Fact]]:
    """The facts the preference questions ask about, split by person. Defined in lesson 09.

    ``train`` and ``validation``: people whose questions pretraining saw (nine in ten, one in ten);
    ``heldout``: the held-out people of lesson 02 (their biographies were read, never their questions).
    """
    corpus = build_corpus(0)
    heldout_people = set(corpus.heldout_people)
    seen = [p for p in corpus.world.people if p not in heldout_people]
    validation_people = set(seen[::10])
    splits: dict[str, list[Fact]] = {"train": [], "validation": [], "heldout": []}
    for f in corpus.world.facts:
        if f.relation not in ONE_WORD_RELATIONS:
            continue
        split = "heldout" if f.subject in heldout_people else "validation" if f.subject in validation_people else "train"
        splits[split].append(f)
    return splits


def question(fact: Fact) -> str:
    """The instruction that asks about ``fact``: ``"Where does Zorbin Kalu live?"``. Defined in lesson 09."""
    return QUESTIONS[fact.relation].format(s=fact.subject)


def preference_data(noise: float = 0.1, seed: int = 0) -> dict[str, list[Preference]]:
    """Labelled comparisons for every split of :func:`question_facts`. Defined in lesson 09.

    For each fact, a false value is drawn: half the time another value of the same relation
    (another city: only knowing the fact tells it is false), half the time a value of another
    relation (a colour where a city was asked). That gives four answers (:func:`answer_styles`);
    all six pairs of them are labelled by :func:`rule_prefers` and each label is then flipped with
    probability ``noise`` (the annotators' mistakes). Pairs are shuffled, and which answer is
    ``chosen`` depends only on the (noisy) label.
    """
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < 0.5:
        raise ValueError(f"noise must be a probability in [0, 0.5), got {noise!r}")
    rng = random.Random(f"09/preferences/{seed}")
    values = relation_values()
    out: dict[str, list[Preference]] = {}
    for split, facts in question_facts().items():
        pairs = []
        for fact in facts:
            same = rng.random() < 0.5
            pool = values[fact.relation] if same else [v for r, vs in values.items() if r != fact.relation for v in vs]
            false_obj = rng.choice([v for v in pool if v != fact.obj])
            styles = list(answer_styles(fact, false_obj).items())
            for i in range(4):
                for j in range(i + 1, 4):
                    (better_style, better), (worse_style, worse) = styles[i], styles[j]   # styles are best first
                    flipped = rng.random() < noise
                    chosen, rejected = (worse, better) if flipped else (better, worse)
                    kind = f"{better_style}>{worse_style} ({'same' if same else 'other'})"
                    pairs.append(Preference(question(fact), chosen, rejected, fact, flipped, kind))
        rng.shuffle(pairs)
        out[split] = pairs
    return out


# --------------------------------------------------------------------------- sequences and log-probabilities


def encode_answers(tokenizer, questions: list[str], answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Conversations ``<bos>Instruction: q\\nResponse: a<eos>`` as one right-padded batch.

    Returns ``(ids, mask)``: ``ids`` ``(B, L)`` int64 padded with ``<pad>``, and ``mask`` ``(B, L)``
    bool, True on the answer's tokens and its ``<eos>`` (what the model is judged on). Defined in lesson 09.
    """
    if len(questions) != len(answers) or not questions:
        raise ValueError(f"need as many questions as answers (and at least one), got {len(questions)} and {len(answers)}")
    encoded = [encode_pair(tokenizer, q, a) for q, a in zip(questions, answers)]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, (seq, prompt_length) in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, prompt_length: len(seq)] = True
    return ids, mask


def token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """``log p(ids[:, t] | ids[:, :t])`` for ``t >= 1``: ``(B, L - 1)`` float32. Defined in lesson 09.

    Entry ``t - 1`` belongs to token ``t``: pair it with ``mask[:, 1:]``.
    """
    logits = model(ids)[:, -ids.shape[1]:-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def sequence_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each row's answer, the sum over its masked tokens: ``(B,)`` float32. Defined in lesson 09."""
    if mask.shape != ids.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool with the shape of ids {tuple(ids.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    return (token_logprobs(model, ids) * mask[:, 1:]).sum(dim=1)


# --------------------------------------------------------------------------- the reward model


class RewardModel(nn.Module):
    """A language model's body with a scalar head: ``score = w · h_last + b``, ``h_last`` the final hidden state of
    the last real token (``<eos>``).

    ``RewardModel(lm)`` takes a :class:`course_lib.models.DecoderLM` (usually a copy of the SFT model);
    ``model(ids)`` maps ``(B, L)`` right-padded ids to ``(B,)`` float32 scores. Defined in lesson 09.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(lm.config.d_model, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.hidden_states(ids)                                     # (B, L, d)
        last = (ids != PAD_ID).sum(dim=1) - 1                                    # (B,)
        return self.head(hidden[torch.arange(ids.shape[0]), last]).squeeze(-1).float()


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """The Bradley-Terry loss: ``mean(-log sigmoid(chosen - rejected))``, a scalar.

    Under the Bradley-Terry model ``P(chosen beats rejected) = sigmoid(r_chosen - r_rejected)``; the loss
    is the negative log-likelihood of the labels. Both inputs ``(B,)`` float. Defined in lesson 09.
    """
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.dim() != 1:
        raise ValueError(f"chosen_scores and rejected_scores must both be (B,), got {tuple(chosen_scores.shape)} "
                         f"and {tuple(rejected_scores.shape)}")
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def as_triple(pair) -> tuple[str, str, str]:
    """``(question, chosen, rejected)`` of a :class:`Preference` or of such a tuple. Defined in lesson 09."""
    if isinstance(pair, Preference):
        return pair.question, pair.chosen, pair.rejected
    if isinstance(pair, (tuple, list)) and len(pair) == 3 and all(isinstance(x, str) for x in pair):
        return tuple(pair)
    raise ValueError(f"a pair must be a Preference or a (question, chosen, rejected) tuple of str, got {pair!r}")


def pair_batch(tokenizer, pairs) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(ids, mask, n)``: the ``n`` chosen conversations then the ``n`` rejected ones, in one ``(2n, L)`` batch.

    ``pairs``: :class:`Preference` objects or ``(question, chosen, rejected)`` tuples. Defined in lesson 09."""
    triples = [as_triple(p) for p in pairs]
    questions = [q for q, _, _ in triples] * 2
    answers = [c for _, c, _ in triples] + [r for _, _, r in triples]
    ids, mask = encode_answers(tokenizer, questions, answers)
    return ids, mask, len(pairs)


def train_reward_model(reward_model: RewardModel, tokenizer, pairs: list[Preference], steps: int = 150,
                       lr: float = 1e-3, batch_size: int = 32, seed: int = 0, loss_fn=None, progress: bool = True):
    """Train ``reward_model`` on labelled ``pairs`` with ``loss_fn`` (default :func:`bradley_terry_loss`).

    Lesson 02's loop (AdamW, warm-up, cosine decay); returns its :class:`course_lib.train.History`.
    Defined in lesson 09.
    """
    loss_fn = bradley_terry_loss if loss_fn is None else loss_fn

    def get_batch(generator):
        rows = torch.randint(0, len(pairs), (batch_size,), generator=generator).tolist()
        ids, _, n = pair_batch(tokenizer, [pairs[i] for i in rows])
        return ids, n

    def loss(model, batch):
        ids, n = batch
        scores = model(ids)
        return loss_fn(scores[:n], scores[n:])

    config = TrainConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 10), eval_every=steps,
                         seed=seed, progress=progress)
    history = train(reward_model, loss, get_batch, config)
    reward_model.eval()
    return history


@torch.no_grad()
def chosen_wins(reward_model: RewardModel, tokenizer, pairs: list[Preference], batch_size: int = 128) -> torch.Tensor:
    """``(len(pairs),)`` bool: True where the reward model scores the chosen answer above the rejected one.

    Score a set of pairs once and read every agreement from it with :func:`agreement`. Defined in lesson 09.
    """
    if not pairs:
        raise ValueError("chosen_wins needs at least one pair")
    wins = []
    for start in range(0, len(pairs), batch_size):
        ids, _, n = pair_batch(tokenizer, pairs[start: start + batch_size])
        scores = reward_model(ids)
        wins.append(scores[:n] > scores[n:])
    return torch.cat(wins)


def agreement(wins: torch.Tensor, pairs: list[Preference], against: str = "rule") -> float:
    """Fraction of ``pairs`` ordered as the judge does, from their :func:`chosen_wins`. Defined in lesson 09.

    ``against="labels"``: the noisy labels (a perfect copy of the rule scores ``1 - noise`` here: the
    noise ceiling); ``against="rule"``: the hidden rule itself.
    """
    if against not in ("rule", "labels"):
        raise ValueError(f"against must be 'rule' or 'labels', got {against!r}")
    if len(wins) != len(pairs) or not pairs:
        raise ValueError(f"need one win per pair (and at least one pair), got {len(wins)} and {len(pairs)}")
    flipped = torch.tensor([p.flipped for p in pairs])
    return int((wins != flipped).sum() if against == "rule" else wins.sum()) / len(pairs)


def reward_accuracy(reward_model: RewardModel, tokenizer, pairs: list[Preference], against: str = "rule",
                    batch_size: int = 128) -> float:
    """Fraction of ``pairs`` the reward model orders as the judge does: :func:`agreement` of :func:`chosen_wins`.
    Defined in lesson 09.

    ``against="labels"``: the noisy labels (a perfect copy of the rule scores ``1 - noise`` here: the
    noise ceiling); ``against="rule"``: the hidden rule itself.
    """
    if against not in ("rule", "labels"):
        raise ValueError(f"against must be 'rule' or 'labels', got {against!r}")
    return agreement(chosen_wins(reward_model, tokenizer, pairs, batch_size), pairs, against)


@torch.no_grad()
def score_answers(reward_model: RewardModel, tokenizer, questions: list[str], answers: list[str]) -> torch.Tensor:
    """The reward model's scores of free-form ``answers``: ``(B,)`` float32. Defined in lesson 09."""
    ids, _ = encode_answers(tokenizer, questions, answers)
    return reward_model(ids)


# --------------------------------------------------------------------------- sampling answers


@dataclass
class Rollout:
    """Answers sampled from a policy for one batch of prompts of equal length. Defined in lesson 09.

    ``ids`` ``(B, P + T)``: prompt then answer (padded with ``<pad>`` after ``<eos>``);
    ``mask`` ``(B, T)``: True on the answer's tokens up to and including ``<eos>``;
    ``prompt_length``: ``P``; ``texts``: the answers decoded (without ``<eos>``).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    prompt_length: int
    texts: list[str]


def prompt_ids(tokenizer, instruction: str) -> list[int]:
    """``<bos>`` and the tokens of ``chat_prompt(instruction)``. Defined in lesson 09."""
    return [BOS_ID, *tokenizer.encode(chat_prompt(instruction))]


@torch.no_grad()
def sample_answers(policy, tokenizer, instructions: list[str], max_new_tokens: int = 12, temperature: float = 1.0,
                   generator: torch.Generator | None = None) -> Rollout:
    """Sample one answer per instruction (all must have prompts of the same token length; temperature 0 is greedy).
    Defined in lesson 09."""
    prompts = [prompt_ids(tokenizer, i) for i in instructions]
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("sample_answers needs instructions whose prompts have the same number of tokens "
                         "(group them with by_prompt_length)")
    was_training = policy.training
    policy.eval()
    ids = generate(policy, torch.tensor(prompts), max_new_tokens, strategy="greedy" if temperature == 0 else "sample",
                   temperature=temperature if temperature > 0 else 1.0, generator=generator, eos_id=EOS_ID, pad_id=PAD_ID)
    policy.train(was_training)
    p = len(prompts[0])
    answer = ids[:, p:]
    if answer.shape[1] == 0:
        raise ValueError("max_new_tokens must be at least 1")
    ended_before = torch.cumsum((answer == EOS_ID).long(), dim=1) - (answer == EOS_ID).long()
    mask = ended_before == 0                      # up to and including the first <eos>
    texts = []
    for row in answer.tolist():
        row = row[: row.index(EOS_ID)] if EOS_ID in row else row
        texts.append(tokenizer.decode(row).strip())
    return Rollout(ids, mask, p, texts)


def by_prompt_length(tokenizer, instructions: list[str]) -> dict[int, list[int]]:
    """Indices of ``instructions`` grouped by their prompt's token length (to batch without padding). Defined in lesson 09."""
    groups: dict[int, list[int]] = {}
    for i, instruction in enumerate(instructions):
        groups.setdefault(len(prompt_ids(tokenizer, instruction)), []).append(i)
    return groups


def answer_logprobs(model, rollout: Rollout) -> torch.Tensor:
    """``log p`` of each answer token of ``rollout`` under ``model``: ``(B, T)`` float32 (0 where masked out).
    Defined in lesson 09."""
    return token_logprobs(model, rollout.ids)[:, rollout.prompt_length - 1:] * rollout.mask


@torch.no_grad()
def greedy_answers(policy, tokenizer, instructions: list[str], max_new_tokens: int = 12) -> list[str]:
    """The policy's greedy answer to each instruction, in order. Defined in lesson 09."""
    answers: list[str] = [""] * len(instructions)
    for _, idx in sorted(by_prompt_length(tokenizer, instructions).items()):
        rollout = sample_answers(policy, tokenizer, [instructions[i] for i in idx], max_new_tokens, temperature=0)
        for i, text in zip(idx, rollout.texts):
            answers[i] = text
    return answers


def win_rate(answers: list[str], baseline: list[str], facts: list[Fact]) -> float:
    """How often the hidden rule prefers ``answers[i]`` to ``baseline[i]`` (ties count a half). Defined in lesson 09."""
    if not (len(answers) == len(baseline) == len(facts)) or not facts:
        raise ValueError("answers, baseline and facts must be non-empty lists of the same length")
    return sum(rule_prefers(f, a, b) for f, a, b in zip(facts, answers, baseline)) / len(facts)


def truthful_rate(answers: list[str], facts: list[Fact]) -> float:
    """Fraction of ``answers`` that are true (:func:`is_true`). Defined in lesson 09."""
    return sum(is_true(f, a) for f, a in zip(facts, answers)) / len(facts)


def mean_words(answers: list[str]) -> float:
    """Mean number of words of ``answers``. Defined in lesson 09."""
    return sum(len(_words(a)) for a in answers) / len(answers)


# --------------------------------------------------------------------------- PPO


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards for PPO: ``-beta * (logprobs - ref_logprobs)`` on every answer token, plus the reward
    model's score on the last one (the ``<eos>``, or the last token if the answer was cut).

    Args: ``scores`` ``(B,)``; ``logprobs``, ``ref_logprobs`` ``(B, T)`` of the sampled tokens under the policy
    and the frozen reference; ``mask`` ``(B, T)`` bool, True on a prefix of each row (at least one token).
    Returns ``(B, T)`` in ``logprobs``' dtype (at least float32), zero where ``mask`` is False.
    Defined in lesson 09.
    """
    _check_per_token(mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores must be ({mask.shape[0]},), got {tuple(scores.shape)}")
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    rewards = -beta * (logprobs.to(dtype) - ref_logprobs.to(dtype)) * mask
    last = mask.long().sum(dim=1) - 1
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores.to(dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over each answer.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V`` after the last token is 0), and
    ``A_t = delta_t + gamma * lam * A_{t+1}``, summed backwards from the end of each answer.
    All inputs ``(B, T)`` (``mask`` bool, True on a prefix of each row). Returns ``(advantages, returns)``,
    both ``(B, T)`` in ``rewards``' dtype (at least float32), ``returns = advantages + values``, zero where
    ``mask`` is False (whatever ``rewards`` and ``values`` hold there).
    Defined in lesson 09.
    """
    _check_per_token(mask, rewards=rewards, values=values)
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    m = mask.to(dtype)
    rewards, values = rewards.to(dtype) * m, values.to(dtype) * m
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * m[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * m


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate, a scalar to minimise: the mean over answer tokens of
    ``-min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A)`` with ``ratio = exp(logprobs - old_logprobs)``.
    Defined in lesson 09."""
    _check_per_token(mask, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    return -(surrogate * mask).sum() / mask.sum().clamp(min=1)


def _check_per_token(mask: torch.Tensor, **tensors) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, T) bool tensor, got {getattr(mask, 'dtype', type(mask))} "
                         f"{tuple(getattr(mask, 'shape', ()))}")
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.shape != mask.shape or not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor of shape {tuple(mask.shape)} (the mask's), got "
                             f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}")


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` shifted and scaled to mean 0 and variance 1 over the masked entries. Defined in lesson 09."""
    mean = x[mask].mean()
    std = x[mask].std() if int(mask.sum()) > 1 else torch.tensor(1.0)
    return (x - mean) / (std + 1e-8) * mask


class PolicyWithValue(nn.Module):
    """The policy (a :class:`course_lib.models.DecoderLM`) with a value head on its hidden states, as PPO trains it.

    ``values(ids)`` returns ``(B, L)`` float32: the value of the state after each token.
    ``config`` and ``forward`` are the language model's, so the policy samples as before.
    Defined in lesson 09.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.value_head = nn.Linear(lm.config.d_model, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, ids, cache=None):
        return self.lm(ids, cache=cache)

    def logits_and_values(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.lm.hidden_states(ids)
        return self.lm.lm_head(hidden), self.value_head(hidden).squeeze(-1).float()


@dataclass
class RLHistory:
    """What an RL run measured. ``steps`` holds one dict per training step (``reward``, ``kl``, ...);
    ``evals`` one dict per evaluation (``step``, and ``win_rate``/``truthful``/``words`` or ``accuracy``);
    ``seconds`` the wall time of the training steps (evaluations excluded). Defined in lesson 09."""

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Judge:
    """The held-out questions an alignment run is measured on, and the SFT model's greedy answers to them.

    ``evaluate(policy)`` returns ``{"win_rate", "truthful", "words"}`` of the policy's greedy answers:
    how often the hidden rule prefers them to the SFT answers, how many are true, how long.
    A judge made by :meth:`against` keeps the SFT model's weights: a policy that still has them
    (every run at step 0) gets the baseline answers without generating them again.
    Defined in lesson 09.
    """

    tokenizer: object
    facts: list[Fact]
    baseline: list[str]
    baseline_weights: dict | None = field(default=None, repr=False, compare=False)

    @classmethod
    def against(cls, sft_model, tokenizer, facts: list[Fact]) -> "Judge":
        weights = {k: v.detach().clone() for k, v in sft_model.state_dict().items()}
        return cls(tokenizer, facts, greedy_answers(sft_model, tokenizer, [question(f) for f in facts]), weights)

    def is_baseline(self, policy) -> bool:
        """Whether ``policy`` holds exactly the weights the baseline answers were generated with."""
        if self.baseline_weights is None:
            return False
        state = policy.state_dict()
        return state.keys() == self.baseline_weights.keys() and all(
            v.shape == state[k].shape and v.dtype == state[k].dtype and v.device == state[k].device and torch.equal(v, state[k].detach())
            for k, v in self.baseline_weights.items())

    def answers(self, policy) -> list[str]:
        if self.is_baseline(policy):
            return list(self.baseline)
        return greedy_answers(policy, self.tokenizer, [question(f) for f in self.facts])

    def evaluate(self, policy) -> dict[str, float]:
        answers = self.answers(policy)
        return {"win_rate": win_rate(answers, self.baseline, self.facts), "truthful": truthful_rate(answers, self.facts),
                "words": mean_words(answers)}


def _length_batches(tokenizer, instructions: list[str], batch_size: int, generator: torch.Generator):
    """Endless batches of instruction indices, each batch of one prompt length (a random bucket, weighted by size)."""
    groups = [idx for idx in by_prompt_length(tokenizer, instructions).values()]
    weights = torch.tensor([float(len(g)) for g in groups])
    while True:
        group = groups[int(torch.multinomial(weights, 1, generator=generator))]
        picks = torch.randint(0, len(group), (batch_size,), generator=generator).tolist()
        yield [group[i] for i in picks]


def ppo_train(policy: PolicyWithValue, ref, reward_model: RewardModel, tokenizer, facts: list[Fact],
              steps: int = 40, beta: float = 0.05, lr: float = 3e-4, batch_size: int = 32, epochs: int = 2,
              clip: float = 0.2, vf_coef: float = 0.1, gamma: float = 1.0, lam: float = 0.95,
              max_new_tokens: int = 12, judge: Judge | None = None, eval_every: int = 10, seed: int = 0,
              progress: bool = True, rewards_fn=None) -> RLHistory:
    """RLHF with PPO: ``steps`` rounds of sample, score, penalise, estimate advantages, update.

    Each round samples one answer to each of ``batch_size`` questions about ``facts``, scores it
    with ``reward_model``, builds per-token rewards with :func:`kl_penalized_rewards` (KL to
    ``ref``, coefficient ``beta``), advantages with :func:`gae` (whitened), and takes ``epochs``
    AdamW steps on ``ppo_policy_loss + vf_coef * value loss``. Per step it records the reward
    model's mean score (``reward``), the KL estimate ``sum_t (log pi - log pi_ref)`` averaged over
    answers (``kl``), and the answers' mean words; every ``eval_every`` steps (and at the end)
    ``judge.evaluate``. ``rewards_fn`` replaces :func:`kl_penalized_rewards` (for the exercise).
    Defined in lesson 09.
    """
    rewards_fn = kl_penalized_rewards if rewards_fn is None else rewards_fn
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    instructions = [question(f) for f in facts]
    batches = _length_batches(tokenizer, instructions, batch_size, generator)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    ref.eval()
    reward_model.eval()
    history = RLHistory()
    if judge is not None:
        history.evals.append({"step": 0, **judge.evaluate(policy.lm)})
    for step in tqdm(range(1, steps + 1), desc=f"PPO, beta={beta:g}", disable=not progress):
        start = time.perf_counter()
        idx = next(batches)
        rollout = sample_answers(policy.lm, tokenizer, [instructions[i] for i in idx], max_new_tokens,
                                 generator=generator)
        p = rollout.prompt_length
        policy.train()
        logits, new_values = policy.logits_and_values(rollout.ids)  # the first epoch's forward pass, and the old policy's
        with torch.no_grad():
            old_logprobs = _gather_answer(logits.detach(), rollout)
            values = new_values.detach()[:, p - 1:-1] * rollout.mask
            ref_logprobs = answer_logprobs(ref, rollout)
            scores = reward_model(rollout.ids)        # the score of the last real token
            rewards = rewards_fn(scores, old_logprobs, ref_logprobs, rollout.mask, beta)
            advantages, returns = gae(rewards, values, rollout.mask, gamma, lam)
            advantages = whiten(advantages, rollout.mask)
        for epoch in range(epochs):
            if epoch > 0:
                logits, new_values = policy.logits_and_values(rollout.ids)
            logprobs = _gather_answer(logits, rollout)
            value_loss = (((new_values[:, p - 1:-1] - returns) ** 2) * rollout.mask).sum() / rollout.mask.sum()
            loss = ppo_policy_loss(logprobs, old_logprobs, advantages, rollout.mask, clip) + vf_coef * value_loss
            _update(optimizer, policy, loss)
        policy.eval()
        history.seconds += time.perf_counter() - start
        kl = float(((old_logprobs - ref_logprobs) * rollout.mask).sum(dim=1).mean())
        history.steps.append({"step": step, "reward": float(scores.mean()), "kl": kl,
                              "words": mean_words(rollout.texts)})
        if judge is not None and (step % eval_every == 0 or step == steps):
            history.evals.append({"step": step, **judge.evaluate(policy.lm)})
    return history


def _update(optimizer, model, loss: torch.Tensor) -> None:
    """One optimiser step on ``loss``, the gradient's norm clipped to 1."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def _gather_answer(logits: torch.Tensor, rollout: Rollout) -> torch.Tensor:
    p = rollout.prompt_length
    logprobs = torch.log_softmax(logits[:, p - 1:-1].float(), dim=-1)
    return logprobs.gather(-1, rollout.ids[:, p:, None]).squeeze(-1) * rollout.mask


# --------------------------------------------------------------------------- DPO


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """The DPO loss (Rafailov et al. 2023): ``mean(-log sigmoid(beta * (chosen_ratio - rejected_ratio)))`` with
    ``chosen_ratio = policy_chosen_logps - ref_chosen_logps`` (and the same for rejected).

    All four inputs ``(B,)``: log-probabilities of whole answers. Returns a scalar. ``beta *
    chosen_ratio`` is the "implicit reward" DPO gives the chosen answer. Defined in lesson 09.
    """
    shapes = {t.shape for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)}
    if len(shapes) != 1 or policy_chosen_logps.dim() != 1:
        raise ValueError(f"the four log-probabilities must all be (B,), got shapes {sorted(map(tuple, shapes))}")
    logits = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * logits).mean()


def dpo_train(policy, ref, tokenizer, pairs, steps: int = 60, beta: float = 0.1, lr: float = 3e-4,
              batch_size: int = 32, judge: Judge | None = None, eval_every: int = 10, seed: int = 0,
              progress: bool = True, loss_fn=None) -> RLHistory:
    """Direct preference optimisation of ``policy`` (a DecoderLM) against the frozen ``ref`` on labelled ``pairs``
    (:class:`Preference` objects or ``(question, chosen, rejected)`` tuples).

    Each step draws ``batch_size`` pairs, computes the four answer log-probabilities and takes an AdamW
    step on ``loss_fn`` (default :func:`dpo_loss`). Per step: ``loss``, the implicit ``reward``
    margin ``beta * (chosen_ratio - rejected_ratio)``, and ``kl``, the mean of ``log pi - log pi_ref``
    over the chosen answers. ``judge`` as in :func:`ppo_train`. Defined in lesson 09.
    """
    loss_fn = dpo_loss if loss_fn is None else loss_fn
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    ref.eval()
    history = RLHistory()
    if judge is not None:
        history.evals.append({"step": 0, **judge.evaluate(policy)})
    for step in tqdm(range(1, steps + 1), desc=f"DPO, beta={beta:g}", disable=not progress):
        start = time.perf_counter()
        rows = torch.randint(0, len(pairs), (batch_size,), generator=generator).tolist()
        ids, mask, n = pair_batch(tokenizer, [pairs[i] for i in rows])
        with torch.no_grad():
            ref_logps = sequence_logprobs(ref, ids, mask)
        policy.train()
        logps = sequence_logprobs(policy, ids, mask)
        loss = loss_fn(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], beta)
        _update(optimizer, policy, loss)
        policy.eval()
        history.seconds += time.perf_counter() - start
        ratios = (logps - ref_logps).detach()
        history.steps.append({"step": step, "loss": float(loss.detach()), "reward": float(beta * (ratios[:n] - ratios[n:]).mean()),
                              "kl": float(ratios[:n].mean())})
        if judge is not None and (step % eval_every == 0 or step == steps):
            history.evals.append({"step": step, **judge.evaluate(policy)})
    return history


@torch.no_grad()
def pairs_dpo_loss(policy, ref, tokenizer, pairs, beta: float = 0.1, loss_fn=None) -> torch.Tensor:
    """The DPO loss of ``policy`` against ``ref`` on all ``pairs`` at once (no gradient), as :func:`dpo_train` computes it
    on a batch: a scalar float32. ``loss_fn`` replaces :func:`dpo_loss`. Defined in lesson 09."""
    loss_fn = dpo_loss if loss_fn is None else loss_fn
    ids, mask, n = pair_batch(tokenizer, pairs)
    logps, ref_logps = sequence_logprobs(policy, ids, mask), sequence_logprobs(ref, ids, mask)
    return loss_fn(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], beta)


@torch.no_grad()
def trl_dpo_loss(policy, ref, pairs, beta: float = 0.1, tokenizer_folder=None) -> torch.Tensor:
    """The same loss computed by ``trl``: its ``DPOTrainer`` (sigmoid loss, float32) on ``pairs`` as one batch.

    ``policy`` and ``ref`` (DecoderLMs) are copied into ``transformers`` Llama models; the pairs become
    a conversational data set that ``trl`` tokenizes itself with the checkpoint's chat template
    (``tokenizer_folder``, default the SFT model's). Returns trl's scalar loss, which equals
    :func:`pairs_dpo_loss` up to float32 rounding. Defined in lesson 09.
    """
    import tempfile

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from course_lib.models import to_hf_llama

    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in map(as_triple, pairs)]
    hf_tokenizer = AutoTokenizer.from_pretrained(SFT_FOLDER if tokenizer_folder is None else tokenizer_folder)
    with tempfile.TemporaryDirectory() as folder:
        args = DPOConfig(output_dir=folder, beta=beta, loss_type=["sigmoid"], per_device_train_batch_size=len(rows),
                         use_cpu=True, bf16=False, report_to=[], disable_tqdm=True)
        trainer = DPOTrainer(model=to_hf_llama(policy), ref_model=to_hf_llama(ref), args=args,
                             train_dataset=Dataset.from_list(rows), processing_class=hf_tokenizer)
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.eval()
        return trainer.compute_loss(trainer.model, batch).detach()


# --------------------------------------------------------------------------- GRPO on verifiable rewards


def verifiable_tasks(n_heldout: int = 100) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Sums and sorting as instructions whose answers can be checked exactly. Defined in lesson 09.

    ``{"sums": {"train": [("12 + 7 =", "19"), ...], "heldout": [...]}, "sorting": {...
    ("sort: 5 3 9 1 ->", "1 3 5 9") ...}}``: the instructions are the lines of pretraining, so the
    model's skill can carry over to the chat format. Held-out problems are lesson 02's held-out ones,
    which no training text contains.
    """
    corpus = build_corpus(0)

    def strip(rows):
        return [(p, a.strip()) for p, a in rows]

    return {"sums": {"train": strip(corpus.arithmetic_train), "heldout": strip(corpus.arithmetic_heldout[:n_heldout])},
            "sorting": {"train": strip(corpus.sorting_train), "heldout": strip(corpus.sorting_heldout[:n_heldout])}}


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages: each reward minus its group's mean, divided by the group's standard deviation plus ``eps``.

    ``rewards`` ``(n_prompts, group_size)`` float, one row per prompt; the standard deviation is
    ``torch.std``'s (with Bessel's correction, as trl's GRPOTrainer). Returns the same shape; a group whose
    answers all scored the same gets advantages 0. Defined in lesson 09.
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 2 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a float (n_prompts, group_size) tensor, got "
                         f"{getattr(rewards, 'dtype', type(rewards))} {tuple(getattr(rewards, 'shape', ()))}")
    if rewards.shape[1] < 2:
        raise ValueError(f"a group needs at least 2 answers, got group_size={rewards.shape[1]}")
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + eps)


def exact_reward(answers: list[str], targets: list[str]) -> torch.Tensor:
    """1.0 where an answer equals its target exactly (spaces at the ends ignored), else 0.0: ``(B,)``. Defined in lesson 09."""
    return torch.tensor([float(a.strip() == t.strip()) for a, t in zip(answers, targets)])


def grpo_train(policy, ref, tokenizer, pairs: list[tuple[str, str]], steps: int = 30, group_size: int = 8,
               prompts_per_step: int = 8, beta: float = 0.04, lr: float = 2e-4, clip: float = 0.2,
               max_new_tokens: int = 16, temperature: float = 1.0, heldout: list[tuple[str, str]] | None = None,
               eval_every: int = 10, seed: int = 0, progress: bool = True, advantages_fn=None) -> RLHistory:
    """Group-relative policy optimisation (Shao et al. 2024) with exact-match rewards.

    Each step draws ``prompts_per_step`` instructions of one prompt length, samples ``group_size``
    answers to each, rewards exact correctness (:func:`exact_reward`), turns rewards into
    :func:`group_advantages` (``advantages_fn`` replaces it), and takes one AdamW step on the clipped
    surrogate plus ``beta`` times the per-token KL estimate ``exp(ref - logp) - (ref - logp) - 1``
    (each averaged over an answer's tokens, then over answers). Records ``reward`` (mean
    correctness of the samples) and ``kl``; every ``eval_every`` steps the greedy ``accuracy`` on
    ``heldout``. Defined in lesson 09.
    """
    advantages_fn = group_advantages if advantages_fn is None else advantages_fn
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    instructions = [i for i, _ in pairs]
    batches = _length_batches(tokenizer, instructions, prompts_per_step, generator)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    ref.eval()
    history = RLHistory()
    if heldout is not None:
        history.evals.append({"step": 0, "accuracy": verifiable_accuracy(policy, tokenizer, heldout, max_new_tokens)})
    for step in tqdm(range(1, steps + 1), desc=f"GRPO, G={group_size}", disable=not progress):
        start = time.perf_counter()
        idx = [i for i in next(batches) for _ in range(group_size)]
        rollout = sample_answers(policy, tokenizer, [instructions[i] for i in idx], max_new_tokens, temperature,
                                 generator=generator)
        rewards = exact_reward(rollout.texts, [pairs[i][1] for i in idx])
        advantages = advantages_fn(rewards.view(prompts_per_step, group_size)).reshape(-1)
        with torch.no_grad():
            ref_logprobs = answer_logprobs(ref, rollout)
        policy.train()
        logprobs = answer_logprobs(policy, rollout)
        old_logprobs = logprobs.detach()  # one update per rollout: the sampling policy is the one being updated
        ratio = torch.exp(logprobs - old_logprobs)
        a = advantages[:, None]
        surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip, 1 + clip) * a)
        kl = torch.exp(ref_logprobs - logprobs) - (ref_logprobs - logprobs) - 1
        per_token = -(surrogate - beta * kl) * rollout.mask
        loss = (per_token.sum(dim=1) / rollout.mask.sum(dim=1)).mean()
        _update(optimizer, policy, loss)
        policy.eval()
        history.seconds += time.perf_counter() - start
        history.steps.append({"step": step, "reward": float(rewards.mean()),
                              "kl": float(((old_logprobs - ref_logprobs) * rollout.mask).sum(dim=1).mean())})
        if heldout is not None and (step % eval_every == 0 or step == steps):
            history.evals.append({"step": step, "accuracy": verifiable_accuracy(policy, tokenizer, heldout, max_new_tokens)})
    return history


def verifiable_accuracy(policy, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int = 16) -> float:
    """Greedy exact-match accuracy on ``(instruction, answer)`` pairs. Defined in lesson 09."""
    answers = greedy_answers(policy, tokenizer, [i for i, _ in pairs], max_new_tokens)
    return float(exact_reward(answers, [a for _, a in pairs]).mean())


# --------------------------------------------------------------------------- the SFT model every method starts from


def sft_pairs(n_per_task: int = 1000, seed: int = 0) -> list[tuple[str, str]]:
    """Demonstrations for the instruction-tuned starting point. Defined in lesson 09.

    Questions about the training people answered truthfully, half in one word and half in a full
    sentence (the demonstrators did not know the rule prefers short answers), sums and sorting,
    ``n_per_task`` of each kind, shuffled.
    """
    rng = random.Random(f"09/sft/{seed}")
    facts = question_facts()["train"]
    questions = []
    for f in facts:
        questions.append((question(f), f.obj if rng.random() < 0.5 else fact_sentence(f, 0)))
    rng.shuffle(questions)
    tasks = verifiable_tasks()
    pairs = questions[:n_per_task] + tasks["sums"]["train"][:n_per_task] + tasks["sorting"]["train"][:n_per_task]
    rng.shuffle(pairs)
    return pairs


def sft_model(base, tokenizer, steps: int = 300, lr: float = 1e-3, batch_size: int = 32, seed: int = 0,
              progress: bool = True):
    """A copy of ``base`` fine-tuned on :func:`sft_pairs` (all parameters, lesson 08's loop).
    Returns ``(model, history)``. Defined in lesson 09."""
    model = copy.deepcopy(base)
    model.requires_grad_(True)
    history = finetune(model, tokenizer, sft_pairs(), steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                       progress=progress)
    return model, history


# --------------------------------------------------------------------------- the lesson's recipes and the committed long runs

#: The settings the lesson trains with; ``bench/rlhf.py`` runs the same ones for longer and records the curves
#: (tests check that the recording was made with these).
RECIPES = {
    "sft": {"steps": 300, "lr": 1e-3, "batch_size": 32, "seed": 0},
    "reward_model": {"steps": 100, "lr": 1e-3, "batch_size": 16, "seed": 0},
    "ppo": {"beta": 0.1, "lr": 1e-4, "batch_size": 32, "epochs": 2, "clip": 0.2, "vf_coef": 0.1, "lam": 0.95, "seed": 0},
    "ppo_no_kl": {"beta": 0.0, "lr": 1e-4, "batch_size": 32, "epochs": 2, "clip": 0.2, "vf_coef": 0.1, "lam": 0.95,
                  "seed": 0},
    "dpo": {"beta": 0.1, "lr": 1e-4, "batch_size": 16, "seed": 0},
    "grpo": {"group_size": 8, "prompts_per_step": 8, "beta": 0.04, "lr": 1e-4, "temperature": 0.7, "seed": 0},
}

#: Steps the notebook runs; the long runs of ``bench/rlhf.py`` run ``LONG_STEPS``.
LESSON_STEPS = {"ppo": 15, "ppo_no_kl": 15, "dpo": 30, "grpo": 20}
LONG_STEPS = 300

SFT_FOLDER = Path(__file__).resolve().parent / "assets" / "rlhf" / "sft"
CURVES_FILE = Path(__file__).resolve().parent / "assets" / "rlhf" / "long_runs.json"


def load_sft(folder=None):
    """The lesson's starting point: ``course-lm-small`` after :func:`sft_model` with ``RECIPES["sft"]``, as saved by
    ``bench/rlhf.py`` (``course_lib/assets/rlhf/sft``). Defined in lesson 09."""
    from course_lib.models import load_pretrained

    return load_pretrained(SFT_FOLDER if folder is None else folder)


def grpo_pairs() -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """GRPO's training instructions (sums and sorting, mixed) and its held-out sets ``{"sums", "sorting"}``.
    Defined in lesson 09."""
    tasks = verifiable_tasks()
    rng = random.Random("09/grpo")
    pairs = tasks["sums"]["train"] + tasks["sorting"]["train"]
    rng.shuffle(pairs)
    return pairs, {name: task["heldout"] for name, task in tasks.items()}


def long_runs(path=None) -> dict:
    """The committed long runs of ``bench/rlhf.py`` (``course_lib/assets/rlhf/long_runs.json``) as a dict.
    Defined in lesson 09."""
    import json

    return json.loads(Path(CURVES_FILE if path is None else path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- display helpers (lesson 09)


def draw_pipeline(ax) -> None:
    """The InstructGPT pipeline as boxes and arrows on ``ax``: demonstrations -> SFT; comparisons -> reward model;
    SFT + reward model -> PPO (with a KL leash to SFT); and DPO's shortcut from comparisons straight to the policy.
    Defined in lesson 09."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    boxes = {"demos": (0.0, 2.0, "demonstrations\n(question, answer)"), "sft": (3.0, 2.0, "1. SFT model\n(lesson 08)"),
             "pairs": (0.0, 0.6, "comparisons\n(question, chosen, rejected)"), "rm": (3.0, 0.6, "2. reward model\nBradley-Terry"),
             "ppo": (6.2, 1.3, "3. PPO policy\nreward - β·KL(π‖π_SFT)"), "dpo": (6.2, -0.3, "DPO policy\n(no reward model,\nno sampling)")}
    for x, y, text in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), 2.3, 0.9, boxstyle="round,pad=0.05", facecolor="#eef3fb", edgecolor="black"))
        ax.text(x + 1.15, y + 0.45, text, ha="center", va="center", fontsize=8.5)
    arrows = [("demos", "sft", ""), ("pairs", "rm", ""), ("sft", "ppo", "start + KL leash"), ("rm", "ppo", "reward"),
              ("pairs", "dpo", "DPO's shortcut")]
    for a, b, label in arrows:
        (xa, ya, _), (xb, yb, _) = boxes[a], boxes[b]
        start, end = (xa + 2.35, ya + 0.45), (xb - 0.05, yb + 0.45)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="dimgrey"))
        if label:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, label, ha="center", fontsize=7.5, color="dimgrey")
    ax.set_xlim(-0.2, 8.7)
    ax.set_ylim(-0.5, 3.1)
    ax.axis("off")
    ax.set_title("RLHF as InstructGPT did it (1-2-3), and DPO's shortcut")


def smooth(values: list[float], window: int = 10) -> list[float]:
    """The running mean of ``values`` over the last ``window`` entries (fewer at the start). Defined in lesson 09."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_training(history: RLHistory, axes, label: str, keys=("reward", "kl"), evaluation: str = "win_rate",
                  window: int = 1, **style) -> None:
    """One run on three axes: ``keys`` per step (smoothed over ``window`` steps) on the first two, ``evaluation``
    at each evaluation on the third. ``history`` is an :class:`RLHistory` or a long run's dict. Defined in lesson 09."""
    steps = history["steps"] if isinstance(history, dict) else history.steps
    evals = history["evals"] if isinstance(history, dict) else history.evals
    for ax, key in zip(axes, keys):
        ax.plot([s["step"] for s in steps], smooth([s[key] for s in steps], window), label=label, **style)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
    axes[-1].plot([e["step"] for e in evals], [e[evaluation] for e in evals], marker="o", ms=3, label=label, **style)
    axes[-1].set_xlabel("step")
    axes[-1].set_ylabel(evaluation.replace("_", " "))


def comparison_rows(runs: dict, sft_epoch_seconds: float) -> list[dict]:
    """One row per run for the lesson's table: the last steps' mean reward and KL, the last evaluation, the wall time
    and its ratio to one SFT epoch. ``runs`` maps a name to an :class:`RLHistory` or a long run's dict. Defined in lesson 09."""
    rows = []
    for name, run in runs.items():
        steps = run["steps"] if isinstance(run, dict) else run.steps
        evals = run["evals"] if isinstance(run, dict) else run.evals
        seconds = run["seconds"] if isinstance(run, dict) else run.seconds
        last = steps[-max(1, len(steps) // 5):]
        final = evals[-1]
        outcome = final.get("win_rate", final.get("accuracy"))
        rows.append({"method": name, "steps": len(steps), "reward": sum(s["reward"] for s in last) / len(last),
                     "kl": sum(s["kl"] for s in last) / len(last),
                     "measure": "win rate" if "win_rate" in final else "sums accuracy", "start": evals[0].get(
                         "win_rate", evals[0].get("accuracy")), "end": outcome, "seconds": seconds,
                     "sft_epochs": seconds / sft_epoch_seconds})
    return rows


def show_comparison(rows: list[dict]) -> None:
    """Print :func:`comparison_rows` as a table. Defined in lesson 09."""
    print(f"{'method':<12}{'steps':>6}{'reward':>9}{'KL':>7}  {'true measure':<14}{'start':>7}{'end':>7}"
          f"{'seconds':>9}{'SFT epochs':>12}")
    for r in rows:
        print(f"{r['method']:<12}{r['steps']:>6}{r['reward']:>9.2f}{r['kl']:>7.2f}  {r['measure']:<14}{r['start']:>7.2f}"
              f"{r['end']:>7.2f}{r['seconds']:>9.1f}{r['sft_epochs']:>12.2f}")


def sft_epoch_steps() -> int:
    """Steps in one epoch of the SFT recipe: ``ceil(len(sft_pairs()) / batch_size)``. Defined in lesson 09."""
    return math.ceil(len(sft_pairs()) / RECIPES["sft"]["batch_size"])
