"""Tests of course_lib.glossary: the entries themselves, their spelling against the source text, and the table."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from course_lib import glossary
from course_lib.glossary import LESSONS, TERMS, Term, as_markdown, terms

# The source text is not part of the repository; CI keeps it beside the repository.
SEED_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "seed"
CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def _source_text() -> str:
    files = sorted(SEED_DIR.glob("*.txt")) if SEED_DIR.is_dir() else []
    if not files:
        pytest.skip(f"the source text is not here: no {SEED_DIR}/*.txt (CI keeps it at ../shared/seed/ beside the repository)")
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def _rows(table: str) -> list[list[str]]:
    """Split a Markdown table into rows of cells, honouring escaped pipes."""
    rows = []
    for line in table.splitlines():
        assert line.startswith("| ") or line.startswith("|-"), line
        cells = re.split(r"(?<!\\)\|", line)
        assert cells[0] == "" and cells[-1] == "", line
        rows.append([c.strip() for c in cells[1:-1]])
    return rows


def test_there_are_terms_for_every_lesson():
    assert len(TERMS) >= 60
    for n in range(len(LESSONS)):
        assert terms(n), f"lesson {n} has no glossary terms"


def test_english_terms_are_unique():
    english = [t.english.lower() for t in TERMS]
    duplicates = sorted({e for e in english if english.count(e) > 1})
    assert not duplicates, f"duplicate English terms: {duplicates}"


def test_chinese_terms_are_unique():
    chinese = [t.chinese for t in TERMS]
    duplicates = sorted({c for c in chinese if chinese.count(c) > 1})
    assert not duplicates, f"two entries share the source's term: {duplicates}"


def test_fields_are_non_empty_one_line_strings():
    for t in TERMS:
        assert type(t) is Term
        for name in ("english", "chinese", "meaning"):
            value = getattr(t, name)
            assert type(value) is str and value.strip() == value and value, f"{t.english!r}: {name} = {value!r}"
            assert "\n" not in value, f"{t.english!r}: {name} is not one line"
        assert len(t.meaning) >= 20, f"{t.english!r}: the meaning is too short to define anything"


def test_lessons_are_ints_from_0_to_11_and_in_order():
    assert len(LESSONS) == 12
    for t in TERMS:
        assert type(t.lesson) is int and 0 <= t.lesson <= 11, f"{t.english!r}: lesson {t.lesson!r}"
    numbers = [t.lesson for t in TERMS]
    assert numbers == sorted(numbers), "TERMS should be ordered by lesson"


def test_terms_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TERMS[0].lesson = 5


def test_chinese_terms_occur_verbatim_in_the_source_text():
    source = _source_text()
    missing = [t.chinese for t in TERMS if CJK.search(t.chinese) and t.chinese not in source]
    assert not missing, f"Chinese terms not spelled as in the source text: {missing}"


def test_english_only_terms_are_written_as_the_source_writes_them():
    source = _source_text()
    missing = [t.chinese for t in TERMS if not CJK.search(t.chinese) and t.chinese not in source]
    assert not missing, f"terms the source writes in English, but not spelled this way there: {missing}"


def test_the_source_texts_key_terms_are_covered():
    chinese = {t.chinese for t in TERMS}
    english = {t.english for t in TERMS}
    for term in ("兼容性分数", "自编码模型", "自回归模型", "因果语言建模", "显存", "偏置项", "梯度", "Adam优化器",
                 "激活值", "量化", "半精度", "符号位", "指数", "尾数", "缩放因子", "分组查询注意力", "通信开销",
                 "灾难性遗忘", "多租户", "秩", "剪枝", "训练后量化", "蒸馏"):
        assert term in chinese, term
    for term in ("token", "embedding", "encoder", "decoder", "self-attention", "attention", "softmax", "fp32", "fp16",
                 "fp8", "int8", "int4", "FlashAttention", "DDP", "FSDP", "PEFT", "LoRA", "QLoRA", "RLHF", "SparseGPT",
                 "GPTQ", "RAG"):
        assert term in english, term


def test_terms_filters_by_lesson():
    assert terms() == TERMS
    assert terms(None) == TERMS
    for n in range(12):
        got = terms(n)
        assert type(got) is tuple
        assert all(t.lesson == n for t in got)
    assert sum(len(terms(n)) for n in range(12)) == len(TERMS)
    assert "softmax" in {t.english for t in terms(1)}
    assert "LoRA" in {t.english for t in terms(8)}


@pytest.mark.parametrize("bad", [-1, 12, 1.0, "1", True, [1]])
def test_bad_lesson_numbers_raise(bad):
    with pytest.raises(ValueError, match="lesson"):
        terms(bad)
    with pytest.raises(ValueError, match="lesson"):
        glossary.show(bad)


def test_as_markdown_has_a_header_and_one_row_per_entry():
    rows = _rows(as_markdown(TERMS))
    assert rows[0] == ["English", "Chinese (source text)", "Meaning", "Lesson"]
    assert set("".join(rows[1])) <= set("-")
    body = rows[2:]
    assert len(body) == len(TERMS)
    for row, t in zip(body, TERMS):
        assert len(row) == 4, row
        assert row[3] == f"{t.lesson:02d}"
        assert row[1].replace("\\", "") == t.chinese
    assert as_markdown() == as_markdown(TERMS)
    assert len(_rows(as_markdown([]))) == 2


def test_as_markdown_escapes_pipes_and_keeps_rows_on_one_line():
    tricky = Term("a|b", "甲|乙", "x | y\nz_w *q*", 3)
    table = as_markdown([tricky, TERMS[0]])
    lines = table.splitlines()
    assert len(lines) == 4
    row = _rows(table)[2]
    assert len(row) == 4, row
    assert row[0] == r"a\|b" and row[1] == r"甲\|乙"
    assert row[2] == r"x \| y z\_w \*q\*"


@pytest.mark.parametrize("bad", ["token", 3, TERMS[0], [TERMS[0], "x"], [("a", "b", "c", 1)]])
def test_as_markdown_rejects_what_is_not_terms(bad):
    with pytest.raises(ValueError, match="Term"):
        as_markdown(bad)


def test_show_displays_markdown(monkeypatch):
    pytest.importorskip("IPython")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    assert glossary.show(4) is None
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.Markdown)
    assert shown[0].data == as_markdown(terms(4))
