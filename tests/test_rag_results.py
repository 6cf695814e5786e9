"""course_lib/assets/rag/results.json (bench/rag.py): its figures re-derived from the shipped reader."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from course_lib import rag
from course_lib.data import build_corpus
from course_lib.models import load_pretrained

N_RECOMPUTED = 50


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads((rag.ASSETS / "results.json").read_text())


@pytest.fixture(scope="module")
def world():
    return build_corpus(0).world


@pytest.fixture(scope="module")
def reader():
    return rag.load_reader()


@pytest.fixture(scope="module")
def items(world):
    return rag.questions(world, world.unseen_people)


def test_the_reader_is_a_fine_tuned_course_lm_of_the_recorded_size(results, reader):
    model, tokenizer = reader
    base = load_pretrained(results["base"])
    assert results["base"] == "course-lm"
    assert asdict(model.config) == asdict(base.config)
    assert model.num_parameters() == results["parameters"] == base.num_parameters()
    assert not torch.equal(model.blocks[0].attn.q_proj.weight, base.blocks[0].attn.q_proj.weight)
    assert (rag.READER / "model.safetensors").stat().st_size < 12_000_000
    assert tokenizer.encode("Context:\nQuestion: Where?") == tokenizer.encode("Context:\nQuestion: Where?")
    assert "chat_template" in json.loads((rag.READER / "tokenizer_config.json").read_text())


def test_the_settings_are_recorded(results):
    s = results["settings"]
    assert s["max_prompt_tokens"] == rag.MAX_PROMPT_TOKENS
    assert 0 < s["no_context"] < 1 and 0 < s["counterfactual"] < 1 and s["max_distractors"] == 2
    assert s["steps"] > 0 and s["batch_size"] > 0 and s["examples"] >= s["batch_size"]
    assert results["training_seconds"] > 0
    assert results["history"]["final_train_loss"] < results["history"]["first_train_loss"]


def test_every_unseen_figure_is_consistent(results, items):
    unseen = results["unseen"]
    assert unseen["questions"] == len(items)
    assert set(unseen) >= {"no_retrieval", "gold", "gold_distractors"}
    for name in ("no_retrieval", "gold", "gold_distractors"):
        r = unseen[name]
        assert len(r["per_question"]) == r["total"] == len(items), name
        assert set(r["per_question"]) <= {0, 1}
        assert r["correct"] == sum(r["per_question"]), name
        assert r["exact_match"] == pytest.approx(r["correct"] / r["total"], abs=1e-12)
    assert 1 <= unseen["distractors_mean"] <= 3


def test_retrieval_helps_and_the_model_alone_is_near_chance(results):
    unseen = results["unseen"]
    assert unseen["gold"]["exact_match"] > 0.5
    assert unseen["no_retrieval"]["exact_match"] < 0.15
    assert unseen["gold_distractors"]["correct"] > 2 * unseen["no_retrieval"]["correct"]
    assert unseen["gold"]["correct"] >= unseen["gold_distractors"]["correct"] - 5


def test_the_gold_and_no_retrieval_counts_are_the_shipped_readers(results, reader, world, items):
    model, tokenizer = reader
    first = items[:N_RECOMPUTED]
    gold = {p.id: p.text for p in rag.passages(world, world.unseen_people)}
    got = rag.reader_accuracy(model, tokenizer, first, [[gold[g]] for _, _, g in first])
    assert got["per_question"] == results["unseen"]["gold"]["per_question"][:N_RECOMPUTED]
    assert got["correct"] == sum(results["unseen"]["gold"]["per_question"][:N_RECOMPUTED])
    alone = rag.reader_accuracy(model, tokenizer, first, None)
    assert alone["per_question"] == results["unseen"]["no_retrieval"]["per_question"][:N_RECOMPUTED]


def test_the_distractor_count_is_the_shipped_readers(results, reader, world, items):
    model, tokenizer = reader
    contexts = rag.distractor_contexts(tokenizer, world, items, world.unseen_people, k=results["settings"]["max_distractors"],
                                       seed=results["settings"]["seed"])
    few = list(range(0, len(items), 4))
    got = rag.reader_accuracy(model, tokenizer, [items[i] for i in few], [contexts[i] for i in few])
    assert got["per_question"] == [results["unseen"]["gold_distractors"]["per_question"][i] for i in few]


def test_the_changed_facts_are_moves_of_people_the_base_model_knew(results, world):
    moved = results["moved"]
    lives = {f.subject: f.obj for f in world.facts if f.relation == "lives_in"}
    assert moved["people"] == len(moved["pairs"]) > 150
    assert len({p for p, _, _ in moved["pairs"]}) == moved["people"]
    for person, old, new in moved["pairs"]:
        assert lives[person] == old and new != old and new in world.cities
    for name in ("no_retrieval", "new_passage"):
        m = moved[name]
        assert m["total"] == moved["people"] == len(m["per_question_old"]) == len(m["per_question_new"])
        assert m["old"] == sum(m["per_question_old"]) and m["new"] == sum(m["per_question_new"])
        assert m["old_share"] == pytest.approx(m["old"] / m["total"]) and m["new_share"] == pytest.approx(m["new"] / m["total"])
        assert all(o + n <= 1 for o, n in zip(m["per_question_old"], m["per_question_new"]))
    # The lesson's reading: alone, the reader gives the old city (never the new one); the new passage moves some answers
    # to the new city and takes many away from the old one, but memory still wins for most (a knowledge conflict).
    alone, told = moved["no_retrieval"], moved["new_passage"]
    assert alone["new"] == 0 and alone["old_share"] > 0.8
    assert told["new_share"] > 0.1 and told["old_share"] < alone["old_share"] - 0.2
    assert told["old_share"] > told["new_share"]


def test_the_changed_fact_answers_are_the_shipped_readers(results, reader, world):
    model, tokenizer = reader
    pairs = results["moved"]["pairs"][:N_RECOMPUTED]
    items = [(f"Where does {person} live?", new, rag.passage_id(person)) for person, _, new in pairs]
    facts = {f.subject: f for f in world.facts if f.relation == "lives_in"}
    passages = [[rag.updated_passage(world, facts[p], facts[p].__class__(p, "lives_in", new)).text] for p, _, new in pairs]
    with_new = rag.reader_answers(model, tokenizer, items, passages)
    assert [int(a == new) for a, (_, _, new) in zip(with_new, pairs)] == \
        results["moved"]["new_passage"]["per_question_new"][:N_RECOMPUTED]
    alone = rag.reader_answers(model, tokenizer, items, None)
    assert [int(a == old) for a, (_, old, _) in zip(alone, pairs)] == \
        results["moved"]["no_retrieval"]["per_question_old"][:N_RECOMPUTED]


# --------------------------------------------------------------------------- retrieval and the reader with retrieval

RETRIEVERS = ("bm25", "fts5", "dense", "hnsw", "hybrid")


@pytest.fixture(scope="module")
def everything(world):
    """Every question about every person, the 220 passages and their sentences, as bench/rag.py indexes them."""
    items = rag.questions(world, world.people + world.unseen_people)
    passages = rag.passages(world)
    sentences = rag.chunk_passages(passages, rag.split_sentences)
    row = {c.id: i for i, c in enumerate(sentences)}
    gold = [row[rag.gold_chunk_ids(sentences, g, a)[0]] for _, a, g in items]
    return items, passages, sentences, gold


def test_the_retrieval_table_is_consistent(results, everything):
    items, passages, sentences, _ = everything
    table = results["retrieval"]
    assert (table["questions"], table["passages"], table["sentences"]) == (len(items), len(passages), len(sentences))
    for level in ("passage", "sentence"):
        assert set(table[level]) == set(RETRIEVERS)
        for name in RETRIEVERS:
            r = table[level][name]
            assert len(r["hit_at_1"]) == len(items) and set(r["hit_at_1"]) <= {0, 1}
            assert r["recall@1"] == pytest.approx(sum(r["hit_at_1"]) / len(items))
            assert r["recall@1"] <= r["recall@3"] <= r["recall@5"] <= 1
            assert r["recall@1"] <= r["mrr"] <= r["recall@1"] + (1 - r["recall@1"]) / 2 + 1e-12  # later ranks give at most 1/2
    for level, value in table["hnsw_against_exact"].items():
        assert level in ("passage", "sentence") and 0.9 <= value <= 1


def test_whole_passages_are_found_by_every_retriever_and_sentences_need_meaning(results):
    """The lesson's reading of the table: names make passages easy; only dense search finds most single sentences."""
    table = results["retrieval"]
    for name in RETRIEVERS:
        assert table["passage"][name]["recall@1"] == 1.0, name
    s = table["sentence"]
    assert s["dense"]["recall@1"] > 0.9 and s["bm25"]["recall@1"] < 0.6
    assert s["dense"]["recall@1"] > s["hybrid"]["recall@1"] > s["bm25"]["recall@1"]
    assert abs(s["fts5"]["recall@1"] - s["bm25"]["recall@1"]) < 0.03
    assert abs(s["hnsw"]["recall@1"] - s["dense"]["recall@1"]) < 0.02
    assert s["bm25"]["recall@5"] > 0.95  # a person has five sentences: the name alone finds them


def test_the_sparse_figures_are_recomputed(results, everything):
    items, passages, sentences, gold = everything
    from course_lib import retrieval

    bm25 = retrieval.BM25([retrieval.tokenize(c.text) for c in sentences])
    conn = retrieval.fts5_index([c.text for c in sentences])
    hits = [int(bm25.top_k(retrieval.tokenize(q), 1) == [g]) for (q, _, _), g in zip(items, gold)]
    assert hits == results["retrieval"]["sentence"]["bm25"]["hit_at_1"]
    hits = [int(retrieval.fts5_top_k(conn, q, 1) == [g]) for (q, _, _), g in zip(items, gold)]
    assert hits == results["retrieval"]["sentence"]["fts5"]["hit_at_1"]


def test_the_dense_figures_are_recomputed_for_some_questions(results, everything):
    items, _, sentences, gold = everything
    from course_lib import retrieval

    few = list(range(0, len(items), 10))
    ids = retrieval.cosine_top_k(retrieval.embed([items[i][0] for i in few]), retrieval.embed([c.text for c in sentences]), 1)[1]
    got = [int(ids[j, 0] == gold[i]) for j, i in enumerate(few)]
    recorded = [results["retrieval"]["sentence"]["dense"]["hit_at_1"][i] for i in few]
    assert sum(a != b for a, b in zip(got, recorded)) <= 1  # a tie between two float32 cosines may fall either way


def test_the_reader_with_retrieval(results, items):
    r = results["unseen_retrieved"]
    u = results["unseen"]
    for name in ("bm25", "dense", "hybrid"):
        assert r[name]["total"] == len(items) == len(r[name]["per_question"])
        assert r[name]["correct"] == sum(r[name]["per_question"])
        assert u["no_retrieval"]["correct"] < r[name]["correct"] <= u["gold"]["correct"] + 5
    assert r["dense"]["correct"] >= r["bm25"]["correct"]
    moved = results["moved"]["retrieved"]
    assert moved["total"] == results["moved"]["people"] and moved["new"] == sum(moved["per_question_new"])
    alone = results["moved"]["no_retrieval"]
    assert moved["new_share"] > 0.1 and moved["old_share"] < alone["old_share"] - 0.2
