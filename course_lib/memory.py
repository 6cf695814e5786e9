"""Memory: how many bytes tensors and models take (lesson 00; lesson 03 builds on it)."""

from __future__ import annotations

import torch


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes taken by the elements of ``t``: ``t.numel() * t.element_size()``, as a Python ``int``.

    A view counts its own elements, not the whole storage it looks into. Defined in lesson 00.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"t must be a torch.Tensor, got {type(t).__name__}")
    return t.numel() * t.element_size()
