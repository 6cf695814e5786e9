"""Every solution notebook fits the course's budget: 60 s and 1.5 GB on 2 CPU cores.

The budget is a benchmark, not a test: `make timings` measures each solution notebook
(wall time, the kernel's CPU time, the peak memory of the kernel and its processes) on an idle machine and writes the
table bench/notebook_timings.md. These tests check that the committed table covers
every notebook and records figures within budget, and that the measurement itself
measures the kernel. No test here depends on how fast or busy the machine is.
"""

from __future__ import annotations

import re

import nbformat
import pytest

from course_lib import grading
from tests.conftest import REPO

pytest.importorskip("nbclient")
SECONDS, BYTES = 60, 1.5 * 2**30
TABLE = REPO / "bench" / "notebook_timings.md"
LESSONS = grading.lessons(REPO)
ROW = re.compile(r"^\| solutions/(\S+?)/\S+ \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", re.M)


def test_committed_timings_table_covers_every_notebook_within_budget():
    text = TABLE.read_text()
    assert grading.TIMINGS_COLUMNS in text, "the table's columns changed: run `make timings` and commit it"
    rows = ROW.findall(text)
    assert sorted(r[0] for r in rows) == LESSONS, "run `make timings` and commit bench/notebook_timings.md"
    for lesson, seconds, cpu_seconds, mib in rows:
        assert float(seconds) <= SECONDS and float(mib) * 2**20 <= BYTES, f"{lesson}: {seconds} s, {mib} MiB"
        assert float(cpu_seconds) > 0, f"{lesson}: no CPU time recorded"


def test_the_table_reader_reads_what_timings_row_writes():
    row = grading.timings_row("00_x", {"seconds": 2.04, "cpu_seconds": 3.26, "peak_rss": 300 * 2**20})
    assert ROW.findall(row) == [("00_x", "2.0", "3.3", "300")]


def _notebook(path, *cells: str):
    """Write a notebook of these code cells to ``path``; return the path."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_measure_notebook_measures_the_kernel(tmp_path):
    """A notebook that holds 300 MiB and computes for a while: both show in the kernel's figures."""
    path = _notebook(tmp_path / "busy.ipynb", "block = b\"x\" * (300 * 2**20)  # every page written",
                     "total = sum(i * i for i in range(3_000_000))")
    measured = grading.measure_notebook(path)
    assert set(measured) == {"seconds", "cpu_seconds", "peak_rss"}
    assert measured["peak_rss"] >= 300 * 2**20, f"peak {measured['peak_rss'] / 2**20:.0f} MiB"
    assert measured["cpu_seconds"] > 0.05, f"CPU time {measured['cpu_seconds']} s"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_measure_notebook_counts_the_processes_the_kernel_starts(tmp_path):
    """A kernel holding 300 MiB that starts a process holding 400 MiB: the peak counts both (lesson 07's workers)."""
    path = _notebook(tmp_path / "workers.ipynb", "block = b\"x\" * (300 * 2**20)",
                     "import subprocess, sys\n"
                     "subprocess.run([sys.executable, '-c', 'import time; b = b\"y\" * (400 * 2**20); time.sleep(1.5)'], check=True)")
    measured = grading.measure_notebook(path)
    assert measured["peak_rss"] >= 650 * 2**20, f"peak {measured['peak_rss'] / 2**20:.0f} MiB"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_measure_notebook_raises_when_a_cell_fails(tmp_path):
    path = _notebook(tmp_path / "broken.ipynb", "raise ValueError('broken on purpose')")
    with pytest.raises(RuntimeError, match="broken on purpose"):
        grading.measure_notebook(path)
