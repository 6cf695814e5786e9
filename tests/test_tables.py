"""Tests of course_lib.tables: rows to a frame, formats, and clear errors."""

from __future__ import annotations

import pytest

from course_lib import tables


def test_dict_rows_keep_their_order_and_values():
    rows = [{"N": 1024, "ms": 0.391, "ratio": 3.9}, {"N": 4096, "ms": 5.1, "ratio": 6.07}]
    f = tables.frame(rows)
    assert list(f.columns) == ["N", "ms", "ratio"]
    assert f["N"].tolist() == [1024, 4096] and f["ms"].tolist() == [0.391, 5.1]


def test_tuple_rows_need_columns_of_their_length():
    f = tables.frame([(1, "a"), (2, "b")], columns=["n", "name"])
    assert f.to_dict("list") == {"n": [1, 2], "name": ["a", "b"]}
    with pytest.raises(ValueError, match="need columns"):
        tables.frame([(1, "a")])
    with pytest.raises(ValueError, match="row 1 has 1"):
        tables.frame([(1, "a"), (2,)], columns=["n", "name"])


def test_rows_with_other_keys_or_mixed_rows_are_refused():
    with pytest.raises(ValueError, match="row 1 has"):
        tables.frame([{"a": 1, "b": 2}, {"a": 1, "c": 2}])
    with pytest.raises(ValueError, match="all dicts or all tuples"):
        tables.frame([{"a": 1}, (1,)])
    with pytest.raises(ValueError, match="no column 'z'"):
        tables.frame([{"a": 1}], columns=["z"])


def test_columns_select_and_order_dict_rows():
    f = tables.frame([{"a": 1, "b": 2, "c": 3}], columns=["c", "a"])
    assert list(f.columns) == ["c", "a"] and f.iloc[0].tolist() == [3, 1]


def test_empty_rows_give_an_empty_frame():
    f = tables.frame([], columns=["a"])
    assert list(f.columns) == ["a"] and len(f) == 0


def test_show_prints_formatted_text_outside_jupyter_and_returns_raw_values(capsys):
    f = tables.show([{"N": 1024, "speed-up": 3.9123}, {"N": 4096, "speed-up": 6.07}],
                    formats={"speed-up": "{:.1f}x", "N": lambda n: f"{n // 1024}k"}, caption="eager / flash")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "eager / flash"
    assert out[2].split() == ["1k", "3.9x"] and out[3].split() == ["4k", "6.1x"]
    assert f["speed-up"].tolist() == [3.9123, 6.07]  # unformatted


def test_show_refuses_a_format_for_a_missing_column():
    with pytest.raises(ValueError, match="'ms', which is not a column"):
        tables.show([{"N": 1}], formats={"ms": "{:.1f}"})


def test_show_displays_html_in_jupyter(monkeypatch):
    shown = []
    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    tables.show([{"N": 1, "x": 0.123456}], formats={"x": "{:.2f}"}, caption="c")
    html = shown[0].to_html()
    assert "0.12" in html and "0.123456" not in html and "c</caption>" in html


def test_show_escapes_text_that_looks_like_html(monkeypatch):
    """A token such as '<eos>' is text: in HTML it must arrive as &lt;eos&gt;, not vanish as an unknown tag."""
    shown = []
    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    tables.show([{"token": "'<eos>'", "p": 0.5}], formats={"p": "{:.0%}"})
    html = shown[0].to_html()
    assert "&lt;eos&gt;" in html and "<eos>" not in html and "50%" in html
