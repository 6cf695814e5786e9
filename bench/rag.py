"""Lesson 11's reader: ``course-lm`` fine-tuned to answer from retrieved passages, and what it scores.

    .venv/bin/python bench/rag.py                          # writes course_lib/assets/rag/ (about 25 minutes on 2 threads)
    .venv/bin/python bench/rag.py --steps 5 --out /tmp/rag  # a smoke test

The reader is trained with lesson 08's harness (:func:`course_lib.rag.train_reader`: lesson 08's
response-only loss and loop, full fine-tuning, batches of prompts of similar length) on
:func:`course_lib.rag.reader_examples` about the *seen* people (those of the training text): the
gold passage among 0 to 2 distractors, some empty contexts, and most passages with other values
than pre-training's, so that reading pays and remembering does not. It is then measured, by exact match, on every question about the
*unseen* people (``World.unseen_facts``, in no training text), with three kinds of context:

- ``no_retrieval``: an empty context, the model alone (it cannot know these facts: near chance);
- ``gold``: the gold passage alone (the ceiling of any retriever);
- ``gold_distractors``: the gold passage among up to 2 passages of other unseen people.

and on the changed-facts experiment ("data newer than the model"): the seen people whose city
``course-lm`` names correctly without context move to another city; the reader is asked where
they live without retrieval (share answering the old city) and with the new passage (share
answering the new city).

Then retrieval, which needs no model: every question about every person (1,082) against two
knowledge bases, the 220 whole passages and their 1,082 sentences (one fact each), with BM25,
SQLite FTS5, exact dense search (MiniLM), faiss HNSW and the fusion of BM25 and dense
(``"retrieval"``: recall@1/3/5 and MRR). And the reader once more on the unseen questions, its
context now the top 3 sentences that each retriever found (``"unseen_retrieved"``), and on the
moved people with the new passages indexed in place of the old (``"moved"["retrieved"]``).

``results.json`` keeps the settings, the training time and loss, and for every measurement
the count, total, exact match and the 0/1 of every question. Seconds depend on the machine;
losses and answers do not (same seed, CPU, same thread count).
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

from course_lib import rag, retrieval  # noqa: E402
from course_lib.data import QUESTIONS, build_corpus, question_answer  # noqa: E402
from course_lib.evaluation import complete  # noqa: E402
from course_lib.finetune import install_chat_template  # noqa: E402
from course_lib.models import load_pretrained, save_pretrained  # noqa: E402
from course_lib.tokenizer import course_tokenizer  # noqa: E402

BASE = "course-lm"
STEPS = 2000
LR = 1e-3
BATCH_SIZE = 16
SEED = 0
N_EXAMPLES = 20000         # training pairs drawn once; each step takes BATCH_SIZE of similar length
NO_CONTEXT = 0.15          # share of training pairs with an empty context
COUNTERFACTUAL = 0.8       # share of the others whose facts have other values: only reading answers them
MAX_DISTRACTORS = 2
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


RETRIEVERS = ("bm25", "fts5", "dense", "hnsw", "hybrid")
TOP_K = 10


def rankings(texts: list[str], vectors: torch.Tensor, queries: list[str], query_vectors: torch.Tensor) -> dict:
    """The first ``TOP_K`` ids of ``texts`` for each query, by each retriever of ``RETRIEVERS``."""
    bm25 = retrieval.BM25([retrieval.tokenize(t) for t in texts])
    conn = retrieval.fts5_index(texts)
    ranked = {"bm25": [bm25.top_k(retrieval.tokenize(q), TOP_K) for q in queries],
              "fts5": [retrieval.fts5_top_k(conn, q, TOP_K) for q in queries],
              "dense": retrieval.cosine_top_k(query_vectors, vectors, TOP_K)[1].tolist(),
              "hnsw": retrieval.search(retrieval.hnsw_index(vectors), query_vectors, TOP_K)[1].tolist()}
    ranked["hybrid"] = [retrieval.reciprocal_rank_fusion([a, b])[:TOP_K] for a, b in zip(ranked["bm25"], ranked["dense"])]
    return ranked


def scores(ranked: dict, gold: list) -> dict:
    """recall@1, @3, @5 and MRR of each retriever's rankings."""
    return {name: {"recall@1": retrieval.recall_at_k(r, gold, 1), "recall@3": retrieval.recall_at_k(r, gold, 3),
                   "recall@5": retrieval.recall_at_k(r, gold, 5), "mrr": retrieval.mrr(r, gold),
                   "hit_at_1": [int(bool(set(x[:1]) & set(g if isinstance(g, (set, list)) else [g]))) for x, g in zip(r, gold)]}
            for name, r in ranked.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"fine-tuning steps (default {STEPS})")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--no-context", type=float, default=NO_CONTEXT)
    parser.add_argument("--counterfactual", type=float, default=COUNTERFACTUAL)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for results.json and reader/")
    parser.add_argument("--reader", type=Path, default=None, help="measure this reader folder instead of training one")
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
    if args.reader is None:
        pairs = rag.reader_examples(tokenizer, world, world.people, N_EXAMPLES, seed=SEED, no_context=args.no_context,
                                    counterfactual=args.counterfactual, max_distractors=MAX_DISTRACTORS)
        torch.manual_seed(SEED)
        history = rag.train_reader(model, tokenizer, pairs, steps=args.steps, lr=args.lr, batch_size=BATCH_SIZE, seed=SEED)
        print(f"trained in {history.seconds:.0f} s, final loss {history.train_loss[-1]:.3f}", flush=True)
        folder = save_pretrained(model, args.out / "reader")
        tokenizer.save(folder)
        install_chat_template(folder)
        trained = {"training_seconds": round(history.seconds, 1),
                   "history": {"first_train_loss": round(history.train_loss[0], 4),
                               "final_train_loss": round(sum(history.train_loss[-20:]) / len(history.train_loss[-20:]), 4)}}
    else:
        model, _ = rag.load_reader(args.reader)
        trained = {key: json.loads((args.out / "results.json").read_text())[key] for key in ("training_seconds", "history")}

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
    moved_items = [(QUESTIONS["lives_in"].format(s=old.subject), new.obj, rag.passage_id(old.subject)) for old, new in moved]
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

    # retrieval: every question, whole passages and single sentences
    all_items = rag.questions(world, world.people + world.unseen_people)
    all_passages = rag.passages(world)
    sentences = rag.chunk_passages(all_passages, rag.split_sentences)
    row = {c.id: i for i, c in enumerate(sentences)}
    start = time.perf_counter()
    query_vectors = retrieval.embed([q for q, _, _ in all_items])
    passage_vectors = retrieval.embed([p.text for p in all_passages])
    sentence_vectors = retrieval.embed([c.text for c in sentences])
    embed_seconds = time.perf_counter() - start
    passage_row = {p.id: i for i, p in enumerate(all_passages)}
    queries = [q for q, _, _ in all_items]
    by_passage = rankings([p.text for p in all_passages], passage_vectors, queries, query_vectors)
    by_sentence = rankings([c.text for c in sentences], sentence_vectors, queries, query_vectors)
    gold_sentence = [{row[i] for i in rag.gold_chunk_ids(sentences, g, a)} for _, a, g in all_items]
    retrieved = {
        "questions": len(all_items), "passages": len(all_passages), "sentences": len(sentences),
        "embed_seconds": round(embed_seconds, 1),
        "passage": scores(by_passage, [passage_row[g] for _, _, g in all_items]),
        "sentence": scores(by_sentence, gold_sentence),
        "hnsw_against_exact": {level: retrieval.recall_against_exact(torch.tensor(r["hnsw"]), torch.tensor(r["dense"]))
                               for level, r in (("passage", by_passage), ("sentence", by_sentence))},
    }
    for level in ("passage", "sentence"):
        for name in RETRIEVERS:
            r = retrieved[level][name]
            print(f"{level:8s} {name:6s} recall@1 {r['recall@1']:.3f} @3 {r['recall@3']:.3f} @5 {r['recall@5']:.3f} "
                  f"MRR {r['mrr']:.3f}", flush=True)

    # the reader with what each retriever found: the top 3 sentences
    unseen_rows = [i for i, (q, _, g) in enumerate(all_items) if g in gold]  # the unseen people's questions
    assert [all_items[i] for i in unseen_rows] == items
    unseen_retrieved = {}
    for name in ("bm25", "dense", "hybrid"):
        context = [[sentences[j].text for j in by_sentence[name][i][:3]] for i in unseen_rows]
        print(f"unseen people, top 3 sentences by {name}:", flush=True)
        unseen_retrieved[name] = measure(model, tokenizer, items, context)

    # the moved people, with the knowledge base updated: their new passages replace the old ones
    updated = {old.subject: rag.updated_passage(world, old, new) for old, new in moved}
    kb = rag.chunk_passages([updated.get(p.person, p) for p in all_passages], rag.split_sentences)
    kb_vectors = retrieval.embed([c.text for c in kb])
    ids = retrieval.cosine_top_k(retrieval.embed([q for q, _, _ in moved_items]), kb_vectors, 3)[1].tolist()
    got = rag.reader_answers(model, tokenizer, moved_items, [[kb[j].text for j in row_ids] for row_ids in ids])
    old_ok = [int(g == old.obj) for g, (old, _) in zip(got, moved)]
    new_ok = [int(g == new.obj) for g, (_, new) in zip(got, moved)]
    changed["retrieved"] = {"old": sum(old_ok), "new": sum(new_ok), "total": len(moved), "old_share": sum(old_ok) / len(moved),
                            "new_share": sum(new_ok) / len(moved), "per_question_old": old_ok, "per_question_new": new_ok}
    print(f"moved people, dense top 3 of the updated sentences: old city {sum(old_ok)}/{len(moved)}, "
          f"new city {sum(new_ok)}/{len(moved)}", flush=True)

    record = {
        "base": BASE,
        "method": "full fine-tuning (course_lib.rag.train_reader: lesson 08's loss and loop, batches of similar length)",
        "parameters": model.num_parameters(),
        "settings": {"steps": args.steps, "lr": args.lr, "batch_size": BATCH_SIZE, "seed": SEED, "examples": N_EXAMPLES,
                     "no_context": args.no_context, "counterfactual": args.counterfactual,
                     "max_distractors": MAX_DISTRACTORS, "max_prompt_tokens": rag.MAX_PROMPT_TOKENS,
                     "train_people": "world.people (seen)", "eval_people": "world.unseen_people"},
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        **trained,
        "eval_seconds": round(eval_seconds, 1),
        "unseen": {"questions": len(items), "distractors_mean": sum(distractors) / len(distractors), **unseen},
        "unseen_retrieved": unseen_retrieved,
        "moved": changed,
        "retrieval": retrieved,
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
