"""Lesson 11's checks accept right answers and reject wrong ones with useful messages."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import retrieval
from course_lib.checks import rag as checks
from tests.mutants import rag as mutants

# --------------------------------------------------------------------------- right answers, as a learner writes them


def bm25_score(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    if len(corpus) == 0:
        raise ValueError("corpus should hold at least one document")
    n_docs = len(corpus)
    avgdl = sum(len(d) for d in corpus) / n_docs
    score = 0.0
    for q in query_tokens:
        tf = doc_tokens.count(q)
        if tf == 0:
            continue
        n = sum(1 for d in corpus if q in d)
        idf = math.log((n_docs - n + 0.5) / (n + 0.5) + 1)
        score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc_tokens) / avgdl))
    return score


def cosine_top_k(query, docs, k):
    if query.dim() != 1 or docs.dim() != 2 or docs.shape[1] != query.shape[0]:
        raise ValueError("query should be (d,) and docs (n, d)")
    if not 1 <= k <= docs.shape[0]:
        raise ValueError(f"k should be in [1, {docs.shape[0]}], got {k}")
    q = query / torch.linalg.vector_norm(query).clamp(min=1e-12)
    d = docs / torch.linalg.vector_norm(docs, dim=1, keepdim=True).clamp(min=1e-12)
    scores, ids = torch.sort(d @ q, descending=True, stable=True)
    return scores[:k], ids[:k]


def recall_at_k(ranked, gold, k):
    if len(ranked) != len(gold) or len(ranked) == 0:
        raise ValueError("need one gold id per query, and at least one query")
    if k < 1:
        raise ValueError("k should be at least 1")
    hits = 0
    for ranking, g in zip(ranked, gold):
        if g in ranking[:k]:
            hits += 1
    return hits / len(ranked)


def mrr(ranked, gold):
    if len(ranked) != len(gold) or len(ranked) == 0:
        raise ValueError("need one gold id per query, and at least one query")
    total = 0.0
    for ranking, g in zip(ranked, gold):
        for rank, doc in enumerate(ranking, start=1):
            if doc == g:
                total += 1 / rank
                break
    return total / len(ranked)


def chunk_words(words, size, overlap):
    if size < 1 or overlap < 0 or overlap >= size:
        raise ValueError("need size >= 1 and 0 <= overlap < size")
    chunks = []
    start = 0
    while start < len(words):
        chunks.append(words[start:start + size])
        if start + size >= len(words):
            break
        start += size - overlap
    return chunks


def fit_prompt(passages, question, count_tokens, max_tokens):
    def prompt(kept):
        return "Context:\n" + "\n".join(kept) + "\nQuestion: " + question + "\nAnswer:"

    if count_tokens(prompt([])) > max_tokens:
        raise ValueError("the prompt without passages is already longer than max_tokens")
    kept = []
    for passage in passages:
        if count_tokens(prompt(kept + [passage])) > max_tokens:
            break
        kept.append(passage)
    return prompt(kept)


RIGHT = [
    (checks.check_bm25_score, (bm25_score,)),
    (checks.check_cosine_top_k, (cosine_top_k,)),
    (checks.check_recall_and_mrr, (recall_at_k, mrr)),
    (checks.check_chunk_words, (chunk_words,)),
    (checks.check_fit_prompt, (fit_prompt,)),
]


@pytest.mark.parametrize("check,answers", RIGHT, ids=[c.__name__ for c, _ in RIGHT])
def test_the_checks_accept_right_answers(check, answers):
    for _ in range(5):  # fresh seeds
        check(*answers)


# --------------------------------------------------------------------------- wrong answers


def _run(check, mutant, seed):
    check(*((mutant["recall_at_k"], mutant["mrr"]) if isinstance(mutant, dict) else (mutant,)), seed=seed)


R = {**mutants.MUTANTS["test_recall_and_mrr"]}
WRONG = [
    (checks.check_bm25_score, mutants.bm25_no_plus_one, r"Hint: the idf is log\(\(N - n \+ 0.5\) / \(n \+ 0.5\) \+ 1\)"),
    (checks.check_bm25_score, mutants.bm25_k1_b_swapped, "k1 and b are swapped"),
    (checks.check_bm25_score, mutants.bm25_own_avgdl, "avgdl is the mean length of all the documents"),
    (checks.check_bm25_score, mutants.bm25_no_half, "the 0.5s smooth the counts"),
    (checks.check_bm25_score, mutants.bm25_unique_query, "a token repeated in the query counts each time"),
    (checks.check_bm25_score, mutants.bm25_binary_tf, "tf is how many times the token occurs"),
    (checks.check_bm25_score, mutants.bm25_no_k1_plus_1, r"the numerator is tf \* \(k1 \+ 1\)"),
    (checks.check_bm25_score, mutants.bm25_occurrences_as_n, "n is the number of documents that contain the token"),
    (checks.check_bm25_score, mutants.bm25_sum_returns_int, r"should return a Python float, got int \(0\)"),
    (checks.check_bm25_score, mutants.bm25_without_value_error, "corpus=\\[\\]\\) \\(seed \\d+\\) should raise ValueError"),
    (checks.check_bm25_score, mutants.bm25_default_k1_1_2, r"corpus\) for .* should be"),
    (checks.check_cosine_top_k, mutants.cosine_ascending, "best first: sort in descending order"),
    (checks.check_cosine_top_k, mutants.cosine_dot_product, "divide by the norms|the scores are cosines"),
    (checks.check_cosine_top_k, mutants.cosine_query_only_normalised, "divide by the norms|normalise the document rows|the scores are cosines"),
    (checks.check_cosine_top_k, mutants.cosine_ties_higher_id, "among equal scores the lower id comes first"),
    (checks.check_cosine_top_k, mutants.cosine_float32_returned, r"should return scores of dtype torch.float(64|16) \(docs's dtype\)"),
    (checks.check_cosine_top_k, mutants.cosine_nan_for_zero_rows, "returns nan scores .*a zero vector"),
    (checks.check_cosine_top_k, mutants.cosine_without_value_error, r"k=5 > n=4 .*should raise ValueError"),
    (checks.check_cosine_top_k, mutants.cosine_topk_unstable, "among equal scores the lower id comes first"),
    (checks.check_recall_and_mrr, R["recall_k_plus_one"], r"(?s)recall_at_k\(.*Hint: the first k ids are ranking\[:k\]"),
    (checks.check_recall_and_mrr, R["recall_precision"], "not the share of the top k that is gold"),
    (checks.check_recall_and_mrr, R["recall_without_value_error"], r"k=0\) .*should raise ValueError \(k should be at least 1\)"),
    (checks.check_recall_and_mrr, R["recall_ignores_k"], r"(?s)recall_at_k\(.*Hint: (the first k ids|k is a cut-off)"),
    (checks.check_recall_and_mrr, R["mrr_zero_based"], "ranks count from 1"),
    (checks.check_recall_and_mrr, R["mrr_found_only"], "a query whose gold id is missing counts 0"),
    (checks.check_recall_and_mrr, R["mrr_index_error"], r"mrr\(ranked, gold\) for .* raised ValueError: \d+ is not in list"),
    (checks.check_recall_and_mrr, R["mrr_summed"], "divide by the number of queries, do not sum"),
    (checks.check_recall_and_mrr, R["mrr_no_value_error"], r"mrr\(ranked, gold\) for 2 rankings and 1 gold id .*should raise ValueError"),
    (checks.check_chunk_words, mutants.chunk_step_size, "should share exactly overlap="),
    (checks.check_chunk_words, mutants.chunk_overlap_off_by_one, "some words are in no chunk|should share exactly overlap="),
    (checks.check_chunk_words, mutants.chunk_drop_tail, "some words are in no chunk"),
    (checks.check_chunk_words, mutants.chunk_extra_contained, "reaches the end of words .* stop at the first chunk"),
    (checks.check_chunk_words, mutants.chunk_without_value_error, r"overlap=4\) .*should raise ValueError \(overlap >= size"),
    (checks.check_chunk_words, mutants.chunk_empty_gives_empty_chunk, r"an empty words gives \[\]"),
    (checks.check_fit_prompt, mutants.fit_sums_per_passage, r"count the tokens of the whole prompt, count_tokens\(prompt\)"),
    (checks.check_fit_prompt, mutants.fit_skips_and_continues, "a passage that does not fit ends the list"),
    (checks.check_fit_prompt, mutants.fit_reversed, "keep the passages in their rank order"),
    (checks.check_fit_prompt, mutants.fit_no_value_error, "should raise ValueError \\(even the prompt with no passage"),
    (checks.check_fit_prompt, mutants.fit_strict, r"exactly max_tokens tokens fits \(<=, not <\)"),
    (checks.check_fit_prompt, mutants.fit_double_newline, r"returns the wrong prompt .*\n(.*\n)*expected: 'Context:\\n"),
    (checks.check_retrieve, mutants.retrieve_bm25_only, r"recall@1 0\.[0-8]\d* \(at least 0.9 needed\)"),
    (checks.check_retrieve, mutants.retrieve_name_only, r"recall@1 0\.[0-8]\d* \(at least 0.9 needed\)"),
    (checks.check_retrieve, mutants.retrieve_one_based, r"counted from 0|recall@1 0\.[0-8]"),
    (checks.check_retrieve, mutants.retrieve_worst_first, r"recall@1 0\.[0-8]\d* \(at least 0.9 needed\)"),
    (checks.check_retrieve, mutants.retrieve_k_plus_one, r"should hold k=3 ids"),
    (checks.check_retrieve, mutants.retrieve_repeats_the_best, "lists an id more than once"),
    (checks.check_retrieve, mutants.retrieve_first_question_for_all, r"recall@1 0\.[0-8]\d* \(at least 0.9 needed\)"),
]


@pytest.mark.parametrize("check,mutant,message", WRONG,
                         ids=[getattr(m, "__name__", None) or "/".join(f.__name__ for f in m.values()) for _, m, _ in WRONG])
def test_the_checks_say_what_is_wrong(check, mutant, message):
    for seed in range(10):
        with pytest.raises(AssertionError, match=message) as err:
            _run(check, mutant, seed)
        assert f"seed {seed}" in str(err.value)


def test_every_mutant_is_tested_here():
    tested = {id(m) for _, m, _ in WRONG}
    for grade_id, by_name in mutants.MUTANTS.items():
        assert len(by_name) >= 5, grade_id
        for name, m in by_name.items():
            assert id(m) in tested, f"{grade_id}: {name}"


# --------------------------------------------------------------------------- the course's reference is refused


def _via_reference_bm25(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    if not corpus:
        raise ValueError("empty corpus")
    return retrieval.BM25(corpus, k1, b).score(query_tokens, corpus.index(doc_tokens))


def _via_rank_bm25(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    import rank_bm25
    return float(rank_bm25.BM25Okapi(corpus, k1=k1, b=b).get_scores(query_tokens)[corpus.index(doc_tokens)])


def _via_reference_cosine(query, docs, k):
    scores, ids = retrieval.cosine_top_k(query[None].float(), docs.float(), k)
    return scores[0].to(docs.dtype), ids[0]


def _via_cosine_similarity(query, docs, k):
    scores, ids = torch.sort(torch.nn.functional.cosine_similarity(docs, query[None], dim=1), descending=True, stable=True)
    return scores[:k], ids[:k]


def _via_faiss(query, docs, k):
    import faiss
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(torch.nn.functional.normalize(docs.float(), dim=1).numpy())
    scores, ids = index.search(torch.nn.functional.normalize(query.float(), dim=0)[None].numpy(), k)
    return torch.from_numpy(scores[0]).to(docs.dtype), torch.from_numpy(ids[0])


@pytest.mark.parametrize("check,answers,message", [
    (checks.check_bm25_score, (_via_reference_bm25,), "course's reference course_lib.retrieval.BM25"),
    (checks.check_bm25_score, (_via_rank_bm25,), "rank_bm25"),
    (checks.check_cosine_top_k, (_via_reference_cosine,), "course's reference course_lib.retrieval.cosine_top_k"),
    (checks.check_cosine_top_k, (_via_cosine_similarity,), "torch.nn.functional.cosine_similarity"),
    (checks.check_cosine_top_k, (_via_faiss,), "faiss"),
    (checks.check_recall_and_mrr, (retrieval.recall_at_k, mrr), "write your own recall_and_mrr rather than passing"),
    (checks.check_recall_and_mrr, (lambda ranked, gold, k: retrieval.recall_at_k(ranked, gold, k), mrr),
     "course's reference course_lib.retrieval.recall_at_k"),
    (checks.check_recall_and_mrr, (recall_at_k, lambda ranked, gold: retrieval.mrr(ranked, gold)),
     "course's reference course_lib.retrieval.mrr"),
])
def test_the_course_reference_is_refused(check, answers, message):
    with pytest.raises(AssertionError, match=f"forbids:\n(  - .*\n)*  - .*{message}|{message}"):
        check(*answers, seed=0)


def test_the_lessons_own_rag_helpers_are_refused():
    """Anything of course_lib.rag (the lesson's chunking and prompt code) is refused in the answers."""
    from course_lib import rag

    def via_rag(words, size, overlap):
        rag.split_sentences("a. b.")  # any function of the module
        return chunk_words(words, size, overlap)

    with pytest.raises(AssertionError, match="forbids:\n  - course_lib.rag"):
        checks.check_chunk_words(via_rag, seed=0)


def test_the_counters_the_check_passes_may_be_called():
    """fit_prompt must call count_tokens, which lives in the checks' module: it is allowed, the rest of the module is not."""
    def sneaky(passages, question, count_tokens, max_tokens):
        checks._fit64(passages, question, count_tokens, max_tokens)
        return fit_prompt(passages, question, count_tokens, max_tokens)

    checks.check_fit_prompt(fit_prompt, seed=0)
    with pytest.raises(AssertionError, match="the checks' own code"):
        checks.check_fit_prompt(sneaky, seed=0)


def test_the_exercise_statements_are_there():
    for name in ("BM25_SCORE", "COSINE_TOP_K", "RECALL_AND_MRR", "CHUNK_WORDS", "FIT_PROMPT"):
        assert len(getattr(checks, f"{name}_EXERCISE")) > 300
