"""Lesson 08: instruction tuning (supervised fine-tuning, SFT) on the synthetic world.

A pretrained model continues text. An *instruction-tuned* model answers a request. The
difference is only data: pairs ``(instruction, response)`` written in a fixed chat format,
and a loss that counts the response tokens alone.

- **The chat format** lives in the tokenizer as a Jinja *chat template*
  (:data:`CHAT_TEMPLATE`, in ``tokenizer_config.json``), so that transformers'
  ``tokenizer.apply_chat_template(messages)`` writes exactly the text the course trains on::

      <bos>Instruction: Reverse: 5 3 9
      Response: 9 3 5<eos>

  :func:`chat_text` is the same rendering in plain Python (tested equal).
- **Tasks the checkpoints never saw** (:func:`instruction_tasks`): answer a question about
  the world in one word (no "Question: ... Answer: ..." and no full stop), translate into the
  invented language, reverse a list of digits. Each has training pairs and held-out pairs
  (other people, other sentences, other lists).
- **The response-only loss** (:func:`mask_prompt`): the labels of the prompt tokens (and of the
  padding) are ``-100``, which ``cross_entropy`` ignores; the model is not taught to write
  instructions, only to answer them.
- :func:`finetune` trains whatever parameters require gradients (all of them, a LoRA's, or a
  soft prompt's) with lesson 02's loop; :func:`task_accuracy` asks the held-out instructions
  and counts exact answers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib.data import QUESTIONS, build_corpus
from course_lib.evaluation import exact_match
from course_lib.memory import ModelShape, count_params, optimizer_state_bytes, precision_bytes
from course_lib.qlora import bits_per_parameter
from course_lib.tokenizer import BOS_ID, EOS_ID, PAD_ID
from course_lib.train import TrainConfig, train

# --------------------------------------------------------------------------- the chat format

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}Instruction: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Response: {{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('roles must be user or assistant') }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Response:{% endif %}"
)
"""The course's chat template (Jinja, the language of transformers' chat templates).

A user turn is ``Instruction: <content>`` and a newline, an assistant turn ``Response:
<content><eos>``; with ``add_generation_prompt`` the text ends in ``Response:`` and the model
writes the rest. Defined in lesson 08.
"""


def chat_text(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """:data:`CHAT_TEMPLATE` rendered in Python: ``messages`` is ``[{"role": "user"|"assistant", "content": str}, ...]``.

    Returns the text with ``<bos>`` and ``<eos>`` written as those strings (the tokenizer turns
    them into their ids). Defined in lesson 08.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    parts = ["<bos>"]
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"each message must be a dict with a str 'content', got {message!r}")
        if message.get("role") == "user":
            parts.append(f"Instruction: {message['content']}\n")
        elif message.get("role") == "assistant":
            parts.append(f"Response: {message['content']}<eos>")
        else:
            raise ValueError(f"roles must be 'user' or 'assistant', got {message.get('role')!r}")
    if add_generation_prompt:
        parts.append("Response:")
    return "".join(parts)


def chat_prompt(instruction: str) -> str:
    """``"Instruction: <instruction>\\nResponse:"``: what the model reads before answering (without ``<bos>``,
    which :func:`course_lib.evaluation.complete` adds). Defined in lesson 08."""
    return chat_text([{"role": "user", "content": instruction}], add_generation_prompt=True).removeprefix("<bos>")


def install_chat_template(folder) -> Path:
    """Write :data:`CHAT_TEMPLATE` into ``folder/tokenizer_config.json`` (a tokenizer saved by lesson 02's
    ``BPETokenizer.save``), so that ``AutoTokenizer.from_pretrained(folder).apply_chat_template`` uses it.
    Returns the path of the file. Defined in lesson 08."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: save a tokenizer into {folder} first")
    config = json.loads(path.read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the tasks


@dataclass(frozen=True, repr=False)
class Task:
    """One instruction task: ``(instruction, response)`` pairs to train on and held-out pairs to measure.

    Responses carry no leading space (the chat format puts one after ``Response:``). Defined in lesson 08.
    """

    name: str
    description: str
    train: list[tuple[str, str]]
    heldout: list[tuple[str, str]]

    def __repr__(self) -> str:
        return f"Task({self.name!r}: {len(self.train)} train, {len(self.heldout)} held out; e.g. {self.train[0]!r})"


ONE_WORD_RELATIONS = ("lives_in", "works_as", "born_in", "favourite_colour")


def _one_word(corpus, n_heldout: int) -> Task:
    heldout_people = set(corpus.heldout_people)
    train_pairs, heldout_pairs = [], []
    for fact in corpus.world.facts:
        if fact.relation in ONE_WORD_RELATIONS:
            pair = (f"{QUESTIONS[fact.relation].format(s=fact.subject)} Answer in one word.", fact.obj)
            (heldout_pairs if fact.subject in heldout_people else train_pairs).append(pair)
    random.Random("08/one_word").shuffle(heldout_pairs)
    return Task("one_word", "answer a question about the world in one word (held out: other people)",
                train_pairs, heldout_pairs[:n_heldout])


def _translate(corpus, n_train: int, n_heldout: int) -> Task:
    def pairs(rows):
        return [(f"Translate: {english}", invented) for english, invented in rows]

    return Task("translate", "translate an English sentence into the invented language (held out: other sentences)",
                pairs(corpus.translation_train[:n_train]), pairs(corpus.translation_heldout[:n_heldout]))


def reverse_pairs(n: int, seed, exclude: set[str] = frozenset(), lengths=(3, 6)) -> list[tuple[str, str]]:
    """``n`` distinct ``("Reverse: 5 3 9", "9 3 5")`` pairs of ``lengths[0]..lengths[1]`` random digits,
    none of whose instructions is in ``exclude``. ``seed`` is any int or str. Defined in lesson 08."""
    rng = random.Random(f"08/reverse/{seed}")
    out, seen = [], set(exclude)
    while len(out) < n:
        digits = [str(rng.randrange(10)) for _ in range(rng.randrange(lengths[0], lengths[1] + 1))]
        instruction = "Reverse: " + " ".join(digits)
        if instruction not in seen:
            seen.add(instruction)
            out.append((instruction, " ".join(reversed(digits))))
    return out


def _reverse(n_train: int, n_heldout: int) -> Task:
    train_pairs = reverse_pairs(n_train, "train")
    return Task("reverse", "reverse a list of 3 to 6 digits (held out: other lists)",
                train_pairs, reverse_pairs(n_heldout, "heldout", exclude={i for i, _ in train_pairs}))


def instruction_tasks(n_train: int = 1000, n_heldout: int = 100) -> dict[str, Task]:
    """The lesson's three instruction tasks, none of them in any pretraining text. Defined in lesson 08.

    - ``one_word``: "Where does Zorbin Kalu live? Answer in one word." -> "Quenta" (the facts are
      known from pretraining; the format is new). Trained on the people whose questions
      pretraining saw, held out on the others.
    - ``translate``: "Translate: the big dog sees a red cat" -> "lo vasku gor na miro rusa vidat".
    - ``reverse``: "Reverse: 5 3 9 1" -> "1 9 3 5".
    """
    corpus = build_corpus(0)
    return {
        "one_word": _one_word(corpus, n_heldout),
        "translate": _translate(corpus, n_train, n_heldout),
        "reverse": _reverse(n_train, n_heldout),
    }


# --------------------------------------------------------------------------- the response-only loss


def encode_pair(tokenizer, instruction: str, response: str) -> tuple[list[int], int]:
    """Token ids of one training conversation and how many of them are prompt.

    Returns ``(ids, prompt_length)``: ``ids`` = ``<bos>`` + the prompt's tokens + the response's
    tokens + ``<eos>``, and ``ids[:prompt_length]`` are the ids of ``chat_prompt(instruction)``
    after ``<bos>``. Defined in lesson 08.
    """
    prompt = [BOS_ID, *tokenizer.encode(chat_prompt(instruction))]
    full = [BOS_ID, *tokenizer.encode(chat_prompt(instruction) + " " + response), EOS_ID]
    if full[: len(prompt)] != prompt:
        raise ValueError(f"the response {response!r} changes how the prompt is cut into tokens; start it with a word")
    return full, len(prompt)


def mask_prompt(input_ids: torch.Tensor, prompt_lengths: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Labels for the response-only loss: ``input_ids`` with the prompt and the padding replaced by -100.

    Args:
        input_ids: ``(batch, seq)`` int64, each row a conversation padded on the right.
        prompt_lengths: ``(batch,)`` int64, how many tokens of each row are prompt.
        lengths: ``(batch,)`` int64, how many tokens of each row are real (the rest is padding).
    Returns:
        ``(batch, seq)`` int64: ``labels[b, t] = input_ids[b, t]`` for ``prompt_lengths[b] <= t <
        lengths[b]``, else -100. Defined in lesson 08.
    """
    if input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be (batch, seq) int64, got shape {tuple(input_ids.shape)} and dtype {input_ids.dtype}")
    for name, t in (("prompt_lengths", prompt_lengths), ("lengths", lengths)):
        if t.shape != input_ids.shape[:1] or t.dtype != torch.long:
            raise ValueError(f"{name} must be ({input_ids.shape[0]},) int64, got shape {tuple(t.shape)} and dtype {t.dtype}")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    keep = (positions >= prompt_lengths[:, None]) & (positions < lengths[:, None])
    return torch.where(keep, input_ids, torch.full_like(input_ids, -100))


def collate(tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch from ``(instruction, response)`` pairs: ``(input_ids, labels)``, both ``(batch, seq)`` int64.

    Rows are padded on the right with ``<pad>``; labels are :func:`mask_prompt`'s. Defined in lesson 08.
    """
    encoded = [encode_pair(tokenizer, i, r) for i, r in pairs]
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), PAD_ID, dtype=torch.long)
    for row, (ids, _) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
    prompt_lengths = torch.tensor([p for _, p in encoded])
    lengths = torch.tensor([len(ids) for ids, _ in encoded])
    return input_ids, mask_prompt(input_ids, prompt_lengths, lengths)


def response_loss(model, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the response tokens: position ``t`` predicts ``labels[:, t + 1]``. Defined in lesson 08.

    A model that puts trained vectors before the tokens (prompt tuning) returns more positions
    than it was given: the last ``seq`` are the tokens'.
    """
    input_ids, labels = batch
    logits = model(input_ids)[:, -input_ids.shape[1]:]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def finetune(model, tokenizer, pairs: list[tuple[str, str]], steps: int = 200, lr: float = 1e-3,
             batch_size: int = 32, seed: int = 0, progress: bool = True, min_lr: float | None = None,
             warmup_steps: int | None = None):
    """Train the parameters of ``model`` that require gradients on ``pairs`` with the response-only loss.

    Lesson 02's loop (AdamW, linear warm-up over ``warmup_steps`` (default a tenth of the
    steps), cosine decay to ``min_lr`` (default ``lr / 10``), gradient clipping); each step draws
    ``batch_size`` random pairs. Returns the :class:`course_lib.train.History`; the model is
    left in eval mode. Defined in lesson 08.
    """
    if not pairs:
        raise ValueError("finetune needs at least one (instruction, response) pair")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no parameter of the model requires gradients: nothing would train")
    config = TrainConfig(steps=steps, lr=lr, min_lr=lr / 10 if min_lr is None else min_lr,
                         warmup_steps=max(1, steps // 10) if warmup_steps is None else warmup_steps,
                         eval_every=steps, seed=seed, progress=progress)

    def get_batch(generator):
        rows = torch.randint(0, len(pairs), (batch_size,), generator=generator).tolist()
        return collate(tokenizer, [pairs[i] for i in rows])

    return train(model, response_loss, get_batch, config)


def task_accuracy(model, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int | None = None,
                  progress: bool = False) -> float:
    """Exact-match accuracy on ``(instruction, response)`` pairs asked in the chat format. Defined in lesson 08.

    ``max_new_tokens`` defaults to the longest response's tokens plus 2 (room for ``<eos>``).
    """
    if not pairs:
        raise ValueError("task_accuracy needs at least one (instruction, response) pair")
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer.encode(" " + r)) for _, r in pairs) + 2
    return exact_match(model, tokenizer, [(chat_prompt(i), " " + r) for i, r in pairs], max_new_tokens, progress)


def original_skills(model, tokenizer, n: int = 100) -> dict[str, float]:
    """Exact match on two skills of pretraining, in their pretraining format, on held-out data:
    ``qa`` (the first ``n`` of ``corpus.qa_heldout``) and ``arithmetic`` (the first ``n`` held-out sums).
    Fine-tuning on something else can make a model lose them. Defined in lesson 08."""
    corpus = build_corpus(0)
    return {"qa": exact_match(model, tokenizer, corpus.qa_heldout[:n]),
            "arithmetic": exact_match(model, tokenizer, corpus.arithmetic_heldout[:n])}


def forgetting_curve(model, tokenizer, task: Task, lr: float, chunks: int = 6, steps_per_chunk: int = 50,
                     n_original: int = 100, progress: bool = False) -> list[dict[str, float]]:
    """Fine-tune ``model`` (in place) on ``task`` and measure, after every ``steps_per_chunk`` steps, what it
    gained on the task and kept of its original skills.

    The learning rate is constant after a warm-up of ``steps_per_chunk // 5`` steps in the first
    chunk. Returns one dict per measurement: ``{"step", "task", "qa", "arithmetic"}``, the first at
    step 0 (before training). Defined in lesson 08.
    """
    def measure(step):
        return {"step": step, "task": task_accuracy(model, tokenizer, task.heldout),
                **original_skills(model, tokenizer, n_original)}

    points = [measure(0)]
    for chunk in range(chunks):
        finetune(model, tokenizer, task.train, steps=steps_per_chunk, lr=lr, min_lr=lr, seed=chunk, progress=progress,
                 warmup_steps=max(1, steps_per_chunk // 5) if chunk == 0 else 0)
        points.append(measure((chunk + 1) * steps_per_chunk))
    return points


# --------------------------------------------------------------------------- memory: full vs LoRA vs QLoRA

#: LLaMA-7B and LLaMA-65B (Touvron et al. 2023), the models of the QLoRA paper's memory claims.
LLAMA_7B = ModelShape(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008)
LLAMA_65B = ModelShape(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, d_ff=22016)

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def projection_shapes(shape: ModelShape, targets=PROJECTIONS) -> list[tuple[int, int]]:
    """``(out_features, in_features)`` of every projection named in ``targets``, over all layers of a Llama-style model.

    Defined in lesson 08.
    """
    h, q, kv, ff = shape.d_model, shape.q_dim, shape.kv_dim, shape.d_ff
    per_layer = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                 "gate_proj": (ff, h), "up_proj": (ff, h), "down_proj": (h, ff)}
    unknown = [t for t in targets if t not in per_layer]
    if unknown:
        raise ValueError(f"targets must be among {PROJECTIONS}, got {unknown}")
    return [per_layer[t] for _ in range(shape.n_layers) for t in targets]


def finetuning_model_states(shape: ModelShape, method: str, r: int = 16, targets=PROJECTIONS) -> dict[str, float]:
    """Bytes of weights, gradients and Adam states for fine-tuning a Llama-style model ``shape``.

    - ``"full"``: every parameter trains in lesson 03's ``bf16-mixed`` (fp32 weights, gradients
      and two Adam moments: 16 bytes per parameter).
    - ``"lora"``: the base frozen in bf16 (2 bytes, no gradient, no state); the LoRA matrices of
      rank ``r`` on ``targets`` train at 16 bytes each.
    - ``"qlora"``: as LoRA, but the projections of the base in NF4 with double quantization
      (:func:`course_lib.qlora.bits_per_parameter`: 4.127 bits); embeddings, norms and output
      layer stay bf16.

    Activations are not included (lesson 03's :func:`course_lib.memory.activation_memory`;
    all three methods keep about the same). Returns ``{"weights", "gradients",
    "optimizer_states", "total", "trainable"}``. Defined in lesson 08.
    """
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be 'full', 'lora' or 'qlora', got {method!r}")
    n = count_params(shape)
    if method == "full":
        w, _, _ = precision_bytes("bf16-mixed")
        states = {"weights": n * w, "gradients": n * w, "optimizer_states": optimizer_state_bytes(n, "adamw", "bf16-mixed"),
                  "trainable": n}
    else:
        adapters = sum(r * (o + i) for o, i in projection_shapes(shape, targets))
        quantized = sum(o * i for o, i in projection_shapes(shape, PROJECTIONS)) if method == "qlora" else 0
        base = (n - quantized) * 2 + quantized * bits_per_parameter(double_quant=True) / 8
        states = {"weights": base + adapters * 4, "gradients": adapters * 4,
                  "optimizer_states": optimizer_state_bytes(adapters, "adamw", "fp32"), "trainable": adapters}
    states["total"] = states["weights"] + states["gradients"] + states["optimizer_states"]
    return states


# --------------------------------------------------------------------------- figures and tables (lesson 08's display helpers)

_ASSET_DIR = Path(__file__).resolve().parent / "assets"


def draw_lora(ax, out_features: int = 64, in_features: int = 512, r: int = 4, merged: bool = False) -> None:
    """Draw a LoRA layer on ``ax``, the matrices as rectangles to scale, each labelled with its shape.

    Un-merged (``merged=False``): the frozen ``W`` (``out x in``, grey) beside the trainable pair
    ``B`` (``out x r``, zeros at the start) and ``A`` (``r x in``, random), with the count of numbers
    each holds. Merged: one matrix ``W + (alpha/r) B A`` of ``W``'s shape. Defined in lesson 08.
    """
    from matplotlib.patches import Rectangle

    scale = 4.0 / max(out_features, in_features)           # the longest side is 4 units
    h, w, rr = out_features * scale, in_features * scale, max(r * scale, 0.06)
    frozen, trained = "#c8c8c8", "#f4a259"

    def box(x, y, width, height, colour, label, below):
        ax.add_patch(Rectangle((x, y), width, height, facecolor=colour, edgecolor="black", lw=0.8))
        ax.text(x + width / 2, y + height / 2, label, ha="center", va="center", fontsize=11)
        ax.text(x + width / 2, y - 0.12, below, ha="center", va="top", fontsize=8.5)

    if merged:
        box(0, 0, w, h, "#d9b38c", "W + (α/r)·B·A", f"{out_features} × {in_features}: one matrix, one matmul\n"
            "(un-merging subtracts (α/r)·B·A again)")
        ax.set_xlim(-0.3, w + 0.3)
        ax.set_title("merged: the adapter folded into W")
    else:
        box(0, 0, w, h, frozen, "W", f"W: {out_features} × {in_features}, frozen\n{out_features * in_features:,} numbers")
        ax.text(w + 0.25, h / 2, "+ (α/r) ·", ha="left", va="center", fontsize=12)
        x_b = w + 1.35
        box(x_b, 0, rr, h, trained, "", f"B: {out_features} × {r}\nstarts at 0")
        x_a = x_b + rr + 0.15
        ax.add_patch(Rectangle((x_a, 0), w, h, facecolor="none", edgecolor="grey", lw=0.8, ls="--"))
        ax.text(x_a + w / 2, (h - rr) / 2, f"B·A: {out_features} × {in_features},\nrank at most {r}", ha="center",
                va="center", fontsize=9, color="dimgrey")
        box(x_a, h - rr, w, rr, trained, "", "")
        ax.text(x_a + w / 2, h + 0.08, f"A: {r} × {in_features}, random", ha="center", va="bottom", fontsize=9.5)
        ax.text(x_a + w / 2, -0.12, f"trained: A and B, {r} × ({in_features} + {out_features})\n"
                f"= {r * (in_features + out_features):,} numbers", ha="center", va="top", fontsize=8.5)
        ax.set_xlim(-0.3, x_a + w + 0.3)
        ax.set_title(f"LoRA of rank {r}: y = W x + (α/r) · B (A x)")
    ax.set_ylim(-1.1, h + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")


def forgetting_sweep(path=None) -> dict:
    """The committed forgetting sweep (``bench/finetune.py``): full fine-tuning and LoRA on the ``reverse`` task.

    Returns the JSON as a dict: ``{"task", "model", "steps_per_chunk", "n_original", "machine", "runs"}``;
    each run has ``label``, ``method``, ``lr``, ``trainable`` and ``points``, a list of
    ``{"step", "task", "qa", "arithmetic"}``. Defined in lesson 08.
    """
    path = _ASSET_DIR / "forgetting_sweep.json" if path is None else Path(path)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def skills_lost(point: dict, start: dict) -> float:
    """The mean of what ``qa`` and ``arithmetic`` lost between ``start`` and ``point`` (accuracies from 0 to 1).
    Defined in lesson 08."""
    return ((start["qa"] - point["qa"]) + (start["arithmetic"] - point["arithmetic"])) / 2


def plot_forgetting(sweep: dict, ax, extra_points=None) -> None:
    """Task accuracy gained (y) against original skills lost (x), one line per run of ``sweep``, a dot every measurement.

    Full fine-tuning is drawn in blues (solid), LoRA in oranges (dashed); the best place is the
    top left (learned the task, lost nothing). ``extra_points``: optional dicts ``{"label",
    "lost", "task"}`` drawn as stars (e.g. this notebook's own runs on another task). Defined in lesson 08.
    """
    import matplotlib.pyplot as plt

    runs = sweep["runs"]
    full = [r for r in runs if r["method"] == "full"]
    low = [r for r in runs if r["method"] != "full"]
    for group, cmap, style in ((full, plt.cm.Blues, "-"), (low, plt.cm.Oranges, "--")):
        for i, run in enumerate(group):
            colour = cmap(0.45 + 0.5 * i / max(1, len(group) - 1))
            start = run["points"][0]
            xs = [skills_lost(p, start) for p in run["points"]]
            ys = [p["task"] for p in run["points"]]
            ax.plot(xs, ys, style, marker="o", ms=3.5, color=colour, label=f"{run['label']} ({run['trainable']:,} trained)")
            ax.annotate(f"{run['points'][-1]['step']}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 2),
                        fontsize=7, color=colour)
    for i, point in enumerate(extra_points or []):
        ax.plot([point["lost"]], [point["task"]], "*", ms=13, color=f"C{2 + i}", markeredgecolor="black",
                label=point["label"])
    ax.set_xlabel("original skills lost (mean drop of qa and arithmetic accuracy)")
    ax.set_ylabel("accuracy on the new task")
    ax.set_title(f"learning '{sweep['task']}' on {sweep['model']}: a dot every {sweep['steps_per_chunk']} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _gib(n: float) -> str:
    """``n`` bytes in GiB with one decimal, for the tables. Defined in lesson 08."""
    return f"{n / 2**30:,.1f}"


def memory_table(shapes: dict, r: int = 16, budget_bytes: float = 48e9) -> str:
    """Markdown table of :func:`finetuning_model_states` for every model of ``shapes`` (``{name: ModelShape}``) and
    every method (full, LoRA and QLoRA of rank ``r`` on all seven projections), in GiB, with whether the model
    states fit in ``budget_bytes`` (default one 48 GB GPU; activations come on top). Defined in lesson 08.
    """
    budget_name = f"fits {budget_bytes / 1e9:g} GB?"
    lines = ["| model | method | trainable | weights (GiB) | gradients (GiB) | Adam states (GiB) | total (GiB) | "
             f"{budget_name} |",
             "|---|---|---|---|---|---|---|---|"]
    for name, shape in shapes.items():
        for method in ("full", "lora", "qlora"):
            s = finetuning_model_states(shape, method, r=r)
            label = {"full": "full", "lora": f"LoRA r={r}", "qlora": f"QLoRA r={r}"}[method]
            small = s["total"] < 2**30
            fmt = (lambda n: f"{n / 2**20:,.2f} MiB") if small else _gib
            lines.append(f"| {name} | {label} | {int(s['trainable']):,} | {fmt(s['weights'])} | {fmt(s['gradients'])} | "
                         f"{fmt(s['optimizer_states'])} | {fmt(s['total'])} | "
                         f"{'yes' if s['total'] <= budget_bytes else 'no'} |")
    return "\n".join(lines)


def gpu_results(path=None) -> dict:
    """The committed H200 measurements of ``bench/finetune_gpu.py`` (``course_lib/assets/finetune_gpu_h200.json``).
    Defined in lesson 08."""
    path = _ASSET_DIR / "finetune_gpu_h200.json" if path is None else Path(path)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def gpu_step_table(path=None) -> str:
    """Markdown table of one training step of a 1.10 B model on the H200: full fine-tuning, LoRA and QLoRA
    (milliseconds, ratio to full, peak memory, the model-state estimate). Defined in lesson 08."""
    results = gpu_results(path)
    steps = {row["method"]: row for row in results["steps"]}
    full = steps["full"]["step_ms"]
    lines = [f"| method ({results['gpu']}) | trainable | step (ms) | step / full | forward (ms) | peak (GiB) | "
             "model states, estimated (GiB) |",
             "|---|---|---|---|---|---|---|"]
    for method, row in steps.items():
        lines.append(f"| {method} | {row['trainable']:,} | {row['step_ms']:.1f} | {row['step_ms'] / full:.2f} | "
                     f"{row['forward_ms']:.1f} | {row['peak_bytes'] / 2**30:.1f} | "
                     f"{row['estimated_model_states'] / 2**30:.2f} |")
    return "\n".join(lines)


def gpu_nf4_table(path=None) -> str:
    """Markdown table of bitsandbytes' NF4 on the H200's CUDA against the course's, per weight shape
    (codes that differ, largest difference of the dequantized weights). Defined in lesson 08."""
    results = gpu_results(path)
    lines = [f"| shape | codes that differ ({results['gpu']}) | absmax max diff | dequantized max diff |",
             "|---|---|---|---|"]
    for row in results["nf4"]:
        lines.append(f"| {row['shape'][0]} × {row['shape'][1]} | {row['codes_differ']} | {row['absmax_max_diff']:.1e} | "
                     f"{row['dequantized_max_diff']:.1e} |")
    return "\n".join(lines)


def masked_batch_html(tokenizer, input_ids: torch.Tensor, labels: torch.Tensor, rows: int = 3) -> str:
    """HTML of the first ``rows`` rows of a collated batch, one cell per token: green where the label is kept
    (the response), grey where it is -100 (prompt), faint for padding. Defined in lesson 08."""
    import html

    out = ["<div style='font-family:monospace;font-size:12px;line-height:2'>"]
    for b in range(min(rows, input_ids.shape[0])):
        cells = []
        for t in range(input_ids.shape[1]):
            token = html.escape(tokenizer.decode([int(input_ids[b, t])])).replace(" ", "&#183;") or "&#8709;"
            if int(labels[b, t]) != -100:
                style = "background:#b7e4c7;border:1px solid #2d6a4f"
            elif int(input_ids[b, t]) == PAD_ID:
                style = "color:#bbb;border:1px dotted #ccc"
            else:
                style = "background:#e9ecef;border:1px solid #adb5bd"
            cells.append(f"<span style='{style};padding:1px 3px;margin:1px'>{token}</span>")
        out.append(f"<div>row {b}: " + "".join(cells) + "</div>")
    out.append("<div>grey: prompt (label -100) &nbsp; green: response (label = the token) &nbsp; "
               "faint: padding (label -100)</div></div>")
    return "".join(out)
