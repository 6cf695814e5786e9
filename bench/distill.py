"""Lesson 10's measurement: how much of ``course-lm``'s quality a distilled small student keeps.

    .venv/bin/python bench/distill.py                        # writes course_lib/assets/distill/ (about 13 minutes on 1 thread)
    .venv/bin/python bench/distill.py --steps 20 --out /tmp/distill   # a smoke test

One student architecture (:data:`STUDENT`, about 6% of the teacher's parameters), trained
from the same initialisation, on the same batches, with the same learning-rate schedule and
number of steps, in each of the rows of :data:`RUNS`:

- ``labels``: ``alpha = 0``, the ordinary next-token loss (the baseline);
- ``distilled``: ``alpha = 0.5, T = 2``, half Hinton's soft-target loss against the frozen teacher;
- ``distilled-a0.9``: ``alpha = 0.9, T = 2``, mostly soft targets.

Teacher and students are then judged by :func:`course_lib.pretrain.quality` (held-out
perplexity and the exact-match sets). ``results.json`` records the configurations, seconds,
qualities, held-out loss curves and the gap figures:

- ``perplexity_gap_closed = (baseline - distilled) / (baseline - teacher)`` on held-out perplexity
  (1: the distilled student matches the teacher, 0: no better than labels alone, < 0: worse);
- ``gap_closed`` the same for every metric (exact match: ``(distilled - baseline) / (teacher - baseline)``);
- ``share_of_teacher``: each student's quality as a fraction of the teacher's (exact match:
  ``student / teacher``; perplexity, where lower is better: ``teacher / student``).

The baseline and the ``alpha = 0.5`` student are saved as checkpoints (``student-labels/``,
``student-distilled/``) that ``course_lib.models.load_pretrained(folder)`` loads.
Seconds depend on the machine; the losses and qualities do not (same seed, CPU, one thread).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.distill import distill  # noqa: E402
from course_lib.models import load_pretrained, save_pretrained  # noqa: E402
from course_lib.pretrain import ASSETS, RECIPES, _decoder, quality, training_data  # noqa: E402
from course_lib.train import TrainConfig  # noqa: E402

TEACHER = "course-lm"
STUDENT = _decoder(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=176)
STEPS = 400
BATCH_SIZE, SEQ_LEN = RECIPES[TEACHER].batch_size, RECIPES[TEACHER].seq_len
# name, alpha, temperature, checkpoint folder (None: not saved)
RUNS = [
    ("labels", 0.0, 2.0, "student-labels"),
    ("distilled", 0.5, 2.0, "student-distilled"),
    ("distilled-a0.9", 0.9, 2.0, None),
]
OUT = ASSETS / "distill"


def train_config(steps: int) -> TrainConfig:
    """The teacher's learning rates and seed, a warm-up of 1/8 of the steps, held-out loss 8 times."""
    return TrainConfig(steps=steps, lr=3e-3, min_lr=3e-4, warmup_steps=max(1, steps // 8),
                       eval_every=max(1, steps // 8), seed=0, progress=False)


def gap_closed(student: float, baseline: float, teacher: float) -> float | None:
    """How much of the baseline-to-teacher gap the student closes (None when there is no gap)."""
    return None if baseline == teacher else (student - baseline) / (teacher - baseline)


def share_of_teacher(student: dict, teacher: dict) -> dict:
    """Each metric of ``student`` as a fraction of the teacher's (perplexity inverted: lower is better)."""
    return {k: (teacher[k] / student[k] if k == "heldout_perplexity" else
                (None if teacher[k] == 0 else student[k] / teacher[k])) for k in teacher}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps of every student (default {STEPS})")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for results.json and the two checkpoints")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    corpus, tokenizer, stream, eval_batches = training_data(BATCH_SIZE, SEQ_LEN)
    teacher = load_pretrained(TEACHER)
    start = time.perf_counter()
    teacher_quality = quality(teacher, tokenizer, corpus)
    print(f"teacher {TEACHER}: {teacher.num_parameters():,} parameters, quality {teacher_quality} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)

    config = train_config(args.steps)
    runs = []
    for name, alpha, temperature, folder in RUNS:
        student, history = distill(teacher, STUDENT, stream, config, temperature=temperature, alpha=alpha,
                                   batch_size=BATCH_SIZE, seq_len=SEQ_LEN, eval_batches=eval_batches)
        start = time.perf_counter()
        metrics = quality(student, tokenizer, corpus)
        eval_seconds = time.perf_counter() - start
        if folder is not None:
            save_pretrained(student, args.out / folder)
            tokenizer.save(args.out / folder)
        runs.append({
            "name": name, "alpha": alpha, "temperature": temperature, "checkpoint": folder,
            "parameters": student.num_parameters(),
            "training_seconds": round(history.seconds, 1), "quality_seconds": round(eval_seconds, 1),
            "quality": {k: round(v, 6) for k, v in metrics.items()},
            "history": {"eval_steps": history.eval_steps, "eval_loss": [round(x, 4) for x in history.eval_loss],
                        "final_train_loss": round(history.train_loss[-1], 4)},
        })
        print(f"{name}: alpha {alpha}, T {temperature}: {history.seconds:.0f} s, quality {metrics}", flush=True)

    teacher_q = {k: round(v, 6) for k, v in teacher_quality.items()}
    baseline_q = runs[0]["quality"]
    gaps = {}
    for run in runs[1:]:
        q = run["quality"]
        gaps[run["name"]] = {
            "perplexity_gap_closed": gap_closed(q["heldout_perplexity"], baseline_q["heldout_perplexity"],
                                                teacher_q["heldout_perplexity"]),
            "gap_closed": {k: gap_closed(q[k], baseline_q[k], teacher_q[k]) for k in teacher_q},
        }
    record = {
        "teacher": {"name": TEACHER, "parameters": teacher.num_parameters(), "model": asdict(teacher.config),
                    "quality": teacher_q},
        "student_model": asdict(STUDENT),
        "train": {**asdict(config), "batch_size": BATCH_SIZE, "seq_len": SEQ_LEN},
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "definitions": {
            "perplexity_gap_closed": "(baseline - distilled) / (baseline - teacher), held-out perplexity",
            "gap_closed": "(distilled - baseline) / (teacher - baseline), per metric",
            "share_of_teacher": "student / teacher per exact-match metric; teacher / student for perplexity",
        },
        "runs": runs,
        "share_of_teacher": {run["name"]: share_of_teacher(run["quality"], teacher_q) for run in runs},
        "gaps": gaps,
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    for name, gap in gaps.items():
        print(f"{name}: perplexity gap closed {gap['perplexity_gap_closed']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
