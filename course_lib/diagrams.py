"""Conceptual figures, drawn with matplotlib from the same facts the code uses.

- :func:`transformer_architecture`: the encoder-decoder Transformer of the source text's opening
  figure (a translation model), each box labelled with the module of
  :class:`course_lib.models.EncoderDecoderModel` that computes it (lesson 02).
- :func:`attention_weighted_average`: scores, softmax weights and the weighted sum of the values
  for a small computed attention (lesson 01).
- :func:`training_step_memory`: who holds what in memory at three moments of an AdamW training
  step (weights, gradients, optimizer states, activations, temporaries), from the course's estimate (lesson 03).
- :func:`bit_layouts`: the sign, exponent and mantissa bits of each float format, and the integers (lesson 04).
- :func:`flash_tiling`: the causal score matrix in tiles (computed, masked, skipped) and the online softmax
  of one row across its tiles (lesson 05).
- :func:`kv_cache_and_gqa`: KV-cache bytes against tokens for MHA, GQA and MQA, and query heads sharing
  key/value heads (lesson 06).

Each figure function returns the matplotlib ``Figure``; the notebooks show it with ``plt.show()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

__all__ = ["BIT_COLOURS", "Box", "TILE_COLOURS", "TRANSFORMER_BOXES", "TRAINING_PARTS", "attention_weighted_average",
           "bit_layout_fields", "bit_layouts", "flash_tile_kinds", "flash_tiling", "kv_cache_and_gqa", "kv_cache_curves",
           "online_softmax_trace", "training_step_memory", "training_step_phases", "transformer_architecture"]


@dataclass(frozen=True)
class Box:
    """One box of an architecture figure.

    ``label``: what the box does; ``module``: its path in the course's model, for
    ``model.get_submodule(module)`` (block 0 stands for every block); ``kind``: the class name of
    that module; ``column``: "encoder", "decoder" or "output"; ``row``: height in the figure.
    """

    label: str
    module: str
    kind: str
    column: str
    row: float


#: The boxes of the encoder-decoder Transformer, bottom to top, mapped to
#: :class:`course_lib.models.EncoderDecoderModel`. Defined in lesson 02.
TRANSFORMER_BOXES: tuple[Box, ...] = (
    Box("token embedding (source)", "embed", "Embedding", "encoder", 0.0),
    Box("+ positions", "enc_pos", "Embedding", "encoder", 1.0),
    Box("norm", "encoder.0.attn_norm", "RMSNorm", "encoder", 2.2),
    Box("self-attention\n(every token sees every token)", "encoder.0.attn", "MultiHeadAttention", "encoder", 2.9),
    Box("norm", "encoder.0.mlp_norm", "RMSNorm", "encoder", 4.0),
    Box("feed-forward", "encoder.0.mlp", "Sequential", "encoder", 4.7),
    Box("final norm -> memory", "enc_norm", "RMSNorm", "encoder", 6.0),
    Box("token embedding (target, shifted right)", "embed", "Embedding", "decoder", 0.0),
    Box("+ positions", "dec_pos", "Embedding", "decoder", 1.0),
    Box("norm", "decoder.0.self_norm", "RMSNorm", "decoder", 2.2),
    Box("masked self-attention (causal)", "decoder.0.self_attn", "MultiHeadAttention", "decoder", 2.9),
    Box("norm", "decoder.0.cross_norm", "RMSNorm", "decoder", 4.0),
    Box("cross-attention\n(queries: decoder; keys, values: memory)", "decoder.0.cross_attn", "MultiHeadAttention", "decoder", 4.7),
    Box("norm", "decoder.0.mlp_norm", "RMSNorm", "decoder", 5.8),
    Box("feed-forward", "decoder.0.mlp", "Sequential", "decoder", 6.5),
    Box("final norm", "dec_norm", "RMSNorm", "decoder", 7.8),
    Box("linear -> logits (softmax: next-token probabilities)", "lm_head", "Linear", "output", 9.0),
)

_X = {"encoder": 0.0, "decoder": 5.8, "output": 5.8}
_COLOUR = {"Embedding": "#fde7c8", "RMSNorm": "#e8e8e8", "MultiHeadAttention": "#f9c9c4",
           "Sequential": "#c9e3f9", "Linear": "#d8f0d2"}


def transformer_architecture(ax=None):
    """Draw the encoder-decoder Transformer with each box's module in ``EncoderDecoderModel``.

    Pre-norm, as the course's model (and T5, Llama) computes it: each sublayer reads a normalised
    copy of ``x`` and adds its output back to ``x`` (the residual). Returns the Figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 9))
    width = 3.6
    top = {}
    for box in TRANSFORMER_BOXES:
        x, y, h = _X[box.column], box.row, _height(box)
        ax.add_patch(FancyBboxPatch((x, y), width, h, boxstyle="round,pad=0.05",
                                    facecolor=_COLOUR[box.kind], edgecolor="grey"))
        label = box.label if box.kind != "RMSNorm" else f"{box.label}   ({box.module})"
        ax.text(x + width / 2, y + (h / 2 + 0.12 if box.kind != "RMSNorm" else h / 2), label,
                ha="center", va="center", fontsize=8.5 if box.kind != "RMSNorm" else 7.5)
        if box.kind != "RMSNorm":
            ax.text(x + width / 2, y + 0.12, box.module, ha="center", va="center", fontsize=7,
                    family="monospace", color="#444444")
        top[box] = y + h
    for column in ("encoder", "decoder"):
        boxes = sorted((b for b in TRANSFORMER_BOXES if b.column == column), key=lambda b: b.row)
        for low, high in zip(boxes[:-1], boxes[1:]):
            _arrow(ax, (_X[column] + width / 2, top[low] + 0.05), (_X[column] + width / 2, high.row - 0.05))
    last = max((b for b in TRANSFORMER_BOXES if b.column == "decoder"), key=lambda b: b.row)
    head = next(b for b in TRANSFORMER_BOXES if b.column == "output")
    _arrow(ax, (_X["decoder"] + width / 2, top[last] + 0.05), (_X["decoder"] + width / 2, head.row - 0.05))
    memory = next(b for b in TRANSFORMER_BOXES if b.module == "enc_norm")
    cross = next(b for b in TRANSFORMER_BOXES if b.module == "decoder.0.cross_attn")
    _arrow(ax, (_X["encoder"] + width + 0.05, memory.row + 0.2), (_X["decoder"] - 0.05, cross.row + 0.4), colour="#c0392b")
    ax.text(_X["encoder"] + width + 0.15, memory.row - 1.0, "memory: the keys and\nvalues of every\ncross-attention",
            fontsize=8, color="#c0392b", va="top")
    for column, side in (("encoder", -1), ("decoder", 1)):
        blocks = [b for b in TRANSFORMER_BOXES if b.column == column and ".0." in b.module]
        bottom, upper = min(b.row for b in blocks), max(top[b] for b in blocks)
        ax.add_patch(FancyBboxPatch((_X[column] - 0.25, bottom - 0.2), width + 0.5, upper - bottom + 0.4,
                                    boxstyle="round,pad=0.05", fill=False, linestyle="--", edgecolor="#888888"))
        x = _X[column] - 0.35 if side < 0 else _X[column] + width + 0.35
        ax.text(x, (bottom + upper) / 2, "× N blocks\n(block 0\nshown)", ha="right" if side < 0 else "left",
                va="center", fontsize=8, color="#555555")
    ax.text(_X["encoder"] + width / 2, top[memory] + 0.35, "ENCODER: reads the source sentence",
            ha="center", fontsize=10, weight="bold")
    ax.text(_X["decoder"] + width / 2, top[head] + 0.3, "DECODER: writes the translation, one token at a time",
            ha="center", fontsize=10, weight="bold")
    ax.set_xlim(-2.0, 11.0)
    ax.set_ylim(-0.4, top[head] + 0.8)
    ax.axis("off")
    ax.set_title("The Transformer for translation, as course_lib.models.EncoderDecoderModel builds it", fontsize=11)
    return ax.figure


def _height(box: Box) -> float:
    return 0.45 if box.kind == "RMSNorm" else 0.8


def _arrow(ax, start, end, colour="black", text=None):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color=colour, lw=1.3))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.25, text, ha="center", fontsize=8, color=colour)


def attention_weighted_average(tokens, q, k, v, query: int = 0):
    """Attention as a weighted average, for one small example (lesson 01, "I am a student").

    Three panels, all from :func:`course_lib.attention.attention_with_weights` on ``q, k, v``
    (each ``(n, d)``, one row per token of ``tokens``): the ``n x n`` matrix of scaled scores
    ``q k^T / sqrt(d)``; the softmax weights of the row ``query`` as bars (their sum is printed
    in the title); and that query's output built as the sum of the weighted value vectors
    ``a_j v_j`` (one row each, the output in the last row).

    Returns ``(figure, numbers)`` where ``numbers`` holds the tensors drawn: ``scores``,
    ``weights`` (all rows), ``output`` (all rows) and ``contributions`` (``a_j v_j`` for ``query``).
    """
    import math

    import torch

    from course_lib import attention

    if q.dim() != 2 or k.shape != q.shape or v.shape[0] != q.shape[0] or len(tokens) != q.shape[0]:
        raise ValueError(f"expected q, k of shape (n, d) and v of shape (n, d_v) with n = len(tokens) = {len(tokens)}, "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not 0 <= query < len(tokens):
        raise ValueError(f"expected query in 0..{len(tokens) - 1}, got {query}")
    output, weights = attention.attention_with_weights(q, k, v)
    scores = (q @ k.T) / math.sqrt(q.shape[-1])
    row = weights[query]
    contributions = row[:, None] * v
    numbers = {"scores": scores, "weights": weights, "output": output, "contributions": contributions}

    fig, (ax_s, ax_w, ax_o) = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    n = len(tokens)
    ax_s.imshow(scores.detach().float().numpy(), cmap="coolwarm")
    for i in range(n):
        for j in range(n):
            ax_s.text(j, i, f"{float(scores[i, j]):.2f}", ha="center", va="center", fontsize=8)
    ax_s.set_xticks(range(n), tokens)
    ax_s.set_yticks(range(n), tokens)
    ax_s.set_xlabel("key")
    ax_s.set_ylabel("query")
    ax_s.set_title(f"1. scores q·k/√d ({n}x{n})", fontsize=10)

    bars = ax_w.bar(range(n), row.detach().float().tolist(), color="#4c72b0")
    for bar, w in zip(bars, row.tolist()):
        ax_w.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{w:.2f}", ha="center", va="bottom", fontsize=8)
    ax_w.set_xticks(range(n), tokens)
    ax_w.set_ylim(0, 1.05)
    ax_w.set_ylabel("weight")
    ax_w.set_title(f"2. softmax of row '{tokens[query]}' (sum {float(row.sum()):.2f})", fontsize=10)

    stack = torch.cat([contributions, output[query:query + 1]]).detach().float().numpy()
    limit = float(abs(stack).max()) or 1.0
    ax_o.imshow(stack, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto")
    ax_o.axhline(n - 0.5, color="black", lw=2)
    ax_o.set_yticks(range(n + 1), [f"{w:.2f} × v({t})" for t, w in zip(tokens, row.tolist())] + [f"output({tokens[query]}) = sum"])
    ax_o.set_xlabel("coordinate of the value vector")
    ax_o.set_title(f"3. output of '{tokens[query]}': weighted values, summed column by column", fontsize=10)
    fig.tight_layout()
    return fig, numbers


#: The parts of :func:`training_step_memory`'s bars, bottom to top.
TRAINING_PARTS = ("weights", "gradients", "optimizer states", "activations", "temporaries")


def training_step_phases(shape, batch_size: int, seq_len: int, precision: str = "fp32",
                         attention: str = "sdpa") -> dict[str, dict[str, int]]:
    """Who holds what, in bytes, at three moments of an AdamW training step on a GPU (from the second step on).

    From :func:`course_lib.memory.estimate_training_memory` (no checkpointing):

    - ``"end of forward"``: weights, optimizer states (kept from the last step), autocast's
      weight copies (under "temporaries") and all activations;
    - ``"start of backward"``: the same, plus the output layer's gradient and the two fp32
      ``b x s x V`` buffers of the logits' gradients (temporaries): the backward peak;
    - ``"optimizer step"``: weights, gradients, states and foreach AdamW's parameter-sized scratch
      buffer (temporaries); the activations are gone.

    The largest total equals the estimate's ``peak``. Defined in lesson 03.
    """
    from course_lib import memory

    mem = memory.estimate_training_memory(shape, batch_size, seq_len, "adamw", precision, attention)
    w = memory.precision_bytes(precision)[0]
    head_grad = 0 if shape.tie_embeddings else w * shape.d_model * shape.vocab_size
    logits_grads = 2 * 4 * batch_size * seq_len * shape.vocab_size
    forward = {"weights": mem.weights, "gradients": 0, "optimizer states": mem.optimizer_states,
               "activations": mem.activations, "temporaries": mem.weight_copies}
    backward = {**forward, "gradients": head_grad, "temporaries": mem.weight_copies + logits_grads}
    step = {"weights": mem.weights, "gradients": mem.gradients, "optimizer states": mem.optimizer_states,
            "activations": 0, "temporaries": memory.count_params(shape) * w}
    return {"end of forward": forward, "start of backward": backward, "optimizer step": step}


def training_step_memory(shape, batch_size: int, seq_len: int, precision: str = "fp32", attention: str = "sdpa", ax=None):
    """Stacked bars of :func:`training_step_phases`, with the estimate's peak as a line. Returns ``(figure, phases)``.

    Defined in lesson 03.
    """
    from course_lib import memory

    phases = training_step_phases(shape, batch_size, seq_len, precision, attention)
    peak = memory.estimate_training_memory(shape, batch_size, seq_len, "adamw", precision, attention).peak
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
    else:
        fig = ax.figure
    names = list(phases)
    bottom = [0.0] * len(names)
    for part, colour in zip(TRAINING_PARTS, ("C0", "C1", "C2", "C3", "C7")):
        heights = [phases[name][part] / memory.GiB for name in names]
        ax.bar(names, heights, bottom=bottom, color=colour, label=part)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.axhline(peak / memory.GiB, color="k", ls="--", lw=1, label=f"estimated peak: {peak / memory.GiB:.1f} GiB")
    ax.set_ylabel("GiB")
    ax.set_title(f"One AdamW step, {precision}, batch {batch_size} x {seq_len}: "
                 f"{memory.count_params(shape) / 1e9:.2f} B parameters")
    ax.legend(loc="upper left", fontsize=8)
    return fig, phases


# --------------------------------------------------------------------------- bit layouts (lesson 04)

BIT_COLOURS = {"sign": "tab:red", "exponent": "tab:blue", "mantissa": "tab:green", "integer": "tab:purple"}


def bit_layout_fields() -> dict[str, list[tuple[str, int]]]:
    """Each format of lesson 04 as its fields, most significant first: ``{name: [(field, bits), ...]}``.

    Float formats come from :data:`course_lib.formats.FORMATS` (1 sign bit, ``exponent_bits``,
    ``mantissa_bits``); int8's width is PyTorch's ``torch.iinfo(torch.int8).bits``, int4's that of
    :data:`course_lib.int4.LEVELS` + 1 codes. Integers have no fields: every bit is part of one
    two's-complement (int8) or unsigned-code (int4) number.
    """
    import torch

    from course_lib import formats, int4

    layouts = {fmt.name: [("sign", 1), ("exponent", fmt.exponent_bits), ("mantissa", fmt.mantissa_bits)]
               for fmt in formats.FORMATS.values()}
    layouts["int8"] = [("integer", torch.iinfo(torch.int8).bits)]
    layouts["int4"] = [("integer", (int4.LEVELS + 1).bit_length() - 1)]
    return layouts


def bit_layouts(ax=None):
    """One row per format, one box per bit, coloured by field (sign, exponent, mantissa, integer); returns the Figure."""
    layouts = bit_layout_fields()
    if ax is None:
        fig, ax = plt.subplots(figsize=(12, 0.55 * len(layouts) + 0.8))
    else:
        fig = ax.figure
    for row, (name, fields) in enumerate(layouts.items()):
        y = len(layouts) - 1 - row
        x = 0
        for field, bits in fields:
            for _ in range(bits):
                ax.add_patch(plt.Rectangle((x, y), 0.92, 0.8, facecolor=BIT_COLOURS[field], edgecolor="black", lw=0.5, alpha=0.75))
                x += 1
            ax.text(x - bits / 2 - 0.04, y + 0.4, str(bits) if bits > 1 else "s", ha="center", va="center", fontsize=8, color="white",
                    fontweight="bold")
        ax.text(-0.6, y + 0.4, f"{name} ({x} bits)", ha="right", va="center", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, alpha=0.75) for c in BIT_COLOURS.values()]
    ax.legend(handles, list(BIT_COLOURS), loc="lower right", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(1.0, -0.25))
    widest = max(sum(b for _, b in fields) for fields in layouts.values())
    ax.set_xlim(-9, widest + 0.5)
    ax.set_ylim(-0.3, len(layouts))
    ax.axis("off")
    ax.set_title("Bit layouts: sign | exponent | mantissa (floats), one integer (int8, int4)")
    return fig


# --------------------------------------------------------------------------- the KV cache and GQA sharing (lesson 06)


def kv_cache_curves(config: dict, lengths, batch_size: int = 1, bytes_per_value: float = 2) -> dict[str, list[int]]:
    """KV-cache bytes at each of ``lengths`` for ``config`` (a config.json dict) as MHA, as it is, and as MQA.

    Keys ``"MHA (H kv heads)"``, ``"GQA-k"`` (the config's own ``num_key_value_heads``) and ``"MQA (1 kv head)"``;
    values from :func:`course_lib.kvcache.kv_cache_bytes_from_config`. Defined in lesson 06.
    """
    from course_lib import kvcache

    n_heads, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    variants = {f"MHA ({n_heads} kv heads)": n_heads, f"GQA-{n_kv}": n_kv, "MQA (1 kv head)": 1}
    return {label: [kvcache.kv_cache_bytes_from_config({**config, "num_key_value_heads": kv}, s, batch_size, bytes_per_value)
                    for s in lengths] for label, kv in variants.items()}


def kv_cache_and_gqa(config: dict, weight_bytes: float, name: str = "", batch_size: int = 1, n_heads: int = 8,
                     n_kv_heads: int = 2, lengths=None):
    """Left: KV-cache bytes against tokens for MHA, the config's GQA and MQA, next to the (fixed) weight bytes.
    Right: ``n_heads`` query heads reading ``n_kv_heads`` key/value heads (query head h reads kv head h // G),
    as ``repeat_kv`` copies them. Returns ``(figure, curves)`` with the curves of :func:`kv_cache_curves`.

    Defined in lesson 06.
    """
    from course_lib.memory import GiB

    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
    lengths = list(lengths or [2 ** p for p in range(10, 18)])
    curves = kv_cache_curves(config, lengths, batch_size)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained", gridspec_kw={"width_ratios": [1.3, 1]})
    for i, (label, sizes) in enumerate(curves.items()):
        left.plot(lengths, [s / GiB for s in sizes], "o-", ms=3, color=f"C{i}", label=f"KV cache, {label}")
    left.axhline(weight_bytes / GiB, color="black", ls="--", lw=1, label=f"weights: {weight_bytes / GiB:.1f} GiB")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("tokens per sequence")
    left.set_ylabel("GiB (bf16)")
    left.set_title(f"{name} KV cache, batch {batch_size}, against its weights".strip())
    left.legend(fontsize=8, loc="upper left")
    group = n_heads // n_kv_heads
    for h in range(n_heads):
        right.add_patch(FancyBboxPatch((h - 0.4, 1.6), 0.8, 0.6, boxstyle="round,pad=0.02", fc=f"C{h // group}", alpha=0.35))
        right.text(h, 1.9, f"q{h}", ha="center", va="center", fontsize=9)
    for g in range(n_kv_heads):
        x = g * group + (group - 1) / 2
        right.add_patch(FancyBboxPatch((x - 0.6, 0.0), 1.2, 0.6, boxstyle="round,pad=0.02", fc=f"C{g}", alpha=0.8))
        right.text(x, 0.3, f"k{g}, v{g}", ha="center", va="center", fontsize=9)
        for h in range(g * group, (g + 1) * group):
            right.annotate("", xy=(x, 0.65), xytext=(h, 1.55), arrowprops={"arrowstyle": "-|>", "color": f"C{g}", "lw": 1})
    right.set_xlim(-0.8, n_heads - 0.2)
    right.set_ylim(-0.3, 2.5)
    right.axis("off")
    right.set_title(f"GQA: {n_heads} query heads, {n_kv_heads} kv heads; head h reads kv head h // {group}")
    return fig, curves


# --------------------------------------------------------------------------- tiling and the online softmax (lesson 05)

#: How :func:`flash_tile_kinds` labels a tile of the score matrix.
TILE_COLOURS = {"computed": "#9ecae1", "computed with a mask": "#fdd0a2", "skipped": "#f0f0f0"}


def flash_tile_kinds(seq_len: int, block: int, causal: bool = True) -> list[list[str]]:
    """The kind of each ``block x block`` tile of a ``seq_len x seq_len`` score matrix, row of query tiles first.

    A kind is one of :data:`TILE_COLOURS`'s keys, decided by :func:`course_lib.flash.causal_tile_skip` and
    :func:`course_lib.flash.causal_tile_needs_mask`, the rules the course's forward uses. Defined in lesson 05.
    """
    from course_lib import flash

    if seq_len < 1 or block < 1:
        raise ValueError(f"seq_len and block should be positive ints, got {seq_len} and {block}")
    kinds = []
    for q_start in range(0, seq_len, block):
        q_end = min(q_start + block, seq_len)
        row = []
        for k_start in range(0, seq_len, block):
            k_end = min(k_start + block, seq_len)
            if causal and flash.causal_tile_skip(q_start, q_end, k_start):
                row.append("skipped")
            elif causal and flash.causal_tile_needs_mask(q_start, k_end):
                row.append("computed with a mask")
            else:
                row.append("computed")
        kinds.append(row)
    return kinds


def online_softmax_trace(scores, values, block: int) -> dict[str, list[float]]:
    """The running state of the online softmax for one query, after each tile of ``block`` keys.

    ``scores``: ``(L,)`` float32 scores of one query; ``values``: ``(L,)`` one coordinate of the values.
    Returns lists, one entry per tile: ``"max"`` (m), ``"sum"`` (l), ``"output"`` (acc / l) after folding it in
    with :func:`course_lib.flash.online_softmax_update`, and the exact ``"final_max"``, ``"final_sum"``,
    ``"final_output"`` of the whole row (one entry each). Defined in lesson 05.
    """
    import torch

    from course_lib import flash

    if scores.ndim != 1 or values.shape != scores.shape:
        raise ValueError(f"scores and values should be 1-D of one length, got shapes {tuple(scores.shape)} and {tuple(values.shape)}")
    m, l, acc = torch.tensor([float("-inf")]), torch.zeros(1), torch.zeros(1, 1)
    trace = {"max": [], "sum": [], "output": []}
    for start in range(0, scores.numel(), block):
        tile = slice(start, start + block)
        m, l, acc = flash.online_softmax_update(m, l, acc, scores[tile].float()[None], values[tile].float()[:, None])
        trace["max"].append(float(m[0]))
        trace["sum"].append(float(l[0]))
        trace["output"].append(float(acc[0, 0] / l[0]))
    top = float(scores.max())
    trace["final_max"] = [top]
    trace["final_sum"] = [float(torch.exp(scores.float() - top).sum())]
    trace["final_output"] = [float(torch.softmax(scores.float(), 0) @ values.float())]
    return trace


def flash_tiling(seq_len: int = 512, block: int = 64, causal: bool = False, seed: int = 0):
    """Left: the score matrix cut into tiles (computed; with ``causal``, also masked and skipped), with what sits
    in SRAM and what streams from HBM.
    Right: the online softmax of one query row, tile by tile: the running max, sum and output reach the
    exact values of the whole row at the last tile. Returns ``(figure, kinds, trace)``. Defined in lesson 05.
    """
    import torch

    kinds = flash_tile_kinds(seq_len, block, causal)
    n = len(kinds)
    fig = plt.figure(figsize=(12, 5), layout="constrained")
    grid = fig.add_gridspec(3, 2, width_ratios=[1, 1])
    left = fig.add_subplot(grid[:, 0])
    for i, row in enumerate(kinds):
        for j, kind in enumerate(row):
            left.add_patch(plt.Rectangle((j, n - 1 - i), 1, 1, facecolor=TILE_COLOURS[kind], edgecolor="grey", lw=0.6))
    q_tile = n // 2
    width = q_tile + 1 if causal else n
    left.add_patch(plt.Rectangle((0, n - 1 - q_tile), width, 1, fill=False, edgecolor="black", lw=2.2))
    left.annotate("one Q tile stays in SRAM; the K, V tiles\nstream past it from HBM, left to right",
                  xy=(width / 2, n - q_tile), xytext=(width / 2, n + 0.3), ha="center", fontsize=8,
                  arrowprops={"arrowstyle": "-|>", "lw": 1})
    counts = {kind: sum(row.count(kind) for row in kinds) for kind in (TILE_COLOURS if causal else ["computed"])}
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=TILE_COLOURS[k], edgecolor="grey") for k in counts]
    left.legend(handles, [f"{k}: {c} tiles" for k, c in counts.items()], loc="lower left", fontsize=8)
    left.set_xlim(0, n)
    left.set_ylim(0, n + 1.2)
    left.set_aspect("equal")
    left.set_xticks([0, n], ["key 0", f"{seq_len}"])
    left.set_yticks([0, n], [f"query {seq_len}", "0"])
    left.set_title(f"{'Causal s' if causal else 'S'}cores {seq_len} x {seq_len} in {block} x {block} tiles")

    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(seq_len, generator=gen)
    middle = (n // 2) * block + block // 2
    scores[middle] = scores.max() + 3  # the row's largest score, in the middle tile: the running max jumps there
    trace = online_softmax_trace(scores, torch.randn(seq_len, generator=gen), block)
    tiles = list(range(1, len(trace["max"]) + 1))
    axes = [fig.add_subplot(grid[r, 1]) for r in range(3)]
    for ax, key, colour, label in zip(axes, ("max", "sum", "output"), ("C3", "C0", "C2"),
                                      ("running max m", "running sum l of exp(score - m)", "acc / l: the output so far")):
        ax.plot(tiles, trace[key], "o-", color=colour)
        ax.axhline(trace["final_" + key][0], color="black", ls="--", lw=0.8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xticks(tiles, [] if ax is not axes[-1] else [str(t) for t in tiles])
    axes[0].set_title(f"One query's row, tile by tile (dashed: exact over the whole row)", fontsize=10)
    axes[-1].set_xlabel("K, V tiles folded in so far")
    return fig, kinds, trace
