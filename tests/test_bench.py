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


def test_the_forgetting_sweep_runs_and_its_committed_result_has_every_run():
    import json

    from bench import finetune as sweep_bench

    quick = sweep_bench.sweep(runs=[sweep_bench.RUNS[3]], chunks=1, steps_per_chunk=2, n_original=5, progress=False)
    assert [p["step"] for p in quick["runs"][0]["points"]] == [0, 2] and quick["runs"][0]["trainable"] == 41_472
    committed = json.loads(sweep_bench.OUT.read_text())
    assert [r["label"] for r in committed["runs"]] == [label for label, *_ in sweep_bench.RUNS]
    for run in committed["runs"]:
        assert len(run["points"]) == committed["chunks"] + 1
        assert run["points"][0] == committed["runs"][0]["points"][0]  # every run starts from the same model


def test_the_gpu_fine_tuning_bench_runs_as_a_smoke_test_on_the_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    from bench import finetune_gpu

    out = tmp_path / "finetune.md"
    assert finetune_gpu.main(["--out", str(out), "--smoke"]) == 0
    text = out.read_text()
    assert "| full |" in text and "| lora |" in text and "[96, 96]" in text
    assert (tmp_path / "finetune.json").is_file()


def test_the_rlhf_long_runs_command_runs_and_writes_what_the_lesson_reads(tmp_path):
    """bench/rlhf.py, two steps of each run (the committed file holds rlhf.LONG_STEPS of each)."""
    import json

    from bench import rlhf as rlhf_bench

    out = tmp_path / "runs.json"
    assert rlhf_bench.main(["--runs-only", "--quick", "--quiet", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())
    committed = json.loads(rlhf_bench.rlhf.CURVES_FILE.read_text())
    assert set(runs) == set(committed) and set(runs["runs"]) == set(committed["runs"])
    assert runs["long_steps"] == 2 and [p["step"] for p in runs["runs"]["reward_model"]["points"]] == [2]
    for name in ("ppo", "ppo_no_kl", "dpo", "grpo"):
        assert [s["step"] for s in runs["runs"][name]["steps"]] == [1, 2]
        assert runs["runs"][name]["evals"][0] == committed["runs"][name]["evals"][0]     # the same start, measured again


def test_the_class_grading_bench_grades_every_learner_as_expected(tmp_path):
    """bench/classroom.py on lesson 00 with two honest learners: every score as expected (test_classroom grades the rest)."""
    from bench import classroom as class_bench

    out = tmp_path / "class.md"
    assert class_bench.main(["--lesson", "00", "--learners", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| learners who got what they should | 2 of 2 |" in text and "the whole class" in text
