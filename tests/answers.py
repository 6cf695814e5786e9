"""The solution notebooks' answer and test cells, read from solutions/ for the tests of the checks.

An exercise is an answer cell (grade_id ``name``) and a graded test cell (``test_<name>``).
The answer cells are executed here in a plain namespace, as a learner's kernel would.
"""

from __future__ import annotations

import functools
import math
import re

import nbformat
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import REPO

CHECK_CALL = re.compile(r"\b(check_\w+)\(")


def namespace() -> dict:
    """What a lesson's kernel has imported before an answer cell runs."""
    return {"torch": torch, "F": F, "nn": nn, "math": math, "np": np}


@functools.lru_cache(maxsize=1)
def graded_cells() -> tuple[tuple[str, str, str, str | None, str], ...]:
    """(lesson, grade_id, answer name, answer cell source, test cell source) for every graded test cell."""
    found = []
    for path in sorted((REPO / "solutions").glob("*/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade") and cell.cell_type == "code" and meta.get("points", 0) > 0:
                name = meta["grade_id"].removeprefix("test_")
                answer = by_id.get(name)
                found.append((path.parent.name, meta["grade_id"], name, answer.source if answer else None, cell.source))
    return tuple(found)


@functools.lru_cache(maxsize=None)
def solution_namespace(name: str) -> dict:
    """The namespace after running the solution's answer cell of exercise ``name``."""
    for lesson, _, answer_name, answer, _ in graded_cells():
        if answer_name == name:
            ns = namespace()
            exec(compile(answer, f"{lesson}:{name}", "exec"), ns)
            return ns
    raise KeyError(name)


@functools.lru_cache(maxsize=None)
def _defined_in() -> dict[str, str]:
    """Function name -> the exercise whose answer cell defines it."""
    found = {}
    for _, _, name, answer, _ in graded_cells():
        for fn in re.findall(r"^def (\w+)\(", answer or "", re.M):
            found[fn] = name
    return found


def solution_function(fn_name: str):
    """The solution's function ``fn_name`` (an exercise may define several: absmax_quantize_int8 and absmax_dequantize_int8)."""
    return solution_namespace(_defined_in()[fn_name])[fn_name]


def called_checks() -> set[str]:
    """The names of every check function that a graded test cell calls."""
    return {name for *_, test in graded_cells() for name in CHECK_CALL.findall(test)}
