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
    """The benchmark's Markdown section: a heading and the table."""
    device = device or get_device()
    on_gpu = device.type == "cuda"
    lengths = (GPU_LENGTHS[:2] if on_gpu else CPU_LENGTHS[:2]) if quick else (GPU_LENGTHS if on_gpu else CPU_LENGTHS)
    head_dims = (64, 128) if on_gpu else (64,)
    rows = attention_benchmark(lengths, head_dims, (False, True), device=device, repeats=5 if quick else 10, progress=False)
    where = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    dtype = "bfloat16" if on_gpu else "float32"
    return f"### Attention forward on {where} ({dtype})\n\n" + attention_table(rows) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two short lengths only")
    print(run(parser.parse_args().quick))
