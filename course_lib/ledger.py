"""The claim ledger: every line of the source text, the lesson that checks it, and the cell that does (lesson 00).

The source text, *All you need about llm*, ships with the course
(``course_lib/assets/source/all_you_need_about_llm.txt``, 99 lines). Each lesson ends with a
markdown table, its claim ledger, with one row per claim it covers::

    | line | source text | claim | verdict | computed in |
    |---|---|---|---|---|
    | L14 | 有可能为负 | Scores can be negative ... | Misleading: ... | `# ledger: L14` (section 3) |

- *line*: the source line(s), ``L14``, ``L19-L23`` or ``L5, L6``;
- *source text*: the Chinese words quoted from those lines (``…`` may elide words);
- *claim*: the claim in English;  *verdict*: right, wrong, loose, ... and the right figure;
- *computed in*: one or more cell markers. The code cell that settles the claim carries the
  comment ``# ledger: L14`` and an ``assert`` on the figure, so that running the notebook checks
  the claim again. A line with no claim (a heading, a stray word) says ``—`` here and its verdict
  starts with "Heading" or "No claim".

``tests/test_ledger.py`` holds every lesson to this: each source line is claimed by a lesson, each
quote is found on its line, and each named cell exists, asserts, and runs under test.

    from course_lib import ledger
    ledger.source_lines()[14]      # the text of line 14
    ledger.show(14)                # line 14, to read next to its check
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SOURCE_PATH", "Row", "source_lines", "parse_lines", "parse_ledger", "markers", "show"]

#: The source text, as the course ships it.
SOURCE_PATH = Path(__file__).parent / "assets" / "source" / "all_you_need_about_llm.txt"

#: The heading that opens a lesson's ledger cell.
HEADING = "## Claim ledger"
COLUMNS = ("line", "source text", "claim", "verdict", "computed in")
MARKER = re.compile(r"#\s*ledger:\s*(L[0-9][\w-]*)")
NO_CLAIM = ("Heading", "No claim")


@dataclass(frozen=True)
class Row:
    """One row of a lesson's ledger. ``lines``: the source line numbers it covers (1-based)."""

    lines: tuple[int, ...]
    quote: str
    claim: str
    verdict: str
    computed_in: str

    @property
    def markers(self) -> tuple[str, ...]:
        """The cell markers the row names, e.g. ``("L14",)`` for ``# ledger: L14``."""
        return tuple(MARKER.findall(self.computed_in))

    @property
    def is_claim(self) -> bool:
        """False for a heading or a stray fragment of the source, which needs no cell."""
        return not self.verdict.startswith(NO_CLAIM)


def source_lines() -> dict[int, str]:
    """The source text by line number (1 to 99): ``{1: "All you need about llm", ...}``."""
    text = SOURCE_PATH.read_text(encoding="utf-8")
    return {number: line for number, line in enumerate(text.splitlines(), start=1)}


def parse_lines(spec: str) -> tuple[int, ...]:
    """``"L14"`` -> (14,);  ``"L19-L23"`` -> (19, ..., 23);  ``"L5, L6"`` -> (5, 6).

    Raises ``ValueError`` naming the expected form for anything else.
    """
    numbers: list[int] = []
    for part in spec.replace("–", "-").split(","):
        match = re.fullmatch(r"\s*L(\d+)\s*(?:-\s*L(\d+))?\s*", part)
        if not match:
            raise ValueError(f"expected source lines like 'L14', 'L19-L23' or 'L5, L6'; got {spec!r}")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if last < first:
            raise ValueError(f"expected a range that rises, like 'L19-L23'; got {spec!r}")
        numbers.extend(range(first, last + 1))
    return tuple(numbers)


def _cells(row: str) -> list[str]:
    """The cells of one markdown table row; ``\\|`` inside a cell is a literal bar."""
    inner = row.strip()[1:-1]
    parts = re.split(r"(?<!\\)\|", inner)
    return [part.strip().replace("\\|", "|") for part in parts]


def parse_ledger(markdown: str) -> list[Row]:
    """The rows of a ledger cell's markdown (the cell that starts with ``## Claim ledger``).

    Raises ``ValueError`` if the cell has no table with the columns
    ``line | source text | claim | verdict | computed in``, or a row has another number of cells.
    """
    lines = [line for line in markdown.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2 or tuple(_cells(lines[0])) != COLUMNS:
        raise ValueError(f"expected a table with the columns {' | '.join(COLUMNS)}; got {lines[:1]}")
    rows = []
    for line in lines[2:]:
        cells = _cells(line)
        if len(cells) != len(COLUMNS):
            raise ValueError(f"expected {len(COLUMNS)} cells in the ledger row {line!r}; got {len(cells)}")
        rows.append(Row(parse_lines(cells[0]), *cells[1:]))
    return rows


def markers(code: str) -> tuple[str, ...]:
    """The ledger markers in a code cell's source: ``"# ledger: L14"`` -> ``("L14",)``."""
    return tuple(MARKER.findall(code))


def show(*numbers: int) -> None:
    """Print source lines with their numbers, to read a claim next to the cell that checks it."""
    text = source_lines()
    for number in numbers:
        if number not in text:
            raise ValueError(f"expected a line number from 1 to {len(text)}; got {number}")
        print(f"L{number}: {text[number]}")
