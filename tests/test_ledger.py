"""Every line of the source text is claimed by a lesson, and every claim names a cell that checks it.

The rules are in :mod:`course_lib.ledger`. The named cells run (and their asserts hold) under
nbval, in ``make test``; this module checks that the ledgers and the cells agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from course_lib import ledger

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted(path.name for path in (ROOT / "solutions").iterdir() if re.match(r"\d\d_", path.name))
NO_CLAIM_MAX_CHARS = 25  # a heading or a stray word, never a sentence


def notebook(folder: str, lesson: str) -> dict:
    return json.loads((ROOT / folder / lesson / f"{lesson}.ipynb").read_text(encoding="utf-8"))


def ledger_cell(nb: dict) -> str:
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    found = [text for text in cells if text.lstrip().startswith(ledger.HEADING)]
    assert len(found) == 1, f"expected one markdown cell that starts with {ledger.HEADING!r}; found {len(found)}"
    return found[0]


def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def computes(code: str) -> bool:
    """The cell asserts something on a line that is not a comment, and runs under test."""
    lines = [line.split("#", 1)[0] for line in code.splitlines()]
    return any(re.search(r"\bassert\b", line) for line in lines) and "NBVAL_SKIP" not in code


def quoted(quote: str, text: str) -> bool:
    """Every piece of the quote (pieces split at an ellipsis) is found in the text."""
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    pieces = [squash(piece) for piece in re.split(r"…|\.\.\.", quote)]
    return all(piece in squash(text) for piece in pieces if piece) and any(pieces)


def test_the_source_text_ships_with_the_course():
    lines = ledger.source_lines()
    assert len(lines) == 99
    assert lines[1] == "All you need about llm" and lines[98] == "RAG"
    assert all(text.strip() for text in lines.values()), "no blank lines: every line is claimed"


@pytest.mark.parametrize("lesson", LESSONS)
def test_each_row_quotes_its_lines_and_names_a_cell_that_checks_it(lesson):
    source = ledger.source_lines()
    rows = ledger.parse_ledger(ledger_cell(notebook("solutions", lesson)))
    assert rows, "the ledger has no rows"
    cells = code_cells(notebook("solutions", lesson))
    released = code_cells(notebook("notebooks", lesson))
    for row in rows:
        assert set(row.lines) <= set(source), f"{lesson}: no such source line in {row.lines}"
        text = "".join(source[n] for n in row.lines)
        assert quoted(row.quote, text), f"{lesson}: {row.quote!r} is not on line(s) {row.lines}"
        if not row.is_claim:
            assert row.computed_in in ("—", "-", ""), f"{lesson}: a row with no claim names no cell: {row}"
            for n in row.lines:
                assert len(source[n]) <= NO_CLAIM_MAX_CHARS, f"{lesson}: L{n} is a sentence; say what it claims"
            continue
        assert row.markers, f"{lesson}: the row for {row.lines} names no cell (`# ledger: L..`)"
        for marker in row.markers:
            holders = [code for code in cells if marker in ledger.markers(code)]
            assert holders, f"{lesson}: no code cell carries `# ledger: {marker}`"
            for code in holders:
                assert computes(code), f"{lesson}: the cell marked {marker} has no assert that runs under test"
            assert any(marker in ledger.markers(code) for code in released), (
                f"{lesson}: the learner's notebook lost the cell marked {marker}")


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_marked_cell_is_in_the_ledger(lesson):
    named = {m for row in ledger.parse_ledger(ledger_cell(notebook("solutions", lesson))) for m in row.markers}
    marked = {m for code in code_cells(notebook("solutions", lesson)) for m in ledger.markers(code)}
    assert marked <= named, f"{lesson}: cells marked {sorted(marked - named)} are in no row of the ledger"


def test_every_source_line_is_claimed_by_a_lesson():
    claimed: dict[int, list[str]] = {}
    for lesson in LESSONS:
        for row in ledger.parse_ledger(ledger_cell(notebook("solutions", lesson))):
            for n in row.lines:
                claimed.setdefault(n, []).append(lesson[:2])
    missing = [n for n in ledger.source_lines() if n not in claimed]
    assert not missing, f"source lines claimed by no lesson: {missing}"


# The rules themselves.

def test_parse_lines():
    assert ledger.parse_lines("L14") == (14,)
    assert ledger.parse_lines("L19-L23") == (19, 20, 21, 22, 23)
    assert ledger.parse_lines("L19–L21") == (19, 20, 21)
    assert ledger.parse_lines("L5, L6") == (5, 6)
    for bad in ("14", "L", "L23-L19", "line 4", ""):
        with pytest.raises(ValueError, match="expected"):
            ledger.parse_lines(bad)


TABLE = """## Claim ledger

| line | source text | claim | verdict | computed in |
|---|---|---|---|---|
| L14 | 有可能为负 | Scores may be negative. | Misleading: only differences count. | `# ledger: L14` (section 3) |
| L2 | Transformer | (a heading) | Heading. | — |
"""


def test_parse_ledger():
    rows = ledger.parse_ledger(TABLE)
    assert [r.lines for r in rows] == [(14,), (2,)]
    assert rows[0].markers == ("L14",) and rows[0].is_claim
    assert rows[1].markers == () and not rows[1].is_claim
    with pytest.raises(ValueError, match="columns"):
        ledger.parse_ledger(TABLE.replace("| claim ", "| what "))
    with pytest.raises(ValueError, match="cells"):
        ledger.parse_ledger(TABLE + "| L3 | concept | x |\n")


def test_the_rules_catch_a_stale_ledger():
    assert ledger.markers("x = 1  # ledger: L14\n# ledger: L19-L23\n") == ("L14", "L19-L23")
    assert computes("# ledger: L14\nassert abs(x - 0.71) < 0.01")
    assert not computes("# ledger: L14\nprint(x)  # assert nothing")
    assert not computes("# NBVAL_SKIP\n# ledger: L14\nassert x")
    assert quoted("分数…有可能为负", "可是这样带来一个问题,即分数总是在一个较大的区间、有可能为负")
    assert not quoted("分数总是为负", "可是这样带来一个问题,即分数总是在一个较大的区间、有可能为负")


def test_show_prints_a_line_and_refuses_a_missing_one(capsys):
    ledger.show(14)
    assert capsys.readouterr().out.startswith("L14: - 可是这样带来一个问题")
    with pytest.raises(ValueError, match="expected a line number"):
        ledger.show(100)
