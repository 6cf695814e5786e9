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


def _fresh(symbol: str) -> str:
    """An equal string that is a different object (as a string read from a file or sent by a grader would be)."""
    return symbol.encode().decode()


def _call(merge_pair, word, pair, new_symbol, what, *, by_keyword: bool = False):
    """``merge_pair(word, pair, new_symbol)`` (by position, or by keyword), with ``pair``'s symbols fresh string objects."""
    before = tuple(word)
    pair = tuple(_fresh(s) for s in pair)
    if by_keyword:
        got = merge_pair(word=word, pair=pair, new_symbol=new_symbol)
    else:
        got = merge_pair(word, pair, new_symbol)
    if word != before:
        raise AssertionError(f"{what} changed its input word")
    return got


def check_merge_pair(merge_pair, seed: int | None = None, n_cases: int = 40) -> None:
    """``merge_pair(word, pair, new_symbol)`` on random words over a small alphabet (so pairs repeat and overlap).

    The alphabet has multi-character symbols and symbols with a space (a word need not be text split on spaces).
    """
    merge_pair = watched(merge_pair, MERGE_PAIR)
    gen, seed = new_generator(seed)
    alphabet = ["a", "b", "c", "Ġ", "ab", "bc", " ", "b c"]
    for _ in range(n_cases):
        word = tuple(alphabet[randint(gen, 0, len(alphabet) - 1)] for _ in range(randint(gen, 0, 9)))
        pair = (alphabet[randint(gen, 0, len(alphabet) - 1)], alphabet[randint(gen, 0, len(alphabet) - 1)])
        what = f"merge_pair({word!r}, {pair!r}, {pair[0] + pair[1]!r}) (seed {seed})"
        _expect_tuple(_call(merge_pair, word, pair, pair[0] + pair[1], what), reference_merge_pair(word, pair, pair[0] + pair[1]), what)


def check_merge_pair_edge_cases(merge_pair) -> None:
    """Overlapping runs, pairs at the ends, multi-character symbols, symbols with spaces, a new symbol equal to one of
    the pair's (a merge never merges what it made), empty and one-symbol words, and a call by keyword."""
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
        (("a", "b", "b"), ("a", "b"), "a"),
        (("a", "a", "b"), ("a", "b"), "b"),
        (("x y", "z"), ("y", "z"), "yz"),
        (("a", " ", "b", " "), (" ", "b"), " b"),
        (("ab", "ab", "ab"), ("ab", "ab"), "abab"),
        (("Ġ", "Ġ", "Ġ"), ("Ġ", "Ġ"), "ĠĠ"),
    ]
    for word, pair, new in cases:
        what = f"merge_pair({word!r}, {pair!r}, {new!r})"
        _expect_tuple(_call(merge_pair, word, pair, new, what), reference_merge_pair(word, pair, new), what)
    word, pair, new = ("l", "o", "w", "e", "r"), ("w", "e"), "we"
    what = f"merge_pair(word={word!r}, pair={pair!r}, new_symbol={new!r}) called with keyword arguments"
    _expect_tuple(_call(merge_pair, word, pair, new, what, by_keyword=True), reference_merge_pair(word, pair, new), what)
