"""A learner's side of grading: `course check` from any folder, and *Run All* past unfinished exercises.

The released notebooks tag every graded test cell ``raises-exception``: JupyterLab's Run All
and nbclient go on past such a cell and still show its error, and nbgrader still scores it 0.
The solution notebooks stay untagged, so that nbval fails when a check fails there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

from course_lib import grading  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.test_grading import graded_cells, nbgrader_meta, solution_notebook, write  # noqa: E402

LESSONS = grading.lessons(REPO)
TAG = "raises-exception"
COURSE = Path(sys.executable).parent / "course"


def tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def is_test_cell(cell) -> bool:
    return cell.cell_type == "code" and bool(nbgrader_meta(cell).get("grade"))


def released_notebook(lesson: str):
    return nbformat.read(REPO / "notebooks" / lesson / f"{lesson}.ipynb", as_version=4)


# --------------------------------------------------------------------------- where `course` works


@pytest.mark.parametrize("folder", ["", "notebooks", "notebooks/00_how_this_course_works", "course_lib/checks"])
def test_course_root_is_found_from_any_folder_of_the_course(folder):
    assert grading.course_root(REPO / folder) == REPO


def test_a_folder_without_nbgrader_config_is_not_a_course(tmp_path):
    (tmp_path / "notebooks").mkdir()
    assert not grading.is_course_folder(tmp_path)
    (tmp_path / "nbgrader_config.py").write_text("")
    assert grading.is_course_folder(tmp_path)


def test_the_package_installs_the_course_command():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["course"] == "course_lib.grading:main"
    assert COURSE.is_file(), "reinstall the package: `make setup`"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_course_check_grades_from_the_notebooks_folder():
    """JupyterLab's terminal may open in notebooks/ (or a lesson's folder), where `make check` has no Makefile."""
    lesson = LESSONS[0]
    env = dict(os.environ, PATH=f"{COURSE.parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["course", "check", "00"], cwd=REPO / "notebooks", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    points = sum(graded_cells(solution_notebook(lesson)).values())
    assert re.search(rf"^total\s+0 / {points:g}$", proc.stdout, re.M), proc.stdout
    for grade_id in graded_cells(solution_notebook(lesson)):
        assert re.search(rf"^{grade_id}\s+0 / ", proc.stdout, re.M), proc.stdout


# --------------------------------------------------------------------------- Run All goes on


@pytest.mark.parametrize("lesson", LESSONS)
def test_releases_tag_exactly_the_graded_test_cells(lesson):
    release = released_notebook(lesson)
    assert any(is_test_cell(c) for c in release.cells)
    for cell in release.cells:
        assert (TAG in tags(cell)) == is_test_cell(cell), f"{lesson}: {cell.source[:120]}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_solutions_are_not_tagged_so_nbval_still_fails_on_a_failed_check(lesson):
    assert not [c for c in solution_notebook(lesson).cells if TAG in tags(c)]


def test_tag_test_cells_tags_only_graded_code_cells(tmp_path):
    nb = nbformat.v4.new_notebook()
    graded = {"grade": True, "grade_id": "t", "locked": True, "points": 1, "schema_version": 3, "solution": False, "task": False}
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("assert x == 1", metadata={"nbgrader": graded, "tags": ["keep"]}),
        nbformat.v4.new_markdown_cell("text", metadata={"nbgrader": dict(graded, grade_id="m")}),
    ]
    path = write(nb, tmp_path / "nb.ipynb")
    grading.tag_test_cells(path)
    grading.tag_test_cells(path)  # a second pass adds nothing
    cells = nbformat.read(path, as_version=4).cells
    assert [tags(c) for c in cells] == [[], ["keep", TAG], []]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_all_runs_the_untouched_lesson_00_to_its_last_cell(tmp_path):
    """nbclient's defaults stop at the first error of an untagged cell, as JupyterLab's Run All does."""
    lesson = LESSONS[0]
    nb = released_notebook(lesson)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    failed = [c for c in code if any(o.output_type == "error" for o in c.outputs)]
    assert failed and all(is_test_cell(c) for c in failed), [c.source[:80] for c in failed]
    for cell in filter(is_test_cell, code):
        (error,) = [o for o in cell.outputs if o.output_type == "error"]
        assert error.ename == "NotImplementedError"
    assert code[-1].outputs and not any(o.output_type == "error" for o in code[-1].outputs)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_tagged_test_cell_that_fails_scores_zero_and_keeps_its_error(tmp_path):
    lesson = LESSONS[0]
    course = grading.make_course(tmp_path / "course", [lesson], root=REPO)
    nb = nbformat.read(course / "notebooks" / lesson / f"{lesson}.ipynb", as_version=4)
    assert all(TAG in tags(c) for c in nb.cells if is_test_cell(c))
    (answer,) = [c for c in nb.cells if nbgrader_meta(c).get("solution") and c.cell_type == "code"]
    answer.source = "def tensor_bytes(t):\n    return float(t.numel() * t.element_size())  # a float, not an int\n"
    scores = grading.autograde(course, lesson, write(nb, tmp_path / "wrong.ipynb"), student="wrong")
    assert scores.score == 0 and scores.max_score > 0, scores.table()
    autograded = nbformat.read(course / "autograded" / "wrong" / lesson / f"{lesson}.ipynb", as_version=4)
    for cell in filter(is_test_cell, autograded.cells):
        assert any(o.output_type == "error" for o in cell.outputs), "the failed check's error was not recorded"
