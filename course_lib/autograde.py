"""Autograding that the notebook being graded cannot influence (lesson 00 explains grading).

nbgrader's own ``Execute`` runs the whole notebook, test cells included, in one kernel and
reads each test cell's verdict from that kernel's output, so code in an answer cell can
rewrite or silence the tests. Here instead:

- the learner's cells run in a :class:`course_lib.sandbox.Sandbox`, a separate process that
  cannot see the instructor's files;
- each locked test cell, with the source the instructor wrote (nbgrader restores it from
  the gradebook first), runs in the grader's own process, where no learner code ever ran:
  its checks call the learner's functions in the sandbox through :class:`RemoteFunction`,
  under the exercise's rules, and compare what comes back with the reference here.

A test cell's output is what its checks printed and, if a check failed, one error: the
check's message, never the hidden tests' source. A learner's warnings on stderr are shown
as ordinary output: a warning is not a failure.

:class:`TrustedExecute` is the nbgrader preprocessor that does this; ``nbgrader_config.py``
puts it in place of ``Execute`` for ``nbgrader autograde`` (and so for ``make check``).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
from pathlib import Path

import torch
from nbformat import NotebookNode
from traitlets import Integer, List, Unicode

from course_lib.checks.common import same_contents
from course_lib.sandbox import CallResult, Limits, Sandbox

# --------------------------------------------------------------------------- the learner's functions, seen from the grader


class LearnerError(Exception):
    """An exception raised by the learner's code whose type is not one of Python's own."""


def _exception(error: dict) -> Exception:
    """The learner's exception, rebuilt in the grader as Python's own type where it is one (TypeError, KeyError, ...)."""
    name, text = str(error.get("ename", "Error")), str(error.get("evalue", ""))
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception) and kind is not KeyError:
        with contextlib.suppress(Exception):
            return kind(text)
    if kind is KeyError:
        return KeyError(text)
    return LearnerError(f"{name}: {text}")


class RemoteFunction:
    """The learner's function ``name``, living in ``sandbox``; calling it runs it there.

    The arguments travel by value. What the function did to them in place (a tensor changed,
    a dict filled in) is copied back, so that a check sees it as it would in one process.
    """

    def __init__(self, sandbox: Sandbox, name: str, rules: dict | None = None):
        self.sandbox, self.__name__, self.rules = sandbox, name, rules

    def with_rules(self, rules) -> RemoteFunction:
        """The same function, watched by ``rules`` (a :class:`course_lib.checks.guard.Rules`) in the sandbox."""
        return RemoteFunction(self.sandbox, self.__name__, rules.to_dict())

    def __repr__(self) -> str:
        return f"<the learner's function {self.__name__}>"

    def __call__(self, *args, **kwargs):
        result: CallResult = self.sandbox.call(self.__name__, args, kwargs, self.rules)
        return self._outcome(result, args, kwargs)

    def in_workers(self, driver: str, world_size: int, *args, timeout: float = 60.0) -> list:
        """Run ``driver(rank, world_size, this function, *args)`` on ``world_size`` ranks in the sandbox.

        ``driver`` is ``"course_lib.checks.<module>:<function>"``; returns what each rank's driver returned.
        """
        result = self.sandbox.call(self.__name__, args, {}, self.rules,
                                   workers={"driver": driver, "world_size": world_size, "timeout": timeout})
        return self._outcome(result, (), {})

    def through(self, driver: str, *args):
        """Run ``driver(this function, *args)`` once in the sandbox and return what it returned.

        ``driver`` is ``"course_lib.checks.<module>:<function>"``: a check's code that must run next
        to the learner's function, such as a backward pass through the learner's loss.
        """
        result = self.sandbox.call(self.__name__, args, {}, self.rules, driver=driver)
        return self._outcome(result, (), {})

    def _outcome(self, result: CallResult, args: tuple, kwargs: dict):
        for text in (result.stdout, result.stderr):
            if text:
                print(text, end="" if text.endswith("\n") else "\n")
        if result.violations:
            raise AssertionError(result.violations)
        for arg, state in zip(args, result.args):
            _copy_back(arg, state, self.__name__)
        for key, state in result.kwargs.items():
            if key in kwargs:
                _copy_back(kwargs[key], state, self.__name__)
        if not result.ok:
            raise _exception(result.error or {})
        return result.value


def _copy_back(original, state, name: str) -> None:
    """Make ``original`` what the learner's function left its copy as (``state`` from the sandbox)."""
    if state is None:
        return
    kind, after = state
    if kind == "state" and hasattr(original, "restore_sandbox_state"):
        original.restore_sandbox_state(after)
    elif kind == "value":
        _copy_value_back(original, after, name)


def _copy_value_back(original, after, name: str) -> None:
    if isinstance(original, torch.Tensor):
        if type(after) is not torch.Tensor or after.shape != original.shape or after.dtype != original.dtype:
            raise AssertionError(f"{name} changed its input tensor in place (its shape or dtype); compute a new tensor instead")
        if original.device.type == "meta" or same_contents(original, after):
            return
        try:
            with torch.no_grad():
                original.copy_(after)
        except RuntimeError:  # an expanded or otherwise unwritable view: say so directly
            raise AssertionError(f"{name} changed its input tensor in place; compute a new tensor instead") from None
    elif isinstance(original, list) and isinstance(after, list):
        if len(original) != len(after):
            original[:] = after
            return
        for i, (o, a) in enumerate(zip(original, after)):
            if isinstance(o, (torch.Tensor, list, dict, tuple)):
                _copy_value_back(o, a, name)
            else:
                original[i] = a
    elif isinstance(original, dict) and isinstance(after, dict):
        for key in [k for k in original if k not in after]:
            del original[key]
        for key, value in after.items():
            if key in original and isinstance(original[key], (torch.Tensor, list, dict, tuple)):
                _copy_value_back(original[key], value, name)
            else:
                original[key] = value
    elif isinstance(original, tuple) and isinstance(after, tuple) and len(original) == len(after):
        for o, a in zip(original, after):
            if isinstance(o, (torch.Tensor, list, dict, tuple)):
                _copy_value_back(o, a, name)


# --------------------------------------------------------------------------- a test cell, judged in the grader


def learner_names(source: str) -> set[str]:
    """Names the test cell reads but neither defines nor imports, nor are Python's builtins: the learner's."""
    tree = ast.parse(source)
    defined, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    return read - defined - set(dir(builtins))


def judge(source: str, sandbox: Sandbox) -> tuple[str, dict | None]:
    """Run a test cell's source in this process, the learner's names bound to their functions in ``sandbox``.

    Returns (what it printed, the error or None). The error is the exception's type and
    message only: its traceback would show the hidden tests' lines.
    """
    namespace = {"__name__": "__test_cell__"}
    namespace.update({name: RemoteFunction(sandbox, name) for name in learner_names(source)})
    printed = io.StringIO()
    error = None
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            exec(compile(source, "<test cell>", "exec"), namespace)
        except Exception as err:  # noqa: BLE001  (a failed check, or the learner's own error)
            error = {"ename": type(err).__name__, "evalue": str(err), "traceback": [f"{type(err).__name__}: {err}"]}
    return printed.getvalue(), error


# --------------------------------------------------------------------------- a submission that is not what it should be

MAX_NOTEBOOK_BYTES = 50 * 1024 * 1024
CELL_FLAGS = ("grade", "solution", "locked", "task")


class BadSubmission(ValueError):
    """A file that cannot be graded as the lesson's notebook; its message is one line for the report."""


def read_submission(path: Path, lesson_ids: set[str], other_lessons: dict[str, set[str]] | None = None) -> NotebookNode:
    """The notebook at ``path``, rebuilt from its cells' types, sources and metadata only (outputs dropped).

    ``lesson_ids``: the grade ids of the lesson's release; ``other_lessons``: lesson name ->
    its grade ids, to name the lesson of a notebook handed in for the wrong one. Raises
    :class:`BadSubmission` with a one-line reason when the file is not a notebook of this lesson.
    """
    import json

    import nbformat

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise BadSubmission("the file is empty")
    if size > MAX_NOTEBOOK_BYTES:
        raise BadSubmission(f"the file is {size / 2**20:.0f} MiB, more than the {MAX_NOTEBOOK_BYTES >> 20} MiB a notebook may be")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise BadSubmission(f"the file is not valid JSON ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list) or data.get("nbformat") != 4:
        raise BadSubmission("the file is JSON but not a Jupyter notebook (version 4)")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    for raw in data["cells"]:
        if not isinstance(raw, dict) or raw.get("cell_type") not in ("code", "markdown", "raw"):
            continue
        source = raw.get("source", "")
        source = "".join(str(x) for x in source) if isinstance(source, list) else str(source)
        make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell, "raw": nbformat.v4.new_raw_cell}
        cell = make[raw["cell_type"]](source)
        meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        if isinstance(meta.get("nbgrader"), dict):
            cell.metadata["nbgrader"] = {k: v for k, v in meta["nbgrader"].items()
                                         if k in ("grade_id", "points", "schema_version", "checksum", *CELL_FLAGS)}
        nb.cells.append(cell)
    if not nb.cells:
        raise BadSubmission("the notebook has no cells")
    found = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells} - {None}
    if not found & set(lesson_ids):
        for lesson, ids in sorted((other_lessons or {}).items()):
            if found & ids:
                raise BadSubmission(f"this is the notebook of lesson {lesson}, not of this lesson")
        raise BadSubmission("none of the lesson's exercises is in this notebook")
    return nb


def failure_reasons(nb: NotebookNode) -> dict[str, str]:
    """grade_id -> the first line of the error shown by each graded test cell that failed."""
    found = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and cell.cell_type == "code":
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    text = f"{output.get('ename')}: {output.get('evalue', '')}".strip().rstrip(":")
                    if text == "NotImplementedError":
                        text += ": the answer is not written yet"
                    found[meta["grade_id"]] = text.splitlines()[0][:160] if text else "failed"
                    break
    return found


def without_hidden_tests(source: str) -> str:
    """A test cell's source as the learner's release has it: nbgrader's hidden-test region removed."""
    from nbgrader.preprocessors import ClearHiddenTests

    cell = NotebookNode(cell_type="code", source=source, metadata={})
    ClearHiddenTests()._remove_hidden_test_region(cell)
    return cell.source


def restore_cells(nb: NotebookNode, expected: list[dict]) -> list[str]:
    """Make every cell of the release that carries a grade id appear once, as released; return what was wrong.

    ``expected``: the release's cells with a grade id, in order, as dicts with grade_id,
    cell_type, source (hidden tests included), checksum, points (grade cells) and the flags
    grade, solution, locked, task. The first cell with a grade id is the one graded, later
    copies and unknown ids run as ordinary cells; changed flags, types and points are set
    back; a locked cell is given its instructor's source (the learner's release lacks only
    the hidden tests: not an edit); a missing locked cell is put back after the cell before it.
    """
    by_id = {e["grade_id"]: e for e in expected}
    notes, seen = [], set()
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            continue
        grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
        if grade_id not in by_id or grade_id in seen:
            if grade_id in seen:
                notes.append(f"grade id {grade_id!r} appears more than once: the first cell with it is graded, the others ran as ordinary cells")
            elif grade_id is not None:
                notes.append(f"a cell with the unknown grade id {grade_id!r} ran as an ordinary cell (was its id changed?)")
            del cell.metadata["nbgrader"]
            continue
        seen.add(grade_id)
        want = by_id[grade_id]
        changed = [k for k in CELL_FLAGS if bool(meta.get(k)) != want[k]]
        if cell.cell_type != want["cell_type"]:
            changed.append("cell type")
        if want["grade"] and meta.get("points") != want["points"]:
            changed.append("points")
        if changed:
            notes.append(f"cell {grade_id!r}: its {', '.join(changed)} had been changed; it was graded as released")
        if want["locked"] and cell.source not in (want["source"], without_hidden_tests(want["source"])):
            notes.append(f"the locked cell {grade_id!r} had been edited; the original was graded")
        _set_as_released(cell, want)
    for number, want in enumerate(expected):
        if want["grade_id"] in seen:
            continue
        if not want["locked"]:  # a missing answer: the learner's code, if any, ran as an ordinary cell
            if want["solution"]:
                notes.append(f"the answer cell {want['grade_id']!r} is missing (deleted, or its grade id changed)")
            continue
        before = {e["grade_id"] for e in expected[:number]}
        at = max((i + 1 for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") in before), default=0)
        import nbformat

        cell = (nbformat.v4.new_code_cell if want["cell_type"] == "code" else nbformat.v4.new_markdown_cell)()
        _set_as_released(cell, want)
        nb.cells.insert(at, cell)
        seen.add(want["grade_id"])
        notes.append(f"the locked cell {want['grade_id']!r} was missing; the original was put back and graded")
    return notes


def _set_as_released(cell: NotebookNode, want: dict) -> None:
    cell.cell_type = want["cell_type"]
    if want["cell_type"] == "code":
        cell.setdefault("outputs", [])
        cell.setdefault("execution_count", None)
    else:
        cell.pop("outputs", None)
        cell.pop("execution_count", None)
    meta = {"grade_id": want["grade_id"], "schema_version": 3, "checksum": want["checksum"]}
    meta.update({k: want[k] for k in CELL_FLAGS})
    if want["grade"]:
        meta["points"] = want["points"]
    cell.metadata["nbgrader"] = meta
    if want["locked"]:
        cell.source = want["source"]


def released_cells(db_url: str, notebook: str, assignment: str) -> list[dict]:
    """The release's cells with a grade id, in order, from the gradebook (see :func:`restore_cells`)."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb:
        source = gb.find_notebook(notebook, assignment)
        points = {c.name: float(c.max_score) for c in source.grade_cells}
        solutions = {c.name for c in source.solution_cells}
        tasks = {c.name for c in source.task_cells}
        return [{"grade_id": c.name, "cell_type": c.cell_type, "source": c.source, "checksum": c.checksum,
                 "locked": bool(c.locked), "grade": c.name in points, "solution": c.name in solutions,
                 "task": c.name in tasks, "points": points.get(c.name)}
                for c in source.source_cells]


# --------------------------------------------------------------------------- the nbgrader preprocessors


try:
    from nbgrader.preprocessors import NbGraderPreprocessor
except ImportError:  # nbgrader is only needed to grade
    NbGraderPreprocessor = object


class RestoreCells(NbGraderPreprocessor):
    """nbgrader's ``DeduplicateIds`` and ``OverwriteCells``, for submissions that are not what they should be.

    See :func:`restore_cells`. What was wrong goes to the log as one warning per line, and into
    the graded notebook's metadata (``course_grading.notes``), where the class report reads it.
    Only a real edit of a locked cell is reported as one: the missing hidden tests are not.
    """

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        expected = released_cells(info["db_url"], info["notebook"], info["assignment"])
        notes = restore_cells(nb, expected)
        for note in notes:
            self.log.warning("%s: %s", info.get("student"), note)
        nb.metadata.setdefault("course_grading", {})["notes"] = notes
        resources.setdefault("course", {})["notes"] = notes
        return nb, resources




def _stream(text: str, name: str = "stdout") -> NotebookNode:
    return NotebookNode(output_type="stream", name=name, text=text)


def _error_output(error: dict) -> NotebookNode:
    traceback = error.get("traceback") or [f"{error.get('ename')}: {error.get('evalue')}"]
    if isinstance(traceback, str):
        traceback = traceback.splitlines()
    return NotebookNode(output_type="error", ename=str(error.get("ename")), evalue=str(error.get("evalue")),
                        traceback=[str(line) for line in traceback][-60:])


# What a sandbox may see of a course folder: the learners' side of it. Everything else at the
# top of the folder (solutions/, tests/, .git/ with the solutions' history, the gradebook and
# its backups, submissions, feedback, exports, whatever an instructor puts there) is hidden.
PUBLIC = frozenset({"course_lib", "notebooks", ".venv", "binder", "bench", "README.md", "LICENSE", "Makefile",
                    "pyproject.toml", "environment.yml", "requirements.txt"})


def instructor_files(root: Path) -> list[Path]:
    """Every entry at the top of the course folder ``root`` but the public ones (:data:`PUBLIC`)."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if p.name not in PUBLIC) if root.is_dir() else []


def hidden_paths(config) -> list[Path]:
    """The instructor's files that a sandbox must not see: solutions, submissions, gradebook, exchange, git history."""
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=config)
    root = Path(coursedir.root)
    found = [root / getattr(coursedir, f"{kind}_directory") for kind in ("source", "submitted", "autograded", "feedback")]
    found += instructor_files(root)
    if coursedir.db_url.startswith("sqlite:///"):
        found.append(Path(coursedir.db_url.removeprefix("sqlite:///")))
    exchange = config.get("Exchange", {}).get("root") if hasattr(config, "get") else None
    if exchange:
        found.append(Path(exchange))
    with contextlib.suppress(FileNotFoundError):
        from course_lib.grading import course_root

        found += instructor_files(course_root(Path(__file__).parent))  # the course this course_lib belongs to
    return sorted({p for p in found if p.exists()})


class HideHiddenTests(NbGraderPreprocessor):
    """For feedback: every cell shown as the learner's release has it, without the hidden tests' source.

    The graded notebook holds the instructor's test cells, hidden tests included (they were
    restored to grade it); the feedback shows what each check printed and why it failed instead.
    """

    def preprocess_cell(self, cell, resources, index):
        if "HIDDEN TESTS" in cell.get("source", ""):
            cell.source = without_hidden_tests(cell.source)
        return cell, resources


class TrustedExecute(NbGraderPreprocessor):
    """nbgrader's ``Execute``, replaced: learner cells in a sandbox, test cells judged in the grader."""

    timeout = Integer(30, help="CPU seconds a cell, or one call of a learner's function by a check, may use").tag(config=True)
    notebook_cpu_seconds = Integer(180, help="CPU seconds the whole notebook may use").tag(config=True)
    notebook_wall_seconds = Integer(600, help="Seconds the whole notebook may take").tag(config=True)
    memory_mib = Integer(4096, help="Address space of each of the sandbox's processes, in MiB").tag(config=True)
    processes = Integer(256, help="Processes and threads the sandbox may have (where the grader is root)").tag(config=True)
    output_chars = Integer(1_000_000, help="Characters of output kept from the whole notebook").tag(config=True)
    hide = List(Unicode(), help="More paths the sandbox must not see").tag(config=True)

    def limits(self) -> Limits:
        return Limits(cpu_seconds=self.notebook_cpu_seconds, wall_seconds=self.notebook_wall_seconds,
                      memory_mib=self.memory_mib, processes=self.processes, output_chars=self.output_chars)

    def preprocess(self, nb, resources):
        from nbgrader import utils

        folder = Path(resources.get("metadata", {}).get("path") or ".")
        hide = hidden_paths(self.config) + [Path(p) for p in self.hide if Path(p).exists()]
        with Sandbox(hide=hide, files=folder, timeout=self.timeout, limits=self.limits()) as sandbox:
            self.log.info("Grading sandbox: %s; limits: %s", sandbox.isolation, sandbox.limits.describe())
            count = 0
            for cell in nb.cells:
                if cell.cell_type != "code":
                    continue
                count += 1
                cell.execution_count = count
                if utils.is_grade(cell) and not utils.is_solution(cell):
                    printed, error = judge(cell.source, sandbox)
                    cell.outputs = ([_stream(printed)] if printed else []) + ([_error_output(error)] if error else [])
                else:
                    result = sandbox.run_cell(cell.source)
                    cell.outputs = [_stream(t, n) for t, n in ((result.stdout, "stdout"), (result.stderr, "stderr")) if t]
                    if result.error:
                        cell.outputs.append(_error_output(result.error))
            used = {"isolation": sandbox.isolation, "restarts": sandbox.restarts, "cpu_seconds": round(sandbox.cpu_used, 1),
                    "wall_seconds": round(sandbox.wall_used, 1), "output_left": sandbox.output_left}
            resources.setdefault("course", {})["sandbox"] = used
            nb.metadata.setdefault("course_grading", {})["sandbox"] = used
        return nb, resources
