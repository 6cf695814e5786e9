"""Checks for lesson 02's tokenizer exercise: one BPE merge step."""

from __future__ import annotations

from course_lib.checks.common import new_generator, randint
from course_lib.checks.guard import Rules, watched
from course_lib.tokenizer import merge_pair as reference_merge_pair


MERGE_PAIR = Rules("merge_pair", references=("course_lib.tokenizer:merge_pair", "course_lib.tokenizer:BPETokenizer"),
                   modules=("tokenizers",))


def _expect_tuple(got, expected: tuple, what: str) -> None:
    if type(got) is not tuple:
        raise AssertionError(f"{what} should return a tuple of str, got {type(got).__name__}: {got!r}")
    if not all(type(s) is str for s in got):
        raise AssertionError(f"{what} should return a tuple of str, got {got!r}")
    if got != expected:
        raise AssertionError(f"{what} should be {expected!r}, got {got!r}")


def _call(merge_pair, word, pair, new_symbol, what):
    before = tuple(word)
    got = merge_pair(word, pair, new_symbol)
    if word != before:
        raise AssertionError(f"{what} changed its input word")
    return got


def check_merge_pair(merge_pair, seed: int | None = None, n_cases: int = 40) -> None:
    """``merge_pair(word, pair, new_symbol)`` on random words over a small alphabet (so pairs repeat and overlap)."""
    merge_pair = watched(merge_pair, MERGE_PAIR)
    gen, seed = new_generator(seed)
    alphabet = ["a", "b", "c", "Ġ", "ab", "bc"]
    for _ in range(n_cases):
        word = tuple(alphabet[randint(gen, 0, 5)] for _ in range(randint(gen, 0, 9)))
        pair = (alphabet[randint(gen, 0, 5)], alphabet[randint(gen, 0, 5)])
        what = f"merge_pair({word!r}, {pair!r}, {pair[0] + pair[1]!r}) (seed {seed})"
        _expect_tuple(_call(merge_pair, word, pair, pair[0] + pair[1], what), reference_merge_pair(word, pair, pair[0] + pair[1]), what)


def check_merge_pair_edge_cases(merge_pair) -> None:
    """Overlapping runs, pairs at the ends, multi-character symbols, empty and one-symbol words."""
    merge_pair = watched(merge_pair, MERGE_PAIR)
    cases = [
        (("a", "a", "a"), ("a", "a"), "aa"),
        (("a", "a", "a", "a"), ("a", "a"), "aa"),
        (("l", "o", "w"), ("o", "w"), "ow"),
        (("l", "o", "w"), ("l", "o"), "lo"),
        (("ab", "c"), ("a", "bc"), "abc"),
        (("ab", "c"), ("b", "c"), "bc"),
        (("a", "b", "c"), ("ab", "c"), "abc"),
        (("a", "bc"), ("a", "bc"), "abc"),
        (("b", "a"), ("a", "b"), "ab"),
        ((), ("a", "b"), "ab"),
        (("a",), ("a", "a"), "aa"),
        (("Ġ", "t", "h", "e", "Ġ", "t", "h"), ("t", "h"), "th"),
        (("x", "y", "x", "y"), ("x", "y"), "<new>"),
    ]
    for word, pair, new in cases:
        what = f"merge_pair({word!r}, {pair!r}, {new!r})"
        _expect_tuple(_call(merge_pair, word, pair, new, what), reference_merge_pair(word, pair, new), what)
