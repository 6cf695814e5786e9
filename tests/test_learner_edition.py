"""The learner edition: the course without solutions/, hidden tests or tests/, where
`make lab`, `make check` and `course check` still work (on the visible tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")

from course_lib import grading  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.test_grading import leaks, secret_lines, solved, write  # noqa: E402
from tests.test_lab import get, make_lab  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LESSONS = grading.lessons(REPO)
LESSON = LESSONS[0]
BIN = Path(sys.executable).parent
# In the edition, make uses this repository's .venv: `-o` keeps it from reinstalling anything there.
MAKE_WITH_OUR_VENV = ["-o", ".venv/.installed", f"BIN={BIN}"]


@pytest.fixture(scope="module")
def edition(tmp_path_factory) -> Path:
    return grading.write_learner_edition(tmp_path_factory.mktemp("edition") / "llm-course", REPO)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_edition_has_the_lessons_and_no_instructor_material(edition):
    for folder in ("solutions", "tests", ".ci", "INSTRUCTORS.md"):
        assert not (edition / folder).exists(), folder
    assert not list(edition.rglob("gradebook.db"))
    for lesson in LESSONS:
        path = Path("notebooks") / lesson / f"{lesson}.ipynb"
        assert (edition / path).read_bytes() == (REPO / path).read_bytes()
        assert (edition / ".release" / lesson / f"{lesson}.ipynb").read_bytes() == (REPO / path).read_bytes()
    for name in ("Makefile", "nbgrader_config.py", "pyproject.toml", "requirements.txt", "README.md", "binder/postBuild"):
        assert (edition / name).is_file(), name
    assert grading.course_root(edition / "notebooks" / LESSON) == edition
    assert grading.lessons(edition) == LESSONS and not grading.has_solutions(edition)


def test_no_file_of_the_edition_holds_solution_or_hidden_test_text(edition):
    """Every file is clean, except course_lib's, which must be this repository's own: the library
    the lessons call (its reference implementations are installed by every learner)."""
    secrets = secret_lines()
    files = [p for p in edition.rglob("*") if p.is_file()]
    assert len(files) > 50
    for path in files:
        rel = path.relative_to(edition)
        if rel.parts[0] == "course_lib":
            assert path.read_bytes() == (REPO / rel).read_bytes(), f"{rel} differs from the course's library"
        else:
            assert not leaks(path, secrets), f"{rel} contains solution or hidden-test text: {leaks(path, secrets)[:3]}"


def test_course_check_in_the_edition_runs_the_visible_tests_of_the_untouched_lesson(edition):
    proc = run(["course", "check", LESSON[:2]], cwd=edition / "notebooks")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Visible tests only" in proc.stdout
    assert str(edition / "notebooks" / LESSON) in proc.stdout, "it should grade the edition's notebook"
    assert re.search(r"^test_tensor_bytes\s+0 / 1    NotImplementedError: the answer is not written yet$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^total\s+0 / 1$", proc.stdout, re.M), proc.stdout


def test_make_check_in_the_edition_gives_full_points_to_a_right_answer(edition):
    mine = edition / "notebooks" / LESSON / f"{LESSON}.ipynb"
    untouched = mine.read_bytes()
    try:
        write(solved(edition, LESSON), mine)
        proc = run(["make", "-s", *MAKE_WITH_OUR_VENV, "check", f"LESSON={LESSON[:2]}"], cwd=edition)
    finally:
        mine.write_bytes(untouched)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"^total\s+1 / 1$", proc.stdout, re.M), proc.stdout


def test_edited_test_cells_are_restored_from_the_release_in_the_edition(edition, tmp_path):
    nb = solved(edition, LESSON)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            cell.source = "pass"
        elif meta.get("solution"):
            cell.source = "def tensor_bytes(t):\n    return float(t.numel() * t.element_size())  # a float, not an int\n"
    scores = grading.grade_visible(write(nb, tmp_path / "cheat.ipynb"), LESSON, root=edition)
    assert scores.score == 0 and scores.max_score == 1, scores.table()


def test_instructor_commands_refuse_to_run_in_the_edition(edition):
    for command in (["release"], ["timings"], ["learner-edition", "elsewhere"]):
        proc = run(["course", *command], cwd=edition)
        assert proc.returncode == 2 and "learner edition" in proc.stderr, (command, proc.stderr)


def test_make_lab_serves_the_edition(edition, tmp_path):
    with make_lab(tmp_path, *MAKE_WITH_OUR_VENV, cwd=edition) as base:
        names = {item["name"] for item in get(f"{base}/api/contents/")["content"]}
        assert set(LESSONS) <= names, names


def test_a_second_edition_needs_an_empty_folder(edition):
    with pytest.raises(FileExistsError):
        grading.write_learner_edition(edition, REPO)
