"""course_lib/assets/distill/results.json (bench/distill.py): its claims re-derived from the shipped students."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from course_lib.data import build_corpus
from course_lib.evaluation import exact_match, perplexity
from course_lib.models import load_pretrained
from course_lib.pretrain import ASSETS
from course_lib.tokenizer import course_tokenizer

FOLDER = ASSETS / "distill"
TEACHER_RECORD = ASSETS / "course-lm" / "training.json"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads((FOLDER / "results.json").read_text())


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(0)


@pytest.fixture(scope="module")
def tokenizer():
    return course_tokenizer(0)


def run(results: dict, name: str) -> dict:
    (found,) = [r for r in results["runs"] if r["name"] == name]
    return found


def saved_runs(results: dict) -> list[dict]:
    return [r for r in results["runs"] if r["checkpoint"] is not None]


def test_the_runs_differ_only_in_the_loss(results):
    runs = results["runs"]
    assert runs[0]["name"] == "labels" and runs[0]["alpha"] == 0
    assert {r["checkpoint"] for r in runs} >= {"student-labels", "student-distilled"}
    assert run(results, "distilled")["alpha"] == 0.5 and run(results, "distilled")["temperature"] == 2
    assert len({r["parameters"] for r in runs}) == 1
    steps = results["train"]["steps"]
    assert results["steps"] == steps and results["threads"] == 1
    for r in runs:
        assert r["history"]["eval_steps"][-1] == steps
        assert len(r["history"]["eval_steps"]) == len(r["history"]["eval_loss"])


def test_the_teacher_is_the_shipped_course_lm(results):
    shipped = json.loads(TEACHER_RECORD.read_text())
    assert results["teacher"]["parameters"] == shipped["parameters"]
    for k, v in shipped["quality"].items():
        assert results["teacher"]["quality"][k] == pytest.approx(v, abs=1e-3)


def test_the_student_is_much_smaller_and_the_baseline_clearly_worse_than_the_teacher(results):
    student, teacher = run(results, "labels"), results["teacher"]
    assert student["parameters"] < teacher["parameters"] / 10
    assert student["quality"]["heldout_perplexity"] > 1.2 * teacher["quality"]["heldout_perplexity"]


def test_the_checkpoints_are_the_recorded_students(results):
    for r in saved_runs(results):
        folder = FOLDER / r["checkpoint"]
        assert (folder / "model.safetensors").stat().st_size < 2_000_000
        assert (folder / "tokenizer.json").is_file()
        model = load_pretrained(folder)
        assert model.num_parameters() == r["parameters"]
        assert asdict(model.config) == results["student_model"]


def test_the_stored_perplexities_are_the_checkpoints_perplexities(results, corpus, tokenizer):
    for r in saved_runs(results):
        model = load_pretrained(FOLDER / r["checkpoint"])
        got = perplexity(model, tokenizer, corpus.heldout_texts)
        assert got == pytest.approx(r["quality"]["heldout_perplexity"], abs=1e-3), r["name"]


def test_the_stored_qa_heldout_is_the_checkpoints_exact_match(results, corpus, tokenizer):
    for r in saved_runs(results):
        model = load_pretrained(FOLDER / r["checkpoint"])
        assert exact_match(model, tokenizer, corpus.qa_heldout) == pytest.approx(r["quality"]["qa_heldout"], abs=1e-9)


def test_the_gap_figures_come_from_the_stored_qualities(results):
    teacher, baseline = results["teacher"]["quality"], run(results, "labels")["quality"]
    assert set(results["gaps"]) == {r["name"] for r in results["runs"][1:]}
    for name, gaps in results["gaps"].items():
        q = run(results, name)["quality"]
        ppl = (baseline["heldout_perplexity"] - q["heldout_perplexity"]) / (
            baseline["heldout_perplexity"] - teacher["heldout_perplexity"])
        assert math.isclose(gaps["perplexity_gap_closed"], ppl, rel_tol=1e-9)
        assert math.isclose(gaps["gap_closed"]["heldout_perplexity"], ppl, rel_tol=1e-9)
        for k in teacher:
            if teacher[k] == baseline[k]:
                assert gaps["gap_closed"][k] is None
            else:
                expected = (q[k] - baseline[k]) / (teacher[k] - baseline[k])
                assert math.isclose(gaps["gap_closed"][k], expected, rel_tol=1e-9, abs_tol=1e-12), (name, k)


def test_the_shares_of_the_teacher_come_from_the_stored_qualities(results):
    teacher = results["teacher"]["quality"]
    assert set(results["share_of_teacher"]) == {r["name"] for r in results["runs"]}
    for name, share in results["share_of_teacher"].items():
        q = run(results, name)["quality"]
        assert math.isclose(share["heldout_perplexity"], teacher["heldout_perplexity"] / q["heldout_perplexity"], rel_tol=1e-9)
        for k in teacher:
            if k != "heldout_perplexity":
                assert math.isclose(share[k], q[k] / teacher[k], rel_tol=1e-9, abs_tol=1e-12), (name, k)
