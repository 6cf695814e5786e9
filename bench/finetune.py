"""Lesson 08's forgetting sweep: full fine-tuning against LoRA on a new task, at several learning rates.

    .venv/bin/python bench/finetune.py            # writes course_lib/assets/forgetting_sweep.json (about 5 minutes)

Each run starts from ``course-lm-small``, fine-tunes on the ``reverse`` task (never in any
pretraining text) for 300 steps, and every 50 steps measures the held-out accuracy on the
task and on two skills of pretraining (questions about the world, sums). The lesson plots the
result: task gained against skills lost. Run it on an otherwise idle machine (the accuracies
do not depend on it; only the seconds do).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib import finetune as ft  # noqa: E402
from course_lib import lora  # noqa: E402
from course_lib.models import load_pretrained  # noqa: E402
from course_lib.tokenizer import course_tokenizer  # noqa: E402

MODEL = "course-lm-small"
OUT = Path(__file__).resolve().parents[1] / "course_lib" / "assets" / "forgetting_sweep.json"

#: (label, method, learning rate, LoRA rank, LoRA targets)
RUNS = [
    ("full, lr 1e-4", "full", 1e-4, None, None),
    ("full, lr 3e-4", "full", 3e-4, None, None),
    ("full, lr 1e-3", "full", 1e-3, None, None),
    ("LoRA r=8 all projections, lr 1e-3", "lora", 1e-3, 8, lora.LLAMA_TARGETS),
    ("LoRA r=8 all projections, lr 3e-3", "lora", 3e-3, 8, lora.LLAMA_TARGETS),
    ("LoRA r=8 all projections, lr 1e-2", "lora", 1e-2, 8, lora.LLAMA_TARGETS),
    ("LoRA r=4 q_proj v_proj, lr 3e-3", "lora", 3e-3, 4, ("q_proj", "v_proj")),
    ("LoRA r=4 q_proj v_proj, lr 1e-2", "lora", 1e-2, 4, ("q_proj", "v_proj")),
]


def sweep(runs=RUNS, chunks: int = 6, steps_per_chunk: int = 50, n_original: int = 100, progress: bool = True) -> dict:
    tokenizer = course_tokenizer(0)
    task = ft.instruction_tasks()["reverse"]
    results = []
    for label, method, lr, r, targets in runs:
        model = load_pretrained(MODEL)
        if method == "lora":
            lora.inject_lora(model, r=r, alpha=2 * r, targets=targets)
        start = time.perf_counter()
        points = ft.forgetting_curve(model, tokenizer, task, lr, chunks, steps_per_chunk, n_original)
        results.append({"label": label, "method": method, "lr": lr, "trainable": lora.trainable_parameters(model),
                        "points": points, "seconds": round(time.perf_counter() - start, 1)})
        if progress:
            print(label, [(p["step"], p["task"], p["qa"], p["arithmetic"]) for p in points], flush=True)
    return {"task": task.name, "model": MODEL, "chunks": chunks, "steps_per_chunk": steps_per_chunk,
            "n_original": n_original, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "runs": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    result = sweep()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
