"""Conceptual figures, drawn with matplotlib from the same facts the code uses.

- :func:`transformer_architecture`: the encoder-decoder Transformer of the source text's opening
  figure (a translation model), each box labelled with the module of
  :class:`course_lib.models.EncoderDecoderModel` that computes it (lesson 02).

Each figure function returns the matplotlib ``Figure``; the notebooks show it with ``plt.show()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

__all__ = ["Box", "TRANSFORMER_BOXES", "transformer_architecture"]


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
