"""Retrieval-augmented generation (RAG): documents, chunks, prompts and a reader model (lesson 11).

A language model knows only what its training text held. ``World.unseen_facts`` are facts
about people who appear in no training text, so ``course-lm`` cannot know them: asked
"Where does Boga Narokes live?" it can only guess. RAG puts the missing text into the prompt
and lets a *reader* model answer from it. This module holds everything except the search:

- **Documents** (:class:`Passage`, :func:`passages`): each person's facts written as one short
  biography, with a stable id; :func:`questions` asks about each fact and names the passage
  that answers it (the *gold* passage).
- **Chunks** (:class:`Chunk`, :func:`chunk_words`, :func:`chunk_sentences`,
  :func:`chunk_passages`): long documents are cut into pieces before they are indexed; a chunk
  id names its passage, so :func:`gold_chunk_ids` can name the chunk that holds an answer.
- **Prompts** (:func:`build_prompt`): lesson 08's chat format with the passages in front of the
  question,

      Instruction: Context:
      Boga Narokes lives in Quenta. Boga Narokes works as a baker. ...
      Question: Where does Boga Narokes live?
      Response:

  with as many passages, in rank order, as fit a token budget.
- **The reader** (:func:`reader_examples`, :func:`load_reader`): ``course-lm`` fine-tuned with
  lesson 08's harness to answer from its context. It trains on people it *has* seen, with
  the gold passage among distractors; some contexts are empty (answer from memory) and some
  passages say something other than pre-training did (the context wins), so that it learns
  to read rather than to remember.
- **Measuring** (:func:`reader_answers`, :func:`reader_accuracy`): exact match for any list of
  contexts per question: none (the model alone), the gold passage (the ceiling), the gold
  passage among distractors, or whatever a retriever found.
- **Data newer than the model** (:func:`moved_facts`): people move to another city after
  training; without retrieval the reader gives the old city, with the new passage the new one.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib.data import QUESTIONS, TEMPLATES, Fact, World, fact_sentence
from course_lib.evaluation import complete
from course_lib.finetune import chat_prompt, collate, response_loss
from course_lib.models import load_pretrained
from course_lib.tokenizer import BPETokenizer
from course_lib.train import TrainConfig, train

ASSETS = Path(__file__).resolve().parent / "assets" / "rag"
READER = ASSETS / "reader"

#: Token budget of a reader prompt: with ``<bos>`` and an answer of up to 14 tokens it stays
#: within ``course-lm``'s 256 positions.
MAX_PROMPT_TOKENS = 240


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class Passage:
    """One document of the knowledge base: a short biography of one person. Defined in lesson 11.

    ``id`` (str) is stable (it comes from the name: ``"boga-narokes"``), ``person`` (str) the
    full name, ``text`` (str) the facts as sentences.
    """

    id: str
    person: str
    text: str


def passage_id(person: str) -> str:
    """The id of ``person``'s passage: the name in lower case, words joined by ``-``. Defined in lesson 11."""
    if not isinstance(person, str) or not re.fullmatch(r"[A-Za-z]+( [A-Za-z]+)*", person):
        raise ValueError(f"person must be a name of letters and single spaces, got {person!r}")
    return person.lower().replace(" ", "-")


def write_passage(person: str, facts: list[Fact]) -> Passage:
    """``person``'s biography: each fact (in the given order) as a sentence of the world's templates.

    The template of each fact is drawn from a generator seeded with the name, so the same
    person and facts always give the same text. Every fact must be about ``person``.
    Returns a :class:`Passage`. Defined in lesson 11.
    """
    if not facts or any(not isinstance(f, Fact) or f.subject != person for f in facts):
        raise ValueError(f"facts must be a non-empty list of Facts whose subject is {person!r}")
    rng = random.Random(f"11/passage/{person}")
    sentences = [fact_sentence(f, rng.randrange(len(TEMPLATES[f.relation]))) for f in facts]
    return Passage(passage_id(person), person, " ".join(sentences))


def passages(world: World, people: list[str] | None = None) -> list[Passage]:
    """One :class:`Passage` per person of ``people`` (default: every seen, then every unseen person).

    Args:
        world: a :class:`course_lib.data.World`.
        people: full names of people of ``world``.
    Returns:
        list of :class:`Passage`, in the order of ``people``. Defined in lesson 11.
    """
    people = world.people + world.unseen_people if people is None else people
    known = set(world.people) | set(world.unseen_people)
    unknown = [p for p in people if p not in known]
    if unknown:
        raise ValueError(f"people must be people of the world (world.people or world.unseen_people), got {unknown[:3]}")
    return [write_passage(p, world.facts_about(p)) for p in people]


def questions(world: World, people: list[str]) -> list[tuple[str, str, str]]:
    """A question about every fact of ``people``: ``(question, answer, gold passage id)``.

    ``("Where does Boga Narokes live?", "Quenta", "boga-narokes")``: the question is the
    world's question form (:data:`course_lib.data.QUESTIONS`, as in ``qa_heldout``), the answer
    the fact's object, without a full stop. Defined in lesson 11.
    """
    known = set(world.people) | set(world.unseen_people)
    if isinstance(people, str) or any(p not in known for p in people):
        raise ValueError("people must be a list of names from world.people or world.unseen_people")
    return [(QUESTIONS[f.relation].format(s=f.subject), f.obj, passage_id(p)) for p in people for f in world.facts_about(p)]


# --------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class Chunk:
    """A piece of a passage: ``id`` is ``"<passage id>#<number>"`` (str), ``passage_id`` (str), ``text`` (str).
    Defined in lesson 11."""

    id: str
    passage_id: str
    text: str


def chunk_words(text: str, size: int, overlap: int = 0) -> list[str]:
    """Cut ``text`` into pieces of ``size`` words, each starting ``size - overlap`` words after the last.

    Words are separated by white space and joined back with one space. The last piece may be
    shorter; no piece lies wholly inside the one before it. An empty text gives ``[]``.

    Args:
        text: str.
        size: int >= 1, words per piece.
        overlap: int, ``0 <= overlap < size``, words shared by neighbouring pieces.
    Returns:
        list of str. Defined in lesson 11.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < size:
        raise ValueError(f"overlap must be an int with 0 <= overlap < size={size}, got {overlap!r}")
    words = text.split()
    pieces = []
    for start in range(0, len(words), size - overlap):
        pieces.append(" ".join(words[start : start + size]))
        if start + size >= len(words):
            break
    return pieces


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: each ends with ``.``, ``!`` or ``?`` followed by white space or the end.
    Defined in lesson 11."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def chunk_sentences(text: str, max_words: int) -> list[str]:
    """Pack whole sentences of ``text``, in order, into pieces of at most ``max_words`` words.

    A sentence is never cut: one longer than ``max_words`` becomes a piece of its own.

    Args:
        text: str.
        max_words: int >= 1.
    Returns:
        list of str. Defined in lesson 11.
    """
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1:
        raise ValueError(f"max_words must be an int >= 1, got {max_words!r}")
    pieces, current = [], []
    for sentence in split_sentences(text):
        if current and len(" ".join(current + [sentence]).split()) > max_words:
            pieces.append(" ".join(current))
            current = []
        current.append(sentence)
    if current:
        pieces.append(" ".join(current))
    return pieces


def chunk_passages(passages: list[Passage], split) -> list[Chunk]:
    """Every passage cut by ``split`` (a function ``str -> list[str]``) into :class:`Chunk` s.

    ``chunk_passages(ps, lambda text: chunk_words(text, 12, 4))``: the chunks of each passage
    are numbered from 0, ``"boga-narokes#0"``, ``"boga-narokes#1"``, ... Defined in lesson 11.
    """
    chunks = []
    for passage in passages:
        if not isinstance(passage, Passage):
            raise ValueError(f"passages must be a list of Passage, got {type(passage).__name__}")
        chunks += [Chunk(f"{passage.id}#{i}", passage.id, text) for i, text in enumerate(split(passage.text))]
    return chunks


def gold_chunk_ids(chunks: list[Chunk], passage_id: str, answer: str) -> list[str]:
    """Ids of the chunks of passage ``passage_id`` that hold ``answer`` as a whole word (or words).

    The chunks a retriever should find for a question whose gold passage is ``passage_id``.
    Defined in lesson 11.
    """
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"answer must be a non-empty str, got {answer!r}")
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(answer)}(?![A-Za-z0-9])")
    return [c.id for c in chunks if c.passage_id == passage_id and pattern.search(c.text)]


# --------------------------------------------------------------------------- prompts


def reader_instruction(passages_text: list[str], question: str) -> str:
    """The user's turn of a reader prompt: ``"Context:\\n<passage>\\n...\\nQuestion: <question>"``.

    With no passages it is ``"Context:\\nQuestion: <question>"``. Defined in lesson 11.
    """
    if isinstance(passages_text, str) or not all(isinstance(p, str) for p in passages_text):
        raise ValueError("passages_text must be a list of str")
    return "\n".join(["Context:", *passages_text, f"Question: {question}"])


def fit_passages(tokenizer, passages_text: list[str], question: str, max_tokens: int) -> list[str]:
    """The passages that :func:`build_prompt` keeps: the first ``k`` of ``passages_text`` for the largest
    ``k`` whose prompt has at most ``max_tokens`` tokens (``<bos>`` not counted). Defined in lesson 11."""
    kept = []
    for passage in passages_text:
        if len(tokenizer.encode(chat_prompt(reader_instruction(kept + [passage], question)))) > max_tokens:
            break
        kept.append(passage)
    return kept


def build_prompt(tokenizer, passages_text: list[str], question: str, max_tokens: int = MAX_PROMPT_TOKENS) -> str:
    """The reader's prompt: lesson 08's chat format around the passages and the question.

    Passages are added in rank order while the prompt stays within ``max_tokens`` tokens of
    ``tokenizer`` (``<bos>`` not counted); the first passage that does not fit whole is left
    out, and so is every one after it.

    Args:
        tokenizer: the course tokenizer.
        passages_text: list of str, best first.
        question: str.
        max_tokens: int, the budget.
    Returns:
        str ``"Instruction: Context:\\n...\\nQuestion: ...\\nResponse:"``. Defined in lesson 11.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ValueError(f"max_tokens must be an int, got {max_tokens!r}")
    empty = chat_prompt(reader_instruction([], question))
    if len(tokenizer.encode(empty)) > max_tokens:
        raise ValueError(f"max_tokens must be at least {len(tokenizer.encode(empty))}, the question alone, got {max_tokens}")
    return chat_prompt(reader_instruction(fit_passages(tokenizer, passages_text, question, max_tokens), question))


def with_distractors(tokenizer, gold: str, distractors: list[str], question: str, rng: random.Random,
                     max_tokens: int = MAX_PROMPT_TOKENS) -> list[str]:
    """``gold`` and ``distractors`` in a random order, as many distractors as fit ``max_tokens``.

    Distractors are dropped (the last of the list first) until the prompt fits; the gold
    passage always stays. Returns the context, a list of str. Defined in lesson 11.
    """
    distractors = list(distractors)
    while True:
        context = [gold, *distractors]
        rng.shuffle(context)
        if len(fit_passages(tokenizer, context, question, max_tokens)) == len(context):
            return context
        if not distractors:
            raise ValueError(f"the gold passage alone does not fit max_tokens={max_tokens}")
        distractors.pop()


# --------------------------------------------------------------------------- training the reader


def _values(world: World) -> dict[str, list[str]]:
    """Every value each relation takes in the world, sorted: ``{"lives_in": [cities...], ...}``."""
    values: dict[str, set[str]] = {}
    for f in world.facts + world.unseen_facts:
        values.setdefault(f.relation, set()).add(f.obj)
    return {relation: sorted(objs) for relation, objs in values.items()}


def reader_examples(tokenizer, world: World, people: list[str], n: int, seed: int = 0, no_context: float = 0.2,
                    counterfactual: float = 0.3, max_distractors: int = 3,
                    max_tokens: int = MAX_PROMPT_TOKENS) -> list[tuple[str, str]]:
    """``n`` training pairs ``(instruction, answer)`` for the reader, about facts of ``people``.

    Each pair asks about a random fact of a random person of ``people``:

    - with probability ``no_context`` the context is empty: the answer must come from memory;
    - otherwise the context is the person's passage among 0 to ``max_distractors`` passages of
      other people of ``people`` (as many as fit ``max_tokens``), in a random order; and with
      probability ``counterfactual`` the fact asked about is given another value of its relation,
      in the passage and in the answer, so that reading pays and remembering does not.

    Returns a list of ``(instruction, answer)`` for :func:`course_lib.finetune.finetune`. Defined in lesson 11.
    """
    if not 0 <= no_context <= 1 or not 0 <= counterfactual <= 1:
        raise ValueError(f"no_context and counterfactual must be probabilities in [0, 1], got {no_context}, {counterfactual}")
    if len(people) < max_distractors + 1:
        raise ValueError(f"people must hold at least max_distractors + 1 = {max_distractors + 1} names")
    rng = random.Random(f"11/reader/{seed}")
    values = _values(world)
    texts = {p.person: p.text for p in passages(world, people)}
    pairs = []
    for _ in range(n):
        person = rng.choice(people)
        facts = world.facts_about(person)
        asked = rng.randrange(len(facts))
        fact = facts[asked]
        question = QUESTIONS[fact.relation].format(s=person)
        if rng.random() < no_context:
            pairs.append((reader_instruction([], question), fact.obj))
            continue
        gold = texts[person]
        if rng.random() < counterfactual:  # every fact of the passage gets another value
            facts = [Fact(person, f.relation, rng.choice([v for v in values[f.relation] if v != f.obj])) for f in facts]
            fact = facts[asked]
            gold = write_passage(person, facts).text
        others = rng.sample([p for p in people if p != person], rng.randrange(max_distractors + 1))
        context = with_distractors(tokenizer, gold, [texts[p] for p in others], question, rng, max_tokens)
        pairs.append((reader_instruction(context, question), fact.obj))
    return pairs


def length_groups(tokenizer, pairs: list[tuple[str, str]], batch_size: int) -> list[list[int]]:
    """Indices of ``pairs`` in groups of ``batch_size`` whose prompts have about the same number of tokens.

    A batch drawn from one group pads little: training reads fewer tokens than with random
    batches padded to their longest prompt. Defined in lesson 11.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(pairs):
        raise ValueError(f"batch_size must be an int from 1 to len(pairs)={len(pairs)}, got {batch_size!r}")
    order = sorted(range(len(pairs)), key=lambda i: (len(tokenizer.encode(pairs[i][0])), i))
    return [order[start : start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]


def train_reader(model, tokenizer, pairs: list[tuple[str, str]], steps: int, lr: float = 1e-3, batch_size: int = 16,
                 seed: int = 0, progress: bool = True):
    """Fine-tune ``model`` on ``(instruction, answer)`` pairs: lesson 08's :func:`course_lib.finetune.finetune`,
    but each step draws one of the :func:`length_groups` at random instead of random pairs.

    Same loss (:func:`course_lib.finetune.response_loss`, the answer tokens only), loop and
    schedule (warm-up over a tenth of the steps, cosine decay to ``lr / 10``). Returns the
    :class:`course_lib.train.History`; the model is left in eval mode. Defined in lesson 11.
    """
    groups = length_groups(tokenizer, pairs, batch_size)
    config = TrainConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 10), eval_every=steps,
                         seed=seed, progress=progress)

    def get_batch(generator):
        group = groups[int(torch.randint(0, len(groups), (1,), generator=generator))]
        return collate(tokenizer, [pairs[i] for i in group])

    return train(model, response_loss, get_batch, config)


# --------------------------------------------------------------------------- measuring the reader


def distractor_contexts(tokenizer, world: World, items: list[tuple[str, str, str]], pool: list[str], k: int = 3,
                        seed: int = 0, max_tokens: int = MAX_PROMPT_TOKENS) -> list[list[str]]:
    """For each question of ``items``, its gold passage among up to ``k`` passages of other people of ``pool``.

    Random order and distractors (seeded); distractors are dropped until the prompt fits
    ``max_tokens``. Returns one context (list of str) per item. Defined in lesson 11.
    """
    rng = random.Random(f"11/distractors/{seed}")
    by_id = {p.id: p for p in passages(world, pool)}
    contexts = []
    for question, _, gold_id in items:
        if gold_id not in by_id:
            raise ValueError(f"the gold passage {gold_id!r} must belong to a person of pool")
        others = rng.sample([p.text for pid, p in by_id.items() if pid != gold_id], k)
        contexts.append(with_distractors(tokenizer, by_id[gold_id].text, others, question, rng, max_tokens))
    return contexts


def reader_answers(model, tokenizer, items: list[tuple[str, str, str]], contexts: list[list[str]] | None = None,
                   max_tokens: int = MAX_PROMPT_TOKENS, max_new_tokens: int = 12, progress: bool = False) -> list[str]:
    """The reader's greedy answer to each question of ``items`` with its context (``None``: no context).

    Args:
        items: ``(question, answer, gold passage id)`` tuples, as :func:`questions` gives.
        contexts: one list of passage texts (best first) per item, or ``None`` for empty contexts.
    Returns:
        list of str, each answer without its leading space, cut at ``<eos>``. Defined in lesson 11.
    """
    contexts = [[] for _ in items] if contexts is None else contexts
    if len(contexts) != len(items):
        raise ValueError(f"contexts must hold one list of passages per item: {len(items)}, got {len(contexts)}")
    prompts = [build_prompt(tokenizer, context, question, max_tokens) for (question, _, _), context in zip(items, contexts)]
    return [a.removeprefix(" ") for a in complete(model, tokenizer, prompts, max_new_tokens, progress=progress)]


def reader_accuracy(model, tokenizer, items: list[tuple[str, str, str]], contexts: list[list[str]] | None = None,
                    max_tokens: int = MAX_PROMPT_TOKENS, progress: bool = False) -> dict:
    """Exact match of the reader on ``items`` with ``contexts`` (one list of passages per item; ``None``: none).

    Returns ``{"correct": int, "total": int, "exact_match": float, "per_question": list of 0/1}``.
    Defined in lesson 11.
    """
    if not items:
        raise ValueError("reader_accuracy needs at least one (question, answer, gold id) item")
    got = reader_answers(model, tokenizer, items, contexts, max_tokens, progress=progress)
    per_question = [int(g == answer) for g, (_, answer, _) in zip(got, items)]
    return {"correct": sum(per_question), "total": len(items), "exact_match": sum(per_question) / len(items),
            "per_question": per_question}


# --------------------------------------------------------------------------- data newer than the model


def moved_facts(world: World, people: list[str], seed: int = 0) -> list[tuple[Fact, Fact]]:
    """Each person of ``people`` moves to another city of the world: ``(old lives_in fact, new lives_in fact)``.

    The new city is drawn (seeded) among the world's cities other than the old one. Defined in lesson 11.
    """
    rng = random.Random(f"11/moved/{seed}")
    pairs = []
    for person in people:
        old = [f for f in world.facts_about(person) if f.relation == "lives_in"]
        if not old:
            raise ValueError(f"people must have a lives_in fact; {person!r} has none")
        pairs.append((old[0], Fact(person, "lives_in", rng.choice([c for c in world.cities if c != old[0].obj]))))
    return pairs


def updated_passage(world: World, old: Fact, new: Fact) -> Passage:
    """The passage of ``old.subject`` with the fact ``old`` replaced by ``new``. Defined in lesson 11."""
    facts = world.facts_about(old.subject)
    if old not in facts or (new.subject, new.relation) != (old.subject, old.relation):
        raise ValueError("old must be a fact of the world and new the same subject and relation with another value")
    return write_passage(old.subject, [new if f == old else f for f in facts])


# --------------------------------------------------------------------------- the shipped reader


def load_reader(folder=READER):
    """The reader that ``bench/rag.py`` trained: ``(model, tokenizer)``, the model in eval mode.

    ``folder`` holds ``config.json``, ``model.safetensors`` and the tokenizer files. Defined in lesson 11.
    """
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no reader at {folder}: expected config.json, model.safetensors and tokenizer.json "
                                "(run bench/rag.py to train one)")
    return load_pretrained(folder), BPETokenizer.load(folder)
