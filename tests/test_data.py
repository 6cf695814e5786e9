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

