"""course_lib.benchmark: the timing rules, the contenders' correctness, and the tables' ratios."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from course_lib import benchmark
from course_lib.attention import repeat_kv


def test_median_ms_warms_up_then_times_the_median():
    calls = []
    ms = benchmark.median_ms(lambda: calls.append(1), "cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and 0 <= ms < 50
    with pytest.raises(ValueError, match="repeats"):
        benchmark.median_ms(lambda: None, "cpu", repeats=0)


def test_peak_mib_on_the_cpu_counts_what_the_call_allocates():
    x = torch.zeros(1 << 20)                                  # 4 MiB that exist before: not counted
    assert benchmark.peak_mib(lambda: x + 1, "cpu") == pytest.approx(4.0)
    assert benchmark.peak_mib(lambda: torch.empty(3, 1 << 18), "cpu") == pytest.approx(3.0)


def test_attention_flops():
    assert benchmark.attention_flops(2, 16, 1024, 1024, 128) == 4 * 2 * 16 * 1024 * 1024 * 128
    assert benchmark.attention_flops(1, 1, 8, 8, 4, is_causal=True) == 4 * 8 * 8 * 4 / 2


@pytest.mark.parametrize("is_causal", [False, True])
def test_eager_attention_equals_sdpa(is_causal):
    q, k, v = (torch.randn(2, 3, 37, 16, dtype=torch.float64) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(benchmark.eager_attention(q, k, v, is_causal), expected)


@pytest.mark.parametrize("n_kv", [8, 2, 1])
def test_decode_step_reads_each_cached_head_once_and_equals_attention(n_kv):
    q = torch.randn(2, 8, 1, 16, dtype=torch.float64)
    k, v = (torch.randn(2, n_kv, 50, 16, dtype=torch.float64) for _ in range(2))
    expected = F.scaled_dot_product_attention(q, repeat_kv(k, 8 // n_kv), repeat_kv(v, 8 // n_kv))
    torch.testing.assert_close(benchmark.decode_attention_step(q, k, v), expected)


def test_decode_step_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"q \(B, H, 1, D\)"):
        benchmark.decode_attention_step(torch.randn(1, 8, 2, 16), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16))
    with pytest.raises(ValueError, match="divisible"):
        benchmark.decode_attention_step(torch.randn(1, 8, 1, 16), torch.randn(1, 3, 5, 16), torch.randn(1, 3, 5, 16))


def test_cpu_contenders_all_compute_attention():
    q, k, v = (torch.randn(1, 2, 70, 16) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    contenders = benchmark.attention_contenders(torch.device("cpu"))
    assert {"eager", "SDPA"} <= set(contenders) and len(contenders) == 3
    for name, fn in contenders.items():
        torch.testing.assert_close(fn(q, k, v, is_causal=True), expected, atol=1e-5, rtol=1e-4, msg=name)


def _row(n, name, tflops, peak=1.0, error=None):
    return {"n": n, "head_dim": 64, "causal": False, "batch": 1, "heads": 2, "name": name,
            "ms": None if tflops is None else 1.0, "tflops": tflops, "peak_mib": peak, "error": error}


def test_attention_table_gives_ratios_to_the_reference():
    rows = [_row(1024, "eager", 50.0), _row(1024, "course Triton", 300.0), _row(1024, "SDPA cuDNN", 600.0),
            _row(2048, "eager", None, error="out of memory"), _row(2048, "course Triton", 320.0), _row(2048, "SDPA cuDNN", 640.0)]
    table = benchmark.attention_table(rows)
    lines = table.splitlines()
    assert "course Triton / eager" in lines[0] and "course Triton / SDPA cuDNN" in lines[0]
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first[-2:] == ["6.00", "0.50"]
    second = [c.strip() for c in lines[3].strip("|").split("|")]
    assert "fails" in second and second[-2:] == ["-", "0.50"]


def test_decode_table_gives_ratios_to_mha():
    rows = [{"kv_heads": 32, "n_heads": 32, "ms": 1.0, "cache_gib_all_layers": 128.0, "gb_per_s": 4000.0},
            {"kv_heads": 8, "n_heads": 32, "ms": 0.25, "cache_gib_all_layers": 32.0, "gb_per_s": 4000.0}]
    table = benchmark.decode_table(rows)
    assert "| 8 (GQA) | 32.0 | 0.250 | 0.25 | 4000 |" in table and "32 (MHA)" in table


def test_attention_benchmark_runs_small_on_the_cpu():
    rows = benchmark.attention_benchmark((64,), (16,), (False, True), device="cpu", repeats=1, progress=False)
    assert len(rows) == 2 * 3
    for r in rows:
        assert r["error"] is None and r["ms"] > 0 and r["tflops"] > 0 and r["peak_mib"] >= 0
    by = {(r["causal"], r["name"]): r for r in rows}
    assert by[(False, "eager")]["peak_mib"] > by[(False, "SDPA")]["peak_mib"]   # the eager scores matrix


def test_decode_benchmark_measures_the_cache_it_reads():
    rows = benchmark.decode_benchmark((4, 2, 1), n_heads=4, head_dim=16, batch=1, context=64, n_layers=2, device="cpu", repeats=1)
    assert [r["kv_heads"] for r in rows] == [4, 2, 1]
    assert rows[0]["cache_gib_all_layers"] == pytest.approx(2 * 2 * 4 * 16 * 64 * 4 / 2**30)
    assert all(r["ms"] > 0 and math.isfinite(r["gb_per_s"]) for r in rows)


@pytest.mark.gpu
def test_gpu_contenders_include_the_sdpa_backends(device):
    names = set(benchmark.attention_contenders(device))
    assert {"eager", "SDPA flash (FA2)", "SDPA mem-efficient", "SDPA cuDNN"} <= names


def test_attention_benchmark_can_race_chosen_contenders_only():
    rows = benchmark.attention_benchmark((32,), (16,), (False,), device="cpu", repeats=1, progress=False, names=("SDPA",))
    assert [r["name"] for r in rows] == ["SDPA"]
    with pytest.raises(ValueError, match="names must be among"):
        benchmark.attention_benchmark((32,), (16,), (False,), device="cpu", names=("course Triton",))


def test_attention_benchmark_times_forward_and_backward():
    rows = benchmark.attention_benchmark((48,), (16,), (True,), device="cpu", repeats=1, progress=False, backward=True)
    assert {r["name"] for r in rows} == {"eager", "course flash (PyTorch tiles)", "SDPA"}
    forward = benchmark.attention_benchmark((48,), (16,), (True,), device="cpu", repeats=1, progress=False)
    for r in rows:
        assert r["error"] is None and r["tflops"] > 0
    by = {r["name"]: r for r in rows}
    assert by["eager"]["peak_mib"] > {r["name"]: r for r in forward}["eager"]["peak_mib"]   # saved for backward


# --------------------------------------------------------------------------- the reference run's figures

PROVENANCE = ("what", "gpu", "measured", "torch", "script", "command", "provenance", "uncertainty")


def test_reference_h200_file_is_the_repository_format():
    text = benchmark.REFERENCE_H200.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=1, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("group", list(json.loads(benchmark.REFERENCE_H200.read_text(encoding="utf-8"))["groups"]))
def test_every_reference_group_states_its_provenance_and_uncertainty(group):
    g = benchmark.reference_h200(group)
    for field in PROVENANCE:
        assert isinstance(g.get(field), str) and g[field].strip(), f"{group}: no {field}"
    assert g["lessons"] and all(lesson in {"03", "04", "05", "06"} for lesson in g["lessons"])
    assert ("figures" in g) != ("rows" in g), f"{group}: figures or rows, not both"
    for row in g.get("rows", []):  # every measured figure of a row carries its +- from rounding
        assert set(row["pm"]) <= set(row) and all(p > 0 for p in row["pm"].values()), row
    if "pm" in g:
        assert set(g["pm"]) == set(g["figures"])


def test_reference_h200_rows_are_consistent():
    memory_rows = benchmark.reference_h200("training_memory_1b")["rows"]
    params = 1_104_218_112
    for r in memory_rows:  # bytes per parameter, recorded from the unrounded peak, within the peak's rounding
        low, high = (r["peak_gib"] - 0.05) * 2**30 / params, (r["peak_gib"] + 0.05) * 2**30 / params
        assert low - 0.05 <= r["bytes_per_param"] <= high + 0.05, r
    decode = {r["kv_heads"]: r for r in benchmark.reference_h200("decode_step")["rows"]}
    assert [decode[k]["cache_gib_all_layers"] for k in (32, 8, 1)] == [128, 32, 4]
    slowest = (decode[32]["step_ms"] - 0.005) / (decode[1]["step_ms"] + 0.005)
    fastest = (decode[32]["step_ms"] + 0.005) / (decode[1]["step_ms"] - 0.005)
    assert round(slowest) == 13 and round(fastest) == 15   # "13-15x", lesson 06
    spec = benchmark.reference_h200("h200_spec")["figures"]
    assert benchmark.reference_h200("ceilings")["figures"]["copy_tb_s"] < spec["hbm_bandwidth_tb_s"]
    assert benchmark.reference_h200("training_memory_156m")["rows"] == []  # no result recorded yet


def test_reference_h200_names_the_groups_for_an_unknown_group():
    with pytest.raises(ValueError, match="decode_step") as info:
        benchmark.reference_h200("h100")
    assert "'h100'" in str(info.value) and "training_memory_1b" in str(info.value)


# The figures now read from reference_h200.json, as the literals that used to define them in code cells,
# and the Markdown tables that used to print them.
HARD_CODED = {
    "an H200_* table written out": re.compile(r"^\s*H200_\w+\s*=\s*(\[\s*\n\s*\(|\{\s*\d|\{\s*\n\s*\()", re.M),
    "a ceiling in FLOP/s or bytes/s": re.compile(r"^\s*(PEAK_FLOPS|BANDWIDTH|COPY_RATE)\s*=\s*[\d.]+e12", re.M),
    "a measured peak tuple": re.compile(r"\(\"(fp32|bf16-mixed|bf16)\", \d+, \d+, (True|False), [\d.]+\)"),
    "a measured attention dict": re.compile(r"\"(eager|flash)_ms\":\s*[\d.]+|\{1024: \d+, 4096: \d+"),
    "the reference cache sizes": re.compile(r"\(\"MHA\", 32, 128\)"),
}
MARKDOWN_TABLES = re.compile(r"^\|[^\n]*(\d ms, \d+ TFLOP/s|\| [\d.]+ GiB \| [\d.]+ ms \|)", re.M)


@pytest.mark.parametrize("lesson", ["00", "01", "02", "03", "04", "05", "06"])
def test_no_solution_notebook_of_lessons_00_to_06_hard_codes_the_h200_figures(lesson, repo):
    [path] = (repo / "solutions").glob(f"{lesson}_*/{lesson}_*.ipynb")
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            for what, pattern in HARD_CODED.items():
                assert not pattern.search(source), f"{path.name}: {what} in a code cell; read reference_h200.json"
        elif cell["cell_type"] == "markdown":
            assert not MARKDOWN_TABLES.search(source), f"{path.name}: an H200 table in Markdown; print it from the file"
