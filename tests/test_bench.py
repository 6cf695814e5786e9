"""The benchmarks run (quick sizes on the CPU here; full sizes with `make gpu-check`)."""

import re

import pytest
import torch

from bench import attention, run_all


def test_attention_bench_prints_ratios_on_cpu():
    table = attention.run(quick=True, device=torch.device("cpu"))
    rows = [l for l in table.splitlines() if re.match(r"^\| \d+ \|", l)]
    assert len(rows) == 4
    for row in rows:
        ratio = float(row.split("|")[5])
        assert ratio > 0


def test_run_all_writes_a_results_file(tmp_path):
    out = tmp_path / "results.md"
    assert run_all.main(["--out", str(out), "--quick"]) == 0
    assert "course_lib / SDPA time" in out.read_text()


@pytest.mark.gpu
def test_attention_bench_on_cuda():
    table = attention.run(quick=True, device=torch.device("cuda"))
    assert "bfloat16" in table and table.count("\n| ") >= 5
