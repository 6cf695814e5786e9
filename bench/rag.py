"""Lesson 11's reader: ``course-lm`` fine-tuned to answer from retrieved passages, and what it scores.

    .venv/bin/python bench/rag.py                          # writes course_lib/assets/rag/ (a few minutes on 2 threads)
    .venv/bin/python bench/rag.py --steps 5 --out /tmp/rag  # a smoke test

The reader is trained with lesson 08's harness (:func:`course_lib.finetune.finetune`, full
fine-tuning) on :func:`course_lib.rag.reader_examples` about the *seen* people (those of the
training text): the gold passage among 0 to 3 distractors, some empty contexts, some passages
with a changed value. It is then measured, by exact match, on every question about the
*unseen* people (``World.unseen_facts``, in no training text), with three kinds of context:

- ``no_retrieval``: an empty context, the model alone (it cannot know these facts: near chance);
- ``gold``: the gold passage alone (the ceiling of any retriever);
- ``gold_distractors``: the gold passage among up to 3 passages of other unseen people.

and on the changed-facts experiment ("data newer than the model"): the seen people whose city
``course-lm`` names correctly without context move to another city; the reader is asked where
they live without retrieval (share answering the old city) and with the new passage (share
answering the new city).

``results.json`` keeps the settings, the training time and loss, and for every measurement
the count, total, exact match and the 0/1 of every question, under ``"unseen"`` and
``"moved"``. Retrieval settings (BM25, dense top-k) go into a ``"retrieval"`` section
added by ``course_lib.retrieval``'s bench, measured with the same
:func:`course_lib.rag.reader_accuracy`. Seconds depend on the machine; losses and answers do not
(same seed, CPU, same thread count).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib import rag  # noqa: E402
from course_lib.data import build_corpus, question_answer  # noqa: E402
from course_lib.evaluation import complete  # noqa: E402
from course_lib.finetune import finetune, install_chat_template  # noqa: E402
from course_lib.models import load_pretrained, save_pretrained  # noqa: E402
from course_lib.tokenizer import course_tokenizer  # noqa: E402

BASE = "course-lm"
STEPS = 600
LR = 3e-4
BATCH_SIZE = 16
SEED = 0
N_EXAMPLES = 8000          # training pairs drawn once; each step samples BATCH_SIZE of them
NO_CONTEXT = 0.2           # share of training pairs with an empty context
COUNTERFACTUAL = 0.3       # share of the others whose asked fact has another value
MAX_DISTRACTORS = 3
OUT = rag.ASSETS


def known_cities(model, tokenizer, world) -> list[str]:
    """The seen people whose city ``model`` names right, asked in pre-training's format ("Question: ... Answer:")."""
    facts = [f for f in world.facts if f.relation == "lives_in"]
    pairs = [question_answer(f) for f in facts]
    got = complete(model, tokenizer, [p for p, _ in pairs], max_new_tokens=12)
    return [f.subject for f, g, (_, a) in zip(facts, got, pairs) if g == a]


def measure(model, tokenizer, items, contexts) -> dict:
    """:func:`course_lib.rag.reader_accuracy`, printed."""
    result = rag.reader_accuracy(model, tokenizer, items, contexts, progress=False)
    print(f"  {result['correct']}/{result['total']} = {result['exact_match']:.3f}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"fine-tuning steps (default {STEPS})")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--no-context", type=float, default=NO_CONTEXT)
    parser.add_argument("--counterfactual", type=float, default=COUNTERFACTUAL)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for results.json and reader/")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    world = build_corpus(0).world
    tokenizer = course_tokenizer(0)
    model = load_pretrained(BASE)

    # the changed-facts experiment: people whose city the base model knows
    movers = known_cities(model, tokenizer, world)
    moved = rag.moved_facts(world, movers, seed=SEED)
    print(f"{BASE} names the city of {len(movers)} of {len(world.people)} seen people", flush=True)

    # training
    pairs = rag.reader_examples(tokenizer, world, world.people, N_EXAMPLES, seed=SEED, no_context=args.no_context,
                                counterfactual=args.counterfactual, max_distractors=MAX_DISTRACTORS)
    torch.manual_seed(SEED)
    history = finetune(model, tokenizer, pairs, steps=args.steps, lr=args.lr, batch_size=BATCH_SIZE, seed=SEED)
    print(f"trained in {history.seconds:.0f} s, final loss {history.train_loss[-1]:.3f}", flush=True)
    folder = save_pretrained(model, args.out / "reader")
    tokenizer.save(folder)
    install_chat_template(folder)

    # the unseen people
    items = rag.questions(world, world.unseen_people)
    gold = {p.id: p.text for p in rag.passages(world, world.unseen_people)}
    contexts = {
        "no_retrieval": None,
        "gold": [[gold[gold_id]] for _, _, gold_id in items],
        "gold_distractors": rag.distractor_contexts(tokenizer, world, items, world.unseen_people, k=MAX_DISTRACTORS,
                                                    seed=SEED),
    }
    unseen = {}
    start = time.perf_counter()
    for name, context in contexts.items():
        print(f"unseen people, {name}:", flush=True)
        unseen[name] = measure(model, tokenizer, items, context)
    distractors = [len(c) - 1 for c in contexts["gold_distractors"]]

    # the changed facts
    moved_items = [(rag.questions(world, [old.subject])[0][0], new.obj, rag.passage_id(old.subject)) for old, new in moved]
    new_passages = [[rag.updated_passage(world, old, new).text] for old, new in moved]
    answers = {"no_retrieval": rag.reader_answers(model, tokenizer, moved_items, None),
               "new_passage": rag.reader_answers(model, tokenizer, moved_items, new_passages)}
    changed = {"people": len(moved), "pairs": [[old.subject, old.obj, new.obj] for old, new in moved]}
    for name, got in answers.items():
        old_ok = [int(g == old.obj) for g, (old, _) in zip(got, moved)]
        new_ok = [int(g == new.obj) for g, (_, new) in zip(got, moved)]
        changed[name] = {"old": sum(old_ok), "new": sum(new_ok), "total": len(moved), "old_share": sum(old_ok) / len(moved),
                         "new_share": sum(new_ok) / len(moved), "per_question_old": old_ok, "per_question_new": new_ok}
        print(f"moved people, {name}: old city {sum(old_ok)}/{len(moved)}, new city {sum(new_ok)}/{len(moved)}", flush=True)
    eval_seconds = time.perf_counter() - start

    record = {
        "base": BASE,
        "method": "full fine-tuning (course_lib.finetune.finetune)",
        "parameters": model.num_parameters(),
        "settings": {"steps": args.steps, "lr": args.lr, "batch_size": BATCH_SIZE, "seed": SEED, "examples": N_EXAMPLES,
                     "no_context": args.no_context, "counterfactual": args.counterfactual,
                     "max_distractors": MAX_DISTRACTORS, "max_prompt_tokens": rag.MAX_PROMPT_TOKENS,
                     "train_people": "world.people (seen)", "eval_people": "world.unseen_people"},
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "training_seconds": round(history.seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "history": {"first_train_loss": round(history.train_loss[0], 4),
                    "final_train_loss": round(sum(history.train_loss[-20:]) / len(history.train_loss[-20:]), 4)},
        "unseen": {"questions": len(items), "distractors_mean": sum(distractors) / len(distractors), **unseen},
        "moved": changed,
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
