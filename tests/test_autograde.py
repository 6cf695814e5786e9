"""Grading that a notebook cannot influence: hostile submissions get nothing, honest noisy ones get full marks.

Each hostile notebook below has no honest answer: if its trick worked, it would score points.
They are graded by nbgrader's real autograde (the course's nbgrader_config.py puts
course_lib.autograde.TrustedExecute in place of Execute), through course_lib.grading and
through the ``nbgrader`` command itself from a course folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
import nbformat  # noqa: E402

from course_lib import grading  # noqa: E402
from course_lib.autograde import (  # noqa: E402
    BadSubmission, judge, learner_names, read_submission, released_cells, restore_cells, without_hidden_tests,
)
from tests.conftest import REPO  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
LESSON = "00_how_this_course_works"
SOLUTION_FILE = REPO / "solutions" / LESSON / f"{LESSON}.ipynb"

HONEST = '''def tensor_bytes(t):
    return t.numel() * t.element_size()
'''

HOSTILE = {
    "patches the check": """
import course_lib.checks.basics as basics
basics.check_tensor_bytes = lambda fn, *a, **k: None
basics.check_tensor_bytes_edge_cases = lambda fn, *a, **k: None
def tensor_bytes(t):
    return 0
""",
    "replaces the checks module in sys.modules": """
import sys, types
fake = types.ModuleType("course_lib.checks.basics")
fake.check_tensor_bytes = fake.check_tensor_bytes_edge_cases = lambda *a, **k: None
sys.modules["course_lib.checks.basics"] = fake
def tensor_bytes(t):
    return 0
""",
    "installs an import hook": """
import sys, types, importlib.abc, importlib.machinery
class Fake(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("course_lib.checks"):
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = lambda attr: (lambda *a, **k: None)
        return module
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Fake())
for name in [n for n in sys.modules if n.startswith("course_lib.checks")]:
    del sys.modules[name]
def tensor_bytes(t):
    return 0
""",
    "patches torch's comparisons": """
import torch
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
torch.Tensor.__eq__ = lambda self, other: True
int.__eq__ = None if False else int.__eq__
def tensor_bytes(t):
    return 0
""",
    "rewrites the test cells (IPython input transformer)": """
ip = get_ipython()
ip.input_transformers_post.append(lambda lines: ["pass\\n"] if any("check_" in l for l in lines) else lines)
def tensor_bytes(t):
    return 0
""",
    "hides errors (post_run_cell hook)": """
ip = get_ipython()
def forget(result):
    result.error_in_exec = None
ip.events.register("post_run_cell", forget)
ip.set_custom_exc((Exception,), lambda *a, **k: None)
def tensor_bytes(t):
    return 0
""",
    "reads the instructor's solutions": f"""
import glob, json, os
found = glob.glob({str(REPO / 'solutions')!r} + "/*/*.ipynb") + glob.glob(os.path.join(os.getcwd(), "..", "..", "..", "source", "*", "*.ipynb"))
for path in found:
    for cell in json.load(open(path))["cells"]:
        if "def tensor_bytes" in "".join(cell["source"]):
            exec("".join(cell["source"]))
""",
    "writes into the course": f"""
for folder in ({str(REPO)!r}, {str(REPO / 'notebooks')!r}, "../../.."):
    try:
        open(folder + "/written-by-a-submission.txt", "w").write("pwned")
    except OSError:
        pass
def tensor_bytes(t):
    return 0
""",
    "wraps the course's reference": """
import course_lib.memory
def tensor_bytes(t):
    return course_lib.memory.tensor_bytes(t)
""",
}

NOISY_HONEST = {
    "warns on stderr": """
import sys, warnings
def tensor_bytes(t):
    warnings.warn("a warning is not a failure")
    print("debug line", file=sys.stderr)
    return t.numel() * t.element_size()
""",
    "an extra cell that ignores the interrupt and loops": (HONEST, """
import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    pass
"""),
    "prints a lot": HONEST + "print('x' * 3_000_000)\n",
}


def release_with_answer(course: Path, source: str | tuple[str, str]) -> nbformat.NotebookNode:
    """The released lesson 00 with its answer cell replaced by ``source`` (and an extra cell after it, for a pair)."""
    nb = nbformat.read(course / "notebooks" / LESSON / f"{LESSON}.ipynb", as_version=4)
    (answer,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "tensor_bytes"]
    answer.source, extra = (source, None) if isinstance(source, str) else source
    if extra is not None:
        nb.cells.insert(nb.cells.index(answer) + 1, nbformat.v4.new_code_cell(extra))
    return nb


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but .venv and caches) with a hash of its contents."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not {".venv", ".git", "__pycache__", ".pytest_cache"} & set(path.parts):
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return grading.make_course(tmp_path_factory.mktemp("course"), [LESSON], root=REPO, timeout=5)


def grade(course: Path, tmp_path: Path, source: str, student: str) -> grading.Scores:
    path = tmp_path / f"{student}.ipynb"
    nbformat.write(release_with_answer(course, source), path)
    return grading.autograde(course, LESSON, path, student=student)


def test_the_honest_answer_scores_full_marks(course, tmp_path):
    assert grade(course, tmp_path, HONEST, "honest").score == 1


@pytest.mark.parametrize("trick", list(HOSTILE))
def test_a_hostile_notebook_scores_nothing_and_changes_nothing(course, tmp_path, trick):
    repo_before = {k: v for k, v in fingerprint(REPO / "solutions").items()}
    solution_before = SOLUTION_FILE.read_bytes()
    scores = grade(course, tmp_path, HOSTILE[trick], f"hostile{list(HOSTILE).index(trick)}")
    assert scores.max_score == 1 and scores.score == 0, f"{trick}: {scores.table()}"
    assert not (REPO / "written-by-a-submission.txt").exists() and not (course / "written-by-a-submission.txt").exists()
    assert not (REPO / "notebooks" / "written-by-a-submission.txt").exists()
    assert fingerprint(REPO / "solutions") == repo_before and SOLUTION_FILE.read_bytes() == solution_before


@pytest.mark.parametrize("kind", list(NOISY_HONEST))
def test_honest_work_with_noise_scores_full_marks(course, tmp_path, kind):
    scores = grade(course, tmp_path, NOISY_HONEST[kind], f"noisy{list(NOISY_HONEST).index(kind)}")
    assert scores.score == 1, f"{kind}: {scores.table()}"


def test_the_test_cell_output_shows_the_failure_but_not_the_hidden_tests(course, tmp_path):
    scores = grade(course, tmp_path, "def tensor_bytes(t):\n    return t.numel()\n", "wrong")
    assert scores.score == 0
    nb = nbformat.read(course / "autograded" / "wrong" / LESSON / f"{LESSON}.ipynb", as_version=4)
    (test,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_tensor_bytes"]
    (error,) = [o for o in test.outputs if o.output_type == "error"]
    assert error.ename == "AssertionError" and "tensor_bytes(" in error.evalue
    text = json.dumps(test.outputs)
    assert "check_tensor_bytes_edge_cases" not in text and "BEGIN HIDDEN" not in text


def test_nbgrader_autograde_from_the_course_folder_uses_the_sandbox(course, tmp_path):
    """`nbgrader autograde` run as an instructor would, with a submission that tries every trick at once."""
    everything = "\n".join(HOSTILE.values())
    target = course / "submitted" / "cli" / LESSON / f"{LESSON}.ipynb"
    target.parent.mkdir(parents=True)
    nbformat.write(release_with_answer(course, everything), target)
    before = fingerprint(course / "solutions")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "autograde", LESSON, "--student", "cli", "--force"],
                          cwd=course, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Grading sandbox:" in proc.stderr
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        assert gb.find_submission(LESSON, "cli").score == 0
    assert fingerprint(course / "solutions") == before
    assert not (course / "written-by-a-submission.txt").exists()


def test_learner_names_are_what_the_test_cell_reads_but_does_not_define():
    source = "from course_lib.checks.basics import check_tensor_bytes\nx = 3\ncheck_tensor_bytes(tensor_bytes, seed=x)\nprint(len([x]))"
    assert learner_names(source) == {"tensor_bytes"}


def test_a_check_error_is_reported_by_type_and_message_only():
    class NoSandbox:
        pass

    printed, error = judge("print('visible')\nassert 1 == 2, 'the message'\nsecret_hidden_line = 1", NoSandbox())
    assert printed == "visible\n"
    assert error == {"ename": "AssertionError", "evalue": "the message", "traceback": ["AssertionError: the message"]}


# --------------------------------------------------------------------------- submissions that are not what they should be


def grade_ids(nb) -> list[str]:
    return [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]


@pytest.fixture(scope="module")
def expected(course):
    return released_cells(f"sqlite:///{course / 'gradebook.db'}", LESSON, LESSON)


def test_the_release_as_it_is_needs_nothing_set_right(course, expected):
    """The release lacks the hidden tests: restoring them is not an edit, so no tampering is reported."""
    nb = release_with_answer(course, HONEST)
    assert restore_cells(nb, expected) == []
    (test,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_tensor_bytes"]
    assert "check_tensor_bytes_edge_cases" in test.source  # the instructor's source, hidden tests included
    for want in expected:
        if want["locked"]:
            assert without_hidden_tests(want["source"]) in [c.source for c in release_with_answer(course, HONEST).cells]


@pytest.mark.parametrize("change, words", [
    ("duplicate", "more than once"), ("rename", "unknown grade id"), ("retype", "had been changed"),
    ("edit", "had been edited"), ("delete", "was missing"), ("points", "points"),
])
def test_each_wrong_cell_is_set_right_and_said_in_one_line(course, expected, change, words):
    nb = release_with_answer(course, HONEST)
    (index,) = [i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "test_tensor_bytes"]
    test = nb.cells[index]
    if change == "duplicate":
        nb.cells.insert(index + 1, nbformat.from_dict(json.loads(json.dumps(test))))
    elif change == "rename":
        test.metadata.nbgrader["grade_id"] = "mine"
    elif change == "retype":
        test.metadata.nbgrader.update(solution=True, locked=False)
    elif change == "edit":
        test.source = "pass"
    elif change == "delete":
        del nb.cells[index]
    elif change == "points":
        test.metadata.nbgrader["points"] = 100
    notes = restore_cells(nb, expected)
    assert any(words in note for note in notes) and all("\n" not in note for note in notes), notes
    assert sorted(grade_ids(nb)) == sorted(e["grade_id"] for e in expected)  # each exactly once
    (restored,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_tensor_bytes"]
    want = next(e for e in expected if e["grade_id"] == "test_tensor_bytes")
    assert restored.source == want["source"] and restored.metadata.nbgrader["points"] == want["points"]
    assert restored.metadata.nbgrader["locked"] and not restored.metadata.nbgrader["solution"]
    (answer,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "tensor_bytes"]
    assert answer.source == HONEST  # the learner's answer is kept
    assert nb.cells.index(answer) < nb.cells.index(restored)


@pytest.mark.parametrize("text, words", [
    ("", "empty"), ("{not json", "not valid JSON"), ('{"a": 1}', "not a Jupyter notebook"),
    ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}', "no cells"),
    ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code", "source": "1", "metadata": {}}]}',
     "none of the lesson's exercises"),
])
def test_a_file_that_is_not_the_lessons_notebook_gets_a_one_line_reason(tmp_path, text, words):
    path = tmp_path / "nb.ipynb"
    path.write_text(text)
    with pytest.raises(BadSubmission, match=words):
        read_submission(path, {"tensor_bytes", "test_tensor_bytes"}, {"01_attention": {"softmax"}})


def test_another_lessons_notebook_is_named(tmp_path):
    path = tmp_path / "nb.ipynb"
    path.write_bytes((REPO / "notebooks" / "01_attention" / "01_attention.ipynb").read_bytes())
    with pytest.raises(BadSubmission, match="lesson 01_attention"):
        read_submission(path, {"tensor_bytes", "test_tensor_bytes"}, grading.lesson_grade_ids(REPO))


def test_a_notebook_is_rebuilt_from_its_cells_only(tmp_path):
    nb = nbformat.read(REPO / "notebooks" / LESSON / f"{LESSON}.ipynb", as_version=4)
    nb.cells[0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x" * 1000}]
    nb.cells[1].metadata["nbgrader"] = {"grade_id": "tensor_bytes", "evil": "y" * 1000}
    nb.metadata["kernelspec"] = {"name": "not-python", "display_name": "x", "language": "bash"}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    got = read_submission(path, {"tensor_bytes"})
    assert got.metadata["kernelspec"]["name"] == "python3"
    assert all(c.get("outputs", []) == [] for c in got.cells)
    assert got.cells[1].metadata["nbgrader"] == {"grade_id": "tensor_bytes"}
    assert [c.source for c in got.cells] == [c.source for c in nb.cells]


def test_course_grade_says_why_a_file_cannot_be_graded_in_one_line(tmp_path):
    path = tmp_path / "nb.ipynb"
    path.write_text("{broken")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([str(Path(sys.executable).parent / "course"), "grade", str(path), "00"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "not valid JSON" in proc.stderr


def test_the_scores_table_says_why_an_exercise_scored_nothing(course, tmp_path):
    scores = grade(course, tmp_path, "def tensor_bytes(t):\n    raise NotImplementedError()\n", "unwritten")
    assert "NotImplementedError: the answer is not written yet" in scores.table()
    assert scores.reasons == {"test_tensor_bytes": "NotImplementedError: the answer is not written yet"}
