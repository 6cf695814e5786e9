"""course_lib.tokenizer: byte-pair encoding from scratch, against Hugging Face (lesson 02).

What must agree with Hugging Face ``tokenizers`` (its ``BpeTrainer`` configured by
``hf_trainer``) on the course corpus and on random texts: the learned merges, in the same
order; the vocabulary, token by token and id by id; and the ids of every training,
held-out, translation and classification text. The saved files must load in
``tokenizers`` and ``transformers`` and give the same ids, and decode back exactly.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from course_lib.data import build_corpus
from course_lib.tokenizer import (
    BOS_ID,
    DEFAULT_VOCAB_SIZE,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    SENTINEL_IDS,
    SPECIAL_TOKENS,
    UNK_ID,
    BPETokenizer,
    bytes_to_unicode,
    course_tokenizer,
    get_pair_counts,
    hf_trainer,
    merge_pair,
    pre_tokenize,
    train_bpe,
    word_symbols,
)

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(0)


@pytest.fixture(scope="module")
def all_texts(corpus) -> list[str]:
    """Every text of the course: training, held-out, tasks."""
    pairs = corpus.translation_train + corpus.translation_heldout
    return (
        corpus.train_texts + corpus.heldout_texts
        + [s for pair in pairs for s in pair]
        + [t for t, _ in corpus.classification_train + corpus.classification_heldout]
    )


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return course_tokenizer()


@pytest.fixture(scope="module")
def hf_tok(corpus):
    tokenizer, trainer = hf_trainer(DEFAULT_VOCAB_SIZE)
    tokenizer.train_from_iterator(corpus.train_texts, trainer)
    return tokenizer


def hf_merges(tokenizer) -> list[tuple[str, str]]:
    return [tuple(m) for m in json.loads(tokenizer.to_str())["model"]["merges"]]


# --------------------------------------------------------------------------- merge_pair (a graded exercise)


@pytest.mark.parametrize("word,pair,expected", [
    (("a", "a", "a"), ("a", "a"), ("aa", "a")),                 # overlapping: left to right, no overlap
    (("a", "a", "a", "a"), ("a", "a"), ("aa", "aa")),
    (("l", "o", "w"), ("l", "o"), ("lo", "w")),                 # pair at the start
    (("l", "o", "w"), ("o", "w"), ("l", "ow")),                 # pair at the end
    (("o", "w"), ("o", "w"), ("ow",)),                          # the whole word
    (("a", "b", "x", "a", "b"), ("a", "b"), ("ab", "x", "ab")),  # several occurrences
    (("b", "a"), ("a", "b"), ("b", "a")),                       # reversed: no occurrence
    (("a", "x", "b"), ("a", "b"), ("a", "x", "b")),             # not neighbours
    (("a",), ("a", "a"), ("a",)),
    ((), ("a", "b"), ()),
    (("Ġ", "lo", "w"), ("lo", "w"), ("Ġ", "low")),              # symbols of several characters
    (("ab", "c"), ("a", "bc"), ("ab", "c")),                    # same letters, other symbols: no match
])
def test_merge_pair(word, pair, expected):
    out = merge_pair(word, pair, pair[0] + pair[1])
    assert type(out) is tuple and out == expected


def test_merge_pair_uses_new_symbol_and_leaves_word_alone():
    word = ("x", "y", "x", "y")
    assert merge_pair(word, ("x", "y"), "<xy>") == ("<xy>", "<xy>")
    assert word == ("x", "y", "x", "y")


# --------------------------------------------------------------------------- counting and the hand-worked example


def test_get_pair_counts_weights_by_word_frequency():
    counts = get_pair_counts({("a", "a", "a"): 5, ("l", "o", "w"): 2, ("Ġ", "l", "o"): 3, ("x",): 7})
    assert dict(counts) == {("a", "a"): 10, ("l", "o"): 5, ("o", "w"): 2, ("Ġ", "l"): 3}
    assert dict(get_pair_counts({})) == {}


def test_byte_symbols_and_pre_tokenization():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert set(table.values()) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert word_symbols(" Kalu") == ("Ġ", "K", "a", "l", "u")
    assert word_symbols("é") == ("Ã", "©")  # two UTF-8 bytes
    text = "Zorbin Kalu was born in 1987."
    assert pre_tokenize(text) == ["Zorbin", " Kalu", " was", " born", " in", " 1", "9", "8", "7", "."]
    assert pre_tokenize("12 + 7 = 19") == ["1", "2", " +", " 7", " =", " 1", "9"]
    assert pre_tokenize("a  b\n\nc ") == ["a", " ", " b", "\n", "\n", "c", " "]
    for t in ("Hello,   world!\n\n  x", "sort: 5 3 -> 3 5", "café 東京\t!"):
        assert "".join(pre_tokenize(t)) == t


def test_hand_worked_example():
    """Pieces: "low" x1, " low" x2, " lower" x1, " newest" x2 (a space is Ġ).

    1. (l,o) and (o,w) both occur 4 times; "l" has the smaller id: merge (l,o).
    2. (lo,w) 4.  3. (Ġ,low) 3.  Then the six pairs of "Ġnewest" occur twice each:
    4. (e,s): "e" is the smallest first symbol, and "s" < "w".  5. (e,w).  6. (n,ew).
    7. (Ġ,new): "Ġ" is a byte symbol, older than "es" and "new".  8. (es,t).  9. (Ġnew,est).
    10. (e,r) beats (Ġlow,e), both once: "e" is older.  11. (Ġlow,er). No pair is left.
    """
    texts = ["low low low lower newest newest"]
    expected = [("l", "o"), ("lo", "w"), ("Ġ", "low"), ("e", "s"), ("e", "w"), ("n", "ew"),
                ("Ġ", "new"), ("es", "t"), ("Ġnew", "est"), ("e", "r"), ("Ġlow", "er")]
    tok = train_bpe(texts, vocab_size=400)
    assert tok.merges == expected
    assert len(tok) == len(SPECIAL_TOKENS) + 256 + len(expected)  # stopped early: no pair left
    assert [tok.vocab[a + b] for a, b in expected] == list(range(271, 282))
    assert train_bpe(texts, vocab_size=274).merges == expected[:3]
    assert tok.tokenize("lowest newer") == ["low", "est", "Ġnew", "er"]  # new words from learned pieces
    hf, trainer = hf_trainer(400)
    hf.train_from_iterator(texts, trainer)
    assert hf_merges(hf) == expected


# --------------------------------------------------------------------------- agreement with Hugging Face tokenizers


def test_same_merges_and_vocabulary_as_hf_on_the_course_corpus(tok, hf_tok):
    assert len(tok) == DEFAULT_VOCAB_SIZE and len(tok.merges) == DEFAULT_VOCAB_SIZE - 271
    assert tok.merges == hf_merges(hf_tok)
    assert tok.vocab == hf_tok.get_vocab()


def test_same_ids_as_hf_on_every_text(tok, hf_tok, all_texts):
    theirs = [e.ids for e in hf_tok.encode_batch(all_texts)]
    assert [tok.encode(t) for t in all_texts] == theirs


def random_text(rng: random.Random) -> str:
    alphabet = ["a", "b", "c", "ab", " ", " ", "  ", "\n", "1", "2", ".", "!?", "é", "東", "\t", "\u00a0", "<eos>"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))


@pytest.mark.parametrize("trial", range(20))
def test_same_merges_and_ids_as_hf_on_random_texts(trial):
    rng = random.Random(trial)
    texts = [random_text(rng) for _ in range(rng.randrange(1, 12))]
    vocab_size = 271 + rng.randrange(1, 60)
    ours = train_bpe(texts, vocab_size)
    hf, trainer = hf_trainer(vocab_size)
    hf.train_from_iterator(texts, trainer)
    assert ours.merges == hf_merges(hf) and ours.vocab == hf.get_vocab()
    probe = texts + [random_text(rng) for _ in range(10)]
    assert [ours.encode(t) for t in probe] == [e.ids for e in hf.encode_batch(probe)]


# --------------------------------------------------------------------------- files for Hugging Face


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp("course_tokenizer")
    path = tok.save(folder)
    assert path == folder / "tokenizer.json"
    return folder


def test_saved_tokenizer_json_loads_in_tokenizers(tok, saved, all_texts):
    loaded = tokenizers.Tokenizer.from_file(str(saved / "tokenizer.json"))
    sample = all_texts[::7]
    assert [e.ids for e in loaded.encode_batch(sample)] == [tok.encode(t) for t in sample]
    text = "<bos>Question: Where? Answer: 1 + 2 = 3"
    assert loaded.decode(tok.encode(text), skip_special_tokens=False) == text


def test_saved_tokenizer_loads_in_transformers_with_the_same_ids(tok, saved, all_texts):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(saved / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(saved)
    texts = all_texts + ["<bos>Zorbin Kalu<eos><pad><pad>", "<mask> and <extra_id_3>"]
    ours = [tok.encode(t) for t in texts]
    assert fast(texts)["input_ids"] == ours
    assert auto(texts)["input_ids"] == ours  # no <bos>/<eos> added: the ids are exactly ours
    assert all(auto.decode(ids) == t for ids, t in zip(ours, texts))
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id, auto.unk_token_id, auto.mask_token_id) == (0, 1, 2, 3, 4)
    assert auto.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(10)]) == list(SENTINEL_IDS)
    assert len(auto) == DEFAULT_VOCAB_SIZE


def test_load_gives_back_the_same_tokenizer(tok, saved):
    for path in (saved, saved / "tokenizer.json"):
        loaded = BPETokenizer.load(path)
        assert loaded.vocab == tok.vocab and loaded.merges == tok.merges and loaded.special_tokens == list(SPECIAL_TOKENS)
    with pytest.raises(ValueError, match="must be a folder holding tokenizer.json"):
        BPETokenizer.load(saved / "missing")


def test_load_rejects_other_tokenizer_files(tmp_path):
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a"))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="must be a byte-level BPE tokenizer.json written by BPETokenizer.save"):
        BPETokenizer.load(tmp_path)


# --------------------------------------------------------------------------- round trips, special tokens, tasks


def test_decode_encode_round_trip_on_every_text(tok, all_texts):
    assert all(tok.decode(tok.encode(t)) == t for t in all_texts)
    for t in ("", " ", "\n\n", "  leading and trailing  ", "café, naïve, 東京 🙂", "tabs\tand\r\nCRLF", "<eos> <not special>"):
        assert tok.decode(tok.encode(t)) == t


def test_special_tokens(tok):
    assert [tok.vocab[s] for s in SPECIAL_TOKENS] == list(range(15))
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID) == (0, 1, 2, 3, 4) and SENTINEL_IDS == tuple(range(5, 15))
    assert tok.vocab["<extra_id_0>"] == 5 and tok.vocab["<extra_id_9>"] == 14
    ids = tok.encode("<bos>Question:<extra_id_0> Answer<eos>")
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and SENTINEL_IDS[0] in ids
    assert tok.decode(ids) == "<bos>Question:<extra_id_0> Answer<eos>"
    assert tok.encode("<eos>") == [EOS_ID] and tok.decode([PAD_ID, PAD_ID]) == "<pad><pad>"
    assert UNK_ID not in tok.encode("東京 🙂 \x00")  # byte-level: nothing is unknown


def test_prompt_and_answer_tokenize_as_in_training(tok, corpus):
    """The answer's tokens are the last tokens of the training line: encode(p) + encode(a) == encode(p + a)."""
    pairs = corpus.qa_train + corpus.qa_heldout + corpus.arithmetic_heldout + corpus.sorting_heldout
    assert all(tok.encode(p) + tok.encode(a) == tok.encode(p + a) for p, a in pairs)


def test_common_words_are_single_tokens(tok):
    for word in (" lives", " favourite", " colour", "Question", " Answer", " profession", " born"):
        assert len(tok.encode(word)) == 1, word
    assert tok.tokenize(" 1987") == ["Ġ1", "9", "8", "7"]  # digits one by one


def test_training_and_encoding_are_fast(corpus):
    start = time.perf_counter()
    tok = train_bpe(corpus.train_texts, DEFAULT_VOCAB_SIZE)
    trained = time.perf_counter()
    n_tokens = sum(len(tok.encode(t)) for t in corpus.train_texts)  # a fresh tokenizer: empty cache
    encoded = time.perf_counter()
    assert trained - start < 10 and encoded - trained < 5
    assert 2.0 < len("".join(corpus.train_texts)) / n_tokens < 4.0  # characters per token


def test_course_tokenizer_is_trained_once(tok):
    assert course_tokenizer() is tok


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,match", [
    ({"texts": ["abc"], "vocab_size": 270}, r"vocab_size must be an int of at least 271 \(15 special tokens \+ 256 bytes\)"),
    ({"texts": ["abc"], "vocab_size": 300.0}, "vocab_size must be an int"),
    ({"texts": ["abc"], "vocab_size": 256, "special_tokens": ["<eos>"]}, "at least 257"),
    ({"texts": "abc", "vocab_size": 300}, "texts must be a list of str"),
    ({"texts": ["abc", 3], "vocab_size": 300}, "texts must be a list of str"),
    ({"texts": ["abc"], "vocab_size": 300, "special_tokens": ["<a>", "<a>"]}, "special_tokens must be distinct"),
])
def test_train_bpe_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_bpe(**kwargs)


def test_encode_and_decode_reject_bad_input(tok):
    with pytest.raises(ValueError, match="text must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="text must be a str"):
        tok.encode(["a list"])
    with pytest.raises(ValueError, match=r"ids must be in \[0, 1023\]"):
        tok.decode([5, 1024])
    with pytest.raises(ValueError, match="ids must be a list of ints"):
        tok.decode("abc")
    torch = pytest.importorskip("torch")
    assert tok.decode(torch.tensor(tok.encode("Zorbin"))) == "Zorbin"
