"""Lesson 08: prompt tuning from scratch, proved equal to ``peft``'s ``PromptTuningConfig``.

The model stays frozen; what trains is a few *virtual tokens*: ``n_virtual`` free vectors of
the model's width, put in front of the embeddings of every input. They are not vocabulary
tokens (no id, no row of the embedding table): gradient descent may move them anywhere in
the embedding space. ``n_virtual * d_model`` numbers train, whatever the model's size.
"""

from __future__ import annotations

import torch
from torch import nn


class SoftPrompt(nn.Module):
    """A frozen :class:`~course_lib.models.DecoderLM` behind ``n_virtual`` trainable vectors. Defined in lesson 08.

    ``forward(input_ids, cache=None)``: ``(batch, seq)`` ids -> logits ``(batch, n_virtual + seq,
    vocab)``; the first ``n_virtual`` positions are the prompt's. With a KV cache that already
    holds the prompt (decoding after the first step) the ids are fed alone: ``(batch, seq, vocab)``.
    So :func:`course_lib.kvcache.generate` and the lesson's evaluation work unchanged. ``init``: the starting vectors
    ``(n_virtual, d_model)``; by default the embeddings of ``n_virtual`` random vocabulary tokens
    (peft's ``RANDOM`` initialisation draws them from the same table).
    """

    def __init__(self, model: nn.Module, n_virtual: int, init: torch.Tensor | None = None):
        super().__init__()
        if isinstance(n_virtual, bool) or not isinstance(n_virtual, int) or n_virtual < 1:
            raise ValueError(f"n_virtual must be a positive int, got {n_virtual!r}")
        d_model, weight = model.config.d_model, model.embed.weight
        if init is None:
            init = weight[torch.randint(0, weight.shape[0], (n_virtual,))]
        if tuple(init.shape) != (n_virtual, d_model):
            raise ValueError(f"init should have shape ({n_virtual}, {d_model}), got {tuple(init.shape)}")
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.prompt = nn.Parameter(init.detach().clone().to(weight.dtype))

    @property
    def n_virtual(self) -> int:
        return self.prompt.shape[0]

    @property
    def config(self):
        """The frozen model's config (``generate`` reads ``n_layers`` from it)."""
        return self.model.config

    def forward(self, input_ids: torch.Tensor, cache=None) -> torch.Tensor:
        x = self.model.embed(input_ids)                                   # (B, L, d_model)
        if cache is not None and len(cache) > 0:                          # the prompt is in the cache already
            return self.model.forward_embeddings(x, cache)
        prompt = self.prompt.unsqueeze(0).expand(x.shape[0], -1, -1)      # (B, P, d_model)
        return self.model.forward_embeddings(torch.cat([prompt, x], dim=1), cache)
