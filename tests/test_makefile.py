"""The Makefile's install rule, run in a copy of the course with a stand-in .venv.

The stand-in ``python`` and ``jupyter`` only write down how they were called, so these
tests install nothing and take a second.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FILES = ["Makefile", "requirements.txt", "pyproject.toml", "binder/jupyterlab-overrides.json", "binder/hide-instructor-tools"]
RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$(dirname "$0")/../../calls.log"\n'


@pytest.fixture
def course(tmp_path) -> Path:
    """A copy of the course's install files beside a .venv whose python and jupyter record their calls."""
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "jupyter"):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    return tmp_path


def setup(course: Path, *args: str) -> list[str]:
    """Run ``make setup ARGS`` in ``course``; return the calls it made to python and jupyter."""
    log = course / "calls.log"
    log.unlink(missing_ok=True)
    proc = subprocess.run(
        ["make", "-s", "setup", f"PYTHON={sys.executable}", *args], cwd=course, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_first_setup_installs_the_pins_and_hides_the_instructor_tools(course):
    calls = setup(course)
    assert "python -m pip install -r requirements.txt" in calls
    assert "python -m pip install --no-deps -e ." in calls
    assert any(c.startswith("jupyter labextension disable --level=sys_prefix @jupyter/nbgrader:menu") for c in calls)
    assert "jupyter server extension disable --sys-prefix nbgrader.server_extensions.formgrader" in calls
    assert not any("uninstall" in c for c in calls)
    assert setup(course) == [], "a second `make setup` should do nothing"


def test_a_new_torch_index_reinstalls_torch_from_it(course):
    setup(course)
    index = "https://download.pytorch.org/whl/cpu"
    calls = setup(course, f"TORCH_INDEX={index}")
    assert calls.index("python -m pip uninstall --yes torch") < calls.index(
        f"python -m pip install --extra-index-url {index} -r requirements.txt"
    ), calls
    assert (course / ".venv" / ".torch-index").read_text().strip() == index
    assert setup(course, f"TORCH_INDEX={index}") == [], "the same index again should change nothing"
    assert setup(course) == [], "a plain `make setup` keeps the torch that is installed"
    other = "https://example.org/another/index"
    assert "python -m pip uninstall --yes torch" in setup(course, f"TORCH_INDEX={other}")
