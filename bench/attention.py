"""Attention forward on one device: eager, the course's kernels and PyTorch's SDPA back-ends (lesson 05).

Prints a Markdown table of TFLOP/s and peak memory with ratios, all measured in this run
(see course_lib.benchmark). On a CUDA GPU: bfloat16, lengths 1k-16k, head dims 64 and
128, causal and not, contenders eager, the course's Triton kernel and SDPA's
FlashAttention-2, memory-efficient and cuDNN back-ends. On the CPU: float32, short
lengths, eager against the course's tiled PyTorch version and SDPA.

    python bench/attention.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_lib.benchmark import attention_benchmark, attention_table  # noqa: E402
from course_lib.device import get_device  # noqa: E402

GPU_LENGTHS = (1024, 2048, 4096, 8192, 16384)
CPU_LENGTHS = (256, 512, 1024)


def run(quick: bool = False, device: torch.device | None = None) -> str:
    """The benchmark's Markdown section: forward, then forward + backward (shorter lengths)."""
    device = device or get_device()
    on_gpu = device.type == "cuda"
    lengths = (GPU_LENGTHS[:2] if on_gpu else CPU_LENGTHS[:2]) if quick else (GPU_LENGTHS if on_gpu else CPU_LENGTHS)
    head_dims = (64, 128) if on_gpu else (64,)
    repeats = 5 if quick else 10
    where = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    dtype = "bfloat16" if on_gpu else "float32"
    forward = attention_benchmark(lengths, head_dims, (False, True), device=device, repeats=repeats, progress=False)
    # the tiled PyTorch reference loops over tiles in Python: forward + backward up to 4k tokens only
    short = tuple(n for n in lengths if n <= 4096)[:2 if quick else 3]
    training = attention_benchmark(short, head_dims, (False, True), device=device, repeats=repeats, progress=False,
                                   backward=True)
    return (f"### Attention forward on {where} ({dtype})\n\n" + attention_table(forward) + "\n\n"
            f"### Attention forward + backward on {where} ({dtype}; FLOPs counted as 3.5 x forward)\n\n"
            + attention_table(training) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two short lengths only")
    print(run(parser.parse_args().quick))
