"""Wrong answers to lesson 11's exercises: bm25_score, cosine_top_k, recall_at_k and mrr, chunk_words, fit_prompt, and the
capstone retrieve."""

import math
from collections import Counter

import torch

# --------------------------------------------------------------------------- bm25_score


def _bm25(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75, *, idf=None, avgdl=None, tf_of=None, numerator=None):
    if not corpus:
        raise ValueError("corpus should hold at least one document")
    n_docs = len(corpus)
    mean = sum(len(d) for d in corpus) / n_docs if avgdl is None else avgdl(doc_tokens, corpus)
    counts = Counter(doc_tokens)
    total = 0.0
    for q in query_tokens:
        tf = counts[q] if tf_of is None else tf_of(q, doc_tokens)
        if tf == 0:
            continue
        n = sum(q in d for d in corpus)
        weight = math.log((n_docs - n + 0.5) / (n + 0.5) + 1) if idf is None else idf(n_docs, n, q, corpus)
        top = tf * (k1 + 1) if numerator is None else numerator(tf, k1)
        total += weight * top / (tf + k1 * (1 - b + b * len(doc_tokens) / mean))
    return float(total)


def bm25_no_plus_one(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """The classic idf log((N - n + 0.5) / (n + 0.5)): negative for tokens in most documents."""
    return _bm25(query_tokens, doc_tokens, corpus, k1, b, idf=lambda N, n, q, c: math.log((N - n + 0.5) / (n + 0.5)))


def bm25_k1_b_swapped(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """k1 where b belongs and b where k1 belongs."""
    return _bm25(query_tokens, doc_tokens, corpus, b, k1)


def bm25_own_avgdl(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """avgdl taken as the document's own length (no length normalisation at all)."""
    return _bm25(query_tokens, doc_tokens, corpus, k1, b, avgdl=lambda doc, c: max(len(doc), 1))


def bm25_no_half(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """idf = log((N - n) / n + 1) = log(N / n): the 0.5 smoothing dropped."""
    return _bm25(query_tokens, doc_tokens, corpus, k1, b, idf=lambda N, n, q, c: math.log((N - n) / n + 1))


def bm25_unique_query(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """Removes the query's repeated tokens (a set): a repeated token counts once."""
    return _bm25(list(dict.fromkeys(query_tokens)), doc_tokens, corpus, k1, b)


def bm25_binary_tf(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """tf = 1 whenever the token occurs."""
    return _bm25(query_tokens, doc_tokens, corpus, k1, b, tf_of=lambda q, doc: int(q in doc))


def bm25_no_k1_plus_1(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """The numerator tf instead of tf * (k1 + 1)."""
    return _bm25(query_tokens, doc_tokens, corpus, k1, b, numerator=lambda tf, k1: tf)


def bm25_occurrences_as_n(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """n counted as the token's occurrences in the whole corpus, not the documents holding it."""
    return _bm25(query_tokens, doc_tokens, corpus, k1, b,
                 idf=lambda N, n, q, c: math.log(max(N - sum(d.count(q) for d in c) + 0.5, 1e-9)
                                                 / (sum(d.count(q) for d in c) + 0.5) + 1))


def bm25_sum_returns_int(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """sum(...) of the terms: an int 0 for an empty query (and other misses)."""
    if not corpus:
        raise ValueError("empty corpus")
    if not query_tokens:
        return 0
    return _bm25(query_tokens, doc_tokens, corpus, k1, b)


def bm25_without_value_error(query_tokens, doc_tokens, corpus, k1=1.5, b=0.75):
    """No check for an empty corpus: avgdl = 0 / 0 raises ZeroDivisionError."""
    mean = sum(len(d) for d in corpus) / len(corpus)
    return _bm25(query_tokens, doc_tokens, corpus, k1, b, avgdl=lambda doc, c: mean)


def bm25_default_k1_1_2(query_tokens, doc_tokens, corpus, k1=1.2, b=0.75):
    """FTS5's k1 = 1.2 as the default instead of 1.5."""
    return _bm25(query_tokens, doc_tokens, corpus, k1, b)


# --------------------------------------------------------------------------- cosine_top_k


def _validate(query, docs, k):
    if query.dim() != 1 or docs.dim() != 2 or docs.shape[1] != query.shape[0]:
        raise ValueError("query should be (d,) and docs (n, d)")
    if k < 1 or k > docs.shape[0]:
        raise ValueError("need 1 <= k <= n")


def _unit(x):
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-30)


def _cosines(query, docs):
    return (_unit(docs.double()) @ _unit(query.double())).to(docs.dtype)


def cosine_ascending(query, docs, k):
    """Sorted ascending: the k least similar documents, worst first."""
    _validate(query, docs, k)
    scores, ids = torch.sort(_cosines(query, docs), stable=True)
    return scores[:k], ids[:k]


def cosine_dot_product(query, docs, k):
    """Dot products of the raw vectors: no normalisation."""
    _validate(query, docs, k)
    scores, ids = torch.sort(docs @ query, descending=True, stable=True)
    return scores[:k], ids[:k]


def cosine_query_only_normalised(query, docs, k):
    """Normalises the query but not the documents."""
    _validate(query, docs, k)
    scores, ids = torch.sort((docs.double() @ _unit(query.double())).to(docs.dtype), descending=True, stable=True)
    return scores[:k], ids[:k]


def cosine_ties_higher_id(query, docs, k):
    """Among equal scores the higher id first (a stable sort of the reversed rows)."""
    _validate(query, docs, k)
    cos = _cosines(query, docs).flip(0)
    scores, ids = torch.sort(cos, descending=True, stable=True)
    return scores[:k], docs.shape[0] - 1 - ids[:k]


def cosine_float32_returned(query, docs, k):
    """Computes in float32 and returns float32 scores whatever docs's dtype."""
    _validate(query, docs, k)
    scores, ids = torch.sort(_unit(docs.float()) @ _unit(query.float()), descending=True, stable=True)
    return scores[:k], ids[:k]


def cosine_nan_for_zero_rows(query, docs, k):
    """Divides by the norms without a guard: a zero row (or query) gives nan."""
    _validate(query, docs, k)
    q, d = query.double(), docs.double()
    cos = (d / d.norm(dim=1, keepdim=True)) @ (q / q.norm())
    scores, ids = torch.sort(cos.to(docs.dtype), descending=True, stable=True)
    return scores[:k], ids[:k]


def cosine_without_value_error(query, docs, k):
    """No check of k: k > n returns n results, k = 0 none."""
    scores, ids = torch.sort(_cosines(query, docs), descending=True, stable=True)
    return scores[:k], ids[:k]


def cosine_topk_unstable(query, docs, k):
    """torch.topk, whose order among equal scores is not by id."""
    _validate(query, docs, k)
    cos = _cosines(query, docs)
    order = torch.argsort(-cos.double() + 1e-12 * torch.arange(len(cos), 0, -1, dtype=torch.float64), stable=True)
    return cos[order[:k]], order[:k]


# --------------------------------------------------------------------------- recall_at_k and mrr


def _check(ranked, gold):
    if len(ranked) != len(gold) or not ranked:
        raise ValueError("one gold id per query, at least one query")


def recall_right(ranked, gold, k):
    _check(ranked, gold)
    if k < 1:
        raise ValueError("k >= 1")
    return sum(g in r[:k] for r, g in zip(ranked, gold)) / len(gold)


def mrr_right(ranked, gold):
    _check(ranked, gold)
    return sum(1 / (r.index(g) + 1) if g in r else 0.0 for r, g in zip(ranked, gold)) / len(gold)


def recall_k_plus_one(ranked, gold, k):
    """ranking[:k + 1]: one id too many."""
    return recall_right(ranked, gold, k + 1)


def recall_precision(ranked, gold, k):
    """The share of the top k that is gold (precision@k)."""
    _check(ranked, gold)
    if k < 1:
        raise ValueError("k >= 1")
    return sum(g in r[:k] for r, g in zip(ranked, gold)) / (k * len(gold))


def recall_without_value_error(ranked, gold, k):
    """No check of k: k = 0 gives 0.0, k = -1 counts all but the last id."""
    _check(ranked, gold)
    return sum(g in r[:k] for r, g in zip(ranked, gold)) / len(gold)


def recall_ignores_k(ranked, gold, k):
    """A hit wherever the gold id is in the ranking."""
    _check(ranked, gold)
    if k < 1:
        raise ValueError("k >= 1")
    return sum(g in r for r, g in zip(ranked, gold)) / len(gold)


def mrr_zero_based(ranked, gold):
    """Ranks from 0 (the first id counted as 1 to avoid a division by zero)."""
    _check(ranked, gold)
    return sum((1 / r.index(g) if r.index(g) else 1.0) if g in r else 0.0 for r, g in zip(ranked, gold)) / len(gold)


def mrr_found_only(ranked, gold):
    """Averages over the queries whose gold id was found only."""
    _check(ranked, gold)
    found = [1 / (r.index(g) + 1) for r, g in zip(ranked, gold) if g in r]
    return sum(found) / len(found) if found else 0.0


def mrr_index_error(ranked, gold):
    """ranking.index(gold) without checking that it is there: ValueError for a missing gold id."""
    _check(ranked, gold)
    return sum(1 / (r.index(g) + 1) for r, g in zip(ranked, gold)) / len(gold)


def mrr_summed(ranked, gold):
    """The sum of the reciprocal ranks, not their mean."""
    _check(ranked, gold)
    return float(sum(1 / (r.index(g) + 1) if g in r else 0.0 for r, g in zip(ranked, gold)))


def mrr_no_value_error(ranked, gold):
    """zip() silently drops the extra rankings; no check for no query (0.0)."""
    if not ranked:
        return 0.0
    return sum(1 / (r.index(g) + 1) if g in r else 0.0 for r, g in zip(ranked, gold)) / len(ranked)


# --------------------------------------------------------------------------- chunk_words


def _chunk_checks(size, overlap):
    if size < 1 or overlap < 0 or overlap >= size:
        raise ValueError("need size >= 1 and 0 <= overlap < size")


def chunk_step_size(words, size, overlap):
    """Steps by size: the overlap is ignored."""
    _chunk_checks(size, overlap)
    return [words[i:i + size] for i in range(0, len(words), size)]


def chunk_overlap_off_by_one(words, size, overlap):
    """Steps by size - overlap + 1: consecutive chunks share overlap - 1 words."""
    _chunk_checks(size, overlap)
    step, out, i = size - overlap + 1, [], 0
    while i < len(words):
        out.append(words[i:i + size])
        if i + size >= len(words):
            break
        i += step
    return out


def chunk_drop_tail(words, size, overlap):
    """Only full windows: the last words are lost."""
    _chunk_checks(size, overlap)
    out = [words[i:i + size] for i in range(0, len(words) - size + 1, size - overlap)]
    return out if out or not words else [words[:size]]


def chunk_extra_contained(words, size, overlap):
    """A window at every step up to the end: the last ones lie inside the one before."""
    _chunk_checks(size, overlap)
    return [words[i:i + size] for i in range(0, len(words), size - overlap)]


def chunk_without_value_error(words, size, overlap):
    """No check of size and overlap (range() itself refuses a step of 0, not a negative one)."""
    step = size - overlap
    out = []
    for i in range(0, len(words), step):
        out.append(words[i:i + size])
        if i + size >= len(words):
            break
    return out


def chunk_empty_gives_empty_chunk(words, size, overlap):
    """An empty words gives [[]] (one empty chunk)."""
    _chunk_checks(size, overlap)
    out, i = [], 0
    while True:
        out.append(words[i:i + size])
        if i + size >= len(words):
            return out
        i += size - overlap


# --------------------------------------------------------------------------- fit_prompt


def _prompt(kept, question):
    return "Context:\n" + "\n".join(kept) + "\nQuestion: " + question + "\nAnswer:"


def _fit_check(question, count_tokens, max_tokens):
    if count_tokens(_prompt([], question)) > max_tokens:
        raise ValueError("even the prompt without passages is too long")


def fit_sums_per_passage(passages, question, count_tokens, max_tokens):
    """Counts the empty prompt once and adds each passage's own count: not additive for a tokenizer."""
    _fit_check(question, count_tokens, max_tokens)
    used, kept = count_tokens(_prompt([], question)), []
    for p in passages:
        used += count_tokens(p)
        if used > max_tokens:
            break
        kept.append(p)
    return _prompt(kept, question)


def fit_skips_and_continues(passages, question, count_tokens, max_tokens):
    """Skips a passage that does not fit but adds later ones that do."""
    _fit_check(question, count_tokens, max_tokens)
    kept = []
    for p in passages:
        if count_tokens(_prompt(kept + [p], question)) <= max_tokens:
            kept.append(p)
    return _prompt(kept, question)


def fit_reversed(passages, question, count_tokens, max_tokens):
    """Fills the prompt from the last passage (the worst) backwards."""
    _fit_check(question, count_tokens, max_tokens)
    kept = []
    for p in reversed(passages):
        if count_tokens(_prompt(kept + [p], question)) > max_tokens:
            break
        kept.append(p)
    return _prompt(kept, question)


def fit_no_value_error(passages, question, count_tokens, max_tokens):
    """Returns the prompt without passages even when it is too long."""
    kept = []
    for p in passages:
        if count_tokens(_prompt(kept + [p], question)) > max_tokens:
            break
        kept.append(p)
    return _prompt(kept, question)


def fit_strict(passages, question, count_tokens, max_tokens):
    """count < max_tokens: a prompt of exactly max_tokens tokens is refused."""
    _fit_check(question, count_tokens, max_tokens)
    kept = []
    for p in passages:
        if count_tokens(_prompt(kept + [p], question)) >= max_tokens:
            break
        kept.append(p)
    return _prompt(kept, question)


def fit_double_newline(passages, question, count_tokens, max_tokens):
    """Passages separated by a blank line ("\\n\\n"), not "\\n"."""
    _fit_check(question, count_tokens, max_tokens)

    def prompt(kept):
        return "Context:\n" + "\n\n".join(kept) + "\nQuestion: " + question + "\nAnswer:"

    kept = []
    for p in passages:
        if count_tokens(prompt(kept + [p])) > max_tokens:
            break
        kept.append(p)
    return prompt(kept)


# --------------------------------------------------------------------------- retrieve (the capstone)
# Cheap on purpose (no embedding model): each fails by form or far below the recall bounds, whatever is drawn.


def _retrieve_bm25(questions, chunks, k):
    from course_lib import retrieval

    if not 1 <= k <= len(chunks):
        raise ValueError(f"k must be from 1 to len(chunks), got {k}")
    bm25 = retrieval.BM25([retrieval.tokenize(c) for c in chunks])
    return [bm25.top_k(retrieval.tokenize(q), k) for q in questions]


def retrieve_bm25_only(questions, chunks, k):
    """BM25 alone: about half the questions get their sentence first."""
    return _retrieve_bm25(questions, chunks, k)


def retrieve_name_only(questions, chunks, k):
    """The chunks that contain the question's name, in their order: the relation is never looked at."""
    if not 1 <= k <= len(chunks):
        raise ValueError(f"k must be from 1 to len(chunks), got {k}")
    out = []
    for q in questions:
        words = set(q.replace("?", " ").replace("'s", " ").split())
        hits = [i for i, c in enumerate(chunks) if len(words & set(c.replace(".", " ").replace("'s", " ").split())) >= 2]
        out.append((hits + [i for i in range(len(chunks)) if i not in hits])[:k])
    return out


def retrieve_one_based(questions, chunks, k):
    """BM25's rankings counted from 1."""
    return [[i + 1 for i in r] for r in _retrieve_bm25(questions, chunks, k)]


def retrieve_worst_first(questions, chunks, k):
    """BM25's k best, worst of them first."""
    return [r[::-1] for r in _retrieve_bm25(questions, chunks, k)]


def retrieve_k_plus_one(questions, chunks, k):
    """One id too many (and no check of k)."""
    from course_lib import retrieval

    bm25 = retrieval.BM25([retrieval.tokenize(c) for c in chunks])
    return [bm25.top_k(retrieval.tokenize(q), min(k + 1, len(chunks))) for q in questions]


def retrieve_repeats_the_best(questions, chunks, k):
    """The best id k times."""
    return [[r[0]] * k for r in _retrieve_bm25(questions, chunks, k)]


def retrieve_first_question_for_all(questions, chunks, k):
    """The ranking of the first question for every question."""
    ranked = _retrieve_bm25(questions[:1], chunks, k)
    return ranked * len(questions)


MUTANTS = {
    "test_bm25_score": {
        f.__name__: f
        for f in (bm25_no_plus_one, bm25_k1_b_swapped, bm25_own_avgdl, bm25_no_half, bm25_unique_query, bm25_binary_tf,
                  bm25_no_k1_plus_1, bm25_occurrences_as_n, bm25_sum_returns_int, bm25_without_value_error, bm25_default_k1_1_2)
    },
    "test_cosine_top_k": {
        f.__name__: f
        for f in (cosine_ascending, cosine_dot_product, cosine_query_only_normalised, cosine_ties_higher_id,
                  cosine_float32_returned, cosine_nan_for_zero_rows, cosine_without_value_error, cosine_topk_unstable)
    },
    "test_recall_and_mrr": {  # the exercise defines two functions: each mutant is one wrong, the other right
        f.__name__: {"recall_at_k": f, "mrr": mrr_right} if f.__name__.startswith("recall") else {"recall_at_k": recall_right, "mrr": f}
        for f in (recall_k_plus_one, recall_precision, recall_without_value_error, recall_ignores_k, mrr_zero_based,
                  mrr_found_only, mrr_index_error, mrr_summed, mrr_no_value_error)
    },
    "test_chunk_words": {
        f.__name__: f
        for f in (chunk_step_size, chunk_overlap_off_by_one, chunk_drop_tail, chunk_extra_contained, chunk_without_value_error,
                  chunk_empty_gives_empty_chunk)
    },
    "test_fit_prompt": {
        f.__name__: f
        for f in (fit_sums_per_passage, fit_skips_and_continues, fit_reversed, fit_no_value_error, fit_strict, fit_double_newline)
    },
    "test_retrieve": {
        f.__name__: f
        for f in (retrieve_bm25_only, retrieve_name_only, retrieve_one_based, retrieve_worst_first, retrieve_k_plus_one,
                  retrieve_repeats_the_best, retrieve_first_question_for_all)
    },
}
