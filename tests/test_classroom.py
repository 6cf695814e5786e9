"""Grading a class end to end, as INSTRUCTORS.md tells an instructor to (course_lib.classroom).

A course folder as a fresh clone has it; lesson 00 released to an nbgrader exchange and, for
learners who work in a learner edition (a repository per learner), collected from a learning
platform's download with ``zip_collect``. Honest, blank, clumsy and hostile learners submit;
``course grade-class`` grades them; ``nbgrader generate_feedback`` and ``nbgrader export``
finish the job. Every learner must get exactly what the honest part of the submission earns,
and nothing a submission does may change another learner's grade or file, the gradebook, the
course, or outlive grading.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import html
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
import nbformat  # noqa: E402

from course_lib import autograde, classroom, grading  # noqa: E402
from course_lib.sandbox import namespaces_available  # noqa: E402
from tests.conftest import REPO, processes_running  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
LESSON = "00_how_this_course_works"
BIN = Path(sys.executable).parent
RIGHT = "def tensor_bytes(t):\n    return t.numel() * t.element_size()\n"
WRONG = "def tensor_bytes(t):\n    return t.numel()\n"
MARK = f"classtest{os.getpid()}"  # in the command line of every process a hostile submission starts


def hostile(course: Path) -> dict[str, tuple[str, list[str], int]]:
    """learner -> (answer cell, extra cells after it, points the honest part earns)."""
    db, book = course / "gradebook.db", str(course / "gradebook.db")
    lib = Path(classroom.__file__).parent
    sql_full = f"UPDATE grade SET auto_score = 1 WHERE id IN (SELECT id FROM grade)"
    return {
        "mallory-reads": (RIGHT, [f"""
import glob, os
for pattern in [{str(course / 'solutions')!r} + '/*/*.ipynb', {str(REPO / 'solutions')!r} + '/*/*.ipynb', {book!r},
                {str(course / '.git')!r} + '/*', '../../../source/*/*.ipynb', '../../../solutions/*/*.ipynb']:
    print('found', len(glob.glob(pattern)), 'files at', pattern)
    for path in glob.glob(pattern):
        try:
            print(open(path, errors='replace').read()[:100000])
        except OSError as err:
            print('refused', path, type(err).__name__)
"""], 1),
        "mallory-full-marks": (WRONG, [f"""
import sqlite3
for path in [{book!r}, '../../../gradebook.db', '../../gradebook.db']:
    try:
        con = sqlite3.connect(path)
        con.execute({sql_full!r})
        con.commit()
    except Exception as err:
        print('refused', path, type(err).__name__)
"""], 0),
        "mallory-vandal": (RIGHT, [f"""
import os, shutil, sqlite3
try:
    con = sqlite3.connect({book!r})
    con.execute("UPDATE grade SET auto_score = 0")
    con.commit()
except Exception as err:
    print('refused', type(err).__name__)
for victim in ['ana', 'zoe']:
    for step in ['submitted', 'autograded']:
        try:
            shutil.copyfile({str(course / 'notebooks' / LESSON / f'{LESSON}.ipynb')!r},
                            os.path.join({str(course)!r}, step, victim, {LESSON!r}, {LESSON + '.ipynb'!r}))
        except OSError as err:
            print('refused', victim, step, type(err).__name__)
"""], 1),
        "mallory-backdoor": (RIGHT, [f"""
for path in [{str(lib / 'checks' / 'basics.py')!r}, {str(lib / 'autograde.py')!r}]:
    try:
        with open(path, 'a') as f:
            f.write('\\ncheck_tensor_bytes = check_tensor_bytes_edge_cases = lambda *a, **k: None\\n')
    except OSError as err:
        print('refused', path, type(err).__name__)
"""], 1),
        "mallory-deletes": (RIGHT, [f"""
import os, shutil
for path in [{book!r}, {str(course / 'notebooks' / LESSON / f'{LESSON}.ipynb')!r}]:
    try:
        os.remove(path)
    except OSError as err:
        print('refused', path, type(err).__name__)
shutil.rmtree({str(course / 'submitted')!r}, ignore_errors=True)
"""], 1),
        "mallory-detached": (WRONG, [f"""
import subprocess, sys
code = '''
import sqlite3, time
time.sleep(4)
con = sqlite3.connect({book!r})
con.execute({sql_full!r})
con.commit()
open({str(course / 'detached-was-here')!r}, 'w').write('x')
'''
subprocess.Popen([sys.executable, '-c', code, {MARK!r}], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""], 0),
        "mallory-background": (RIGHT, [f"""
import subprocess, sys
for _ in range(2):
    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {MARK!r}])
"""], 1),
        "mallory-greedy": (RIGHT, [
            "x = bytearray(6 * 2**30)\nprint('allocated 6 GiB')",  # past the sandbox's 4096 MiB of address space
            "print('y' * 100_000_000)",
        ], 1),
        # ten cells after the last test cell that each run until they are stopped
        "mallory-trailing": (RIGHT, [AFTER_THE_TEST] + ["while True:\n    pass"] * 10, 1),
    }


AFTER_THE_TEST = "# the cells below come after the last test cell"


def notebook_with(release, answer: str, extra: list[str] = ()) -> nbformat.NotebookNode:
    """The release with ``answer`` in the answer cell and ``extra`` cells after it (or at the end, after AFTER_THE_TEST)."""
    nb = copy.deepcopy(release)
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "tensor_bytes"]
    cell.source = answer
    cells = [nbformat.v4.new_code_cell(source) for source in extra]
    if extra and extra[0] == AFTER_THE_TEST:
        nb.cells.extend(cells)
    else:
        at = nb.cells.index(cell) + 1
        nb.cells[at:at] = cells
    return nb


def the_test_cell(nb):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_tensor_bytes")


def clumsy(release, other_release) -> dict[str, tuple[object, int, str]]:
    """learner -> (notebook, or the file's text, points, a word the report's line must hold)."""
    duplicated = notebook_with(release, RIGHT)
    duplicated.cells.insert(duplicated.cells.index(the_test_cell(duplicated)) + 1, copy.deepcopy(the_test_cell(duplicated)))
    renamed = notebook_with(release, RIGHT)
    the_test_cell(renamed).metadata.nbgrader["grade_id"] = "my_test"
    retyped = notebook_with(release, WRONG)
    cell = the_test_cell(retyped)
    cell.metadata.nbgrader.update(solution=True, locked=False, grade=False)
    cell.source = "pass"
    no_cells = copy.deepcopy(release)
    no_cells.cells = []
    return {
        "dup": (duplicated, 1, "more than once"),
        "renamed": (renamed, 1, "put back"),
        "retyped": (retyped, 0, "had been changed"),
        "badjson": ('{"cells": [', 0, "not valid JSON"),
        "empty": ("", 0, "empty"),
        "nocells": (no_cells, 0, "no cells"),
        "wronglesson": (other_release, 0, "01_attention"),
    }


def nbgrader(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([str(BIN / "nbgrader"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"nbgrader {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def course_command(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([str(BIN / "course"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"course {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    """The whole class, graded: returns what the tests look at."""
    base = tmp_path_factory.mktemp("class")
    course = base / "llm-course"
    course.mkdir()
    for name in ("nbgrader_config.py", "solutions", "notebooks", "INSTRUCTORS.md"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, course / name)
    (course / ".git").mkdir()
    (course / ".git" / "packed-solutions").write_text("### BEGIN SOLUTION the history holds every solution\n")
    exchange = base / "exchange"
    exchange.mkdir()
    exchange.chmod(0o777)
    # an instructor's settings for this class: the exchange, and short limits so that the test is quick
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.Exchange.root = {str(exchange)!r}\nc.TrustedExecute.timeout = 5\n"
                "c.TrustedExecute.notebook_cpu_seconds = 20\nc.TrustedExecute.notebook_wall_seconds = 120\n")
    release = nbformat.read(course / "notebooks" / LESSON / f"{LESSON}.ipynb", as_version=4)
    other_release = nbformat.read(course / "notebooks" / "01_attention" / "01_attention.ipynb", as_version=4)

    # distribute: the exchange ...
    nbgrader("release_assignment", LESSON, cwd=course)
    home = base / "home"
    fetched = home / "ana"
    fetched.mkdir(parents=True)
    nbgrader("fetch_assignment", LESSON, "--course", "llm-course", f"--Exchange.root={exchange}", cwd=fetched)
    assert (fetched / LESSON / f"{LESSON}.ipynb").is_file()
    # ... and a repository per learner (the learner edition), handed in through a learning platform
    edition = grading.write_learner_edition(base / "edition", REPO)
    from_edition = nbformat.read(edition / "notebooks" / LESSON / f"{LESSON}.ipynb", as_version=4)

    expected, words = {}, {}
    via_exchange = {"ana": notebook_with(release, RIGHT), "bo": copy.deepcopy(release),
                    "ben": notebook_with(release, "import sys, warnings\n" + RIGHT + "print('debug', file=sys.stderr)\n"
                                         "warnings.warn('a warning is not a failure')\n")}
    expected.update(ana=1, bo=0, ben=1)
    if namespaces_available():
        for student, (answer, extra, points) in hostile(course).items():
            via_exchange[student] = notebook_with(release, answer, extra)
            expected[student] = points
    via_platform = {"zoe": notebook_with(from_edition, RIGHT), "zed": copy.deepcopy(from_edition)}
    expected.update(zoe=1, zed=0)
    for student, (nb, points, word) in clumsy(release, other_release).items():
        (via_platform if student in ("wronglesson", "nocells") else via_exchange)[student] = nb
        expected[student], words[student] = points, word

    for student, nb in via_exchange.items():
        folder = home / student / LESSON
        if student != "ana":
            shutil.copytree(fetched / LESSON, folder)
        path = folder / f"{LESSON}.ipynb"
        path.write_text(nb) if isinstance(nb, str) else nbformat.write(nb, path)
        nbgrader("submit", LESSON, "--course", "llm-course", f"--Exchange.root={exchange}", f"--student={student}",
                 cwd=home / student)
    archive = course / "downloaded" / LESSON / "archive"
    archive.mkdir(parents=True)
    with zipfile.ZipFile(archive / "submissions.zip", "w") as zf:
        for number, (student, nb) in enumerate(via_platform.items()):
            zf.writestr(f"{student}_{1000 + number}_{7000 + number}_{LESSON}.ipynb", nb if isinstance(nb, str) else nbformat.writes(nb))

    # collect
    nbgrader("collect", LESSON, cwd=course)
    nbgrader("zip_collect", LESSON, cwd=course)
    assert sorted(p.name for p in (course / "submitted").iterdir()) == sorted(expected)

    # grade; a learner graded in an earlier run keeps that grade until graded again
    submitted_before = fingerprint(course / "submitted")
    course_before = {k: v for k, v in fingerprint(course).items() if not k.startswith(("submitted", "downloaded", "gradebook", "reports"))}
    lib_before = fingerprint(Path(classroom.__file__).parent)
    started = time.perf_counter()
    graded = course_command("grade-class", LESSON, "--jobs", "2", cwd=course)
    seconds = time.perf_counter() - started
    time.sleep(5)  # what a detached process would have done by now
    leftovers = processes_running(MARK)

    nbgrader("generate_feedback", LESSON, cwd=course)
    nbgrader("export", cwd=course)
    return {"course": course, "expected": expected, "words": words, "graded": graded, "seconds": seconds,
            "leftovers": leftovers, "submitted_before": submitted_before, "course_before": course_before,
            "lib_before": lib_before, "exchange": exchange}


def exported(course: Path) -> dict[str, float]:
    with open(course / "grades.csv") as f:
        return {row["student_id"]: float(row["score"]) for row in csv.DictReader(f) if row["assignment"] == LESSON}


def report_lines(klass) -> dict[str, str]:
    path = re.search(r"written to (\S+\.md)", klass["graded"].stdout).group(1)
    lines = Path(path).read_text().splitlines()
    return {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and not line.startswith("| learner")}


def test_every_learner_gets_what_the_honest_part_earns(klass):
    got = exported(klass["course"])
    table = "\n".join(f"{s:20} expected {klass['expected'][s]:g}  got {got.get(s)}" for s in sorted(klass["expected"]))
    assert got == {s: float(p) for s, p in klass["expected"].items()}, table


def test_the_report_gives_one_line_per_learner_with_the_reason(klass):
    lines = report_lines(klass)
    assert sorted(lines) == sorted(klass["expected"])
    for student, word in klass["words"].items():
        assert word in lines[student], lines[student]
    for student in ("ana", "ben", "zoe", "bo"):  # honest and blank work: nothing to report, no tampering warning
        assert lines[student].rstrip().endswith("|  |"), lines[student]
    assert "graded in" in klass["graded"].stdout


def test_the_gradebook_export_and_feedback_agree_and_show_no_hidden_test(klass):
    course = klass["course"]
    hidden = set()
    for cell in nbformat.read(REPO / "solutions" / LESSON / f"{LESSON}.ipynb", as_version=4).cells:
        for block in re.findall(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", cell.source, re.S):
            hidden |= {line.strip() for line in block.splitlines() if line.strip()}
    assert hidden
    feedback = sorted((course / "feedback").glob(f"*/{LESSON}/{LESSON}.html"))
    assert {p.parent.parent.name for p in feedback} == {s for s in klass["expected"] if (course / "autograded" / s).exists()}
    for path in feedback:
        text = html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))
        assert "HIDDEN TESTS" not in text and not any(line in text for line in hidden), path
        assert path.stat().st_size < 3_000_000, f"{path}: {path.stat().st_size} bytes"
    wrong = html.unescape((course / "feedback" / "retyped" / LESSON / f"{LESSON}.html").read_text())
    assert "AssertionError" in wrong and "tensor_bytes(" in wrong  # which check failed, and why


@pytest.mark.skipif(not namespaces_available(), reason="hostile submissions are graded where the sandbox has namespaces")
def test_no_submission_changed_the_course_another_learner_or_outlived_grading(klass):
    course = klass["course"]
    assert "namespaces (mount, pid, network)" in klass["graded"].stdout
    assert klass["leftovers"] == [] and processes_running(MARK) == []
    assert not (course / "detached-was-here").exists()
    assert fingerprint(course / "submitted") == klass["submitted_before"]
    after = {k: v for k, v in fingerprint(course).items() if k in klass["course_before"]}
    assert after == klass["course_before"]
    assert fingerprint(Path(classroom.__file__).parent) == klass["lib_before"]
    reads = nbformat.read(course / "autograded" / "mallory-reads" / LESSON / f"{LESSON}.ipynb", as_version=4)
    (cell,) = [c for c in reads.cells if "glob.glob" in c.source]
    printed = json.dumps(cell.outputs)
    assert printed.count("found 0 files") == 6, printed[:3000]
    greedy = course / "autograded" / "mallory-greedy" / LESSON / f"{LESSON}.ipynb"
    assert greedy.stat().st_size < 3_000_000
    nb = nbformat.read(greedy, as_version=4)
    (memory,) = [c for c in nb.cells if "bytearray" in c.source]
    assert [o.ename for o in memory.outputs if o.output_type == "error"] == ["MemoryError"]
    (printing,) = [c for c in nb.cells if "100_000_000" in c.source]
    assert "output cut" in printing.outputs[0]["text"] and len(printing.outputs[0]["text"]) < 200_000
    trailing = (course / "autograded" / "mallory-trailing" / LESSON / f"{LESSON}.ipynb").read_text()
    assert trailing.count("BudgetSpentError") >= 6 and "was not run" in trailing  # 20 s of CPU time, 5 s a cell


def test_scores_are_rederived_from_the_graded_notebooks_and_the_gradebook_is_backed_up(klass):
    course = klass["course"]
    with sqlite3.connect(course / "gradebook.db") as con:  # scores lost (or tampered with)
        con.execute("UPDATE grade SET auto_score = 0")
    course_command("rescore", LESSON, cwd=course)
    nbgrader("export", cwd=course)
    assert exported(course) == {s: float(p) for s, p in klass["expected"].items()}
    # a later run for one learner backs the gradebook up first, and leaves the others' grades alone
    course_command("grade-class", LESSON, "--student", "bo", cwd=course)
    backups = sorted((course / "gradebook-backups").glob("gradebook-*.db"))
    assert backups
    with sqlite3.connect(backups[-1]) as con:
        (count,) = con.execute("SELECT count(*) FROM submitted_assignment").fetchone()
    assert count == len(klass["expected"])
    nbgrader("export", cwd=course)
    assert exported(course) == {s: float(p) for s, p in klass["expected"].items()}


def test_the_instructor_guide_gives_the_commands_this_test_runs():
    guide = (REPO / "INSTRUCTORS.md").read_text()
    section = guide[guide.index("## Grading a class"):guide.index("## A learner edition")]
    for command in ("make setup", "nbgrader release_assignment", "nbgrader fetch_assignment", "nbgrader submit",
                    "course learner-edition", "nbgrader collect", "nbgrader zip_collect", "downloaded/01_attention/archive/",
                    "course grade-class 01_attention --jobs 2", "--student", "nbgrader generate_feedback", "nbgrader export",
                    "course rescore", "gradebook-backups/", "reports/01_attention-TIME.md"):
        assert command in section, command
