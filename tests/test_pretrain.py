"""The course's pretrained checkpoints: they load both ways, and their quality is real.

The figures in each ``training.json`` are recomputed here from the shipped weights, and
minimum qualities are required, so that a broken or stale checkpoint fails.
"""

from __future__ import annotations

import json

import pytest
import torch

from course_lib import models, pretrain
from course_lib.data import build_corpus
from course_lib.evaluation import exact_match, perplexity
from course_lib.tokenizer import BPETokenizer, course_tokenizer

NAMES = sorted(pretrain.RECIPES)
# What each checkpoint must reach on held-out data. Measured on the shipped weights (see each
# training.json): course-lm perplexity 2.29, questions 0.92, sums 0.75 and sorting 0.975 on these
# subsets; course-lm-small 2.30, 0.955, 0.88, 0.985; course-lm-mha 2.31, 0.975, 0.90, 0.996.
# Chance is far below every threshold.
MINIMUM = {
    "course-lm": {"heldout_perplexity_max": 2.4, "qa_heldout": 0.85, "arithmetic": 0.65, "sorting": 0.9},
    "course-lm-small": {"heldout_perplexity_max": 2.4, "qa_heldout": 0.85, "arithmetic": 0.8, "sorting": 0.9},
    "course-lm-mha": {"heldout_perplexity_max": 2.4, "qa_heldout": 0.85, "arithmetic": 0.8, "sorting": 0.9},
}


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(0)


def record(name: str) -> dict:
    return json.loads((pretrain.ASSETS / name / "training.json").read_text())


def test_every_recipe_has_a_checkpoint():
    assert models.available_pretrained() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_matches_its_recipe_and_is_small(name):
    folder = pretrain.ASSETS / name
    model = models.load_pretrained(name)
    assert model.config == pretrain.RECIPES[name].model
    assert model.num_parameters() == record(name)["parameters"]
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 16 * 2**20, f"{name} takes {size / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_loads_in_transformers_with_the_same_logits(name):
    transformers = pytest.importorskip("transformers")
    folder = pretrain.ASSETS / name
    ours = models.load_pretrained(name)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(ids) - theirs(ids).logits).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_is_the_course_tokenizer(name):
    saved = BPETokenizer.load(pretrain.ASSETS / name)
    assert saved.vocab == course_tokenizer(0).vocab and saved.merges == course_tokenizer(0).merges


@pytest.mark.parametrize("name", NAMES)
def test_recorded_perplexity_is_what_the_weights_give(name, corpus):
    model = models.load_pretrained(name)
    ppl = perplexity(model, course_tokenizer(0), corpus.heldout_texts)
    assert ppl == pytest.approx(record(name)["quality"]["heldout_perplexity"], rel=1e-3)
    assert ppl <= MINIMUM[name]["heldout_perplexity_max"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("task", ["qa_heldout", "arithmetic", "sorting"])
def test_checkpoint_quality_on_held_out_tasks(name, task, corpus):
    model = models.load_pretrained(name)
    pairs = {"qa_heldout": corpus.qa_heldout, "arithmetic": corpus.arithmetic_heldout[:300], "sorting": corpus.sorting_heldout[:200]}[task]
    score = exact_match(model, course_tokenizer(0), pairs, max_new_tokens=24 if task == "sorting" else 12)
    assert score >= MINIMUM[name][task], f"{name} {task}: {score:.3f}"


def test_the_larger_model_has_the_lower_perplexity():
    assert record("course-lm")["quality"]["heldout_perplexity"] < record("course-lm-small")["quality"]["heldout_perplexity"]


def test_pretrain_runs_end_to_end_in_a_few_steps(tmp_path):
    rec = pretrain.pretrain("course-lm-small", out=tmp_path, steps=4, progress=False)
    assert rec["train"]["steps"] == 4 and len(rec["history"]["eval_loss"]) == 1
    again = models.load_pretrained(tmp_path / "course-lm-small")
    assert again.num_parameters() == rec["parameters"]
    assert json.loads((tmp_path / "course-lm-small" / "training.json").read_text())["quality"] == rec["quality"]


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(ValueError, match="name must be one of"):
        pretrain.pretrain("gpt-5")


def test_course_lm_mha_is_course_lm_small_with_one_kv_head_per_query_head():
    mha, gqa = pretrain.RECIPES["course-lm-mha"], pretrain.RECIPES["course-lm-small"]
    assert mha.model.n_kv_heads == mha.model.n_heads and gqa.model.n_kv_heads < gqa.model.n_heads
    assert mha.model.__class__(**{**gqa.model.__dict__, "n_kv_heads": mha.model.n_heads}) == mha.model
    assert mha.train == gqa.train and mha.batch_size == gqa.batch_size and mha.seq_len == gqa.seq_len


def test_uptraining_a_converted_checkpoint_lowers_its_loss():
    """Lesson 06: mean-pooled MQA is worse than the MHA original; a few uptraining steps recover some of it."""
    from course_lib.train import evaluate, random_windows

    tokenizer, corpus = course_tokenizer(0), build_corpus(0)
    heldout = pretrain.token_stream(tokenizer, corpus.heldout_texts[:200])
    batches = [random_windows(heldout, 16, 128, torch.Generator().manual_seed(i)) for i in range(2)]
    loss = lambda m: evaluate(m, lambda model, b: model.loss(b), batches)  # noqa: E731
    mha = models.load_pretrained("course-lm-mha")
    mqa = models.convert_kv_heads(mha, 1)
    before = loss(mqa)
    assert before > loss(mha)
    history = pretrain.uptrain(mqa, steps=12, lr=1e-3, progress=False, batch_size=8)
    assert len(history.train_loss) == 12 and loss(mqa) < before
