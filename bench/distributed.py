"""Lesson 07's measurements for world sizes 1, 2 and 4: run it on an otherwise idle machine.

    .venv/bin/python bench/distributed.py --out bench/distributed_cpu.md

Every strategy of ``course_lib.distributed`` trains the course checkpoint (course-lm-small,
float64) for a few steps on the same global batch in real worker processes (gloo on the CPU,
NCCL where CUDA is present). Per rank: the bytes of parameters, gradients and optimizer
states it holds (measured on the live tensors), the bytes it sent through collectives per
step (counted at the calls), the largest weight difference from one process, and the time
per step as a ratio to one process measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib import distributed as D  # noqa: E402

STEPS = 3


def measure(world_sizes=(1, 2, 4)) -> tuple[int, dict, dict]:
    """(Ψ, {world_size: {strategy: rank 0's Result}}, the single-process Result)."""
    batches = D.lm_batches(steps=STEPS)
    D.train(0, 1, "single", D.course_model, batches)  # a first run pays one-time costs (allocator, lazy set-up): not timed
    single = D.train(0, 1, "single", D.course_model, batches)
    psi = sum(p.numel() for p in D.course_model().parameters())
    # "dp" twice: the workers' first run warms up; the second one's Result replaces it
    strategies = ["dp"] + [s for s in D.STRATEGIES if s != "single"]
    runs = {n: D.run_workers(D.compare_strategies, n, strategies, D.course_model, batches, timeout=1200)[0] for n in world_sizes}
    return psi, runs, single


def formula(strategy: str, psi: int, n: int, nbytes: int = 8) -> tuple[float, float]:
    """(bytes stored, bytes sent per step) by the ring and ZeRO formulas, for Adam in float64 (8 + 8 + 16 bytes per parameter)."""
    share = (n - 1) / n
    stage = {"dp": 0, "ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp2": 3}[strategy]
    stored = D.zero_bytes_per_rank(psi, n, stage, k=2 * nbytes, weight_bytes=nbytes, grad_bytes=nbytes)
    sent = (3 if stage == 3 else 2) * share * psi * nbytes
    return stored, sent


def table(psi: int, runs: dict, single) -> str:
    lines = ["Stored: model states only (parameters, gradients, Adam's two states) on rank 0 after the last step. The "
             "from-scratch ZeRO-1 and ZeRO-2 keep one flat buffer more than the formula counts (a gradient shard beside the "
             "full gradients, a full parameter buffer to all-gather into). Sent: FSDP2 keeps the root module's parameters "
             "gathered between forward and backward, so it all-gathers once a step, not twice (2(N-1)/N, not 3(N-1)/N, of its "
             "padded buffer). Time: rank 0's wall time per step over one process's on the whole global batch; "
             "perfect data parallelism on N free cores would approach 1/N. Here N processes share the machine's cores, gloo "
             "copies through the kernel's loopback, and a step of this small model takes milliseconds, so fixed costs per "
             "collective dominate: the column says nothing about NCCL on GPUs.", "",
             f"Ψ = {psi:,} parameters (course-lm-small, float64; Adam keeps 2 float64 states: 32 bytes per parameter "
             f"unsharded), {STEPS} steps. One process: {single.seconds / STEPS * 1000:.0f} ms per step.", "",
             "| N | strategy | stored per rank (MB) | formula (MB) | sent per step per rank (MB) | formula (MB) | "
             "max weight diff vs 1 process | time per step / 1 process |",
             "|---|---|---|---|---|---|---|---|"]
    for n, results in runs.items():
        for strategy, got in results.items():
            stored = sum(got.stored.values())
            f_stored, f_sent = formula(strategy, psi, n)
            diff = max((got.state[k] - v).abs().max().item() for k, v in single.state.items())
            lines.append(f"| {n} | {strategy} | {stored / 1e6:.2f} | {f_stored / 1e6:.2f} | {got.bytes_sent / STEPS / 1e6:.2f} | "
                         f"{f_sent / 1e6:.2f} | {diff:.1e} | {got.seconds / single.seconds:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table here (Markdown)")
    args = parser.parse_args()
    psi, runs, single = measure()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    text = (f"# Lesson 07 measured: {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) per "
            f"process, torch {torch.__version__}, {backend}\n\n" + table(psi, runs, single) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
