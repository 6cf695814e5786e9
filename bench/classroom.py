"""How long ``course grade-class`` takes for a class: N learners' submissions of one lesson, graded.

    .venv/bin/python bench/classroom.py                       # 40 learners of lesson 01, 2 jobs: bench/classroom.md
    .venv/bin/python bench/classroom.py --learners 3 --out /tmp/class.md   # a smoke test

A course folder is made as a fresh clone has it (``nbgrader_config.py``, ``notebooks/``,
``solutions/``); the class's submissions are put where ``nbgrader collect`` puts them
(``submitted/STUDENT/LESSON/``): three in four answered every exercise as the solution does,
one in four handed in the release untouched. Then the class is graded with the course's own
grader (:func:`course_lib.classroom.grade_class`), each submission in its own grader process
and sandbox, ``--jobs`` at a time, and the report says what every learner got and what grading
spent. The time is the whole run's, next to the time of grading one honest submission alone
measured in the same run (the ratio does not depend on how fast the machine is).

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nbformat  # noqa: E402

from course_lib import classroom, grading  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "classroom.md"


def make_class(base: Path, lesson: str, learners: int) -> tuple[Path, dict[str, float]]:
    """A course folder under ``base`` with ``learners`` submissions of ``lesson``; returns it and the points each should get."""
    course = base / "llm-course"
    course.mkdir(parents=True)
    shutil.copy2(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    for name in ("notebooks", "solutions"):
        shutil.copytree(REPO / name, course / name)
    release = nbformat.read(course / "notebooks" / lesson / f"{lesson}.ipynb", as_version=4)
    solution = nbformat.read(course / "solutions" / lesson / f"{lesson}.ipynb", as_version=4)
    honest = grading.answered(release, solution)
    full = sum(c.metadata.get("nbgrader", {}).get("points", 0) for c in release.cells
               if c.metadata.get("nbgrader", {}).get("grade"))
    expected = {}
    for i in range(learners):
        student = f"learner{i:02d}"
        folder = course / "submitted" / student / lesson
        folder.mkdir(parents=True)
        blank = i % 4 == 3
        nbformat.write(release if blank else honest, folder / f"{lesson}.ipynb")
        expected[student] = 0.0 if blank else float(full)
    return course, expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesson", default="01_attention")
    parser.add_argument("--learners", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    lesson = grading.find_lesson(args.lesson, REPO)
    with tempfile.TemporaryDirectory(prefix="course-bench-class-") as tmp:
        course, expected = make_class(Path(tmp), lesson, args.learners)
        solo_course, _ = make_class(Path(tmp) / "solo", lesson, 1)
        start = time.perf_counter()
        classroom.grade_class(lesson, solo_course, jobs=1, progress=False)
        solo = time.perf_counter() - start
        start = time.perf_counter()
        report = classroom.grade_class(lesson, course, jobs=args.jobs)
        seconds = time.perf_counter() - start

    got = {o.student: o.score for o in report.outcomes}
    wrong = {s: (expected[s], got.get(s)) for s in expected if got.get(s) != expected[s]}
    per = [o.seconds for o in report.outcomes]
    cpu = [o.sandbox.get("cpu_seconds", 0.0) for o in report.outcomes]
    text = f"""# Grading a class: time

`bench/classroom.py`: {args.learners} learners' submissions of `{lesson}` graded with
`course grade-class {lesson} --jobs {args.jobs}` on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()},
OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); three in four answered every exercise as the
solution does, one in four handed in the release untouched.

| | |
|---|---|
| the whole class | {seconds:.0f} s ({seconds / 60:.1f} min) |
| one honest submission graded alone, in the same run | {solo:.1f} s |
| the class, in units of one submission graded alone | {seconds / solo:.1f} (learners / jobs = {args.learners / args.jobs:g}) |
| per submission, in its grader (median, max) | {statistics.median(per):.1f} s, {max(per):.1f} s |
| CPU time of a sandbox (median, max) | {statistics.median(cpu):.1f} s, {max(cpu):.1f} s |
| learners who got what they should | {len(expected) - len(wrong)} of {len(expected)} |
| isolation | {report.isolation or 'none'} |
"""
    if wrong:
        text += "\nWrong scores (expected, got): " + ", ".join(f"{s} {e}/{g}" for s, (e, g) in sorted(wrong.items())) + "\n"
    args.out.write_text(text)
    print(text)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
