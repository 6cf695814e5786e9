"""Grading a class: every learner's submission of a lesson, each on its own (INSTRUCTORS.md, "Grading a class").

``course grade-class LESSON`` (or :func:`grade_class`) grades what ``nbgrader collect`` or
``nbgrader zip_collect`` put in ``submitted/STUDENT/LESSON/``:

1. the gradebook is backed up (``gradebook-backups/``), and the lesson's graded cells are
   recorded in it if they are not yet;
2. each submission is read as data first (:func:`course_lib.autograde.read_submission`): an
   empty file, invalid JSON, a notebook with no cells or another lesson's notebook gets 0 and a
   one-line reason, and the run goes on;
3. each other submission is graded by its own grader process, in a throwaway course folder
   made for it alone (a fresh gradebook, a copy of the submission with links and outputs left
   out). There nbgrader's ``autograde`` runs the learner's cells in a sandbox
   (:mod:`course_lib.sandbox`, with its limits) that sees neither the instructor's files nor
   any other submission;
4. once that process has ended (it is stopped past a time limit, and every process it started
   ends with it), this process copies the graded notebook to ``autograded/`` and writes its
   scores into the gradebook with nbgrader's own ``SaveAutoGrades``: the scores are
   re-derived from the graded notebook, so ``course rescore LESSON`` can do it again at any time;
5. a report, one line per learner with what was wrong and what was spent, is printed and
   written to ``reports/LESSON-TIME.md``.

No learner code ever runs in this process or in a grader process: only in sandboxes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import grading
from course_lib.autograde import BadSubmission, read_submission
from course_lib.sandbox import copy_plain_files, die_with_parent

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
GRADER_MARGIN_SECONDS = 300  # beyond the notebook's own wall-time budget: starting Python, nbgrader, the checks


@dataclass
class Outcome(grading.Scores):
    """What grading one learner's submission gave: :class:`course_lib.grading.Scores`, and what the report says."""

    student: str = ""
    reason: str = ""  # why the submission was not graded (it then scores 0)
    sandbox: dict = field(default_factory=dict)  # what the sandbox spent (notes: what was set right before grading)

    def line(self) -> str:
        """One row of the report's table."""
        said = self.reason or "; ".join(self.notes) or ""
        spent = (f"{self.sandbox.get('cpu_seconds', 0):g} s CPU, {self.sandbox.get('restarts', 0)} restarts"
                 if self.sandbox else "")
        return f"| {self.student} | {self.score:g} / {self.max_score:g} | {self.seconds:.1f} | {spent} | {said} |"


# --------------------------------------------------------------------------- the course and its gradebook


def _coursedir(root: Path):
    from nbgrader.coursedir import CourseDirectory

    return CourseDirectory(config=grading._config(root))


def _step_folder(root: Path, step: str) -> Path:
    """nbgrader's folder for ``step`` ("submitted", "autograded"): STUDENT/LESSON/ folders are in it."""
    coursedir = _coursedir(root)
    return Path(coursedir.root) / getattr(coursedir, f"{step}_directory")


def gradebook_path(root: Path) -> Path:
    url = _coursedir(root).db_url
    if not url.startswith("sqlite:///"):
        raise ValueError(f"the class grader backs up a SQLite gradebook; this course's is {url}")
    return Path(url.removeprefix("sqlite:///"))


def backup_gradebook(root: Path) -> Path | None:
    """Copy the gradebook (consistently, with SQLite's backup) to ``gradebook-backups/``; returns the copy."""
    db = gradebook_path(root)
    if not db.exists():
        return None
    folder = Path(root) / "gradebook-backups"
    folder.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    copy = folder / f"gradebook-{stamp}.db"
    with contextlib.closing(sqlite3.connect(db)) as source, contextlib.closing(sqlite3.connect(copy)) as dest:
        source.backup(dest)
    return copy


def ensure_assignment(root: Path, lesson: str) -> bool:
    """Record ``lesson``'s graded cells in the course's gradebook if they are not there; True if it did.

    It is nbgrader's ``generate_assignment``, with the release written to a temporary folder so
    that ``notebooks/`` (made by ``make release``) is left as it is.
    """
    from nbgrader.api import Gradebook, MissingEntry

    db = gradebook_path(root)
    with Gradebook(f"sqlite:///{db}") as gb:
        with contextlib.suppress(MissingEntry):
            gb.find_notebook(lesson, lesson)
            return False
    with tempfile.TemporaryDirectory(prefix="course-release-") as tmp, grading._venv_bin_on_path():
        config = grading._config(root)
        config.CourseDirectory.release_directory = tmp
        api = grading._api(root, config)
        grading._run(api.generate_assignment(lesson, force=True), f"generate_assignment {lesson}")
    return True


# --------------------------------------------------------------------------- one submission


def _zero(lesson: str, student: str, graded: dict[str, float], reason: str) -> Outcome:
    return Outcome(lesson, {grade_id: (0.0, points) for grade_id, points in graded.items()}, student=student, reason=reason)


def graded_points(db_url: str, lesson: str) -> dict[str, float]:
    """grade_id -> points of every autograded cell of ``lesson``, in the release's order."""
    from course_lib.autograde import released_cells

    return {c["grade_id"]: c["points"] for c in released_cells(db_url, lesson, lesson) if c["grade"] and c["points"]}


def scores_from_notebook(nb) -> dict[str, tuple[float, float]]:
    """grade_id -> (score, max) of every graded cell of an autograded notebook, as nbgrader derives them."""
    from nbgrader import utils

    found = {}
    for cell in nb.cells:
        if utils.is_grade(cell):
            score, points = utils.determine_grade(cell)
            found[cell.metadata.nbgrader["grade_id"]] = (float(score or 0), float(points))
    return found


def prepare(template: Path, folder: Path, submitted: Path, lesson: str, student: str, lessons: dict) -> None:
    """Make ``folder`` a course of its own for ``student``'s submission (the folder ``submitted``): a copy of ``template`` and of it.

    Raises :class:`BadSubmission` when the notebook cannot be graded as this lesson's.
    """
    import nbformat

    notebook = submitted / f"{lesson}.ipynb"
    if not notebook.is_file() or notebook.is_symlink():
        others = sorted(p.name for p in submitted.iterdir())[:5] if submitted.is_dir() else []
        raise BadSubmission(f"no {lesson}.ipynb in the submission" + (f" (it holds {', '.join(others)})" if others else ""))
    nb = read_submission(notebook, lessons.get(lesson, set()), {k: v for k, v in lessons.items() if k != lesson})
    shutil.copytree(template, folder, symlinks=True)
    target = folder / "submitted" / student / lesson
    copy_plain_files(submitted, target, skip=lambda p: p.suffix == ".ipynb")
    nbformat.write(nb, target / f"{lesson}.ipynb")


def grade_one(folder: Path, lesson: str, student: str, timeout: float) -> tuple[str, int | None]:
    """Run nbgrader's autograde for ``student`` in ``folder``, in a grader process of its own; returns (log, exit code).

    Past ``timeout`` seconds the process and every process it started are killed (exit code None).
    """
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [sys.executable, "-m", "course_lib.classroom", "grade-one", str(folder), lesson, student]
    with open(folder / "grading.log", "w+") as log:
        proc = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, preexec_fn=die_with_parent)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the grader's process group: nothing it started stays
        proc.wait()
        log.seek(0)
        return log.read()[-20000:], code


def _grade_one_main(folder: str, lesson: str, student: str) -> int:
    """In the grader process: nbgrader's autograde of one submission in its own course folder."""
    import warnings

    warnings.filterwarnings("ignore", message=".*not in session.*")
    api = grading._api(Path(folder))
    result = api.autograde(lesson, student, force=True, create=True)
    print(result.get("log", ""))
    if not result.get("success"):
        print(result.get("error", ""), file=sys.stderr)
        return 1
    return 0


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:200]
    return lines[-1][:200] if lines else "no output"


def collect_outcome(folder: Path, lesson: str, student: str, graded: dict[str, float], log: str, code) -> Outcome:
    """What the grader process left in ``folder``: the scores of the graded notebook, its notes and spending."""
    import nbformat

    path = folder / "autograded" / student / lesson / f"{lesson}.ipynb"
    if code is None:
        return _zero(lesson, student, graded, f"grading was stopped after its time limit ({_timeout():g} s)")
    if code != 0 or not path.is_file():
        return _zero(lesson, student, graded, f"grading failed: {_last_error(log)}")
    nb = nbformat.read(path, as_version=4)
    found = scores_from_notebook(nb)
    outcome = Outcome(lesson, {g: found.get(g, (0.0, p)) for g, p in graded.items()}, student=student)
    info = nb.metadata.get("course_grading", {})
    outcome.notes, outcome.sandbox = list(info.get("notes", [])), dict(info.get("sandbox", {}))
    return outcome


def _timeout() -> float:
    from course_lib.autograde import TrustedExecute

    return TrustedExecute().notebook_wall_seconds + GRADER_MARGIN_SECONDS


# --------------------------------------------------------------------------- into the gradebook


def record(root: Path, lesson: str, student: str, nb=None, timestamp=None) -> None:
    """Write ``student``'s scores for ``lesson`` into the course's gradebook, from the graded notebook ``nb``.

    nbgrader's own ``SaveAutoGrades`` derives them from the test cells' outputs, and its
    ``AssignLatePenalties`` applies the course's late-submission policy. Without a
    notebook (a submission that could not be graded) every graded cell gets 0.
    """
    from nbgrader.api import Gradebook
    from nbgrader.preprocessors import AssignLatePenalties, SaveAutoGrades

    url = _coursedir(root).db_url
    with Gradebook(url) as gb:
        gb.update_or_create_student(student)
        # as nbgrader's autograde does: a grader's manual scores are kept (and flagged for review)
        gb.update_or_create_submission(lesson, student, **({"timestamp": timestamp} if timestamp else {}))
        if nb is None:
            for grade in gb.find_submission_notebook(lesson, lesson, student).grades:
                grade.auto_score, grade.needs_manual_grade = 0, False
            gb.db.commit()
    if nb is not None:
        resources = {"nbgrader": {"notebook": lesson, "assignment": lesson, "student": student, "db_url": url}}
        SaveAutoGrades().preprocess(nb, resources)
        # the late-submission policy of nbgrader_config.py (nbgrader's default: no penalty)
        AssignLatePenalties(config=grading._config(root)).preprocess(nb, resources)


def rescore(lesson: str, root: Path | None = None) -> dict[str, float]:
    """Write every learner's scores for ``lesson`` into the gradebook again, from ``autograded/``; returns the totals."""
    import nbformat

    root = grading.course_root(root)
    autograded = _step_folder(root, "autograded")
    totals = {}
    for path in sorted(autograded.glob(f"*/{lesson}/{lesson}.ipynb")):
        student = path.parent.parent.name
        nb = nbformat.read(path, as_version=4)
        record(root, lesson, student, nb, _timestamp(path.parent))
        totals[student] = sum(s for s, _ in scores_from_notebook(nb).values())
    return totals


def _timestamp(folder: Path):
    """When the learner submitted (nbgrader's ``timestamp.txt``), or None when it is missing or unreadable."""
    from nbgrader.utils import parse_utc

    stamp = folder / "timestamp.txt"
    if not stamp.is_file() or stamp.is_symlink():
        return None
    try:
        return parse_utc(stamp.read_text()[:64].strip())
    except (ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------- the class


@dataclass
class ClassReport:
    lesson: str
    outcomes: list[Outcome]
    backup: Path | None
    seconds: float
    isolation: str = ""
    path: Path | None = None  # where the report was written

    def table(self) -> str:
        lines = [f"# {self.lesson}: {len(self.outcomes)} submissions graded in {self.seconds:.0f} s", ""]
        if self.backup:
            lines += [f"The gradebook was backed up to {self.backup.name} first.", ""]
        if self.isolation:
            lines += [f"Sandbox: {self.isolation}.", ""]
        lines += ["| learner | score | seconds | spent | what was wrong |", "|---|---|---|---|---|"]
        lines += [o.line() for o in self.outcomes]
        return "\n".join(lines)


def grade_class(lesson: str, root: Path | None = None, jobs: int = 1, students: list[str] | None = None,
                progress: bool = True) -> ClassReport:
    """Grade every submission of ``lesson`` in ``submitted/`` (see the module docstring); returns the report."""
    import nbformat
    from tqdm.auto import tqdm

    root = grading.course_root(root)
    lesson = grading.find_lesson(lesson, root)
    start = time.perf_counter()
    backup = backup_gradebook(root)
    with grading._venv_bin_on_path():
        ensure_assignment(root, lesson)
    url = _coursedir(root).db_url
    graded = graded_points(url, lesson)
    lessons = grading.lesson_grade_ids(root)
    submitted, autograded = _step_folder(root, "submitted"), _step_folder(root, "autograded")
    found = sorted(p.parent.name for p in submitted.glob(f"*/{lesson}") if p.is_dir() and not p.is_symlink())
    wanted = [s for s in found if students is None or s in students]
    outcomes: dict[str, Outcome] = {}
    work = Path(tempfile.mkdtemp(prefix="course-class-"))
    try:
        template = grading.make_course(work / "template", [lesson], root=root)
        config = (template / "nbgrader_config.py").read_text()
        # every sandbox of this run: neither the other submissions' folders nor the course's files
        config += f"\nc.TrustedExecute.hide = {[str(work)]!r}\n"
        (template / "nbgrader_config.py").write_text(config)
        shutil.rmtree(template / "notebooks", ignore_errors=True)

        def grade(student: str):
            folder = work / "submissions" / student
            began = time.perf_counter()
            try:
                prepare(template, folder, submitted / student / lesson, lesson, student, lessons)
            except BadSubmission as err:
                return student, None, str(err), None, time.perf_counter() - began
            log, code = grade_one(folder, lesson, student, _timeout())
            return student, folder, log, code, time.perf_counter() - began

        ready, bad = [], []
        for student in wanted:
            (ready if STUDENT_ID.match(student) else bad).append(student)
        for student in bad:
            outcomes[student] = _zero(lesson, student, graded, "the learner's id has characters that are not allowed")
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(grade, s) for s in ready]
            bar = tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc=f"grading {lesson}",
                       unit="learner", disable=not progress)
            for future in bar:
                student, folder, log, code, seconds = future.result()
                stamp = _timestamp(submitted / student / lesson)
                outcome = _zero(lesson, student, graded, log) if folder is None else (  # then log holds the reason
                    collect_outcome(folder, lesson, student, graded, log, code))
                target = autograded / student / lesson
                shutil.rmtree(target, ignore_errors=True)
                try:
                    if outcome.reason:
                        record(root, lesson, student, None, stamp)
                    else:
                        copy_plain_files(folder / "autograded" / student / lesson, target)
                        record(root, lesson, student, nbformat.read(target / f"{lesson}.ipynb", as_version=4), stamp)
                except Exception as err:  # noqa: BLE001  (say it on the learner's line; the class goes on)
                    outcome.reason = f"the scores could not be written to the gradebook: {type(err).__name__}: {err}"[:300]
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                outcome.seconds = seconds
                outcomes[student] = outcome
    finally:
        shutil.rmtree(work, ignore_errors=True)
    isolation = next((o.sandbox.get("isolation") for o in outcomes.values() if o.sandbox.get("isolation")), "")
    report = ClassReport(lesson, [outcomes[s] for s in sorted(outcomes)], backup, time.perf_counter() - start, isolation)
    (root / "reports").mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report.path = root / "reports" / f"{lesson}-{stamp}.md"
    report.path.write_text(report.table() + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """The grader process's entry: ``python -m course_lib.classroom grade-one FOLDER LESSON STUDENT``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 4 and argv[0] == "grade-one":
        return _grade_one_main(*argv[1:])
    print("usage: python -m course_lib.classroom grade-one FOLDER LESSON STUDENT (the class grader runs this)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
