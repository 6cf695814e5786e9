"""Shared fixtures: the repository root, and the devices that tests run on.

A test that takes the ``device`` fixture runs once per device present (the CPU always,
CUDA and MPS when available). Tests marked ``gpu`` need CUDA and are skipped without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from course_lib.device import available_devices

REPO = Path(__file__).resolve().parents[1]


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        devices = available_devices()
        metafunc.parametrize("device", devices, ids=[d.type for d in devices])


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make gpu-check` on one)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One PyTorch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models gain
    nothing from threads, and on a busy machine two threads that share a core are slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def processes_running(marker: str) -> list[int]:
    """Pids of the live (not zombie) processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in open(f"/proc/{entry}/cmdline").read() and " Z " not in open(f"/proc/{entry}/stat").read():
                    found.append(int(entry))
            except OSError:
                pass
    return found
