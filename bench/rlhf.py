"""Lesson 09's starting point and long runs: the SFT model, then PPO, DPO and GRPO for many more steps.

    .venv/bin/python bench/rlhf.py             # writes course_lib/assets/rlhf/ (about 6 minutes on 2 cores)
    .venv/bin/python bench/rlhf.py --runs-only # keeps the SFT model, redoes the long runs
    .venv/bin/python bench/rlhf.py --runs-only --quick --out /tmp/runs.json   # two steps of each: a smoke test

1. The SFT model: ``course-lm-small`` fine-tuned with ``rlhf.RECIPES["sft"]`` on ``rlhf.sft_pairs()``,
   saved to ``course_lib/assets/rlhf/sft`` (what the lesson loads).
2. The long runs, each with the lesson's recipe (``rlhf.RECIPES``) and seed but ``rlhf.LONG_STEPS``
   steps instead of the lesson's few: the reward model's held-out accuracy as it trains; PPO with
   and without the KL penalty; DPO; GRPO. Written to ``course_lib/assets/rlhf/long_runs.json``,
   which the lesson plots next to its own short runs and the tests check against the recipes.

Run it on an otherwise idle machine (the curves do not depend on it; only the seconds do).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib import rlhf  # noqa: E402
from course_lib.device import seed_everything  # noqa: E402
from course_lib.finetune import install_chat_template  # noqa: E402
from course_lib.models import load_pretrained, save_pretrained  # noqa: E402
from course_lib.tokenizer import course_tokenizer  # noqa: E402

BASE = "course-lm-small"
RM_CHUNKS = (50, 100, 200, 400, 600)   # reward-model steps at which held-out accuracy is measured


def make_sft(tokenizer, progress: bool) -> dict:
    seed_everything(0)
    recipe = rlhf.RECIPES["sft"]
    start = time.perf_counter()
    model, history = rlhf.sft_model(load_pretrained(BASE), tokenizer, **recipe, progress=progress)
    seconds = time.perf_counter() - start
    save_pretrained(model, rlhf.SFT_FOLDER)
    tokenizer.save(rlhf.SFT_FOLDER)
    install_chat_template(rlhf.SFT_FOLDER)
    tasks = rlhf.verifiable_tasks()
    facts = rlhf.question_facts()["heldout"]
    answers = rlhf.greedy_answers(model, tokenizer, [rlhf.question(f) for f in facts])
    record = {"base": BASE, "recipe": recipe, "pairs": len(rlhf.sft_pairs()), "training_seconds": round(seconds, 1),
              "machine": machine(), "final_loss": round(history.train_loss[-1], 4),
              "heldout": {"sums": rlhf.verifiable_accuracy(model, tokenizer, tasks["sums"]["heldout"]),
                          "sorting": rlhf.verifiable_accuracy(model, tokenizer, tasks["sorting"]["heldout"]),
                          "truthful": rlhf.truthful_rate(answers, facts), "words": rlhf.mean_words(answers)}}
    (rlhf.SFT_FOLDER / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def sft_epoch_seconds(tokenizer, steps: int | None = None) -> float:
    """Wall time of one epoch of the SFT recipe (the unit the lesson's comparison table is in), measured here.

    ``steps`` replaces the epoch's steps (``--quick``: a smoke test times 2 steps).
    """
    recipe = rlhf.RECIPES["sft"]
    steps = math.ceil(len(rlhf.sft_pairs()) / recipe["batch_size"]) if steps is None else steps
    seed_everything(0)
    start = time.perf_counter()
    rlhf.sft_model(load_pretrained(BASE), tokenizer, **{**recipe, "steps": steps}, progress=False)
    return round(time.perf_counter() - start, 2)


def history_dict(history: rlhf.RLHistory) -> dict:
    return {"steps": history.steps, "evals": history.evals, "seconds": round(history.seconds, 2)}


def long_runs(tokenizer, progress: bool, steps: int = rlhf.LONG_STEPS, rm_chunks=RM_CHUNKS, quick: bool = False) -> dict:
    """Every long run the lesson reads. ``quick``: the SFT epoch and PPO's reward model take 2 steps (a smoke test)."""
    sft = rlhf.load_sft()
    data = rlhf.preference_data()
    facts = rlhf.question_facts()
    judge = rlhf.Judge.against(sft, tokenizer, facts["heldout"])
    out = {"machine": machine(), "recipes": rlhf.RECIPES, "long_steps": steps,
           "lesson_steps": rlhf.LESSON_STEPS, "sft_epoch_seconds": sft_epoch_seconds(tokenizer, 2 if quick else None),
           "runs": {}}

    # The reward model: held-out accuracy as it trains (the lesson trains the first RECIPES steps).
    recipe = rlhf.RECIPES["reward_model"]
    seed_everything(recipe["seed"])
    reward_model = rlhf.RewardModel(copy.deepcopy(sft))
    points, done = [], 0
    for total in rm_chunks:
        rlhf.train_reward_model(reward_model, tokenizer, data["train"], steps=total - done, lr=recipe["lr"],
                                batch_size=recipe["batch_size"], seed=recipe["seed"] + done, progress=progress)
        done = total
        points.append({"step": total, "rule": rlhf.reward_accuracy(reward_model, tokenizer, data["heldout"]),
                       "labels": rlhf.reward_accuracy(reward_model, tokenizer, data["heldout"], "labels")})
    out["runs"]["reward_model"] = {"points": points,
                                   "noise_ceiling": sum(not p.flipped for p in data["heldout"]) / len(data["heldout"])}

    # The reward model PPO uses: the lesson's, RECIPES["reward_model"] exactly.
    seed_everything(recipe["seed"])
    reward_model = rlhf.RewardModel(copy.deepcopy(sft))
    rlhf.train_reward_model(reward_model, tokenizer, data["train"], **{**recipe, **({"steps": 2} if quick else {})},
                            progress=progress)
    for name in ("ppo", "ppo_no_kl"):
        seed_everything(0)
        policy = rlhf.PolicyWithValue(copy.deepcopy(sft))
        history = rlhf.ppo_train(policy, sft, reward_model, tokenizer, facts["train"], steps=steps,
                                 judge=judge, eval_every=10, progress=progress, **rlhf.RECIPES[name])
        out["runs"][name] = history_dict(history)

    seed_everything(0)
    policy = copy.deepcopy(sft)
    history = rlhf.dpo_train(policy, sft, tokenizer, data["train"], steps=steps, judge=judge, eval_every=10,
                             progress=progress, **rlhf.RECIPES["dpo"])
    out["runs"]["dpo"] = history_dict(history)

    pairs, heldout = rlhf.grpo_pairs()
    seed_everything(0)
    policy = copy.deepcopy(sft)
    history = rlhf.grpo_train(policy, sft, tokenizer, pairs, steps=steps, heldout=heldout["sums"],
                              eval_every=10, progress=progress, **rlhf.RECIPES["grpo"])
    out["runs"]["grpo"] = history_dict(history)
    out["runs"]["grpo"]["sorting"] = {"before": rlhf.verifiable_accuracy(sft, tokenizer, heldout["sorting"]),
                                      "after": rlhf.verifiable_accuracy(policy, tokenizer, heldout["sorting"])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/rlhf.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-only", action="store_true", help="keep the saved SFT model, redo the long runs")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 steps of everything (a smoke test; use with --out)")
    parser.add_argument("--out", type=Path, default=rlhf.CURVES_FILE, help="where to write the long runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    tokenizer = course_tokenizer(0)
    if not args.runs_only:
        print("SFT:", make_sft(tokenizer, not args.quiet), flush=True)
    runs = long_runs(tokenizer, not args.quiet, *((2, (2,), True) if args.quick else ()))
    args.out.write_text(json.dumps(runs, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
