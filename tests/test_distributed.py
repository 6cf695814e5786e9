"""course_lib.distributed: every data-parallel strategy on real gloo process groups, equal to one process."""

from __future__ import annotations

import os
import re
import time

import pytest
import torch
import torch.distributed as dist

from course_lib import distributed as D

pytestmark = pytest.mark.timeout(600)
BATCHES = D.toy_batches(steps=3, batch=8)
N_PARAMS = sum(p.numel() for p in D.tiny_mlp().parameters())  # 103, odd: the flat buffer needs padding


@pytest.fixture(scope="module")
def single():
    return D.train(0, 1, "single", D.tiny_mlp, BATCHES)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"world{n}")
def runs(request):
    strategies = [s for s in D.STRATEGIES if s != "single"]
    return request.param, D.run_workers(D.compare_strategies, request.param, strategies, D.tiny_mlp, BATCHES, timeout=300)


@pytest.mark.parametrize("strategy", [s for s in D.STRATEGIES if s != "single"])
def test_every_strategy_ends_with_the_weights_of_one_process(runs, single, strategy):
    world, results = runs
    for rank, result in enumerate(results):
        got = result[strategy]
        assert got.state.keys() == single.state.keys()
        for key, want in single.state.items():
            assert torch.allclose(got.state[key], want, rtol=0, atol=1e-12), (strategy, world, rank, key)
        assert got.losses == pytest.approx(single.losses, abs=1e-12)


def test_bytes_sent_per_rank_are_the_ring_formulas(runs):
    world, results = runs
    steps, share = len(BATCHES), (world - 1) / world
    psi = N_PARAMS * 8  # float64
    padded = D.padded_size(N_PARAMS, world) * 8
    got = results[0]
    assert got["dp"].bytes_sent == pytest.approx(2 * share * psi * steps)
    assert got["ddp"].bytes_sent == pytest.approx(2 * share * psi * steps)  # counted in DDP's communication hook
    for stage in (1, 2):
        assert got[f"zero{stage}"].bytes_sent == pytest.approx(2 * share * padded * steps)
    assert got["zero3"].bytes_sent == pytest.approx(3 * share * padded * steps)
    # FSDP2, counted at torch.distributed's calls: the model is one unit, the root, which it does
    # not reshard after the forward pass: one all-gather and one reduce-scatter a step
    fsdp_buffer = world * got["fsdp2"].stored["parameters"]
    assert got["fsdp2"].bytes_sent == pytest.approx(2 * share * fsdp_buffer * steps)


def test_what_each_rank_stores_shrinks_stage_by_stage(runs):
    world, results = runs
    psi, shard = N_PARAMS * 8, D.padded_size(N_PARAMS, world) // world * 8
    got = results[0]
    assert got["dp"].stored == {"parameters": psi, "gradients": psi, "optimizer": 2 * psi}
    assert got["zero1"].stored["optimizer"] == 2 * shard and got["zero1"].stored["gradients"] == psi + shard
    assert got["zero2"].stored["gradients"] == shard and got["zero2"].stored["parameters"] == world * shard + shard
    assert got["zero3"].stored == {"parameters": shard, "gradients": shard, "optimizer": 2 * shard}
    assert got["fsdp2"].stored["parameters"] < psi and got["fsdp2"].stored["optimizer"] < 2 * psi


# --------------------------------------------------------------------------- a worker that fails


def _children(marker: str = "") -> set[int]:
    """Live processes started by this one whose command line holds ``marker`` ("spawn_main": spawned workers,
    not multiprocessing's resource tracker; "": every child, forked workers included)."""
    me, found = str(os.getpid()), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                if fields[1] == me and fields[0] != "Z" and marker in open(f"/proc/{entry}/cmdline").read():
                    found.add(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("how, words", [("raise", "rank 1 raised"), ("die", "rank 1 died (exit code 7)"),
                                        ("hang", "did not finish within")])
def test_a_failing_worker_ends_the_run_naming_its_rank_and_leaves_no_process(how, words):
    before = _children("spawn_main")
    start = time.monotonic()
    with pytest.raises(D.WorkerError, match=r"rank") as err:
        D.run_workers(D.misbehave, 3, how, 1, timeout=20)
    assert words in str(err.value), str(err.value)
    if how == "raise":
        assert "ran out of data" in str(err.value)  # its traceback
    if how == "hang":  # where each rank was stuck: the bad one asleep, the others waiting for it
        assert re.search(r"rank 1: File .*line \d+ in misbehave", str(err.value)), str(err.value)
        assert re.search(r"rank 0: File .*in barrier", str(err.value)), str(err.value)
    assert time.monotonic() - start < 60
    time.sleep(0.5)
    assert _children("spawn_main") - before == set()


def _forked_sum(rank, world_size, scale):
    t = torch.full((2,), float(rank + 1)) * scale
    dist.all_reduce(t)
    print(f"rank {rank} summed")
    return t


def test_forked_workers_run_a_notebooks_function_and_return_in_rank_order(capsys):
    def notebook_cell_function(rank, world_size):  # defined here, not importable: fork needs no import
        return _forked_sum(rank, world_size, 2.0), dist.get_world_size()

    results = D.run_forked(notebook_cell_function, 3)
    assert [w for _, w in results] == [3, 3, 3]
    for t, _ in results:
        assert torch.equal(t, torch.full((2,), 12.0))
    assert "[rank 2] rank 2 summed" in capsys.readouterr().out  # what a worker printed comes back


@pytest.mark.parametrize("how, words", [("raise", "rank 1 raised"), ("die", "rank 1 died (exit code 7)"),
                                        ("hang", "did not finish within 3 s")])
def test_a_failing_forked_worker_ends_the_run_naming_its_rank_and_leaves_no_process(how, words):
    before = _children()
    with pytest.raises(D.WorkerError, match=r"rank") as err:
        D.run_forked(D.misbehave, 3, how, 1, timeout=3)
    assert words in str(err.value), str(err.value)
    if how == "raise":
        assert "ran out of data" in str(err.value)  # its traceback
    assert _children() - before == set()


def test_healthy_workers_return_in_rank_order():
    assert D.run_workers(D.misbehave, 3, "none", timeout=60) == [0, 1, 2]


def test_world_size_is_checked():
    with pytest.raises(ValueError, match="world_size"):
        D.run_workers(D.misbehave, 0, "none")


# --------------------------------------------------------------------------- the flat buffer and the formulas


@pytest.mark.parametrize("numel, world", [(103, 2), (103, 4), (8, 4), (1, 3)])
def test_shards_are_equal_padded_pieces_that_join_back(numel, world):
    flat = torch.arange(numel, dtype=torch.float32) + 1
    shards = [D.shard(flat, r, world) for r in range(world)]
    assert {s.numel() for s in shards} == {D.padded_size(numel, world) // world}
    assert torch.equal(D.unshard(shards, numel), flat)
    assert torch.count_nonzero(torch.cat(shards)) == numel  # the padding is zeros


def test_unshard_and_padded_size_refuse_what_does_not_fit():
    with pytest.raises(ValueError, match="one length"):
        D.unshard([torch.zeros(2), torch.zeros(3)], 4)
    with pytest.raises(ValueError, match="fewer than"):
        D.unshard([torch.zeros(2), torch.zeros(2)], 5)
    with pytest.raises(ValueError, match="world_size"):
        D.padded_size(10, 0)


def test_shard_refuses_what_it_cannot_cut():
    with pytest.raises(ValueError, match="1-D"):
        D.shard(torch.zeros(2, 3), 0, 2)
    with pytest.raises(ValueError, match="rank"):
        D.shard(torch.zeros(4), 2, 2)


def test_the_zero_papers_figure_for_a_7_5b_model_on_64_gpus():
    """Rajbhandari et al. (2020), figure 1: 120 GB, 31.4 GB, 16.6 GB and 1.9 GB per GPU."""
    got = [D.zero_bytes_per_rank(7.5e9, 64, stage) / 1e9 for stage in range(4)]
    assert [round(x, 1) for x in got] == [120.0, 31.4, 16.6, 1.9]


# --------------------------------------------------------------------------- torchrun


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_torchrun_runs_the_same_entry_point_and_matches_one_process(strategy):
    import json
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "course_lib.distributed",
                           "--strategy", strategy, "--steps", "3"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, COURSE_DEVICE="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    single = D.train(0, 1, "single", D.tiny_mlp, D.toy_batches(3, 16))
    assert got["backend"] == "gloo" and got["world_size"] == 2
    assert got["losses"] == pytest.approx(single.losses, abs=1e-12)


def test_the_entry_point_says_how_to_start_it():
    with pytest.raises(SystemExit):
        D.main(["--strategy", "ddp"]) if "RANK" not in os.environ else pytest.skip("inside torchrun")


# --------------------------------------------------------------------------- tensor parallelism


@pytest.mark.parametrize("world", [2, 4])
def test_a_megatron_mlp_split_over_ranks_equals_the_whole_block(world):
    for rank, got in enumerate(D.run_workers(D.compare_tensor_parallel, world, timeout=300)):
        assert got["scratch"] < 1e-14 and got["torch"] < 1e-14, (rank, got)
        assert got["bytes_sent"] == pytest.approx(2 * (world - 1) / world * got["output_bytes"])  # one all-reduce


def test_megatron_mlp_needs_a_hidden_size_that_splits():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.GELU(), torch.nn.Linear(6, 4))
    with pytest.raises(ValueError, match="split evenly"):
        D.megatron_mlp(0, 4, mlp, torch.zeros(1, 4), D.Comm(4))


# --------------------------------------------------------------------------- the course's checkpoint


def test_ddp_fsdp2_and_zero3_train_the_course_checkpoint_as_one_process_does():
    batches = D.lm_batches(steps=2, batch=4, length=32)
    single = D.train(0, 1, "single", D.course_model, batches)
    results = D.run_workers(D.compare_strategies, 2, ["ddp", "fsdp2", "zero3"], D.course_model, batches, timeout=300)
    psi = sum(p.numel() for p in D.course_model().parameters()) * 8
    for rank, result in enumerate(results):
        for name, got in result.items():
            for key, want in single.state.items():
                assert torch.allclose(got.state[key], want, rtol=0, atol=1e-10), (name, rank, key)
            assert got.losses == pytest.approx(single.losses, abs=1e-10)
    got = results[0]
    assert got["ddp"].bytes_sent == pytest.approx(2 * 0.5 * psi * 2)
    # FSDP2 gathers the blocks again for the backward pass, but not the root's embedding and norm
    assert got["ddp"].bytes_sent < got["fsdp2"].bytes_sent < 1.5 * got["ddp"].bytes_sent
    assert got["fsdp2"].stored["parameters"] < 0.51 * psi and got["ddp"].stored["parameters"] == psi


# --------------------------------------------------------------------------- the ring, simulated


@pytest.mark.parametrize("n, numel", [(1, 5), (2, 8), (3, 10), (4, 7), (5, 3)])
def test_a_simulated_ring_all_reduce_sums_and_sends_2_n_minus_1_over_n(n, numel):
    g = torch.Generator().manual_seed(n)
    tensors = [torch.randn(numel, generator=g, dtype=torch.float64) for _ in range(n)]
    results, sent = D.ring_all_reduce(tensors)
    want = torch.stack(tensors).sum(0)
    for got in results:
        assert torch.allclose(got, want, rtol=0, atol=1e-12)
    chunks = torch.zeros(numel).tensor_split(n)
    # each rank sends every chunk but one twice (N-1 chunks in each phase)
    assert sum(sent) == 2 * (n - 1) * numel * 8
    if numel % n == 0:
        assert sent == [2 * (n - 1) * (numel // n) * 8] * n
    assert all(s <= 2 * (n - 1) * max(c.numel() for c in chunks) * 8 for s in sent)


def test_the_ring_keeps_shape_and_refuses_mixed_tensors():
    results, _ = D.ring_all_reduce([torch.ones(2, 3), torch.ones(2, 3)])
    assert results[0].shape == (2, 3) and torch.equal(results[1], torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="one shape and dtype"):
        D.ring_all_reduce([torch.ones(2), torch.ones(3)])
    with pytest.raises(ValueError, match="none"):
        D.ring_all_reduce([])


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2", "zero3"])
def test_torchrun_with_nccl_on_every_gpu(strategy):
    """``make gpu-check``: the same entry point, one process per GPU, NCCL; the losses those of one process."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    gpus = torch.cuda.device_count()
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun) if torchrun.exists() else sys.executable, *([] if torchrun.exists() else ["-m", "torch.distributed.run"]),
               "--standalone", f"--nproc_per_node={gpus}", "-m", "course_lib.distributed", "--strategy", strategy]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["backend"] == "nccl" and got["world_size"] == gpus
    single = D.train(0, 1, "single", D.tiny_mlp, D.toy_batches(3, 8 * gpus))
    assert got["losses"] == pytest.approx(single.losses, abs=1e-9)
