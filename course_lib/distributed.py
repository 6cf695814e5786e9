"""Lesson 07: data-parallel training on real process groups: DDP, ZeRO 1-3 and FSDP2, measured.

Every strategy here runs in real worker processes that talk through ``torch.distributed``
(gloo on CPU, NCCL on CUDA). :func:`run_workers` starts them from a notebook or a test;
torchrun starts the same training entry point (:func:`main`) on one machine or several::

    torchrun --standalone --nproc_per_node=2 -m course_lib.distributed --strategy ddp
    # two machines, 8 processes each; run on both, with the first one's address:
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
        -m course_lib.distributed --strategy fsdp2

From scratch, on the collectives themselves:

- :class:`Comm` wraps ``all_reduce``, ``reduce_scatter`` and ``all_gather`` and counts what
  each rank sends (a ring sends ``(N-1)/N`` of the buffer per reduce-scatter or all-gather,
  twice that per all-reduce);
- :func:`train` with ``strategy`` ``"dp"`` (gradients averaged by bucketed all-reduce, launched
  from gradient hooks while the backward pass is still running), ``"zero1"``, ``"zero2"`` and
  ``"zero3"`` (optimizer states, then gradients, then parameters sharded over a flat, padded
  buffer), and the real ones, ``"ddp"`` (``DistributedDataParallel``, its all-reduce counted
  through a communication hook) and ``"fsdp2"`` (``torch.distributed.fsdp.fully_shard``).

Every strategy, for the same global batch, ends with the weights that one process gets
(tests/test_distributed.py).
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import math
import multiprocessing
import os
import queue
import select
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("single", "dp", "zero1", "zero2", "zero3", "ddp", "fsdp2")


# =========================================================================== launching workers


class WorkerError(RuntimeError):
    """A worker raised, died or hung; the message names its rank."""


def _worker(rank: int, world_size: int, store_path: str, fn, args, results, backend: str = "gloo") -> None:
    from course_lib.sandbox import die_with_parent

    die_with_parent()
    # on SIGUSR1 (sent by the parent when the run times out), write where this rank is stuck
    stacks = open(os.path.join(os.path.dirname(store_path), f"stack-{rank}.txt"), "w")  # noqa: SIM115 (open until exit)
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=False)
    joined = False
    try:
        dist.init_process_group(backend, store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size)
        joined = True
        value = fn(rank, world_size, *args)
        # as bytes: a tensor put on the queue as is would be shared through a file descriptor
        # that is gone once this process has ended
        buffer = io.BytesIO()
        torch.save(value, buffer)
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # noqa: BLE001  (sent to the parent, which names the rank) before the group is left
        results.put((rank, "error", traceback.format_exc()[-4000:]))
    finally:
        if joined:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    results.close()
    results.join_thread()  # the message is out of this process
    os._exit(0)  # past the interpreter's teardown, where gloo's threads sometimes abort


def run_workers(fn, world_size: int, *args, timeout: float = 120.0, backend: str = "gloo") -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined in one process group.

    ``backend`` is ``"gloo"`` (CPU tensors, the default, whatever the machine has) or ``"nccl"``
    (CUDA tensors, one GPU per rank: ``fn`` puts rank r's tensors on ``cuda:r``).

    ``fn`` must be importable (defined in a module, not in a notebook cell). The group meets
    through a file store in a fresh temporary folder (never a fixed port). Returns the
    ``world_size`` results, in rank order. A worker that raises, dies or does not finish
    within ``timeout`` seconds ends the run: every worker is stopped and :class:`WorkerError`
    names the rank, with its traceback, its exit status, or where each rank was stuck.
    No process is left behind.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="course-dist-") as folder:
        store = os.path.join(folder, "store")
        procs = [context.Process(target=_worker, args=(r, world_size, store, fn, args, results, backend), daemon=True)
                 for r in range(world_size)]
        for proc in procs:
            proc.start()
        got, errors = {}, {}
        deadline = time.monotonic() + timeout
        try:
            while len(got) < world_size and not errors:
                try:
                    rank, status, value = results.get(timeout=0.2)
                except queue.Empty:
                    if any(p.exitcode is not None and r not in got for r, p in enumerate(procs)) or time.monotonic() > deadline:
                        break
                    continue
                (got if status == "ok" else errors)[rank] = value
            if len(got) < world_size:  # something went wrong: ask where the others are, give them a moment to report
                for rank, proc in enumerate(procs):
                    if proc.is_alive() and rank not in got and rank not in errors:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(proc.pid, signal.SIGUSR1)
                time.sleep(1)
                with contextlib.suppress(queue.Empty):
                    while True:
                        rank, status, value = results.get_nowait()
                        (got if status == "ok" else errors)[rank] = value
        finally:
            for proc in procs:
                proc.join(timeout=2 if len(got) == world_size else 0)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            results.close()
        if len(got) == world_size:
            return [torch.load(io.BytesIO(got[r]), weights_only=False) for r in range(world_size)]  # our own workers
        where = {}
        for rank in range(world_size):
            with contextlib.suppress(OSError):
                with open(os.path.join(folder, f"stack-{rank}.txt")) as f:
                    frames = [ln.strip() for ln in f if ln.strip().startswith("File")]
                if frames:
                    where[rank] = frames[0]  # faulthandler lists the innermost frame first
        raise WorkerError(_what_failed(procs, got, errors, timeout, where))


@dataclass
class _Forked:
    pid: int
    exitcode: int | None = None


def _loopback() -> None:
    """Let gloo talk over the loopback interface (a sandbox's network namespace has nothing else)."""
    if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"


def _forked_rank(rank: int, world_size: int, store_path: str, fn, args, write_fd: int) -> None:
    """The child's side of :func:`run_forked`: join the group, run ``fn``, send the outcome, leave at once."""
    printed = io.StringIO()
    joined = False
    try:
        _loopback()
        dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size)
        joined = True
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            value = fn(rank, world_size, *args)
        outcome = ("ok", value, printed.getvalue())
    except BaseException:  # noqa: BLE001  (sent to the parent, which names the rank)
        outcome = ("error", traceback.format_exc()[-4000:], printed.getvalue())
    buffer = io.BytesIO()
    try:
        torch.save(outcome, buffer)
    except Exception as err:  # noqa: BLE001  (what fn returned cannot be sent)
        buffer = io.BytesIO()
        torch.save(("error", f"rank {rank} returned what cannot be sent back: {type(err).__name__}: {err}", ""), buffer)
    with open(write_fd, "wb") as pipe:
        pipe.write(buffer.getvalue())
    if joined:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    os._exit(0)


def run_forked(fn, world_size: int, *args, timeout: float = 60.0) -> list:
    """Like :func:`run_workers`, but the workers are copies of this process (``fork``), Linux and macOS only.

    ``fn(rank, world_size, *args)`` may be any function, one defined in a notebook cell
    included (a spawned worker would have to import it), and the workers start in
    milliseconds, not seconds: this is how the lesson's checks run a learner's function on
    real ranks. Gloo only. What a worker prints comes back with its result. A worker that
    raises, dies or does not finish within ``timeout`` seconds (a collective that some rank
    never called waits forever) ends the run with :class:`WorkerError`, which names the rank;
    every worker is stopped.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not hasattr(os, "fork"):
        raise RuntimeError("run_forked needs os.fork (Linux or macOS); use run_workers")
    with tempfile.TemporaryDirectory(prefix="course-forked-") as folder:
        store = os.path.join(folder, "store")
        children, pipes = [], {}
        for rank in range(world_size):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker
                os.close(read_fd)
                for other in pipes:
                    os.close(other)
                try:
                    _forked_rank(rank, world_size, store, fn, args, write_fd)
                finally:
                    os._exit(1)
            os.close(write_fd)
            children.append(_Forked(pid))
            pipes[read_fd] = (rank, bytearray())
        got, errors, printed = {}, {}, {}
        deadline = time.monotonic() + timeout
        try:
            open_fds = set(pipes)
            while open_fds and time.monotonic() < deadline:
                ready, _, _ = select.select(list(open_fds), [], [], min(0.2, max(0.0, deadline - time.monotonic())))
                for fd in ready:
                    chunk = os.read(fd, 1 << 20)
                    if chunk:
                        pipes[fd][1].extend(chunk)
                        continue
                    open_fds.discard(fd)
                    rank, data = pipes[fd]
                    if data:
                        status, value, text = torch.load(io.BytesIO(bytes(data)), weights_only=False)  # our own workers
                        printed[rank] = text
                        (got if status == "ok" else errors)[rank] = value
                if errors:
                    break
        finally:
            for child in children:
                done, status = os.waitpid(child.pid, os.WNOHANG)
                if not done and len(got) < world_size:  # a failed run: the others may wait forever in a collective
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
                if not done:
                    _, status = os.waitpid(child.pid, 0)
                child.exitcode = os.waitstatus_to_exitcode(status)
            for fd in pipes:
                os.close(fd)
        for rank in sorted(printed):
            if printed[rank]:
                print(f"[rank {rank}] " + printed[rank].rstrip().replace("\n", f"\n[rank {rank}] "))
        if len(got) == world_size:
            return [got[r] for r in range(world_size)]
        raise WorkerError(_what_failed(children, got, errors, timeout, {}))


def _what_failed(procs, got: dict, errors: dict, timeout: float, where: dict) -> str:
    """The cause first (a rank that died, or the first that raised, or the ones that never finished), then the rest."""
    died = [r for r, p in enumerate(procs) if r not in got and r not in errors and p.exitcode not in (None, 0, -9)]
    if died:
        lines = [f"rank {r} died (exit code {procs[r].exitcode}) without a result" for r in died]
    elif errors:
        first = next(iter(errors))
        lines = [f"rank {first} raised:\n{errors[first]}"]
    else:
        missing = [r for r in range(len(procs)) if r not in got]
        lines = [f"rank(s) {missing} did not finish within {timeout:g} s; where each was:"]
        lines += [f"  rank {r}: {where.get(r, 'unknown')}" for r in missing]
    for rank, text in errors.items():
        if not lines[0].startswith(f"rank {rank} raised"):
            lines.append(f"then rank {rank} failed too: {text.strip().splitlines()[-1][:200]}")
    return "\n".join(lines)


def misbehave(rank: int, world_size: int, how: str, bad_rank: int = 1) -> int:
    """A worker for showing what :func:`run_workers` does when one rank fails: ``how`` is "raise", "die" or "hang".

    Every other rank waits at a barrier for the bad one, as a real training step would.
    """
    if rank == bad_rank:
        if how == "raise":
            raise RuntimeError(f"rank {rank} ran out of data")
        if how == "die":
            os._exit(7)
        if how == "hang":
            time.sleep(3600)
    dist.barrier()
    return rank


# =========================================================================== a ring all-reduce, simulated


def ring_all_reduce(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """Sum ``tensors`` (one per rank, same shape and dtype) as a ring all-reduce does, in one process.

    Each rank's tensor is cut into N chunks (the last ones shorter when N does not divide it).
    Reduce-scatter: in each of N-1 steps every rank sends one chunk to the next rank, which adds
    it to its own; then rank r holds the full sum of chunk (r+1) mod N. All-gather: in N-1 more
    steps the summed chunks travel round the ring. Returns (every rank's result, the bytes each
    rank sent): about 2(N-1)/N of the tensor's bytes per rank, whatever N is.
    """
    if not tensors:
        raise ValueError("ring_all_reduce expects one tensor per rank, got none")
    first = tensors[0]
    if any(t.shape != first.shape or t.dtype != first.dtype for t in tensors):
        raise ValueError("ring_all_reduce expects tensors of one shape and dtype, got "
                         f"{[(tuple(t.shape), t.dtype) for t in tensors]}")
    n = len(tensors)
    chunks = [list(t.reshape(-1).clone().tensor_split(n)) for t in tensors]
    sent = [0] * n
    for step in range(n - 1):  # reduce-scatter
        outgoing = [(r, (r - step) % n, chunks[r][(r - step) % n].clone()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] += data
            sent[r] += data.numel() * data.element_size()
    for step in range(n - 1):  # all-gather
        outgoing = [(r, (r + 1 - step) % n, chunks[r][(r + 1 - step) % n].clone()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] = data
            sent[r] += data.numel() * data.element_size()
    return [torch.cat(c).view_as(first) for c in chunks], sent


# =========================================================================== collectives, counted


def _reduce_scatter(out: torch.Tensor, inp: torch.Tensor) -> None:
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, inp)


def _all_gather(out: torch.Tensor, inp: torch.Tensor) -> None:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp)


@dataclass
class Comm:
    """The collectives a strategy uses, each call logged with the bytes this rank sends in a ring.

    A ring reduce-scatter or all-gather of a buffer of S bytes over N ranks sends
    ``(N-1)/N * S`` bytes from each rank; an all-reduce is both, ``2(N-1)/N * S``.
    """

    world_size: int
    calls: list[tuple[str, int]] = field(default_factory=list)  # (operation, bytes of the full buffer)

    def sent(self, op: str, nbytes: int) -> float:
        share = (self.world_size - 1) / self.world_size
        return (2 if op == "all_reduce" else 1) * share * nbytes

    @property
    def bytes_sent(self) -> float:
        return sum(self.sent(op, n) for op, n in self.calls)

    def all_reduce(self, t: torch.Tensor, async_op: bool = False):
        self.calls.append(("all_reduce", t.numel() * t.element_size()))
        return dist.all_reduce(t, async_op=async_op)

    def reduce_scatter(self, out: torch.Tensor, inp: torch.Tensor) -> None:
        self.calls.append(("reduce_scatter", inp.numel() * inp.element_size()))
        _reduce_scatter(out, inp)

    def all_gather(self, out: torch.Tensor, inp: torch.Tensor) -> None:
        self.calls.append(("all_gather", out.numel() * out.element_size()))
        _all_gather(out, inp)


# =========================================================================== a flat, padded parameter buffer


def padded_size(numel: int, world_size: int) -> int:
    """``numel`` rounded up to a multiple of ``world_size``, so that every rank's shard has the same length."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be a non-negative int, got {numel!r}")
    return math.ceil(numel / world_size) * world_size


def shard(flat: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s piece of the 1-D tensor ``flat``, zero-padded to ``padded_size`` first: shape (padded/N,)."""
    if flat.dim() != 1:
        raise ValueError(f"shard expects a 1-D tensor, got shape {tuple(flat.shape)}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    size = padded_size(flat.numel(), world_size) // world_size
    padded = torch.cat([flat, flat.new_zeros(padded_size(flat.numel(), world_size) - flat.numel())])
    return padded[rank * size:(rank + 1) * size].clone()


def unshard(shards: list[torch.Tensor], numel: int) -> torch.Tensor:
    """The 1-D tensor of ``numel`` elements that :func:`shard` cut into ``shards`` (padding dropped)."""
    if not shards or any(t.dim() != 1 or t.numel() != shards[0].numel() for t in shards):
        raise ValueError(f"unshard expects 1-D shards of one length, got shapes {[tuple(t.shape) for t in shards]}")
    if numel > len(shards) * shards[0].numel():
        raise ValueError(f"{len(shards)} shards of {shards[0].numel()} hold fewer than numel = {numel} elements")
    return torch.cat(shards)[:numel]


class FlatParams:
    """All parameters of ``model`` as views into one flat, padded buffer (what ZeRO and FSDP shard)."""

    def __init__(self, model: nn.Module, world_size: int):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in self.params)
        self.world_size = world_size
        self.shard_size = padded_size(self.numel, world_size) // world_size
        first = self.params[0]
        self.flat = torch.zeros(self.shard_size * world_size, dtype=first.dtype, device=first.device)
        offset = 0
        with torch.no_grad():
            for p in self.params:
                self.flat[offset:offset + p.numel()].copy_(p.reshape(-1))
                p.data = self.flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()

    def local(self, rank: int) -> slice:
        return slice(rank * self.shard_size, (rank + 1) * self.shard_size)

    def flat_grad(self) -> torch.Tensor:
        """The parameters' gradients as one flat, padded buffer (zeros where a parameter got none)."""
        parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in self.params]
        pad = self.flat.numel() - self.numel
        return torch.cat(parts + [self.flat.new_zeros(pad)])

    def free(self) -> None:
        """Drop the full buffer's memory (the parameters' views stay, pointing at nothing until :meth:`gather`)."""
        self.flat.untyped_storage().resize_(0)

    def gather(self, comm: Comm, local: torch.Tensor) -> None:
        """Fill the full buffer again from every rank's shard (all-gather)."""
        storage = self.flat.untyped_storage()
        if storage.size() == 0:
            storage.resize_(self.flat.numel() * self.flat.element_size())
        comm.all_gather(self.flat, local)


# =========================================================================== training


@dataclass
class Result:
    """What one rank ends with: the trained weights (full), losses, bytes stored and sent."""

    state: dict
    losses: list[float]
    bytes_sent: float
    stored: dict  # "parameters", "gradients", "optimizer" -> bytes this rank holds after the last step
    seconds: float = 0.0  # wall time of the training steps on this rank


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` on this rank (lesson 03's count; a DTensor counts its own piece)."""
    from course_lib.memory import unique_storage_bytes

    return unique_storage_bytes(getattr(t, "_local_tensor", t) for t in tensors)


def _optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    return _storage_bytes(v for state in optimizer.state.values() for v in state.values()
                          if isinstance(v, torch.Tensor) and v.dim() > 0)


def local_batch(batch: tuple[torch.Tensor, torch.Tensor], rank: int, world_size: int):
    """Rank ``rank``'s rows of the global ``batch`` ``(x, y)``: the ``rank``-th of ``world_size`` equal, contiguous parts."""
    x, y = batch
    if x.shape[0] % world_size:
        raise ValueError(f"the global batch ({x.shape[0]}) must split evenly over {world_size} ranks")
    size = x.shape[0] // world_size
    return x[rank * size:(rank + 1) * size], y[rank * size:(rank + 1) * size]


def train(rank: int, world_size: int, strategy: str, make_model, batches, lr: float = 1e-2,
          bucket_bytes: int = 1 << 16, device: str | torch.device = "cpu") -> Result:
    """Train ``make_model()`` on ``batches`` (a list of global ``(x, y)`` batches) with Adam and ``strategy``.

    Runs in a worker of :func:`run_workers` (or alone, for ``"single"``). Each rank takes its
    slice of every global batch; the loss is the model's mean loss over the slice, and the
    gradients are averaged over ranks, so the result equals one process on the global batch.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    torch.manual_seed(0)
    model = make_model().to(device)
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    comm = Comm(world_size)
    losses = []
    start = time.perf_counter()
    if strategy in ("single", "dp", "ddp"):
        net = model
        if strategy == "ddp":
            net = nn.parallel.DistributedDataParallel(model)
            net.register_comm_hook(comm, _counted_all_reduce)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        buckets = _Buckets(model, comm, bucket_bytes) if strategy == "dp" else None
        for batch in batches:
            x, y = batch if strategy == "single" else local_batch(batch, rank, world_size)
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(net, x, y)
            loss.backward()
            if buckets is not None:
                buckets.finish()
            optimizer.step()
            losses.append(_global_mean(loss, world_size, strategy))
        stored = {"parameters": _storage_bytes(model.parameters()),
                  "gradients": _storage_bytes(p.grad for p in model.parameters()),
                  "optimizer": _optimizer_bytes(optimizer)}
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    elif strategy in ("zero1", "zero2", "zero3"):
        state, losses, stored = _train_zero(rank, world_size, int(strategy[-1]), model, batches, lr, comm)
    else:
        state, losses, stored = _train_fsdp2(rank, world_size, model, batches, lr, comm)
    return Result(state, losses, comm.bytes_sent, stored, time.perf_counter() - start)


def _counted_all_reduce(comm: Comm, bucket):  # no return annotation: DDP checks it, and they are strings here
    """DDP's communication hook: its own all-reduce of each gradient bucket, averaged, logged in ``comm``."""
    buffer = bucket.buffer()
    buffer.div_(comm.world_size)
    return comm.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])


def tiny_mlp(d_in: int = 6, d_hidden: int = 10, d_out: int = 3) -> nn.Module:
    """A two-layer float64 MLP: the model the strategies are compared on (its parameter count, 103, is odd on purpose)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, d_out)).double()


def toy_batches(steps: int = 3, batch: int = 8, d_in: int = 6, d_out: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global batches of a fixed regression problem, float64."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, d_in, generator=g, dtype=torch.float64),
             torch.randn(batch, d_out, generator=g, dtype=torch.float64)) for _ in range(steps)]


def course_model() -> nn.Module:
    """The course's small pretrained decoder (lesson 02), in float64 so that strategies can be compared exactly."""
    from course_lib.models import load_pretrained

    return load_pretrained("course-lm-small").double()


def lm_batches(steps: int = 2, batch: int = 4, length: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global batches of (input ids, next-token targets) cut from the course's corpus, (batch, length) each."""
    from course_lib.data import build_corpus
    from course_lib.tokenizer import course_tokenizer

    text = "\n".join(build_corpus(seed).heldout_texts[:200])
    ids = torch.tensor(course_tokenizer().encode(text), dtype=torch.long)
    need = steps * batch * (length + 1)
    if ids.numel() < need:
        raise ValueError(f"the corpus gives {ids.numel()} tokens, fewer than the {need} asked for")
    rows = ids[:need].view(steps, batch, length + 1)
    return [(row[:, :-1].contiguous(), row[:, 1:].contiguous()) for row in rows]


def compare_strategies(rank: int, world_size: int, strategies, make_model, batches) -> dict:
    """In a worker: train with each of ``strategies`` in turn; strategy -> :class:`Result`."""
    return {name: train(rank, world_size, name, make_model, batches) for name in strategies}


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if out.dim() == 3:  # a language model: next-token loss over (batch, length, vocab)
        return nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())
    return nn.functional.mse_loss(out, y)


def _global_mean(loss: torch.Tensor, world_size: int, strategy: str) -> float:
    value = loss.detach().clone()
    if strategy != "single" and world_size > 1:
        dist.all_reduce(value)
        value /= world_size
    return float(value)


class _Buckets:
    """Gradient hooks that all-reduce gradients in buckets as soon as a bucket is full (overlapping backward)."""

    def __init__(self, model: nn.Module, comm: Comm, bucket_bytes: int):
        self.comm, self.bucket_bytes = comm, bucket_bytes
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.pending: list[nn.Parameter] = []
        self.launched: list[tuple[object, torch.Tensor, list[nn.Parameter]]] = []
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._ready)

    def _ready(self, p: nn.Parameter) -> None:
        self.pending.append(p)
        if sum(q.grad.numel() * q.grad.element_size() for q in self.pending) >= self.bucket_bytes:
            self._launch()

    def _launch(self) -> None:
        if not self.pending:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in self.pending])
        handle = self.comm.all_reduce(flat, async_op=True)
        self.launched.append((handle, flat, self.pending))
        self.pending = []

    def finish(self) -> None:
        """After backward: send the last bucket, wait for all, and put the averaged gradients back."""
        self._launch()
        for handle, flat, params in self.launched:
            handle.wait()
            flat /= self.comm.world_size
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        self.launched = []


def _train_zero(rank, world_size, stage, model, batches, lr, comm):
    """ZeRO stage 1, 2 or 3 over a flat, padded buffer; returns (full state, losses, bytes stored)."""
    flat = FlatParams(model, world_size)
    local = flat.flat[flat.local(rank)].clone()  # this rank's shard of the parameters: what its optimizer updates
    optimizer = torch.optim.Adam([local], lr=lr)
    losses = []
    grad_shard = None
    if stage == 3:
        flat.free()
    for batch in batches:
        x, y = local_batch(batch, rank, world_size)
        if stage == 3:
            flat.gather(comm, local)  # parameters for the forward pass
        for p in flat.params:
            p.grad = None
        loss = _loss(model, x, y)
        if stage == 3:
            flat.free()
            flat.gather(comm, local)  # again for the backward pass (a real FSDP frees each layer after its forward)
        loss.backward()
        grads = flat.flat_grad()
        grad_shard = torch.empty_like(local)
        comm.reduce_scatter(grad_shard, grads)  # each rank receives the sum of its shard's gradients
        if stage >= 2:  # stage 1 keeps the full gradients (it shards only the optimizer's states)
            for p in flat.params:
                p.grad = None
        del grads
        grad_shard /= world_size
        local.grad = grad_shard
        optimizer.step()
        if stage == 3:
            flat.free()
        else:
            flat.gather(comm, local)  # everyone's updated shards
        losses.append(_global_mean(loss.detach(), world_size, "zero"))
    stored = {"parameters": _storage_bytes([flat.flat]) + _storage_bytes([local]),
              "gradients": _storage_bytes([p.grad for p in flat.params] + [grad_shard]),
              "optimizer": _optimizer_bytes(optimizer)}
    if stage == 3:
        flat.gather(comm, local)
        comm.calls.pop()  # gathering the weights to return them is not part of training
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, losses, stored


@contextlib.contextmanager
def counted_collectives(comm: Comm):
    """Log in ``comm`` every all-gather, reduce-scatter and all-reduce that ``torch.distributed`` makes meanwhile.

    FSDP2 calls them through the ``torch.distributed`` module, so they can be counted where
    they are made, as :class:`Comm` counts the course's own.
    """
    sizes = {"all_gather_single": ("all_gather", 0), "all_gather_into_tensor": ("all_gather", 0),
             "reduce_scatter_single": ("reduce_scatter", 1), "reduce_scatter_tensor": ("reduce_scatter", 1),
             "all_reduce": ("all_reduce", 0)}
    saved = {name: getattr(dist, name) for name in sizes if hasattr(dist, name)}

    def counting(name):
        op, which = sizes[name]

        def counted(*args, **kwargs):
            names = ("output_tensor", "output", "tensor") if which == 0 else ("input_tensor", "input")
            t = args[which] if len(args) > which else next(kwargs[n] for n in names if n in kwargs)
            comm.calls.append((op, t.numel() * t.element_size()))
            return saved[name](*args, **kwargs)
        return counted

    for name in saved:
        setattr(dist, name, counting(name))
    try:
        yield comm
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


def _train_fsdp2(rank, world_size, model, batches, lr, comm):
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules())[1:]:
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for batch in batches:
        x, y = local_batch(batch, rank, world_size)
        optimizer.zero_grad(set_to_none=True)
        with counted_collectives(comm):
            loss = _loss(model, x, y)
            loss.backward()
            optimizer.step()
        losses.append(_global_mean(loss.detach(), world_size, "fsdp2"))
    stored = {"parameters": _storage_bytes(model.parameters()),
              "gradients": _storage_bytes(p.grad for p in model.parameters()),
              "optimizer": _optimizer_bytes(optimizer)}
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, losses, stored


# =========================================================================== beyond data parallelism: tensor parallelism


def megatron_mlp(rank: int, world_size: int, mlp: nn.Sequential, x: torch.Tensor, comm: Comm) -> torch.Tensor:
    """One MLP block (Linear, activation, Linear) split over ranks as Megatron-LM does, from scratch.

    The first linear layer is split by its output features (column-parallel): each rank
    computes its own slice of the hidden activations, and the element-wise activation needs
    no communication. The second is split by its input features (row-parallel): each rank's
    slice of the hidden layer gives a partial output; one all-reduce sums them, and the bias
    is added once. ``mlp``: the full block (every rank holds it here, to cut its own slices);
    ``x``: (..., d_model), the same on every rank. Returns (..., d_model), equal to ``mlp(x)``.
    """
    first, act, second = mlp[0], mlp[1], mlp[2]
    hidden = first.out_features
    if hidden % world_size:
        raise ValueError(f"the hidden size ({hidden}) must split evenly over {world_size} ranks")
    cols = slice(rank * hidden // world_size, (rank + 1) * hidden // world_size)
    h = act(nn.functional.linear(x, first.weight[cols], first.bias[cols]))  # (..., hidden/N): this rank's columns
    partial = nn.functional.linear(h, second.weight[:, cols])  # (..., d_model): this rank's share of the sum
    comm.all_reduce(partial)
    return partial + second.bias


def compare_tensor_parallel(rank: int, world_size: int) -> dict:
    """In a worker: the Megatron MLP from scratch and with ``torch.distributed.tensor.parallel``, against one process."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 6)).double()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = mlp(x)
        comm = Comm(world_size)
        scratch = megatron_mlp(rank, world_size, mlp, x, comm)
        mesh = init_device_mesh("cpu", (world_size,))
        parallelize_module(mlp, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
        real = mlp(x)
        real = real.full_tensor() if hasattr(real, "full_tensor") else real
    return {"scratch": (scratch - want).abs().max().item(), "torch": (real - want).abs().max().item(),
            "bytes_sent": comm.bytes_sent, "output_bytes": want.numel() * want.element_size()}


# =========================================================================== the ZeRO paper's formulas


def zero_bytes_per_rank(n_params: float, world_size: int, stage: int, k: int = 12, weight_bytes: int = 2,
                        grad_bytes: int = 2) -> float:
    """Model-state bytes per GPU in ZeRO stage 0 (plain DP) to 3, for mixed-precision Adam by default.

    Ψ = ``n_params``; fp16 weights and gradients (2 bytes each) and K = 12 bytes of optimizer
    state (fp32 master weights, momentum, variance). Stage 0: (2+2+K)Ψ = 16Ψ; stage 1:
    4Ψ + KΨ/N; stage 2: 2Ψ + (2+K)Ψ/N; stage 3: (2+2+K)Ψ/N.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    w, g, o, n = weight_bytes * n_params, grad_bytes * n_params, k * n_params, world_size
    return (w + g + o, w + g + o / n, w + (g + o) / n, (w + g + o) / n)[stage]


# =========================================================================== torchrun's entry point


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m course_lib.distributed``: train the toy model with one strategy, print what rank 0 measured.

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the group uses
    NCCL on GPUs (one per process, by LOCAL_RANK) and gloo on CPUs.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="torchrun ... -m course_lib.distributed")
    parser.add_argument("--strategy", choices=[s for s in STRATEGIES if s != "single"], default="ddp")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        parser.error("start it with torchrun (which sets RANK and WORLD_SIZE), or call run_workers from Python")
    cuda = torch.cuda.is_available() and os.environ.get("COURSE_DEVICE") != "cpu"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        batch = 8 * world_size
        result = train(rank, world_size, args.strategy, tiny_mlp, toy_batches(args.steps, batch), device=device)
        if rank == 0:
            print(json.dumps({"strategy": args.strategy, "world_size": world_size, "backend": dist.get_backend(),
                              "losses": result.losses, "bytes_sent": result.bytes_sent, "stored": result.stored}))
        dist.barrier()  # no rank leaves while another still talks to it
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip the interpreter's teardown: gloo's threads sometimes abort it ("terminate called
    # without an active exception") after all the work is done
    os._exit(code)
