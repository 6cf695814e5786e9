"""Release, autograde and self-check lessons with nbgrader (lesson 00 explains the workflow).

Every grading run happens in a fresh temporary course directory: the course's
``nbgrader_config.py`` and ``solutions/`` are copied there, nbgrader generates the
release (which fills a fresh gradebook with the graded cells, hidden tests included),
the notebook to grade is copied in as a submission, nbgrader autogrades it, and the
scores are read back from the gradebook. The notebook being graded is only ever read.

Command line: ``course COMMAND`` from any folder of the course (the package installs the
``course`` command), or ``python -m course_lib.grading COMMAND``; the Makefile's targets call these::

    course check 01                 # grade notebooks/01_*/01_*.ipynb
    course grade PATH 01            # grade any notebook of lesson 01
    course release                  # solutions/ -> notebooks/ (instructors)
    course timings                  # time, CPU time and memory of each solution notebook
    course learner-edition DEST     # a copy of the course for learners: no solutions, no hidden tests
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

STUDENT = "learner"


# --------------------------------------------------------------------------- where things are


def is_course_folder(folder: Path) -> bool:
    """Whether ``folder`` is a course: ``nbgrader_config.py`` beside ``solutions/`` or, in a learner edition, ``notebooks/``."""
    folder = Path(folder)
    has_lessons = (folder / "solutions").is_dir() or (folder / "notebooks").is_dir()
    return (folder / "nbgrader_config.py").is_file() and has_lessons


def course_root(start: Path | None = None) -> Path:
    """The course folder (see :func:`is_course_folder`): the current folder or one above it.

    From ``notebooks/`` or ``notebooks/NN_topic/`` this is the folder above ``notebooks/``.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if is_course_folder(folder):
            return folder
    package_parent = Path(__file__).resolve().parents[1]
    if (package_parent / "nbgrader_config.py").is_file():
        return package_parent
    raise FileNotFoundError(f"no course folder (with nbgrader_config.py and solutions/ or notebooks/) at or above {here}")


def has_solutions(root: Path | None = None) -> bool:
    """Whether the course holds ``solutions/`` (the instructor's repository) or not (a learner edition)."""
    return (course_root(root) / "solutions").is_dir()


def lessons(root: Path | None = None) -> list[str]:
    """Lesson names, in order: every ``solutions/NAME/NAME.ipynb`` (``notebooks/`` in a learner edition)."""
    root = course_root(root)
    folder = root / ("solutions" if has_solutions(root) else "notebooks")
    return sorted(p.name for p in folder.iterdir() if (p / f"{p.name}.ipynb").is_file())


def find_lesson(prefix: str, root: Path | None = None) -> str:
    """The lesson whose name is or starts with ``prefix`` (``"01"`` -> ``"01_attention"``)."""
    names = lessons(root)
    matches = [n for n in names if n == prefix] or [n for n in names if n.startswith(str(prefix))]
    if len(matches) != 1:
        raise ValueError(f"lesson {prefix!r} should name exactly one of {names}, matched {matches}")
    return matches[0]


def lesson_grade_ids(root: Path) -> dict[str, set[str]]:
    """Lesson name -> the grade ids of its released notebook, for every lesson in ``notebooks/``."""
    found = {}
    for name in lessons(root):
        release = Path(root) / "notebooks" / name / f"{name}.ipynb"
        if release.is_file():
            cells = json.loads(release.read_text())["cells"]
            found[name] = {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in cells} - {None}
    return found


# --------------------------------------------------------------------------- nbgrader


@contextlib.contextmanager
def _venv_bin_on_path():
    """nbgrader runs the ``alembic`` executable that sits beside this Python."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _config(course: Path):
    """The course's ``nbgrader_config.py``, loaded, with ``course`` as nbgrader's root."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    return config


def _api(course: Path, config=None):
    """nbgrader's API for the course folder ``course`` (``config``: its loaded config, changed by the caller)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    config = config if config is not None else _config(course)
    return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)


def _run(result: dict, what: str) -> None:
    if not result.get("success"):
        raise RuntimeError(f"nbgrader {what} failed:\n{result.get('error', '')}\n{result.get('log', '')}")


def make_course(folder: Path, names: list[str] | None = None, root: Path | None = None, timeout: int | None = None) -> Path:
    """Set up a course directory in ``folder`` and generate the release of ``names`` (default: all lessons).

    ``timeout`` overrides the per-cell grading limit of ``nbgrader_config.py`` (CPU seconds).
    Returns ``folder``.
    """
    root = course_root(root)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = (root / "nbgrader_config.py").read_text()
    if timeout is not None:
        config += f"\nc.TrustedExecute.timeout = {int(timeout)}\n"
    (folder / "nbgrader_config.py").write_text(config)
    for name in names or lessons(root):
        shutil.copytree(root / "solutions" / name, folder / "solutions" / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        with _venv_bin_on_path():
            _run(_api(folder).generate_assignment(name), f"generate_assignment {name}")
        tag_test_cells(folder / "notebooks" / name / f"{name}.ipynb")
    return folder


@dataclass
class Scores:
    """Points per graded cell (``grade_id -> (score, max_score)``) and the totals."""

    lesson: str
    cells: dict[str, tuple[float, float]] = field(default_factory=dict)
    seconds: float = 0.0
    reasons: dict[str, str] = field(default_factory=dict)  # grade_id -> why it scored 0 (the check's error)
    notes: list[str] = field(default_factory=list)  # what was wrong with the notebook and set right before grading

    @property
    def score(self) -> float:
        return sum(s for s, _ in self.cells.values())

    @property
    def max_score(self) -> float:
        return sum(m for _, m in self.cells.values())

    def table(self) -> str:
        width = max([len(k) for k in self.cells] + [len("total")])
        lines = [f"{'exercise':<{width}}  points", "-" * (width + 10)]
        for k, (s, m) in self.cells.items():
            why = self.reasons.get(k, "") if s < m else ""
            lines.append(f"{k:<{width}}  {s:g} / {m:g}" + (f"    {why}" if why else ""))
        lines += ["-" * (width + 10), f"{'total':<{width}}  {self.score:g} / {self.max_score:g}"]
        if self.notes:
            lines += ["", "Set right before grading:"] + [f"- {note}" for note in self.notes]
        return "\n".join(lines)


def autograde(course: Path, lesson: str, notebook: Path, student: str = STUDENT) -> Scores:
    """Autograde a copy of ``notebook`` as ``student``'s submission of ``lesson`` in ``course``.

    The course must have been made by :func:`make_course`. Locked and test cells are
    restored from the gradebook, so edits to them change nothing. Returns the scores
    read from the gradebook.
    """
    import nbformat
    from nbgrader.api import Gradebook

    from course_lib.autograde import failure_reasons, read_submission

    course = Path(course)
    target = course / "submitted" / student / lesson / f"{lesson}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    known = lesson_grade_ids(course)
    with contextlib.suppress(FileNotFoundError):
        known = {**lesson_grade_ids(course_root()), **known}
    # raises BadSubmission (one line) for a file that is not a notebook of this lesson
    nbformat.write(read_submission(notebook, known.get(lesson, set()), known), target)
    start = time.perf_counter()
    with _venv_bin_on_path():
        api = _api(course)
        _run(api.autograde(lesson, student), f"autograde {lesson}")
    seconds = time.perf_counter() - start
    scores = Scores(lesson=lesson, seconds=seconds)
    with Gradebook(api.coursedir.db_url) as gb:
        grades = {g.name: g for g in gb.find_submission_notebook(lesson, lesson, student).grades}
        for grade_id in _graded_cell_ids(course / "notebooks" / lesson / f"{lesson}.ipynb"):
            grade = grades[grade_id]
            scores.cells[grade_id] = (float(grade.score), float(grade.max_score))
    graded = nbformat.read(course / "autograded" / student / lesson / f"{lesson}.ipynb", as_version=4)
    scores.reasons = failure_reasons(graded)
    scores.notes = list(graded.metadata.get("course_grading", {}).get("notes", []))
    return scores


def answered(release, solution):
    """``release`` (a learner's notebook) with every answer cell filled in as ``solution`` writes it.

    Both are nbformat notebooks; the solution's ``### BEGIN/END SOLUTION`` lines are left out.
    What an honest learner who solved every exercise hands in (tests and benchmarks grade it).
    """
    answers = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in solution.cells}
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            lines = answers[meta["grade_id"]].splitlines()
            cell.source = "\n".join(line for line in lines if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line)
    return nb


def _graded_cell_ids(notebook: Path) -> list[str]:
    """grade_ids of the cells that carry points, in notebook order."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    metas = [c.get("metadata", {}).get("nbgrader", {}) for c in cells]
    return [m["grade_id"] for m in metas if m.get("grade") and m.get("points", 0) > 0]


def grade(notebook: Path, lesson: str, root: Path | None = None, timeout: int | None = None) -> Scores:
    """Grade ``notebook`` (a learner's copy of ``lesson``) in a temporary course; the file is only read."""
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(notebook)
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        course = make_course(Path(tmp), [lesson], root=root, timeout=timeout)
        return autograde(course, lesson, notebook)


def release(root: Path | None = None) -> list[Path]:
    """Regenerate ``notebooks/`` from ``solutions/`` with nbgrader; returns the release folders."""
    root = course_root(root)
    names = lessons(root)
    out = []
    with tempfile.TemporaryDirectory(prefix="course-release-") as tmp:
        course = make_course(Path(tmp), names, root=root)
        for stale in (root / "notebooks").glob("[0-9][0-9]_*"):
            if stale.is_dir() and stale.name not in names:
                shutil.rmtree(stale)
        for name in names:
            dest = root / "notebooks" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(course / "notebooks" / name, dest)
            out.append(dest)
    return out


RUN_ALL_GOES_ON = "raises-exception"


def tag_test_cells(notebook: Path) -> None:
    """Tag every graded test cell of ``notebook`` ``raises-exception``, so that *Run All* goes on past it.

    In a learner's release the test cell of an unfinished exercise raises (the answer still
    says ``raise NotImplementedError()``). JupyterLab's *Run All* and nbclient stop at the
    first cell that raises, unless the cell carries this tag: then its error is shown and
    the cells after it run. Grading does not change: nbgrader scores a test cell that shows
    an error 0. The solution notebooks stay untagged, so that nbval fails if a check fails.
    """
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("grade"):
            tags = cell.metadata.setdefault("tags", [])
            if RUN_ALL_GOES_ON not in tags:
                tags.append(RUN_ALL_GOES_ON)
    nbformat.write(nb, notebook)


# --------------------------------------------------------------------------- learner edition

# What a learner edition leaves out: solutions and hidden tests, the tests that read them
# (and hold wrong answers to every exercise), the CI script that runs those tests, and the
# instructor guide.
INSTRUCTOR_ONLY = ("solutions", "tests", ".ci", "INSTRUCTORS.md")
# In a learner edition, a pristine copy of each released notebook: self-check restores the
# locked test cells from it, whatever the learner did to their own copy in notebooks/.
PRISTINE_RELEASE = ".release"


def learner_edition_files(root: Path | None = None) -> list[Path]:
    """The files of a learner edition, relative to the course root: every file git tracks, less :data:`INSTRUCTOR_ONLY`.

    nbgrader's working files (``gradebook.db``, ``submitted/``, ``autograded/``, ``feedback/``)
    are never tracked, so they never reach an edition.
    """
    root = course_root(root)
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0:
        raise RuntimeError(f"a learner edition is made from a git checkout of the course; git says:\n{listed.stderr}")
    files = [Path(name) for name in listed.stdout.split("\0") if name]
    return [f for f in files if f.parts[0] not in INSTRUCTOR_ONLY and (root / f).is_file()]


def write_learner_edition(dest: Path, root: Path | None = None) -> Path:
    """Write a copy of the course for learners to ``dest`` (a new folder) and return it.

    The edition has the lessons (``notebooks/``), ``course_lib``, the Makefile, Binder's files
    and the documentation, and no solution or hidden test. ``make lab``, ``make check`` and
    ``course check`` work there; self-check runs the visible tests (see :func:`grade_visible`).
    """
    root = course_root(root)
    if not has_solutions(root):
        raise ValueError(f"{root} is already a learner edition: make one from the instructor's repository")
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not empty")
    for rel in learner_edition_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    shutil.copytree(dest / "notebooks", dest / PRISTINE_RELEASE, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return dest


def grade_visible(notebook: Path, lesson: str, root: Path | None = None, timeout: int | None = None) -> Scores:
    """Grade ``notebook`` on the visible tests of ``lesson``, in a course without ``solutions/`` (a learner edition).

    The released notebook stands in for the source: a temporary course is made whose
    ``solutions/`` holds it, so the locked test cells are restored from the release and only
    its tests run. Hidden tests run when the instructor grades. The file is only read.
    """
    root = course_root(root)
    release = root / PRISTINE_RELEASE if (root / PRISTINE_RELEASE / lesson).is_dir() else root / "notebooks"
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        stand_in = Path(tmp) / "source"
        (stand_in / "solutions" / lesson).mkdir(parents=True)
        shutil.copyfile(root / "nbgrader_config.py", stand_in / "nbgrader_config.py")
        shutil.copyfile(release / lesson / f"{lesson}.ipynb", stand_in / "solutions" / lesson / f"{lesson}.ipynb")
        course = make_course(Path(tmp) / "course", [lesson], root=stand_in, timeout=timeout)
        return autograde(course, lesson, Path(notebook).resolve())


# --------------------------------------------------------------------------- budgets


def measure_notebook(notebook: Path, timeout: int = 600) -> dict:
    """Execute ``notebook`` in a fresh kernel and measure it; raises if a cell fails.

    Returns ``seconds`` (wall time of the run), ``cpu_seconds`` (user + system CPU time of
    the kernel and the processes it started) and ``peak_rss`` (the peak memory of the kernel
    and every process it started, together, in bytes: the worker processes of lesson 07 count).

    The run happens in a child process whose only child is the kernel, so that
    ``getrusage(RUSAGE_CHILDREN)`` there, read once the kernel has exited, reports the
    kernel's own CPU time and largest resident set; on Linux a thread also sums the
    proportional set size (PSS: shared pages split between the processes that share them) of
    the kernel and its descendants every 200 ms, and the peak is the larger of the two. (Every
    50 ms made a notebook of lesson 08 run a fifth slower than unmeasured: reading
    ``smaps_rollup`` walks the page tables of a large process, on the cores the notebook uses.)
    """
    code = (
        "import json, os, resource, sys, threading, time, nbformat\n"
        "from nbclient import NotebookClient\n"
        "from course_lib.grading import tree_memory\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "peak, done = [0], threading.Event()\n"
        "def sample():\n"
        "    while not done.wait(0.2):\n"
        "        peak[0] = max(peak[0], tree_memory(os.getpid()))\n"
        "threading.Thread(target=sample, daemon=True).start()\n"
        "t = time.perf_counter()\n"
        "NotebookClient(nb, timeout=int(sys.argv[2]), kernel_name='python3',\n"
        "               resources={'metadata': {'path': sys.argv[3]}}).execute()\n"
        "seconds = time.perf_counter() - t\n"
        "done.set()\n"
        "kernel = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'seconds': seconds, 'cpu_seconds': kernel.ru_utime + kernel.ru_stime,\n"
        "                  'peak_rss': max(kernel.ru_maxrss * 1024, peak[0])}))\n"
    )
    notebook = Path(notebook).resolve()
    with _venv_bin_on_path():
        proc = subprocess.run(
            [sys.executable, "-c", code, str(notebook), str(timeout), str(notebook.parent)],
            capture_output=True, text=True, timeout=timeout + 60,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{notebook.name} failed to execute:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tree_memory(pid: int) -> int:
    """Bytes of memory held by the descendants of process ``pid`` (not ``pid`` itself), summed; Linux only, else 0.

    Each process counts its proportional set size (``Pss`` in ``/proc/<pid>/smaps_rollup``):
    a page shared by k processes counts 1/k in each, so forked or spawned workers that share
    PyTorch's libraries are not counted k times over.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        todo += children.get(child, [])
        try:
            with open(f"/proc/{child}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total


TIMINGS_COLUMNS = "| notebook | wall time (s) | kernel CPU time (s) | peak memory (MiB) |"


def timings_row(name: str, measured: dict) -> str:
    """One row of the timings table: a solution notebook and what :func:`measure_notebook` measured."""
    return (
        f"| solutions/{name}/{name}.ipynb | {measured['seconds']:.1f} | "
        f"{measured['cpu_seconds']:.1f} | {measured['peak_rss'] / 2**20:.0f} |"
    )


def timings_table(root: Path | None = None) -> str:
    """Execute every solution notebook; return a Markdown table of wall time, kernel CPU time and peak memory."""
    root = course_root(root)
    rows = [TIMINGS_COLUMNS, "|---|---|---|---|"]
    for name in lessons(root):
        rows.append(timings_row(name, measure_notebook(root / "solutions" / name / f"{name}.ipynb")))
    return "\n".join(rows)


def timings_header() -> str:
    """What the timings table measures, on which machine, and how busy it was before the run."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        "# Solution notebooks: time and memory\n\n"
        "A benchmark, not a test: `make timings` executes each solution notebook from a fresh kernel\n"
        "and records its wall time, the CPU time of the kernel and the processes it started (user +\n"
        "system) and the peak memory of the kernel and every process it started, together (their\n"
        "proportional set sizes, sampled every 200 ms, or the kernel's peak resident set size where\n"
        "that is larger). Budget: 60 s and 1.5 GB each on 2 idle CPU cores. Wall time depends on\n"
        "how busy the machine is; CPU time much less so. Run it on an otherwise idle machine.\n\n"
        f"Measured with {os.cpu_count()} CPU cores; load average (1 min) before the run: {load:.2f}.\n\n"
    )


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """The ``course`` command (and ``python -m course_lib.grading``)."""
    parser = argparse.ArgumentParser(prog="course", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="grade your notebook notebooks/NN_topic/NN_topic.ipynb")
    p_check.add_argument("lesson", help="lesson number or name, e.g. 01")
    p_grade = sub.add_parser("grade", help="grade any copy of a lesson's notebook")
    p_grade.add_argument("notebook", type=Path)
    p_grade.add_argument("lesson")
    sub.add_parser("release", help="regenerate notebooks/ from solutions/ (instructors)")
    p_time = sub.add_parser("timings", help="wall time, kernel CPU time and peak memory of every solution notebook")
    p_time.add_argument("--write", type=Path, help="also write the table to this Markdown file")
    p_edition = sub.add_parser("learner-edition", help="write a copy of the course without solutions and hidden tests")
    p_edition.add_argument("dest", type=Path, help="a new folder")
    p_class = sub.add_parser("grade-class", help="grade every submission of a lesson in submitted/ (instructors)")
    p_class.add_argument("lesson")
    p_class.add_argument("--jobs", type=int, default=1, help="submissions graded at once (one CPU core each)")
    p_class.add_argument("--student", action="append", help="grade only this learner (repeatable)")
    p_rescore = sub.add_parser("rescore", help="write the scores in autograded/ into the gradebook again (instructors)")
    p_rescore.add_argument("lesson")
    args = parser.parse_args(argv)
    # nbgrader 0.9.6 trips SQLAlchemy's session warnings on every autograde; they mean nothing here
    warnings.filterwarnings("ignore", message=".*not in session.*")

    root = course_root()
    if args.command in ("release", "timings", "learner-edition", "grade-class", "rescore") and not has_solutions(root):
        print(f"`{args.command}` needs solutions/: this is a learner edition of the course.", file=sys.stderr)
        return 2
    if args.command == "release":
        for folder in release(root):
            print(f"released {folder.relative_to(root)}")
        return 0
    if args.command in ("check", "grade"):
        lesson = find_lesson(args.lesson, root)
        notebook = args.notebook if args.command == "grade" else root / "notebooks" / lesson / f"{lesson}.ipynb"
        if not Path(notebook).is_file():
            print(f"There is no notebook at {notebook}.", file=sys.stderr)
            return 1
        print(f"Grading {notebook} (a copy; your file is not changed) ...", flush=True)
        from course_lib.autograde import BadSubmission

        try:
            if has_solutions(root):
                scores = grade(notebook, lesson, root)
            else:
                print("Visible tests only: the hidden tests run when your instructor grades.", flush=True)
                scores = grade_visible(notebook, lesson, root)
        except BadSubmission as err:
            print(f"{notebook} cannot be graded as lesson {lesson}: {err}.", file=sys.stderr)
            return 1
        print(scores.table())
        print(f"graded in {scores.seconds:.0f} s")
        return 0
    if args.command == "timings":
        header = timings_header()
        table = timings_table(root)
        print(table)
        if args.write:
            args.write.write_text(header + table + "\n")
        return 0
    if args.command == "grade-class":
        from course_lib import classroom

        report = classroom.grade_class(args.lesson, root, jobs=args.jobs, students=args.student)
        print(report.table())
        print(f"\nwritten to {report.path}")
        return 0
    if args.command == "rescore":
        from course_lib import classroom

        for student, total in classroom.rescore(find_lesson(args.lesson, root), root).items():
            print(f"{student}: {total:g}")
        return 0
    if args.command == "learner-edition":
        dest = write_learner_edition(args.dest, root)
        print(f"wrote the learner edition to {dest}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
