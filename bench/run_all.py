"""Run every benchmark in bench/ and write one Markdown results table (`make gpu-check`).

Needs only torch and course_lib (no Jupyter packages).

    python bench/run_all.py --out bench/results/gpu-bench.md [--quick]
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import attention, decode  # noqa: E402

BENCHMARKS = [attention, decode]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
    header = (
        f"# Benchmark results\n\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
        f"Python {platform.python_version()}; {gpu}\n"
    )
    sections = [header] + [bench.run(quick=args.quick) for bench in BENCHMARKS]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n\n".join(sections) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
