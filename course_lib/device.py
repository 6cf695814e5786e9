"""Where to compute, and how to make runs repeatable (lesson 00)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

_VALID = ("cpu", "cuda", "mps")


def get_device() -> torch.device:
    """Return the device lessons compute on: CUDA, then Apple's MPS, then the CPU.

    The environment variable ``COURSE_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``)
    overrides the choice; asking for a device that is not present raises ``ValueError``.
    Defined in lesson 00.
    """
    wanted = os.environ.get("COURSE_DEVICE", "").strip()
    if wanted:
        kind = wanted.split(":")[0]
        if kind not in _VALID:
            raise ValueError(f"COURSE_DEVICE must be one of {_VALID} (optionally cuda:N), got {wanted!r}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"COURSE_DEVICE={wanted!r} but no CUDA GPU is available")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"COURSE_DEVICE={wanted!r} but MPS is not available")
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[torch.device]:
    """Every device type present on this machine, CPU first. Defined in lesson 00."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if torch.backends.mps.is_available():
        devices.append(torch.device("mps"))
    return devices


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's random generators (all devices).

    ``seed`` must be a non-negative int. Defined in lesson 00.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
