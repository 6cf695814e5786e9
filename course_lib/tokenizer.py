r"""Byte-pair encoding (BPE) from scratch: learn merges, encode, decode (lesson 02).

A language model reads integers, not text. A tokenizer cuts text into tokens from a fixed
vocabulary and gives each token an id. BPE learns that vocabulary from a corpus: start from
single characters and repeatedly glue together the pair of neighbouring symbols that occurs
most often. Frequent words end up as one token; rare words are spelled out in pieces.

The pipeline, the one GPT-2 uses ("byte-level BPE"):

1. **Special tokens** such as ``<eos>`` are cut out of the text first and get their own ids.
2. **Pre-tokenization** splits the rest into pieces with the regular expression
   :data:`PATTERN`: a word with the space before it (``" Quenta"``), one digit with an
   optional space before it (``" 1"``, ``"9"``), a run of punctuation (``"."``), or white
   space. Merges never cross the boundary of a piece, so a token never spans two words, and
   numbers are always spelled digit by digit.
3. **Bytes as characters.** Each piece becomes its UTF-8 bytes, and each byte one printable
   character (GPT-2's table :func:`bytes_to_unicode`): letters, digits and punctuation stand
   for themselves, a space becomes ``"Ġ"``, a newline ``"Ċ"``. So ``" Quenta"`` is the
   symbols ``("Ġ", "Q", "u", "e", "n", "t", "a")``. All 256 bytes are in the vocabulary,
   so every string can be encoded (no ``<unk>`` is ever needed) and decoded back exactly.
4. **Merges.** Training (:func:`train_bpe`) counts every pair of neighbouring symbols, each
   word weighted by how often it occurs (:func:`get_pair_counts`), merges the most frequent
   pair everywhere (:func:`merge_pair`) and repeats until the vocabulary has ``vocab_size``
   tokens. Encoding applies the learned merges to each piece, earliest-learned first.

The vocabulary, in id order:

- ids 0-14: the special tokens :data:`SPECIAL_TOKENS`: ``<pad>`` = 0, ``<bos>`` = 1,
  ``<eos>`` = 2, ``<unk>`` = 3, ``<mask>`` = 4, and ``<extra_id_0>`` ... ``<extra_id_9>``
  = 5 ... 14, the sentinels of T5-style span corruption;
- ids 15-270: the 256 byte symbols, ordered by their character's code point;
- ids 271 and up: one token per merge, in the order learned.

**Ties.** When several pairs are equally frequent, the merge goes to the pair whose first
symbol has the smallest id, then whose second symbol has the smallest id: older tokens win.
This is the rule of the Hugging Face ``tokenizers`` trainer.

**Agreement with Hugging Face** ``tokenizers`` (tested in ``tests/test_tokenizer.py``):
given the same texts, vocabulary size and special tokens, and configured as
:func:`hf_trainer` does (pre-tokenizer ``Split(PATTERN, "isolated")`` then
``ByteLevel(add_prefix_space=False, use_regex=False)``; ``initial_alphabet`` = all 256
byte symbols, so that both start from the same alphabet whatever the text; the default
``min_frequency=0`` and no ``limit_alphabet``), ``tokenizers.trainers.BpeTrainer`` learns
exactly the same merges in the same order and the same token ids, and both encode every
training and held-out text to the same ids. :meth:`BPETokenizer.save` writes a
``tokenizer.json`` that ``tokenizers`` and ``transformers`` load and that gives the same ids.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

__all__ = [
    "PATTERN", "SPECIAL_TOKENS", "DEFAULT_VOCAB_SIZE",
    "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "MASK_ID", "SENTINEL_IDS",
    "bytes_to_unicode", "pre_tokenize", "word_symbols", "count_words", "get_pair_counts", "merge_pair",
    "train_bpe", "BPETokenizer", "hf_trainer", "course_tokenizer",
]

#: How text is cut into pieces before BPE (GPT-2's pattern, simplified to ASCII letters and
#: single digits): a word with an optional leading space, one digit with an optional leading
#: space, a run of other non-space characters with an optional leading space, white space
#: that is not followed by a word (so the last space before a word stays with the word), or
#: other white space.
PATTERN = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"

#: The special tokens, which take ids 0 to 14 in this order.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>", *(f"<extra_id_{i}>" for i in range(10)))
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
SENTINEL_IDS: tuple[int, ...] = tuple(range(5, 15))   # <extra_id_0> ... <extra_id_9>

#: The course's vocabulary size: 15 special tokens, 256 bytes and 753 merges. On the
#: synthetic corpus of :mod:`course_lib.data` a word then takes about 1.5 tokens: common words
#: are one token, the invented names several.
DEFAULT_VOCAB_SIZE = 1024

_PIECE = re.compile(PATTERN)


# --------------------------------------------------------------------------- bytes and pieces


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to 256 printable characters.

    Printable ASCII and Latin-1 bytes (``!`` to ``~``, ``¡`` to ``¬``, ``®`` to ``ÿ``) map to
    themselves; the other 68 bytes (space, control characters, ...) map, in order, to the
    characters from U+0100 on: byte 32 (space) becomes ``"Ġ"`` (U+0120), byte 10 (newline)
    ``"Ċ"`` (U+010A). Tokens are then plain, printable strings. Defined in lesson 02.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def pre_tokenize(text: str) -> list[str]:
    """Cut ``text`` into the pieces that BPE works on, with :data:`PATTERN`.

    ``pre_tokenize("Zorbin Kalu was born in 1987.") ==
    ["Zorbin", " Kalu", " was", " born", " in", " 1", "9", "8", "7", "."]``.
    The pieces joined give back ``text``. Defined in lesson 02.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return _PIECE.findall(text)


def word_symbols(piece: str) -> tuple[str, ...]:
    """The starting symbols of a piece: one printable character per UTF-8 byte.

    ``word_symbols(" Kalu") == ("Ġ", "K", "a", "l", "u")``. Defined in lesson 02.
    """
    return tuple(_BYTE_TO_CHAR[b] for b in piece.encode("utf-8"))


# --------------------------------------------------------------------------- the two steps of training


def get_pair_counts(words: dict[tuple[str, ...], int]) -> Counter:
    """Count every pair of neighbouring symbols, each word weighted by its frequency.

    Args:
        words: each word as a tuple of symbols -> how often the word occurs.
    Returns:
        a ``Counter`` from ``(left, right)`` to its total count. A word with the same pair
        twice counts it twice: ``{("a", "a", "a"): 5}`` gives ``{("a", "a"): 10}``.

    Defined in lesson 02.
    """
    counts = Counter()
    for word, freq in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += freq
    return counts


def merge_pair(word: tuple[str, ...], pair: tuple[str, str], new_symbol: str) -> tuple[str, ...]:
    """Replace every occurrence of ``pair`` in ``word`` by ``new_symbol``, scanning left to right.

    One merge step on one word. Occurrences do not overlap: after a merge the scan goes on
    after the merged pair, so ``("a", "a", "a")`` with pair ``("a", "a")`` becomes
    ``("aa", "a")``, not ``("a", "aa")``.

    Args:
        word: the word's symbols, e.g. ``("Ġ", "l", "o", "w")``.
        pair: the two neighbouring symbols to merge, e.g. ``("l", "o")``.
        new_symbol: what replaces them, normally ``pair[0] + pair[1]``.
    Returns:
        a new tuple of strings (``word`` itself is unchanged), e.g. ``("Ġ", "lo", "w")``.

    Defined in lesson 02.
    """
    out = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_symbol)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


# --------------------------------------------------------------------------- training


def _split_special(text: str, specials: list[str]) -> list[tuple[str, bool]]:
    """Cut ``text`` around the special tokens: a list of ``(chunk, is_special)``, in order.

    Where two special tokens could start at the same place, the longer one wins.
    """
    if not specials:
        return [(text, False)]
    alternatives = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    chunks = re.split(f"({alternatives})", text)
    # re.split with a group returns the text between matches at even positions, the matches at odd ones
    return [(chunk, i % 2 == 1) for i, chunk in enumerate(chunks) if chunk]


def _check_special_tokens(special_tokens) -> list[str]:
    special_tokens = list(special_tokens)
    if not all(isinstance(s, str) and s for s in special_tokens) or len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens must be distinct non-empty strings, got {special_tokens!r}")
    return special_tokens


def count_words(texts: list[str]) -> dict[tuple[str, ...], int]:
    """Pre-tokenize every text and count the pieces: ``{word_symbols(piece): count}``.

    Special tokens are not treated specially here: training texts should not contain them
    (the Hugging Face trainer does not cut them out either). Defined in lesson 02.
    """
    counts = Counter()
    for text in texts:
        counts.update(pre_tokenize(text))
    return {word_symbols(piece): n for piece, n in counts.items()}


def train_bpe(texts: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE, special_tokens=SPECIAL_TOKENS) -> BPETokenizer:
    """Learn a byte-level BPE tokenizer with ``vocab_size`` tokens from ``texts``.

    The vocabulary starts with ``special_tokens`` and the 256 byte symbols (ordered by code
    point); then, until it holds ``vocab_size`` tokens, the most frequent pair of
    neighbouring symbols is merged in every word. Ties go to the pair whose symbols have the
    smallest ids (first symbol, then second). Training stops early when no pair is left.

    Args:
        texts: a list of strings.
        vocab_size: the number of tokens wanted; at least ``len(special_tokens) + 256``.
        special_tokens: strings that get the first ids; :meth:`BPETokenizer.encode` never
            splits them. Training texts should not contain them: here they are plain text.
    Returns:
        a :class:`BPETokenizer`.

    Defined in lesson 02.
    """
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of str")
    special_tokens = _check_special_tokens(special_tokens)
    n_base = len(special_tokens) + 256
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < n_base:
        raise ValueError(
            f"vocab_size must be an int of at least {n_base} ({len(special_tokens)} special tokens + 256 bytes), got {vocab_size!r}"
        )

    vocab = {token: i for i, token in enumerate(special_tokens)}
    for symbol in sorted(_BYTE_TO_CHAR.values()):
        vocab[symbol] = len(vocab)
    words = count_words(texts)
    merges = []
    while len(vocab) < vocab_size:
        pair_counts = get_pair_counts(words)
        if not pair_counts:
            break
        # the most frequent pair; among equals, the smallest ids win
        best = max(pair_counts, key=lambda p: (pair_counts[p], -vocab[p[0]], -vocab[p[1]]))
        new_symbol = best[0] + best[1]
        merges.append(best)
        vocab.setdefault(new_symbol, len(vocab))  # a token made a second way keeps its id
        # merge in every word (skipping, for speed, the words that do not contain best[0])
        words = {(merge_pair(w, best, new_symbol) if best[0] in w else w): n for w, n in words.items()}
    return BPETokenizer(vocab, merges, special_tokens)


# --------------------------------------------------------------------------- the tokenizer


class BPETokenizer:
    """A trained byte-level BPE tokenizer: ``encode`` text to ids, ``decode`` ids to text.

    Attributes:
        vocab: token string -> id (special tokens, byte symbols, merged tokens).
        merges: the learned merges ``(left, right)``, in the order learned.
        special_tokens: the special token strings; ``vocab[special_tokens[i]] == i``.

    ``decode(encode(text)) == text`` for every string. Special tokens written in a text
    (``"<eos>"``) are encoded as their id. Defined in lesson 02.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], special_tokens=SPECIAL_TOKENS):
        special_tokens = _check_special_tokens(special_tokens)
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError("vocab must give the ids 0, 1, ..., len(vocab) - 1, each to one token")
        if [vocab.get(s) for s in special_tokens] != list(range(len(special_tokens))):
            raise ValueError(f"vocab must give the special tokens the first ids 0..{len(special_tokens) - 1}, in order")
        missing = [c for c in _BYTE_TO_CHAR.values() if c not in vocab]
        if missing:
            raise ValueError(f"vocab must contain all 256 byte symbols; missing {missing[:5]}...")
        for left, right in merges:
            if left not in vocab or right not in vocab or left + right not in vocab:
                raise ValueError(f"merge {(left, right)!r} uses or makes a token that is not in vocab")
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = special_tokens
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        # rank of each merge: the earlier it was learned, the sooner it applies
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        """The number of tokens (the size of a model's embedding table)."""
        return len(self.vocab)

    # ----------------------------------------------------------------- encoding

    def bpe(self, piece: str) -> list[str]:
        """The tokens of one pre-tokenized piece: ``bpe(" Quenta") == ["ĠQuenta"]``.

        Start from the piece's byte symbols and, while some neighbouring pair has a merge,
        merge the pair whose merge was learned first (the leftmost one if it occurs twice).
        """
        symbols = list(word_symbols(piece))
        while len(symbols) > 1:
            ranked = [(self.ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in self.ranks]
            if not ranked:
                break
            _, i = min(ranked)
            symbols[i: i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols

    def tokenize(self, text: str) -> list[str]:
        """The token strings of ``text``, e.g. ``["Z", "orb", "in", "ĠKalu", ...]``."""
        return [self.id_to_token[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (a list of ints). No ``<bos>``/``<eos>`` is added.

        Each piece is encoded once and remembered, so encoding a whole corpus is fast.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids = []
        for chunk, is_special in _split_special(text, self.special_tokens):
            if is_special:
                ids.append(self.vocab[chunk])
                continue
            for piece in pre_tokenize(chunk):
                if piece not in self._cache:
                    self._cache[piece] = [self.vocab[token] for token in self.bpe(piece)]
                ids.extend(self._cache[piece])
        return ids

    def decode(self, ids) -> str:
        """The text of token ids: special tokens as written, other tokens back to bytes, then UTF-8.

        ``ids`` is a list of ints (or a 1-D tensor or array). Bytes that are not valid UTF-8
        (a character cut in the middle) become "\ufffd", as in Hugging Face's decoder.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError("ids must be a list of ints (or a 1-D tensor of integers)")
        bad = [i for i in ids if i not in self.id_to_token]
        if bad:
            raise ValueError(f"ids must be in [0, {len(self.vocab) - 1}], got {bad[:5]}")
        out = bytearray()
        for i in ids:
            token = self.id_to_token[i]
            if token in self.special_tokens:
                out += token.encode("utf-8")
            else:
                out += bytes(_CHAR_TO_BYTE[c] for c in token)
        return out.decode("utf-8", errors="replace")

    # ----------------------------------------------------------------- Hugging Face files

    def to_hf_json(self) -> dict:
        """The content of a Hugging Face ``tokenizer.json``: a BPE model, our pre-tokenizer and a byte-level decoder."""
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                for i, s in enumerate(self.special_tokens)
            ],
            "normalizer": None,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
                ],
            },
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": self.vocab,
                "merges": [list(m) for m in self.merges],
            },
        }

    def save(self, directory) -> Path:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``directory``.

        The folder then loads with ``transformers.AutoTokenizer.from_pretrained(directory)``,
        and ``tokenizer.json`` alone with ``tokenizers.Tokenizer.from_file`` or
        ``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``; all give the ids of
        :meth:`encode`. Returns the path of ``tokenizer.json``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        roles = self._roles()
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **roles,
            "additional_special_tokens": [s for s in self.special_tokens if s not in roles.values()],
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
        }
        path = directory / "tokenizer.json"
        path.write_text(json.dumps(self.to_hf_json(), ensure_ascii=False, indent=2), encoding="utf-8")
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        special_map = {**roles, "additional_special_tokens": config["additional_special_tokens"]}
        (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")
        return path

    def _roles(self) -> dict[str, str]:
        """transformers' names for the special tokens that play a known role."""
        names = {"<pad>": "pad_token", "<bos>": "bos_token", "<eos>": "eos_token", "<unk>": "unk_token", "<mask>": "mask_token"}
        return {names[s]: s for s in self.special_tokens if s in names}

    @classmethod
    def load(cls, path) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`: ``path`` is its folder or its ``tokenizer.json``."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"path must be a folder holding tokenizer.json, or a tokenizer.json file; {path} does not exist")
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data.get("model", {})
        splits = (data.get("pre_tokenizer") or {}).get("pretokenizers", [{}])
        if model.get("type") != "BPE" or splits[0].get("pattern") != {"Regex": PATTERN}:
            raise ValueError(f"{path} must be a byte-level BPE tokenizer.json written by BPETokenizer.save")
        specials = [t["content"] for t in sorted(data["added_tokens"], key=lambda t: t["id"])]
        return cls(model["vocab"], [tuple(m) for m in model["merges"]], specials)


# --------------------------------------------------------------------------- the course's tokenizer


def hf_trainer(vocab_size: int = DEFAULT_VOCAB_SIZE, special_tokens=SPECIAL_TOKENS):
    """A Hugging Face ``tokenizers`` tokenizer and trainer configured to learn what :func:`train_bpe` learns.

    Returns ``(tokenizer, trainer)``; train with ``tokenizer.train_from_iterator(texts, trainer)``.
    Needs the ``tokenizers`` package. Defined in lesson 02.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 byte symbols, as train_bpe
        min_frequency=0,
        show_progress=False,
    )
    return tokenizer, trainer


_COURSE_TOKENIZERS: dict[tuple[int, int], BPETokenizer] = {}


def course_tokenizer(seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE) -> BPETokenizer:
    """The course's tokenizer: :func:`train_bpe` on ``build_corpus(seed).train_texts``.

    Trained once per ``(seed, vocab_size)`` and then remembered. Defined in lesson 02.
    """
    from course_lib.data import build_corpus

    key = (seed, vocab_size)
    if key not in _COURSE_TOKENIZERS:
        _COURSE_TOKENIZERS[key] = train_bpe(build_corpus(seed).train_texts, vocab_size)
    return _COURSE_TOKENIZERS[key]
