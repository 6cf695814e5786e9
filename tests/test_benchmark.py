"""course_lib.benchmark: the timing rules, the contenders' correctness, and the tables' ratios."""

from __future__ import annotations

import math

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
