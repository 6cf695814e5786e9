"""Tables of results, shown in Jupyter as formatted tables, so that a code cell shows its idea and not its printing.

A lesson computes its rows (one dict per row), then calls :func:`show`::

    from course_lib import tables
    rows = [{"N": n, "eager ms": e, "flash ms": f, "speed-up": e / f} for n, e, f in results]
    tables.show(rows, formats={"eager ms": "{:.2f}", "flash ms": "{:.2f}", "speed-up": "{:.1f}x"})

The table is a pandas ``DataFrame``: :func:`show` returns it, so a cell can go on to assert on its
columns (``frame["speed-up"].min() > 2``). Defined in lesson 00.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import pandas as pd

__all__ = ["frame", "show"]

Format = str | Callable[[object], str]


def frame(rows: Sequence[Mapping[str, object]] | Sequence[Sequence[object]], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows as a ``DataFrame``, one column per key, in the order of the first row's keys.

    Args:
        rows: a list of dicts (each with the same keys) or, with ``columns``, a list of tuples
            (each as long as ``columns``). An empty list gives an empty frame with ``columns``.
        columns: the column names, for rows given as tuples; for dicts, the columns to keep, in this order.

    Raises:
        ValueError: a row whose keys differ from the first row's, a tuple of the wrong length,
            tuples without ``columns``, or a column that no row has.
    """
    rows = list(rows)
    if not rows:
        return pd.DataFrame(columns=list(columns or []))
    if all(isinstance(r, Mapping) for r in rows):
        keys = list(rows[0])
        for i, r in enumerate(rows):
            if list(r) != keys:
                raise ValueError(f"every row needs the keys {keys} in this order; row {i} has {list(r)}")
        if columns is not None:
            missing = [c for c in columns if c not in keys]
            if missing:
                raise ValueError(f"no column {missing[0]!r}; the rows have {keys}")
            keys = list(columns)
        return pd.DataFrame([[r[k] for k in keys] for r in rows], columns=keys)
    if any(isinstance(r, Mapping) for r in rows):
        raise ValueError("rows should be all dicts or all tuples, not a mix")
    if columns is None:
        raise ValueError("rows given as tuples need columns=[...] naming each position")
    for i, r in enumerate(rows):
        if len(r) != len(columns):
            raise ValueError(f"every row needs {len(columns)} values ({list(columns)}); row {i} has {len(r)}")
    return pd.DataFrame([list(r) for r in rows], columns=list(columns))


def show(rows, columns: Sequence[str] | None = None, formats: Mapping[str, Format] | None = None,
         caption: str | None = None) -> pd.DataFrame:
    """Display the rows as a table (formatted numbers, no index) and return them as a ``DataFrame``.

    Args:
        rows, columns: as :func:`frame`.
        formats: column -> a format string such as ``"{:.2f}"`` or ``"{:.1%}"``, or a function of
            the value returning text; other columns are shown as they are.
        caption: a line shown above the table.

    In Jupyter the table appears as HTML; elsewhere (a script, a terminal) it is printed as text.
    The returned frame holds the unformatted values.

    Raises:
        ValueError: as :func:`frame`, or a format for a column the table does not have.
    """
    table = frame(rows, columns)
    formats = dict(formats or {})
    unknown = [c for c in formats if c not in table.columns]
    if unknown:
        raise ValueError(f"a format for {unknown[0]!r}, which is not a column; the columns are {list(table.columns)}")
    styled = table.style.format(formats, escape="html").hide(axis="index")  # "<eos>" shows as text
    if caption:
        styled = styled.set_caption(caption)
    try:
        from IPython import get_ipython
        from IPython.display import display
        in_jupyter = get_ipython() is not None
    except ImportError:
        in_jupyter = False
    if in_jupyter:
        display(styled)
    else:
        text = table.copy()
        for column, fmt in formats.items():
            text[column] = [fmt.format(v) if isinstance(fmt, str) else fmt(v) for v in table[column]]
        print((caption + "\n" if caption else "") + text.to_string(index=False))
    return table
