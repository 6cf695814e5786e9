"""Attention forward: the course's explicit attention (lesson 01) against PyTorch's SDPA.

Prints a Markdown table: time, TFLOP/s, peak memory, and each time as a ratio to
PyTorch's SDPA measured in the same run. On CUDA the inputs are bf16, on the CPU float32.

    python bench/attention.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.timing import median_ms, peak_mib  # noqa: E402
from course_lib.attention import scaled_dot_product_attention  # noqa: E402
from course_lib.device import get_device  # noqa: E402


def run(quick: bool = False, device: torch.device | None = None) -> str:
    device = device or get_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch, heads, head_dim = (2, 16, 128) if device.type == "cuda" else (1, 4, 64)
    lengths = [256, 512] if quick else ([1024, 2048, 4096, 8192] if device.type == "cuda" else [256, 512, 1024])
    rows = [
        f"### Attention forward on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'} "
        f"(batch {batch}, {heads} heads, head dim {head_dim}, {str(dtype).removeprefix('torch.')})",
        "",
        "| seq len | causal | course_lib (ms) | SDPA (ms) | course_lib / SDPA time | course_lib TFLOP/s | SDPA TFLOP/s | course_lib peak MiB | SDPA peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in lengths:
        q, k, v = (torch.randn(batch, heads, n, head_dim, device=device, dtype=dtype) for _ in range(3))
        for causal in (False, True):
            ours = lambda: scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
            theirs = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
            t_ours, t_theirs = median_ms(ours, device), median_ms(theirs, device)
            flops = 4 * batch * heads * n * n * head_dim / (2 if causal else 1)
            m_ours, m_theirs = peak_mib(ours, device), peak_mib(theirs, device)
            mem = lambda m: "-" if m is None else f"{m:.0f}"  # noqa: E731
            rows.append(
                f"| {n} | {'yes' if causal else 'no'} | {t_ours:.2f} | {t_theirs:.2f} | {t_ours / t_theirs:.2f} | "
                f"{flops / t_ours / 1e9:.2f} | {flops / t_theirs / 1e9:.2f} | {mem(m_ours)} | {mem(m_theirs)} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two short lengths only")
    print(run(parser.parse_args().quick))
