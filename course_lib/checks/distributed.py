"""Checks for the exercises of lesson 07 (distributed training).

Each ``check_*`` function takes the learner's function, calls it on fresh random inputs and
on edge cases, compares what comes back with the reference in :mod:`course_lib.distributed`
(or, for the capstone, with the gradients ``DistributedDataParallel`` computes), and raises
``AssertionError`` with an explanation when something is off. ``seed`` reproduces a failing run.

The capstone, :func:`check_average_gradients`, runs the learner's function where it is meant
to run: on every rank of a real process group (gloo) of worker processes.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.distributed as dist
from torch import nn

from course_lib import distributed as ref
from course_lib.checks.common import call, call_explained, expect_int, expect_same_device, expect_tensor, new_generator, randint
from course_lib.checks.guard import Rules, watched

RING_ALL_REDUCE = Rules(
    "ring_all_reduce", references=("course_lib.distributed:ring_all_reduce",),
    modules=("course_lib.distributed", "torch.distributed"),
    why="The exercise is to move the chunks round the ring yourself, in one process, without torch.distributed.",
)
SHARD = Rules(
    "shard", references=("course_lib.distributed:shard", "course_lib.distributed:unshard", "course_lib.distributed:FlatParams"),
    modules=("course_lib.distributed", "torch.distributed"),
    why="The exercise is to pad and cut the flat buffer yourself.",
)
ZERO_MEMORY_PER_GPU = Rules(
    "zero_memory_per_gpu", references=("course_lib.distributed:zero_bytes_per_rank",),
    modules=("course_lib.distributed", "course_lib.memory"),
    why="The exercise is to write the ZeRO formulas yourself.",
)
AVERAGE_GRADIENTS = Rules(
    "average_gradients", modules=("course_lib.distributed", "torch.nn.parallel", "torch.distributed.fsdp"),
    why="The exercise is to average the gradients with torch.distributed's collectives yourself, not with DDP or FSDP.",
)

RANK_TIMEOUT = 30.0  # seconds a rank may take (a collective that another rank never calls waits until then)
_ANY_LAYOUT = "; an input may be a non-contiguous view: use reshape (not view), or .contiguous() first"
_BY_KEYWORD = "; keep the parameter names of the signature in the docstring"


def _integers(gen: torch.Generator, shape, dtype: torch.dtype) -> torch.Tensor:
    """Whole numbers in [-50, 50]: their sums are exact in every dtype, whatever the order of the additions."""
    return torch.randint(-50, 51, tuple(shape), generator=gen).to(dtype)


# --------------------------------------------------------------------------- ring_all_reduce


def _unpack_ring(result, n: int, what: str):
    if not isinstance(result, tuple) or len(result) != 2:
        got = type(result).__name__ + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        raise AssertionError(f"{what} should return a tuple (results, bytes_sent), got {got}")
    results, sent = result
    for name, part in (("results", results), ("bytes_sent", sent)):
        if not isinstance(part, (list, tuple)) or len(part) != n:
            got = type(part).__name__ + (f" of length {len(part)}" if isinstance(part, (tuple, list)) else "")
            raise AssertionError(f"{what}: {name} should be a list with one entry per rank ({n}), got {got}")
    return results, sent


def _ring_hint(sent, tensors) -> str:
    """A hint when the bytes equal what a common mistake counts, else ''."""
    n, first = len(tensors), tensors[0]
    size, numel = first.numel() * first.element_size(), first.numel()
    if n > 1 and list(sent) == [(n - 1) * size] * n:
        return ("\nHint: every rank sent its whole tensor to each of the others (a naive all-reduce); in a ring each "
                "rank sends one chunk per step, 2(N-1) chunks in all.")
    expected = ref.ring_all_reduce([t.clone() for t in tensors])[1]
    if first.element_size() > 1 and list(sent) == [b // first.element_size() for b in expected]:
        return "\nHint: that is the number of elements sent; count bytes (numel * element_size())."
    if numel and list(sent) == [round(2 * (n - 1) / n * size)] * n:
        return ("\nHint: 2(N-1)/N of the tensor is the average; count the chunks each rank really sends "
                "(tensor_split makes the first ones longer when N does not divide the size).")
    return ""


def _expect_ring(got, tensors: list[torch.Tensor], what: str) -> None:
    results, sent = _unpack_ring(got, len(tensors), what)
    expected_results, expected_sent = ref.ring_all_reduce([t.clone() for t in tensors])
    for rank, (g, e) in enumerate(zip(results, expected_results)):
        expect_tensor(g, e, f"results[{rank}] of {what} (the elementwise sum of every rank's tensor)", atol=0, rtol=0)
    for rank, (g, e) in enumerate(zip(sent, expected_sent)):
        try:
            expect_int(g, e, f"bytes_sent[{rank}] of {what}")
        except AssertionError as err:
            raise AssertionError(str(err) + _ring_hint(sent, tensors)) from None


def check_ring_all_reduce(ring_all_reduce, seed: int | None = None, n_cases: int = 12) -> None:
    """``ring_all_reduce(tensors) -> (results, bytes_sent)`` for 1 to 7 ranks, exact sums and exact byte counts.

    Also: sizes that N does not divide (uneven chunks), fewer elements than ranks (empty
    chunks), an empty tensor, integer dtypes, non-contiguous tensors, the inputs left as they were.
    """
    ring_all_reduce = watched(ring_all_reduce, RING_ALL_REDUCE)
    gen, seed = new_generator(seed)
    # always: one rank, a size N divides, one it does not, fewer elements than ranks, an empty tensor
    cases = [(1, (5,), torch.float32), (4, (2, 4), torch.float64), (3, (10,), torch.float32), (5, (3,), torch.int64),
             (2, (0,), torch.float32), (7, (3, 5), torch.float64)]
    dtypes = (torch.float32, torch.float64, torch.int64, torch.int32)
    cases += [(randint(gen, 1, 7), tuple(randint(gen, 0, 7) for _ in range(randint(gen, 1, 3))), dtypes[randint(gen, 0, 3)])
              for _ in range(n_cases)]
    for n, shape, dtype in cases:
        tensors = [_integers(gen, shape, dtype) for _ in range(n)]
        what = f"ring_all_reduce of {n} tensor(s) of shape {shape} and dtype {dtype} (seed {seed})"
        _expect_ring(call_explained(ring_all_reduce, tensors, what=what), tensors, what)
    n = randint(gen, 2, 5)
    tensors = [_integers(gen, (5, 3), torch.float32).t() for _ in range(n)]  # (3, 5), not contiguous
    what = f"ring_all_reduce of {n} non-contiguous tensors of shape (3, 5) (transposed) (seed {seed})"
    _expect_ring(call_explained(ring_all_reduce, tensors, what=what, hint=_ANY_LAYOUT), tensors, what)
    what = f"ring_all_reduce(tensors=...) called by keyword, {n} tensors (seed {seed})"
    _expect_ring(call_explained(ring_all_reduce, what=what, hint=_BY_KEYWORD, tensors=tensors), tensors, what)


# --------------------------------------------------------------------------- shard and unshard


def _flat(gen: torch.Generator, numel: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(numel, generator=gen, dtype=torch.float64).to(dtype) if dtype.is_floating_point else \
        torch.randint(-100, 101, (numel,), generator=gen).to(dtype)


def _shard_hint(got, flat: torch.Tensor, rank: int, world_size: int) -> str:
    if type(got) is not torch.Tensor or got.dim() != 1:
        return ""
    size = math.ceil(flat.numel() / world_size)
    if got.numel() == size and got.numel() and torch.equal(got, flat[rank::world_size][: got.numel()]) and world_size > 1:
        return "\nHint: rank r holds one contiguous block [r*size, (r+1)*size) of the padded buffer, not every N-th element."
    if got.numel() != size:
        return (f"\nHint: pad the buffer with zeros to ceil(numel / world_size) * world_size = {size * world_size} elements "
                f"first, so that every rank's shard has {size} elements (the last ones may be all padding).")
    return ""


def check_shard(shard, seed: int | None = None, n_cases: int = 12) -> None:
    """``shard(flat, rank, world_size)``: rank's block of the zero-padded buffer, shape ``(ceil(numel/N),)``, every rank.

    Also: numel 0, fewer elements than ranks (all-padding shards), one rank, integer and
    half-precision dtypes, a non-contiguous buffer, a call by keyword, the input left as it was
    and its device kept (meta stands in for a GPU).
    """
    shard = watched(shard, SHARD)
    gen, seed = new_generator(seed)
    cases = [(10, 3, torch.float32), (12, 4, torch.float64), (3, 5, torch.float32), (0, 2, torch.float32), (7, 1, torch.int64)]
    dtypes = (torch.float32, torch.float64, torch.int64, torch.bfloat16)
    cases += [(randint(gen, 0, 60), randint(gen, 1, 8), dtypes[randint(gen, 0, 3)]) for _ in range(n_cases)]
    for numel, n, dtype in cases:
        flat = _flat(gen, numel, dtype)
        for rank in range(n):
            what = f"shard(flat, rank={rank}, world_size={n}) for a flat buffer of {numel} elements, {dtype} (seed {seed})"
            got = call_explained(shard, flat, rank, n, what=what)
            try:
                expect_tensor(got, ref.shard(flat, rank, n), what, atol=0, rtol=0)
            except AssertionError as err:
                raise AssertionError(str(err) + _shard_hint(got, flat, rank, n)) from None
    numel, n = randint(gen, 5, 30), randint(gen, 2, 4)
    flat = _flat(gen, 2 * numel, torch.float32)[::2]
    for rank in range(n):
        what = f"shard(flat, {rank}, {n}) for a non-contiguous flat buffer (every other element of a longer one) (seed {seed})"
        expect_tensor(call_explained(shard, flat, rank, n, what=what, hint=_ANY_LAYOUT), ref.shard(flat, rank, n), what, atol=0, rtol=0)
    what = f"shard(flat=flat, rank={n - 1}, world_size={n}) called by keyword (seed {seed})"
    expect_tensor(call_explained(shard, what=what, hint=_BY_KEYWORD, flat=flat, rank=n - 1, world_size=n),
                  ref.shard(flat, n - 1, n), what, atol=0, rtol=0)
    what = f"shard(flat, {n - 1}, {n}) for a flat buffer of {flat.numel()} elements on the meta device (standing in for a GPU)"
    expect_same_device(shard, flat.contiguous(), n - 1, n, what=what)


def check_unshard(unshard, seed: int | None = None, n_cases: int = 12) -> None:
    """``unshard(shards, numel)``: the flat buffer back, padding dropped, for shards :func:`check_shard` describes.

    The padding need not be zero (an optimizer step may have written to it); also numel 0, one
    rank, integer dtypes, a call by keyword, the shards left as they were.
    """
    unshard = watched(unshard, SHARD)
    gen, seed = new_generator(seed)
    cases = [(10, 3, torch.float32), (12, 4, torch.float64), (3, 5, torch.float32), (0, 2, torch.float32), (7, 1, torch.int64)]
    dtypes = (torch.float32, torch.float64, torch.int64, torch.bfloat16)
    cases += [(randint(gen, 0, 60), randint(gen, 1, 8), dtypes[randint(gen, 0, 3)]) for _ in range(n_cases)]
    for i, (numel, n, dtype) in enumerate(cases):
        flat = _flat(gen, numel, dtype)
        shards = [ref.shard(flat, r, n) for r in range(n)]
        padding = sum(s.numel() for s in shards) - numel
        if padding and i % 2:  # the padding after an optimizer step: not zero any more
            padded = torch.cat(shards)
            padded[numel:] = _flat(gen, padding, dtype).abs() + 1
            shards = [piece.clone() for piece in padded.split(shards[0].numel())]
        described = "nonzero padding" if padding and i % 2 else f"{padding} zeros of padding"
        what = f"unshard({n} shards of {shards[0].numel()} elements, numel={numel}), {dtype}, {described} (seed {seed})"
        expect_tensor(call_explained(unshard, shards, numel, what=what), flat, what, atol=0, rtol=0)
    flat = _flat(gen, randint(gen, 1, 20), torch.float64)
    n = randint(gen, 2, 5)
    shards = [ref.shard(flat, r, n) for r in range(n)]
    what = f"unshard(shards=shards, numel={flat.numel()}) called by keyword (seed {seed})"
    expect_tensor(call_explained(unshard, what=what, hint=_BY_KEYWORD, shards=shards, numel=flat.numel()), flat, what, atol=0, rtol=0)


# --------------------------------------------------------------------------- zero_memory_per_gpu

PAPER_FIGURE = {0: 120e9, 1: 31.4e9, 2: 16.6e9, 3: 1.9e9}  # Rajbhandari et al. 2019, Fig. 1: 7.5B parameters, 64 GPUs


def _expect_number(got, expected: float, what: str) -> None:
    if isinstance(got, bool) or not isinstance(got, numbers.Real) or isinstance(got, torch.Tensor):
        raise AssertionError(f"{what} should return a number (int or float), got {type(got).__name__} ({got!r})")
    if not math.isclose(float(got), expected, rel_tol=1e-9, abs_tol=1e-9):
        raise AssertionError(f"{what} should be {expected:,.1f} bytes, got {float(got):,.1f}")


def _zero_expected(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12) -> float:
    return ref.zero_bytes_per_rank(n_params, world_size, stage, k=optimizer_bytes, weight_bytes=weight_bytes, grad_bytes=grad_bytes)


def check_zero_memory_per_gpu(zero_memory_per_gpu, seed: int | None = None, n_cases: int = 40) -> None:
    """``zero_memory_per_gpu(n_params, world_size, stage, weight_bytes=2, grad_bytes=2, optimizer_bytes=12)``.

    The ZeRO paper's figure (7.5B parameters on 64 GPUs), random sizes, precisions and stages,
    each default alone, every argument by keyword, and a ValueError for a stage that is not 0-3.
    """
    zero_memory_per_gpu = watched(zero_memory_per_gpu, ZERO_MEMORY_PER_GPU)
    gen, seed = new_generator(seed)
    for stage, paper in PAPER_FIGURE.items():
        what = f"zero_memory_per_gpu(7.5e9, 64, stage={stage}) (mixed-precision Adam: 2 + 2 + 12 bytes per parameter)"
        got = call_explained(zero_memory_per_gpu, 7.5e9, 64, stage, what=what)
        _expect_number(got, _zero_expected(7.5e9, 64, stage), what)
        if abs(float(got) / paper - 1) > 0.03:
            raise AssertionError(f"{what} should be the paper's {paper / 1e9:g} GB per GPU, got {float(got) / 1e9:.2f} GB")
    for _ in range(n_cases):
        psi, n, stage = randint(gen, 1, 10**6) * 10**randint(gen, 0, 6), randint(gen, 1, 1024), randint(gen, 0, 3)
        w, g, o = (1, 2, 4)[randint(gen, 0, 2)], (1, 2, 4)[randint(gen, 0, 2)], (0, 4, 8, 12, 16)[randint(gen, 0, 4)]
        what = (f"zero_memory_per_gpu({psi}, {n}, {stage}, weight_bytes={w}, grad_bytes={g}, optimizer_bytes={o}) "
                f"(seed {seed})")
        got = call_explained(zero_memory_per_gpu, psi, n, stage, w, g, o, what=what, hint=_BY_KEYWORD)
        _expect_number(got, _zero_expected(psi, n, stage, w, g, o), what)
    psi, n = randint(gen, 1, 10**9), randint(gen, 2, 64)
    calls = [  # (described, args, kwargs, what it means)
        (f"zero_memory_per_gpu({psi}, {n}, 2, weight_bytes=4): grad_bytes=2 and optimizer_bytes=12 by default",
         (psi, n, 2), {"weight_bytes": 4}, (psi, n, 2, 4, 2, 12)),
        (f"zero_memory_per_gpu({psi}, {n}, 1, optimizer_bytes=8): weight_bytes=2 and grad_bytes=2 by default",
         (psi, n, 1), {"optimizer_bytes": 8}, (psi, n, 1, 2, 2, 8)),
        (f"zero_memory_per_gpu(n_params={psi}, world_size={n}, stage=3, weight_bytes=4, grad_bytes=4, optimizer_bytes=8), "
         "every argument by keyword", (), {"n_params": psi, "world_size": n, "stage": 3, "weight_bytes": 4, "grad_bytes": 4,
                                            "optimizer_bytes": 8}, (psi, n, 3, 4, 4, 8)),
    ]
    for described, args, kwargs, meant in calls:
        what = f"{described} (seed {seed})"
        _expect_number(call_explained(zero_memory_per_gpu, *args, what=what, hint=_BY_KEYWORD, **kwargs), _zero_expected(*meant), what)
    for stage in (4, -1):
        what = f"zero_memory_per_gpu({psi}, {n}, stage={stage})"
        try:
            got = zero_memory_per_gpu(psi, n, stage)
        except ValueError:
            continue
        except Exception as err:  # noqa: BLE001
            raise AssertionError(f"{what} should raise ValueError (ZeRO has stages 0 to 3), raised {type(err).__name__}: {err}") from None
        raise AssertionError(f"{what} should raise ValueError (ZeRO has stages 0 to 3), returned {got!r}")


# --------------------------------------------------------------------------- the capstone: average_gradients on real ranks


class _Net(nn.Module):
    """A small float64 network with a frozen embedding-like parameter (its grad stays None)."""

    def __init__(self, d_in: int = 5, d_hidden: int = 7, d_out: int = 3):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, d_hidden, dtype=torch.float64), nn.Linear(d_hidden, d_out, dtype=torch.float64)
        self.scale = nn.Parameter(torch.ones(d_out, dtype=torch.float64), requires_grad=False)  # frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x))) * self.scale


def _case(seed: int, world_size: int, per_rank: int = 3) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The model's weights and a global batch of ``world_size * per_rank`` rows, drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    model = _Net()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(world_size * per_rank, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(world_size * per_rank, 3, generator=gen, dtype=torch.float64)
    return model.state_dict(), x, y


def _local_backward(rank: int, world_size: int, state: dict, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """The model on rank ``rank`` after its backward pass on its own rows of the global batch (mean squared error)."""
    model = _Net()
    model.load_state_dict(state)
    x_rank, y_rank = ref.local_batch((x, y), rank, world_size)
    nn.functional.mse_loss(model(x_rank), y_rank).backward()
    return model


def _grads(model: nn.Module) -> dict:
    return {name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()}


def average_gradients_rank(rank: int, world_size: int, answer, state: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """What each rank runs for the check: its own backward pass, then the learner's ``answer(model)``."""
    model = _local_backward(rank, world_size, state, x, y)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    answer(model)
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), weights[name])]
    return {"grads": _grads(model), "changed": changed}


def ddp_rank(rank: int, world_size: int, state: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The same step under ``DistributedDataParallel``: the gradients it leaves on this rank."""
    model = _Net()
    model.load_state_dict(state)
    ddp = nn.parallel.DistributedDataParallel(model)
    x_rank, y_rank = ref.local_batch((x, y), rank, world_size)
    nn.functional.mse_loss(ddp(x_rank), y_rank).backward()
    return _grads(model)


@functools.lru_cache(maxsize=16)
def _ddp_grads(seed: int, world_size: int) -> dict:
    """Rank 0's gradients under DDP (every rank holds the same), computed once per case in real worker processes."""
    state, x, y = _case(seed, world_size)
    by_rank = ref.run_forked(ddp_rank, world_size, state, x, y, timeout=60)
    return by_rank[0]


def _full_batch_grads(seed: int, world_size: int) -> dict:
    """The gradient of the mean loss over the whole global batch in one process (what DDP's average equals)."""
    state, x, y = _case(seed, world_size)
    return _grads(_local_backward(0, 1, state, x, y))


def _run_on_ranks(answer, world_size: int, seed: int, what: str) -> list[dict]:
    state, x, y = _case(seed, world_size)
    driver = f"{__name__}:average_gradients_rank"
    try:
        if hasattr(answer, "in_workers"):  # the grader: the learner's function lives in a sandbox and runs there
            return answer.in_workers(driver, world_size, state, x, y, timeout=RANK_TIMEOUT)
        return ref.run_forked(average_gradients_rank, world_size, answer, state, x, y, timeout=RANK_TIMEOUT)
    except Exception as err:  # noqa: BLE001  (a rank raised, died or waited in a collective that another never called)
        text = str(err)
        if "AssertionError: " in text:  # the watch refused what a rank's answer called: its message as it is
            raise AssertionError(text.rsplit("AssertionError: ", 1)[1].strip()) from None
        hint = ""
        if "did not finish" in text or "closed by peer" in text or "reset by peer" in text:
            hint = "\nHint: every rank must call the same collectives in the same order, or the others wait forever."
        elif "NoneType" in text:
            hint = "\nHint: a frozen parameter has no gradient (p.grad is None): skip it."
        lines = [line for line in text.splitlines() if line.strip()]
        summary = "\n".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(err).__name__
        raise AssertionError(f"{what} failed on the ranks: {summary}{hint}") from None


def _grads_hint(got: dict, expected: dict, local: dict, world_size: int) -> str:
    close = lambda a, b: all(  # noqa: E731
        (a[k] is None) == (b[k] is None) and (a[k] is None or torch.allclose(a[k], b[k], rtol=1e-9, atol=1e-12)) for k in b)
    if world_size > 1 and close(got, {k: None if v is None else v * world_size for k, v in expected.items()}):
        return "\nHint: that is the sum over ranks; DDP averages: divide by the world size."
    if close(got, local):
        return ("\nHint: the gradients are this rank's own: all_reduce works in place on the very tensor you pass "
                "(p.grad), not on a copy, and every rank must call it.")
    return ""


def check_average_gradients(average_gradients, world_sizes=(2,), seed: int | None = None) -> None:
    """``average_gradients(model)`` on every rank of a real process group leaves DDP's gradients on every rank.

    For each world size: N forked worker processes (gloo), each with the same model and its
    own rows of the global batch, run their backward pass and then the learner's function;
    every rank's gradients must then equal the gradients ``DistributedDataParallel`` computes
    for the same step (a fixed case, DDP run in worker processes too) and the gradient of the
    whole batch's mean loss (a random case); the frozen parameter's grad stays None and no
    weight changes.
    """
    average_gradients = watched(average_gradients, AVERAGE_GRADIENTS)
    gen, seed = new_generator(seed)
    for world_size in world_sizes:
        for case_seed, against in ((world_size, "DistributedDataParallel's"), (seed + world_size, "the full batch's")):
            what = f"average_gradients(model) on {world_size} rank(s) (case seed {case_seed})"
            expected = _ddp_grads(case_seed, world_size) if against.startswith("Dist") else _full_batch_grads(case_seed, world_size)
            by_rank = _run_on_ranks(average_gradients, world_size, case_seed, what)
            state, x, y = _case(case_seed, world_size)
            for rank, got in enumerate(by_rank):
                if got["changed"]:
                    raise AssertionError(f"{what} changed the weights {got['changed']} on rank {rank}: only average the "
                                         "gradients (the optimizer's step comes after)")
                local = _grads(_local_backward(rank, world_size, state, x, y))
                for name, e in expected.items():
                    g = got["grads"][name]
                    where = f"{what}: rank {rank}'s {name}.grad"
                    if e is None:
                        if g is not None:
                            raise AssertionError(f"{where} should stay None (a frozen parameter has no gradient), got a tensor")
                        continue
                    try:
                        expect_tensor(g, e, f"{where} (against {against} gradient)", rtol=1e-9, atol=1e-12)
                    except AssertionError as err:
                        raise AssertionError(str(err) + _grads_hint(got["grads"], expected, local, world_size)) from None
