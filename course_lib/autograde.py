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
from traitlets import Integer

from course_lib.checks.common import same_contents
from course_lib.sandbox import CallResult, Sandbox

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


# --------------------------------------------------------------------------- the nbgrader preprocessor


def _stream(text: str, name: str = "stdout") -> NotebookNode:
    return NotebookNode(output_type="stream", name=name, text=text)


def _error_output(error: dict) -> NotebookNode:
    traceback = error.get("traceback") or [f"{error.get('ename')}: {error.get('evalue')}"]
    if isinstance(traceback, str):
        traceback = traceback.splitlines()
    return NotebookNode(output_type="error", ename=str(error.get("ename")), evalue=str(error.get("evalue")),
                        traceback=[str(line) for line in traceback][-60:])


def hidden_paths(config) -> list[Path]:
    """The instructor's files that a sandbox must not see: solutions, submissions, gradebook, exchange."""
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=config)
    root = Path(coursedir.root)
    found = [root / getattr(coursedir, f"{kind}_directory") for kind in ("source", "submitted", "autograded", "feedback")]
    found += [root / "nbgrader_config.py", root / ".nbgrader.log", root / "tests"]
    if coursedir.db_url.startswith("sqlite:///"):
        found.append(Path(coursedir.db_url.removeprefix("sqlite:///")))
    exchange = config.get("Exchange", {}).get("root") if hasattr(config, "get") else None
    if exchange:
        found.append(Path(exchange))
    with contextlib.suppress(FileNotFoundError):
        from course_lib.grading import course_root

        installed = course_root(Path(__file__).parent)  # the course this course_lib belongs to
        found += [installed / "solutions", installed / "gradebook.db", installed / "tests"]
    return [p for p in found if p.exists()]


try:
    from nbgrader.preprocessors import NbGraderPreprocessor
except ImportError:  # nbgrader is only needed to grade
    NbGraderPreprocessor = object


class TrustedExecute(NbGraderPreprocessor):
    """nbgrader's ``Execute``, replaced: learner cells in a sandbox, test cells judged in the grader."""

    timeout = Integer(30, help="Seconds a cell, or one call of a learner's function by a check, may run").tag(config=True)

    def preprocess(self, nb, resources):
        from nbgrader import utils

        folder = Path(resources.get("metadata", {}).get("path") or ".")
        with Sandbox(hide=hidden_paths(self.config), files=folder, timeout=self.timeout) as sandbox:
            self.log.info("Grading sandbox: %s", sandbox.isolation)
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
            resources.setdefault("course", {})["sandbox"] = {"isolation": sandbox.isolation, "restarts": sandbox.restarts}
        return nb, resources
