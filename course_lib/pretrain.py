"""Train the course's small pretrained language models (lesson 02; later lessons start from them).

    python -m course_lib.pretrain                 # both checkpoints into course_lib/assets/
    python -m course_lib.pretrain --name course-lm-small --steps 200 --out /tmp/ckpt

Each checkpoint is a decoder-only model (:class:`course_lib.models.DecoderLM`, Llama-style)
trained from scratch on the synthetic world of :mod:`course_lib.data` with the course's
BPE tokenizer, and saved in Hugging Face format (``config.json``, ``model.safetensors``,
``tokenizer.json``), so that both ``course_lib.models.load_pretrained(name)`` and
``transformers.AutoModelForCausalLM.from_pretrained(path)`` load it. ``training.json``
beside it records the recipe, the training time and the quality measured on held-out data.

- ``course-lm``: the main model, a few million parameters; it learns the world's facts,
  answers questions about them, adds, subtracts and sorts.
- ``course-lm-small``: a smaller model of the same family (lesson 10 distils the main
  model into a student of this size).
- ``course-lm-mha``: ``course-lm-small`` with one key/value head per query head
  (multi-head attention), trained the same way; lesson 06 converts it to grouped-query
  attention and compares the result with ``course-lm-small``, trained with GQA from the start.
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from course_lib.data import build_corpus
from course_lib.device import seed_everything
from course_lib.evaluation import document_ids, exact_match, perplexity
from course_lib.finetune import install_chat_template
from course_lib.models import DecoderConfig, DecoderLM, save_pretrained
from course_lib.tokenizer import BOS_ID, EOS_ID, PAD_ID, course_tokenizer
from course_lib.train import TrainConfig, random_windows, train

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one checkpoint. Defined in lesson 02."""

    model: DecoderConfig
    train: TrainConfig
    batch_size: int = 32
    seq_len: int = 128


def _decoder(d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, d_ff: int, vocab_size: int = 1024) -> DecoderConfig:
    return DecoderConfig(
        vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        d_ff=d_ff, max_seq_len=256, tie_embeddings=True, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
    )


RECIPES: dict[str, Recipe] = {
    # 1,000 steps: trained for 2,400 the held-out loss bottomed out near step 1,200 and then
    # rose while the model memorised its training text (held-out perplexity 2.41 at the end)
    "course-lm": Recipe(
        model=_decoder(d_model=192, n_layers=6, n_heads=6, n_kv_heads=2, d_ff=512),
        train=TrainConfig(steps=1000, lr=3e-3, min_lr=3e-4, warmup_steps=100, eval_every=100, seed=0),
    ),
    "course-lm-small": Recipe(
        model=_decoder(d_model=96, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=256),
        train=TrainConfig(steps=2400, lr=3e-3, min_lr=3e-4, warmup_steps=100, eval_every=200, seed=0),
    ),
    "course-lm-mha": Recipe(
        model=_decoder(d_model=96, n_layers=3, n_heads=4, n_kv_heads=4, d_ff=256),
        train=TrainConfig(steps=2400, lr=3e-3, min_lr=3e-4, warmup_steps=100, eval_every=200, seed=0),
    ),
}


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """All ``texts`` as one 1-D stream of token ids, each as ``<bos> text <eos>``. Defined in lesson 02."""
    ids: list[int] = []
    for text in texts:
        ids.extend(document_ids(tokenizer, text))
    return torch.tensor(ids, dtype=torch.long)


def training_data(batch_size: int, seq_len: int):
    """The course's corpus and tokenizer, the training text as one token stream, and 4 fixed held-out batches.

    Returns ``(corpus, tokenizer, stream (N,) int64, eval_batches)``, each batch ``(batch_size,
    seq_len)``. Defined in lesson 02.
    """
    corpus = build_corpus(0)
    tokenizer = course_tokenizer(0)
    stream = token_stream(tokenizer, corpus.train_texts)
    heldout = token_stream(tokenizer, corpus.heldout_texts)
    eval_batches = [random_windows(heldout, batch_size, seq_len, torch.Generator().manual_seed(i)) for i in range(4)]
    return corpus, tokenizer, stream, eval_batches


def quality(model: DecoderLM, tokenizer, corpus, progress: bool = False) -> dict[str, float]:
    """The figures a checkpoint is judged by, all on data it was not trained on (except ``qa_train``).

    - ``heldout_perplexity``: perplexity on the held-out documents;
    - ``qa_heldout``: exact-match answers to questions about people whose facts were in the
      training text but whose questions were not;
    - ``qa_train``: the same for questions that were in the training text (memorisation);
    - ``arithmetic`` and ``sorting``: exact match on held-out problems.

    Defined in lesson 02.
    """
    return {
        "heldout_perplexity": perplexity(model, tokenizer, corpus.heldout_texts),
        "qa_heldout": exact_match(model, tokenizer, corpus.qa_heldout, progress=progress),
        "qa_train": exact_match(model, tokenizer, corpus.qa_train, progress=progress),
        "arithmetic": exact_match(model, tokenizer, corpus.arithmetic_heldout, progress=progress),
        "sorting": exact_match(model, tokenizer, corpus.sorting_heldout, max_new_tokens=24, progress=progress),
    }


def pretrain(name: str, out: Path = ASSETS, steps: int | None = None, progress: bool = True) -> dict:
    """Train the checkpoint ``name`` of :data:`RECIPES`, save it to ``out/name`` and return its record. Defined in lesson 02."""
    if name not in RECIPES:
        raise ValueError(f"name must be one of {sorted(RECIPES)}, got {name!r}")
    recipe = RECIPES[name]
    train_config = replace(recipe.train, progress=progress, **({"steps": steps} if steps else {}))
    corpus, tokenizer, stream, eval_batches = training_data(recipe.batch_size, recipe.seq_len)

    seed_everything(train_config.seed)
    model = DecoderLM(recipe.model)
    history = train(
        model,
        lambda m, batch: m.loss(batch),
        lambda g: random_windows(stream, recipe.batch_size, recipe.seq_len, g),
        train_config,
        eval_batches,
    )
    metrics = quality(model, tokenizer, corpus, progress=progress)
    folder = Path(out) / name
    save_pretrained(model, folder)
    tokenizer.save(folder)
    install_chat_template(folder)  # lesson 08's chat format, for transformers' apply_chat_template
    record = {
        "name": name,
        "parameters": model.num_parameters(),
        "model": asdict(recipe.model),
        "train": {**asdict(train_config), "batch_size": recipe.batch_size, "seq_len": recipe.seq_len},
        "training_tokens": train_config.steps * recipe.batch_size * recipe.seq_len,
        "corpus_tokens": int(stream.numel()),
        "training_seconds": round(history.seconds, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "quality": {k: round(v, 4) for k, v in metrics.items()},
        "history": {
            "steps": history.steps[::10],
            "train_loss": [round(x, 4) for x in history.train_loss[::10]],
            "eval_steps": history.eval_steps,
            "eval_loss": [round(x, 4) for x in history.eval_loss],
        },
    }
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def uptrain(model: DecoderLM, steps: int = 120, lr: float = 1e-3, seed: int = 1, progress: bool = True,
            batch_size: int = 32, seq_len: int = 128):
    """Continue training ``model`` in place on the course's training text for ``steps`` steps.

    The GQA paper *uptrains* a converted checkpoint for a small fraction (5%) of its
    pre-training steps; 120 steps are 5% of ``course-lm-small``'s 2,400. Short warm-up,
    cosine decay from ``lr`` to ``lr / 10``, held-out loss at the start and the end. Returns
    the :class:`course_lib.train.History`. Defined in lesson 06.
    """
    _, _, stream, eval_batches = training_data(batch_size, seq_len)
    config = TrainConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 10), eval_every=steps,
                         seed=seed, progress=progress)
    model.train()
    history = train(model, lambda m, batch: m.loss(batch),
                    lambda g: random_windows(stream, batch_size, seq_len, g), config, eval_batches)
    model.eval()
    return history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps (quick runs)")
    args = parser.parse_args(argv)
    names = list(RECIPES) if args.name == "all" else [args.name]
    for name in names:
        record = pretrain(name, args.out, args.steps)
        print(f"{name}: {record['parameters']:,} parameters, {record['training_seconds']:.0f} s, quality {record['quality']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
