"""course_lib.data: the synthetic world, its splits and tasks (lesson 02).

Every property the later lessons rely on is checked here by re-deriving it: held-out data
is really held out, answers are right, translations follow the rules, and the same seed
gives the same bytes on any machine (pinned SHA-256, also under another PYTHONHASHSEED).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import pytest

from course_lib import data
from course_lib.data import (
    RELATIONS,
    TEMPLATES,
    TRANSLATION_DICTIONARY,
    Corpus,
    Fact,
    build_corpus,
    corpus_text,
    fact_sentence,
    make_world,
    question_answer,
    translate,
)
from tests.conftest import REPO

# SHA-256 of corpus_text(build_corpus(0), "train").encode(), and of every field of the corpus
# (see corpus_digests). If these change, every trained checkpoint and measured number of
# the course changes with them.
GOLDEN_TRAIN_SHA256 = "771c1c296181cecb9e034a325408388a50e9bc30e19192d9763cb1a35d0e4f13"
GOLDEN_CORPUS_SHA256 = "d305899c2c1df35e1ab97255f0b0f803088a82782ce101b35b68d01488fcad6f"


def corpus_digests(seed: int = 0) -> tuple[str, str]:
    """SHA-256 of the training text, and of all fields of the corpus written as JSON."""
    corpus = build_corpus(seed)
    fields = {f.name: getattr(corpus, f.name) for f in dataclasses.fields(corpus) if f.name != "world"}
    fields["world"] = dataclasses.asdict(corpus.world)
    fields["unseen_facts"] = [dataclasses.astuple(f) for f in corpus.unseen_facts]
    text = corpus_text(corpus, "train").encode()
    everything = json.dumps(fields, default=dataclasses.astuple).encode()
    return hashlib.sha256(text).hexdigest(), hashlib.sha256(everything).hexdigest()


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus(0)


@pytest.fixture(scope="module")
def train_text(corpus) -> str:
    return corpus_text(corpus, "train")


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]+", text))


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_byte_identical_corpus(corpus):
    again = build_corpus(0)
    assert again == corpus
    assert corpus_text(again, "train").encode() == corpus_text(corpus, "train").encode()
    assert corpus_text(again, "heldout").encode() == corpus_text(corpus, "heldout").encode()


def test_golden_sha256_of_seed_0():
    assert corpus_digests(0) == (GOLDEN_TRAIN_SHA256, GOLDEN_CORPUS_SHA256)


@pytest.mark.parametrize("hash_seed", ["1", "4242"])
def test_golden_sha256_under_another_pythonhashseed(hash_seed):
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    code = "from tests.test_data import corpus_digests; print(*corpus_digests(0))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [GOLDEN_TRAIN_SHA256, GOLDEN_CORPUS_SHA256]


def test_different_seeds_differ(corpus, train_text):
    other = build_corpus(1)
    assert corpus_text(other, "train") != train_text
    assert set(other.world.people).isdisjoint(corpus.world.people)
    assert other.arithmetic_heldout != corpus.arithmetic_heldout


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0", None])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        build_corpus(seed)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        make_world(seed)


def test_build_is_fast():
    start = time.perf_counter()
    build_corpus(3)
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------- the world and its sentences


def test_sizes_and_plain_ascii(corpus, train_text):
    assert 0.5e6 <= len(train_text.encode()) <= 2e6
    assert train_text.isascii() and corpus_text(corpus, "heldout").isascii()
    assert all(text and "\n" not in text for text in corpus.train_texts + corpus.heldout_texts)
    world = corpus.world
    assert 150 <= len(world.people) <= 300 and len(world.unseen_people) >= 10
    assert len(corpus.heldout_people) == round(0.2 * len(world.people))


def test_world_entities_and_facts_are_consistent(corpus):
    world = corpus.world
    name_words = [w for name in world.people + world.unseen_people for w in name.split()] + world.cities + world.countries
    assert len(name_words) == len(set(name_words)), "every invented word names one entity"
    assert all(re.fullmatch(r"[A-Z][a-z]+", w) for w in name_words)
    english = [*data.COLOURS, *data.ANIMALS, *data.PROFESSIONS, *data.FOODS, *data.QUESTIONS.values(),
               *(t for ts in TEMPLATES.values() for t in ts), *TRANSLATION_DICTIONARY, *TRANSLATION_DICTIONARY.values()]
    assert not {w.lower() for w in name_words} & {w.lower() for text in english for w in words_of(text)}
    for person in world.people + world.unseen_people:
        relations = [f.relation for f in world.facts_about(person)]
        assert 4 <= len(relations) <= 6 and len(set(relations)) == len(relations)
        assert relations[:4] == ["lives_in", "works_as", "born_in", "favourite_colour"]
    for f in world.facts + world.unseen_facts:
        if f.relation == "lives_in":
            assert f.obj in world.cities
        elif f.relation == "in_country":
            assert world.city_country[f.subject] == f.obj and f.obj in world.countries
        elif f.relation == "born_in":
            assert 1940 <= int(f.obj) <= 2005
    assert sorted(world.city_country) == sorted(world.cities)
    people_facts = sum(len(world.facts_about(p)) for p in world.people)
    assert 4.5 * len(world.people) <= people_facts <= 5.5 * len(world.people)


def test_fact_sentence_and_question_answer():
    fact = Fact("Zorbin Kalu", "lives_in", "Quenta")
    assert fact_sentence(fact, 0) == "Zorbin Kalu lives in Quenta."
    assert fact_sentence(fact, 1) == "Zorbin Kalu's home is in Quenta."
    assert question_answer(fact) == ("Question: Where does Zorbin Kalu live? Answer:", " Quenta.")
    assert fact_sentence(Fact("Zorbin Kalu", "works_as", "engineer"), 0) == "Zorbin Kalu works as an engineer."
    assert fact_sentence(Fact("Zorbin Kalu", "owns_pet", "dog"), 0) == "Zorbin Kalu owns a dog."
    for relation in RELATIONS:  # every template names the subject and the object
        for i in range(len(TEMPLATES[relation])):
            sentence = fact_sentence(Fact("Sub Ject", relation, "thing"), i)
            assert "Sub Ject" in sentence and "thing" in sentence and sentence.endswith(".")


@pytest.mark.parametrize("args,match", [
    ((Fact("A B", "lives_in", "C"), 4), "template_index must be an int in"),
    ((Fact("A B", "lives_in", "C"), -1), "template_index must be an int in"),
    ((Fact("A B", "lives_in", "C"), 1.0), "template_index must be an int in"),
    ((Fact("A B", "likes", "C"), 0), "fact.relation must be one of"),
    ((("A B", "lives_in", "C"), 0), "fact must be a Fact"),
])
def test_fact_sentence_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        fact_sentence(*args)


def test_every_training_fact_is_stated_in_the_training_text(corpus, train_text):
    for f in corpus.world.facts:
        assert any(fact_sentence(f, i) in train_text for i in range(len(TEMPLATES[f.relation]))), f


# --------------------------------------------------------------------------- held-out data


def test_heldout_people_are_read_about_but_never_quizzed(corpus, train_text):
    heldout = set(corpus.heldout_people)
    assert heldout <= set(corpus.world.people)
    quizzed = {f.subject for f in corpus.world.facts if question_answer(f) in corpus.qa_train}
    assert quizzed.isdisjoint(heldout) and quizzed >= set(corpus.world.people) - heldout
    assert {f.subject for f in corpus.world.facts if question_answer(f) in corpus.qa_heldout} == heldout
    for person in heldout:
        assert f"Question: Where does {person} live?" not in train_text
        assert sum(text.startswith(person) or f" {person}" in text for text in corpus.train_texts) >= 10
    for prompt, answer in corpus.qa_heldout:
        assert prompt not in train_text and prompt + answer not in train_text
    train_set = set(corpus.train_texts)
    assert all(q + a in train_set for q, a in corpus.qa_train)


def test_qa_answers_are_the_facts(corpus):
    for f in corpus.world.facts:
        prompt, answer = question_answer(f)
        assert prompt.startswith("Question: ") and prompt.endswith(" Answer:") and f.subject in prompt
        assert answer == f" {f.obj}."


def test_unseen_facts_appear_in_no_training_text(corpus, train_text):
    unseen = corpus.unseen_facts
    assert unseen == corpus.world.unseen_facts and len(unseen) >= 50
    assert {f.subject for f in unseen} == set(corpus.world.unseen_people)
    everything_else = "\n".join([
        train_text, corpus_text(corpus, "heldout"),
        *(q + a for q, a in corpus.qa_train + corpus.qa_heldout),
        *(t for t, _ in corpus.classification_train + corpus.classification_heldout),
    ])
    seen_words = words_of(everything_else)
    for person in corpus.world.unseen_people:
        assert person not in everything_else
        assert not set(person.split()) & seen_words, f"a part of {person!r} occurs in the corpus"
    assert all(f.subject not in corpus.world.people for f in unseen)


def test_heldout_documents_are_not_training_documents(corpus):
    assert set(corpus.heldout_texts).isdisjoint(corpus.train_texts)
    assert len(set(corpus.heldout_texts)) == len(corpus.heldout_texts)
    n_biographies = sum(not t[0].isdigit() and not t.startswith(("sort:", "Question:")) for t in corpus.heldout_texts)
    assert n_biographies == len(corpus.world.people)


# --------------------------------------------------------------------------- algorithmic tasks


def test_arithmetic_is_correct_and_heldout_is_new(corpus, train_text):
    pairs = corpus.arithmetic_train + corpus.arithmetic_heldout
    for prompt, answer in pairs:
        m = re.fullmatch(r"(\d+) ([+-]) (\d+) =", prompt)
        a, op, b = int(m[1]), m[2], int(m[3])
        assert 0 <= a < 100 and 0 <= b < 100
        assert answer == f" {a + b if op == '+' else a - b}" and int(answer) >= 0
    train_lines = set(train_text.split("\n"))
    assert all(p + a in train_lines for p, a in corpus.arithmetic_train)
    assert {p for p, _ in corpus.arithmetic_heldout}.isdisjoint(p for p, _ in corpus.arithmetic_train)
    assert not any(p in train_lines or p + a in train_lines for p, a in corpus.arithmetic_heldout)
    assert len({p for p, _ in pairs}) == len(pairs)


def test_sorting_answers_are_sorted_and_heldout_is_new(corpus, train_text):
    for prompt, answer in corpus.sorting_train + corpus.sorting_heldout:
        m = re.fullmatch(r"sort: ((?:\d )+)->", prompt)
        digits = m[1].split()
        assert 3 <= len(digits) <= 7
        assert answer == " " + " ".join(sorted(digits))
    train_prompts = {p for p, _ in corpus.sorting_train}
    assert len(train_prompts) == len(corpus.sorting_train)
    assert not any(p in train_prompts or p in train_text for p, _ in corpus.sorting_heldout)
    assert all(p + a in train_text for p, a in corpus.sorting_train[:200])


def expected_translation(sentence: str) -> str:
    """The rule, re-derived: each noun phrase becomes determiner noun [adjective]; the verb goes last."""
    words = sentence.split()
    (verb_at,) = [i for i, w in enumerate(words) if w in data.VERBS]
    phrases = [words[:verb_at], words[verb_at + 1:]]
    out = []
    for phrase in phrases:
        assert phrase[0] in data.DETERMINERS and phrase[-1] in data.NOUNS
        assert len(phrase) == 2 or (len(phrase) == 3 and phrase[1] in data.ADJECTIVES)
        out += [phrase[0], phrase[-1], *phrase[1:-1]]
    return " ".join(TRANSLATION_DICTIONARY[w] for w in out + [words[verb_at]])


def test_translation_follows_dictionary_and_word_order(corpus):
    assert translate("the big dog sees a red cat") == "lo vasku gor na miro rusa vidat"
    assert translate("a child feeds the fish") == "na tilu lo sulo nurat"
    pairs = corpus.translation_train + corpus.translation_heldout
    for source, target in pairs:
        assert target == expected_translation(source)
        assert len(source.split()) == len(target.split())
    assert len({s for s, _ in pairs}) == len(pairs), "held-out sentences are not training sentences"
    assert len(set(TRANSLATION_DICTIONARY.values())) == len(TRANSLATION_DICTIONARY)
    with_adjective = sum(len(s.split()) > 5 for s, _ in corpus.translation_train)
    assert 0.5 < with_adjective / len(corpus.translation_train) < 0.9


@pytest.mark.parametrize("sentence", ["the dog sees", "the dog sees the cat sees", "the wolf sees a cat", 3])
def test_translate_rejects_other_sentences(sentence):
    with pytest.raises(ValueError, match="sentence must be"):
        translate(sentence)


# --------------------------------------------------------------------------- classification


def template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{[soa]\}", template)
    return re.compile("(.+?)".join(re.escape(p) for p in parts))


def test_classification_labels_name_the_relation_stated(corpus):
    assert corpus.label_names == list(RELATIONS)
    patterns = {r: [template_regex(t) for t in ts] for r, ts in TEMPLATES.items()}
    for split in (corpus.classification_train, corpus.classification_heldout):
        labels = [label for _, label in split]
        assert set(labels) == set(range(len(RELATIONS)))
        for text, label in split:
            assert type(label) is int
            assert any(p.fullmatch(text) for p in patterns[corpus.label_names[label]]), (text, label)

    def subjects(split):  # people are only ever subjects; cities are the subjects of in_country sentences
        in_country = RELATIONS.index("in_country")
        return {s for text, label in split
                for s in corpus.world.people + (corpus.world.cities if label == in_country else [])
                if re.search(rf"\b{s}\b", text)}

    assert subjects(corpus.classification_train).isdisjoint(subjects(corpus.classification_heldout))


# --------------------------------------------------------------------------- corpus_text


def test_corpus_text_joins_documents(corpus):
    assert corpus_text(corpus, "heldout") == "\n".join(corpus.heldout_texts)
    assert corpus_text(corpus, "train", separator="\n\n").count("\n\n") == len(corpus.train_texts) - 1
    with pytest.raises(ValueError, match="split must be 'train' or 'heldout'"):
        corpus_text(corpus, "test")
    with pytest.raises(ValueError, match="corpus must be a Corpus"):
        corpus_text(["text"], "train")
