"""The checks of lesson 07 (distributed training) reject wrong answers with useful messages (tests/test_checks.py: they accept the solution)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from course_lib.autograde import RemoteFunction
from course_lib.checks import distributed as dist_checks
from course_lib.sandbox import Sandbox
from tests.mutants import distributed as mutants


def honest_average(model):
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


@pytest.mark.parametrize(
    "check,wrong,message",
    [
        (dist_checks.check_ring_all_reduce, mutants.ring_counts_elements, "number of elements sent"),
        (dist_checks.check_ring_all_reduce, mutants.ring_naive_bytes, "naive all-reduce"),
        (dist_checks.check_ring_all_reduce, mutants.ring_average_formula, "Python int"),
        (dist_checks.check_ring_all_reduce, mutants.ring_only_reduce_scatter, "elementwise sum"),
        (dist_checks.check_ring_all_reduce, mutants.ring_in_place, "changed its input list in place"),
        (dist_checks.check_ring_all_reduce, mutants.ring_flatten_with_view, "non-contiguous"),
        (dist_checks.check_shard, mutants.shard_no_padding, "pad the buffer with zeros"),
        (dist_checks.check_shard, mutants.shard_interleaved, "contiguous block|wrong values"),
        (dist_checks.check_shard, mutants.shard_on_cpu, "meta device"),
        (dist_checks.check_unshard, mutants.unshard_keeps_padding, r"should return shape"),
        (dist_checks.check_unshard, mutants.unshard_strips_zeros, "nonzero padding|wrong values|shape"),
        (dist_checks.check_zero_memory_per_gpu, mutants.zero_stage2_shards_weights, "stage=2"),
        (dist_checks.check_zero_memory_per_gpu, mutants.zero_no_error, "should raise ValueError"),
        (dist_checks.check_zero_memory_per_gpu, mutants.zero_as_tensor, "a number"),
        (dist_checks.check_average_gradients, mutants.average_sums, "divide by the world size"),
        (dist_checks.check_average_gradients, mutants.average_on_a_copy, "in place on the very tensor"),
        (dist_checks.check_average_gradients, mutants.average_reduce_to_rank_0, "rank 1's"),
        (dist_checks.check_average_gradients, mutants.average_none_grads, "frozen parameter has no gradient"),
        (dist_checks.check_average_gradients, mutants.average_rank_0_only, "same collectives"),
        (dist_checks.check_average_gradients, mutants.average_steps, "changed the weights"),
    ],
)
def test_check_rejects_a_wrong_answer_with_a_useful_message(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)


def test_failure_messages_name_the_seed():
    with pytest.raises(AssertionError, match=r"\(seed 5\)"):
        dist_checks.check_ring_all_reduce(mutants.ring_counts_elements, seed=5)


def test_a_rank_that_waits_forever_fails_within_the_timeout(monkeypatch):
    def one_rank_loops(model):
        if dist.get_rank() == 1:
            while True:  # never reaches the all-reduce that rank 0 waits in
                pass
        honest_average(model)

    monkeypatch.setattr(dist_checks, "RANK_TIMEOUT", 3.0)
    with pytest.raises(AssertionError, match="(?s)did not finish within 3 s.*same collectives"):
        dist_checks.check_average_gradients(one_rank_loops)


# --------------------------------------------------------------------------- right answers written otherwise still pass


def test_other_right_answers_pass():
    def ring_with_tensor_lists(tensors):  # the same ring, chunks indexed the other way round
        n = len(tensors)
        chunks = [list(t.contiguous().view(-1).tensor_split(n)) for t in tensors]
        chunks = [[c.clone() for c in row] for row in chunks]
        sent = [0] * n
        for step in range(n - 1):
            moves = [((r - step) % n, r, chunks[r][(r - step) % n].clone()) for r in range(n)]
            for c, r, data in moves:
                chunks[(r + 1) % n][c].add_(data)
                sent[r] += data.nbytes
        for step in range(n - 1):
            moves = [((r + 1 - step) % n, r, chunks[r][(r + 1 - step) % n].clone()) for r in range(n)]
            for c, r, data in moves:
                chunks[(r + 1) % n][c] = data
                sent[r] += data.nbytes
        return [torch.cat(row).reshape(tensors[0].shape) for row in chunks], sent

    dist_checks.check_ring_all_reduce(ring_with_tensor_lists)

    def average_dividing_first(model):  # divide, then sum: the same mean
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(dist.get_world_size())
                dist.all_reduce(p.grad)

    def average_with_avg_op(model):  # gloo in this PyTorch has ReduceOp.AVG
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)

    def average_one_flat_buffer(model):  # one all-reduce for every gradient, as DDP's buckets do
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for g, piece in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(piece.view_as(g))

    for answer in (average_dividing_first, average_with_avg_op, average_one_flat_buffer):
        dist_checks.check_average_gradients(answer, world_sizes=(1, 2, 3))


def test_ddp_gradients_equal_the_full_batch_gradient():
    """The random cases compare with the full batch's gradient: that is what DDP computes, for every world size."""
    for world_size in (1, 2, 4):
        ddp = dist_checks._ddp_grads(100 + world_size, world_size)
        full = dist_checks._full_batch_grads(100 + world_size, world_size)
        assert ddp.keys() == full.keys() and ddp["scale"] is None and full["scale"] is None
        for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
            torch.testing.assert_close(ddp[name], full[name], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- in the grading sandbox


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(timeout=60) as box:
        yield box


def test_the_capstone_runs_on_ranks_inside_the_sandbox(sandbox):
    """Graded, the learner's function runs on forked ranks of the sandbox (its own loopback), never in the grader."""
    source = ("import torch.distributed as dist\n\n"
              "def average_gradients(model):\n"
              "    for p in model.parameters():\n"
              "        if p.grad is not None:\n"
              "            dist.all_reduce(p.grad)\n"
              "            p.grad /= dist.get_world_size()\n\n"
              "def sums_only(model):\n"
              "    for p in model.parameters():\n"
              "        if p.grad is not None:\n"
              "            dist.all_reduce(p.grad)\n\n"
              "def uses_the_course(model):\n"
              "    import course_lib.distributed as d\n"
              "    comm = d.Comm(dist.get_world_size())\n"
              "    for p in model.parameters():\n"
              "        if p.grad is not None:\n"
              "            comm.all_reduce(p.grad)\n"
              "            p.grad /= comm.world_size\n")
    assert sandbox.run_cell(source).ok
    dist_checks.check_average_gradients(RemoteFunction(sandbox, "average_gradients"), world_sizes=(2, 3))
    with pytest.raises(AssertionError, match="divide by the world size"):
        dist_checks.check_average_gradients(RemoteFunction(sandbox, "sums_only"))
    with pytest.raises(AssertionError, match="forbids"):
        dist_checks.check_average_gradients(RemoteFunction(sandbox, "uses_the_course"))


def test_a_driver_outside_the_checks_is_refused(sandbox):
    assert sandbox.run_cell("def f(model):\n    return None\n").ok
    result = sandbox.call("f", (), {}, None, workers={"driver": "os:system", "world_size": 1, "timeout": 5})
    assert not result.ok and "course_lib.checks" in result.error["evalue"]
    result = sandbox.call("f", ("echo run",), {}, None, driver="os:system")
    assert not result.ok and "course_lib.checks" in result.error["evalue"]
