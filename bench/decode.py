"""One decode step of attention against a long KV cache: MHA, GQA-8 and MQA (lesson 06).

On a CUDA GPU, the reference run's layer (32 query heads, head dim 128, batch 8, 32k
context, bfloat16); on the CPU a small one. Times as ratios to MHA, measured in this run.

    python bench/decode.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_lib.benchmark import decode_benchmark, decode_table  # noqa: E402
from course_lib.device import get_device  # noqa: E402


def run(quick: bool = False, device: torch.device | None = None) -> str:
    """The benchmark's Markdown section: a heading and the table."""
    device = device or get_device()
    if device.type == "cuda":
        size = dict(batch=8, context=4096 if quick else 32768)
    else:
        size = dict(batch=2, context=1024 if quick else 4096)
    rows = decode_benchmark((32, 8, 1), n_heads=32, head_dim=128, device=device, repeats=5 if quick else 20, **size)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (f"### One decode step of attention on {where} (32 query heads, head dim 128, batch {size['batch']}, "
            f"context {size['context']})\n\n" + decode_table(rows) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter context")
    print(run(parser.parse_args().quick))
