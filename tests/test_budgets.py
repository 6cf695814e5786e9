"""Every solution notebook fits the course's budget: 60 s and 1.5 GB on 2 CPU cores.

`make timings` writes the measured table to bench/notebook_timings.md; this test
measures again and checks that the committed table covers every notebook.
"""

from __future__ import annotations

import re

import pytest

from course_lib import grading
from tests.conftest import REPO

pytest.importorskip("nbclient")
SECONDS, BYTES = 60, 1.5 * 2**30
TABLE = REPO / "bench" / "notebook_timings.md"
LESSONS = grading.lessons(REPO)


def test_committed_timings_table_covers_every_notebook_within_budget():
    rows = re.findall(r"^\| solutions/(\S+?)/\S+ \| ([\d.]+) \| ([\d.]+) \|$", TABLE.read_text(), re.M)
    assert sorted(r[0] for r in rows) == LESSONS, "run `make timings` and commit bench/notebook_timings.md"
    for lesson, seconds, mib in rows:
        assert float(seconds) <= SECONDS and float(mib) * 2**20 <= BYTES, f"{lesson}: {seconds} s, {mib} MiB"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_notebook_runs_within_budget(lesson):
    m = grading.measure_notebook(REPO / "solutions" / lesson / f"{lesson}.ipynb")
    assert m["seconds"] <= SECONDS, f"{lesson} took {m['seconds']:.1f} s"
    assert 50 * 2**20 < m["peak_rss"] <= BYTES, f"{lesson} peaked at {m['peak_rss'] / 2**20:.0f} MiB"
