"""The grading pipeline, end to end, through nbgrader's own Python API and gradebook.

Each class makes its own temporary course directory (the gradebook is sqlite: one
grader at a time per course). Scores are read from the gradebook, never from
``nbgrader validate`` (which exits 0 even when tests fail).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
import nbformat  # noqa: E402

from course_lib import grading  # noqa: E402
from tests.conftest import REPO  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
LESSONS = grading.lessons(REPO)
SOLUTION_RE = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)
HIDDEN_RE = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def solution_notebook(lesson: str):
    return nbformat.read(REPO / "solutions" / lesson / f"{lesson}.ipynb", as_version=4)


def released(course: Path, lesson: str):
    return nbformat.read(course / "notebooks" / lesson / f"{lesson}.ipynb", as_version=4)


def solved(course: Path, lesson: str):
    """The learner's release with every answer cell filled in as the solution does it."""
    return grading.answered(released(course, lesson), solution_notebook(lesson))


def write(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def secret_lines() -> set[str]:
    """The code lines of every solution and hidden-test block in solutions/ (stripped, blank lines and comments dropped)."""
    found = set()
    for lesson in LESSONS:
        for cell in solution_notebook(lesson).cells:
            for block in SOLUTION_RE.findall(cell.source) + HIDDEN_RE.findall(cell.source):
                found |= {line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")}
    return found


MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def leaks(path: Path, secrets: set[str]) -> list[str]:
    """nbgrader's markers, or whole lines of solution or hidden-test code, found in the file at ``path``."""
    text = path.read_text(errors="replace")
    found = [m for m in MARKERS if m in text]
    sources = [c.source for c in nbformat.reads(text, as_version=4).cells] if path.suffix == ".ipynb" else [text]
    lines = {line.strip() for source in sources for line in source.splitlines()}
    # short generic lines (``return x``) also occur in demos; longer ones identify a solution
    return found + sorted(line for line in lines & secrets if len(line) >= 16)


def graded_cells(nb) -> dict[str, float]:
    return {nbgrader_meta(c)["grade_id"]: nbgrader_meta(c)["points"] for c in nb.cells if nbgrader_meta(c).get("grade") and nbgrader_meta(c).get("points")}


# --------------------------------------------------------------------------- the source notebooks


def test_every_lesson_has_graded_exercises():
    assert LESSONS[:2] == ["00_how_this_course_works", "01_attention"]
    for lesson in LESSONS:
        assert graded_cells(solution_notebook(lesson)), f"{lesson} has no graded test cell"


@pytest.mark.parametrize("lesson", LESSONS)
def test_solutions_are_stored_without_outputs(lesson):
    for cell in solution_notebook(lesson).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{lesson}: a cell has outputs:\n{cell.source[:200]}"


# --------------------------------------------------------------------------- the release


@pytest.fixture(scope="class")
def release_course(tmp_path_factory):
    return grading.make_course(tmp_path_factory.mktemp("release"), LESSONS, root=REPO)


@pytest.fixture(scope="class")
def lesson_course(tmp_path_factory, lesson):
    return grading.make_course(tmp_path_factory.mktemp(f"scores-{lesson}"), [lesson], root=REPO)


class TestRelease:
    @pytest.fixture
    def course(self, release_course):
        return release_course

    def test_notebooks_folder_is_what_make_release_produces(self, course):
        made = sorted(p.relative_to(course / "notebooks") for p in (course / "notebooks").rglob("*") if p.is_file())
        committed = sorted(
            p.relative_to(REPO / "notebooks")
            for p in (REPO / "notebooks").rglob("*")
            if p.is_file() and ".ipynb_checkpoints" not in p.parts and p.parent != REPO / "notebooks"
        )
        assert committed == made, "notebooks/ is stale: run `make release` and commit the result"
        for rel in made:
            assert (REPO / "notebooks" / rel).read_bytes() == (course / "notebooks" / rel).read_bytes(), (
                f"notebooks/{rel} differs from the release of solutions/: run `make release` and commit it"
            )

    def test_no_solution_or_hidden_test_text_in_notebooks(self, course):
        secrets = secret_lines()
        assert len(secrets) > 20, "expected solution and hidden-test lines to look for"
        for path in (REPO / "notebooks").rglob("*"):
            if path.is_file():
                assert not leaks(path, secrets), f"{path} contains solution or hidden-test text: {leaks(path, secrets)[:3]}"

    def test_the_leak_detector_finds_a_planted_leak(self, course, tmp_path):
        lesson = LESSONS[-1]
        nb = released(course, lesson)
        secret = sorted(secret_lines())[0]
        nb.cells[0].source += "\n" + secret
        assert leaks(write(nb, tmp_path / "leaky.ipynb"), secret_lines()) == [secret]
        nb = released(course, lesson)
        nb.cells[0].source += "\n### BEGIN HIDDEN TESTS"
        assert leaks(write(nb, tmp_path / "marker.ipynb"), secret_lines())

    def test_release_cells_are_locked_and_answers_are_blank(self, course):
        for lesson in LESSONS:
            nb = released(course, lesson)
            for cell in nb.cells:
                meta = nbgrader_meta(cell)
                if meta.get("grade") and cell.cell_type == "code":
                    assert meta["locked"], f"{lesson}: test cell {meta['grade_id']} is not locked"
                if meta.get("solution") and cell.cell_type == "code":
                    assert "raise NotImplementedError()" in cell.source


# --------------------------------------------------------------------------- autograding


# Two classes, not one: `make test` hands each class to one worker (--dist loadscope), and each holds a dozen
# gradings of whole notebooks (about nine minutes): as two classes they run side by side.
@pytest.mark.parametrize("lesson", LESSONS, scope="class")
class TestSolutionScores:
    @pytest.fixture
    def course(self, lesson_course):
        return lesson_course

    def test_solution_scores_full_points(self, course, lesson, tmp_path):
        scores = grading.autograde(course, lesson, write(solved(course, lesson), tmp_path / "nb.ipynb"), student="solver")
        expected = graded_cells(solution_notebook(lesson))
        assert scores.max_score == sum(expected.values()) > 0
        assert scores.score == scores.max_score, scores.table()


@pytest.mark.parametrize("lesson", LESSONS, scope="class")
class TestUntouchedScores:
    @pytest.fixture
    def course(self, lesson_course):
        return lesson_course

    def test_untouched_release_with_its_test_cells_replaced_scores_zero(self, course, lesson, tmp_path):
        """One grading proves two things: the locked test cells are restored (``pass`` would score
        full points) and the untouched release, which is what they are restored to, scores zero."""
        nb = released(course, lesson)
        for cell in nb.cells:
            if nbgrader_meta(cell).get("grade") and cell.cell_type == "code":
                cell.source = "pass"
        scores = grading.autograde(course, lesson, write(nb, tmp_path / "nb.ipynb"), student="untouched")
        assert scores.max_score > 0
        assert scores.score == 0, scores.table()


@pytest.mark.parametrize("deaf", [False, True], ids=["interruptible", "ignores-the-interrupt"])
def test_endless_loop_costs_only_its_exercise(tmp_path, deaf):
    """An answer that never returns is stopped at the time limit (even if it ignores the interrupt); the rest is graded."""
    lesson = "01_attention"
    course = grading.make_course(tmp_path / "course", [lesson], root=REPO, timeout=5)
    nb = solved(course, lesson)
    (answer,) = [c for c in nb.cells if nbgrader_meta(c).get("grade_id") == "softmax"]
    ignore = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n" if deaf else ""
    answer.source = ignore + 'def softmax(x, dim=-1):\n    """Never returns."""\n    while True:\n        pass\n'
    scores = grading.autograde(course, lesson, write(nb, tmp_path / "nb.ipynb"), student="looper")
    points = graded_cells(solution_notebook(lesson))
    assert scores.cells["test_softmax"] == (0, points["test_softmax"])
    for grade_id, max_points in points.items():
        if grade_id != "test_softmax":
            assert scores.cells[grade_id] == (max_points, max_points), scores.table()


def test_make_check_grades_a_copy_and_leaves_the_learners_file_alone():
    lesson = LESSONS[0]
    mine = REPO / "notebooks" / lesson / f"{lesson}.ipynb"
    before = (hashlib.sha256(mine.read_bytes()).hexdigest(), os.stat(mine).st_mtime_ns)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["make", "-s", "check", f"LESSON={lesson[:2]}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = sum(graded_cells(solution_notebook(lesson)).values())
    assert re.search(rf"total\s+0 / {points:g}", proc.stdout), proc.stdout
    for grade_id in graded_cells(solution_notebook(lesson)):
        assert grade_id in proc.stdout
    assert (hashlib.sha256(mine.read_bytes()).hexdigest(), os.stat(mine).st_mtime_ns) == before
    assert not list((REPO / "notebooks").rglob("gradebook.db"))


def test_make_check_explains_a_missing_lesson():
    proc = subprocess.run(["make", "-s", "check"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "LESSON=01" in proc.stdout
