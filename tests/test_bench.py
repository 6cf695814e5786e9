"""The benchmark scripts run (quick sizes on the CPU here; full sizes with `make gpu-check`)."""

import re

import pytest
import torch

from bench import attention, decode, run_all


def _data_rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in l.strip().strip("|").split("|")] for l in table.splitlines() if re.match(r"^\| \d+ ", l)]


def test_attention_bench_prints_ratios_on_cpu():
    table = attention.run(quick=True, device=torch.device("cpu"))
    rows = _data_rows(table)
    assert len(rows) == 8                                   # (forward, forward + backward) x 2 lengths x causal or not
    assert "Attention forward + backward on CPU" in table
    for row in rows:
        assert all(float(x) > 0 for x in row[-2:])          # the ratio columns


def test_decode_bench_prints_ratios_on_cpu():
    table = decode.run(quick=True, device=torch.device("cpu"))
    rows = _data_rows(table)
    assert [r[0] for r in rows] == ["32 (MHA)", "8 (GQA)", "1 (MQA)"] and rows[0][3] == "1.00"


def test_run_all_writes_a_results_file(tmp_path):
    out = tmp_path / "results.md"
    assert run_all.main(["--out", str(out), "--quick"]) == 0
    text = out.read_text()
    assert "Attention forward on CPU" in text and "One decode step of attention" in text


@pytest.mark.gpu
def test_attention_bench_on_cuda():
    table = attention.run(quick=True, device=torch.device("cuda"))
    assert "bfloat16" in table and "SDPA cuDNN" in table and len(_data_rows(table)) == 16
    assert "course flash (PyTorch tiles)" in table.split("forward + backward")[1]
