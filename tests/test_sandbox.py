"""The grading sandbox (course_lib.sandbox) and the data-only wire back from it (course_lib.wire)."""

from __future__ import annotations

import io
import os
import pickle
import time

import numpy as np
import pytest
import torch

from course_lib import wire
from course_lib.sandbox import Sandbox, namespaces_available
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)


# --------------------------------------------------------------------------- the wire


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_only_data_comes_back_and_other_objects_keep_their_type_name():
    sent = wire.dumps(wire.encode({"t": torch.ones(2, 3).t(), "n": np.int64(3), "x": [1, 2.5, "s", None, (True,)],
                                   "sub": torch.ones(2).as_subclass(torch.nn.Parameter), "dtype": torch.int32}))
    got = wire.loads_untrusted(sent)
    assert type(got["t"]) is torch.Tensor and got["t"].stride() == (1, 3)
    assert type(got["n"]).__name__ == "int64" and got["n"] != 3 and repr(got["n"]) == "np.int64(3)"
    assert got["x"] == [1, 2.5, "s", None, (True,)] and got["dtype"] is torch.int32
    assert type(got["sub"]).__name__ == "Parameter"


def test_a_pickle_that_would_run_code_is_refused():
    buffer = io.BytesIO()
    pickle.dump(Evil(), buffer)
    with pytest.raises(pickle.UnpicklingError):
        wire.loads_untrusted(buffer.getvalue())


def test_an_oversized_message_is_refused(monkeypatch):
    monkeypatch.setattr(wire, "MAX_MESSAGE_BYTES", 100)
    with pytest.raises(ValueError, match="more than"):
        wire.loads_untrusted(wire.dumps(torch.zeros(1000)))


# --------------------------------------------------------------------------- the sandbox


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(hide=[REPO / "solutions", REPO / "tests"], timeout=3, grace=2) as box:
        yield box


def test_cells_and_calls(sandbox):
    assert sandbox.run_cell("def double(x):\n    return x * 2\nprint('defined')").stdout == "defined\n"
    result = sandbox.call("double", (torch.ones(2),), {})
    assert result.ok and torch.equal(result.value, torch.full((2,), 2.0))
    missing = sandbox.call("nowhere", (), {})
    assert not missing.ok and missing.error["ename"] == "NameError"


def test_what_a_call_does_to_its_arguments_comes_back(sandbox):
    sandbox.run_cell("def grab(t, d):\n    t.add_(1)\n    d['new'] = 1\n    return None")
    result = sandbox.call("grab", (torch.zeros(2), {"a": 0}), {})
    assert result.ok
    assert [state[0] for state in result.args] == ["value", "value"]
    assert torch.equal(result.args[0][1], torch.ones(2)) and result.args[1][1] == {"a": 0, "new": 1}


def test_a_cell_past_its_cpu_time_is_interrupted_and_the_sandbox_goes_on(sandbox):
    result = sandbox.run_cell("while True:\n    pass")
    assert not result.ok and result.timed_out and "time limit" in result.error["evalue"]
    assert sandbox.run_cell("print(1 + 1)").stdout == "2\n"


def test_a_cell_that_ignores_the_interrupt_is_stopped_and_the_cells_before_it_replayed(sandbox):
    sandbox.run_cell("kept = 41")
    restarts = sandbox.restarts
    result = sandbox.run_cell("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass")
    assert result.timed_out and "ignored the interrupt" in result.error["evalue"]
    assert sandbox.restarts == restarts + 1
    assert sandbox.run_cell("print(kept + 1)").stdout == "42\n"


def test_a_process_that_ends_costs_its_cell_only(sandbox):
    sandbox.run_cell("alive = 'yes'")
    result = sandbox.run_cell("import os\nos._exit(3)")
    assert result.error["ename"] == "ProcessEnded"
    assert sandbox.run_cell("print(alive)").stdout == "yes\n"


def test_output_is_bounded(sandbox):
    result = sandbox.run_cell("print('x' * 10_000_000)")
    assert len(result.stdout) < 200_000 and result.stdout.endswith("[output cut]\n")


@pytest.mark.skipif(not namespaces_available(), reason="no namespaces here (not Linux, or unshare is not allowed)")
def test_the_sandbox_cannot_see_hidden_files_write_outside_its_folder_or_reach_the_network(sandbox):
    assert "namespaces" in sandbox.isolation and "but" not in sandbox.isolation, sandbox.isolation
    probes = {
        "os.listdir(%r)" % str(REPO / "solutions"): "PermissionError",
        "open(%r, 'w')" % str(REPO / "written-by-a-submission"): "OSError",
        "open('/tmp/written-by-a-submission', 'w')": "OSError",
        "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)": "OSError",
        "open('/proc/sys/kernel/hostname', 'w')": "OSError",
    }
    sandbox.run_cell("import os")
    for code, kind in probes.items():
        result = sandbox.run_cell(code)
        assert not result.ok, f"{code} worked in the sandbox"
        assert result.error["ename"] in ("PermissionError", "OSError", "ConnectionRefusedError", kind), (code, result.error)
    assert not (REPO / "written-by-a-submission").exists()
    assert sandbox.run_cell("open('mine.txt', 'w').write('ok')").ok  # its own folder is writable
    assert sandbox.run_cell("print(sorted(os.listdir('/dev')))").stdout.strip() == str(sorted(["full", "null", "random", "shm", "urandom", "zero"]))
    if os.geteuid() == 0:
        assert sandbox.run_cell("print(os.getuid())").stdout == "65534\n"


def _processes_running(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in open(f"/proc/{entry}/cmdline").read() and " Z " not in open(f"/proc/{entry}/stat").read():
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not namespaces_available(), reason="without a process namespace a detached process can outlive it")
def test_no_process_outlives_the_sandbox():
    marker = f"sleep-{os.getpid()}-{id(object())}"
    with Sandbox(timeout=5) as box:
        box.run_cell(f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}],"
                     " start_new_session=True)")
        assert _processes_running(marker)
    assert box.proc.poll() is not None
    for _ in range(50):
        if not _processes_running(marker):
            break
        time.sleep(0.1)
    assert not _processes_running(marker)


def test_without_namespaces_it_still_runs_and_says_so(monkeypatch):
    monkeypatch.setenv("COURSE_SANDBOX", "none")
    namespaces_available.cache_clear()
    try:
        with Sandbox(timeout=5) as box:
            assert "plain process" in box.isolation
            assert box.run_cell("print(6 * 7)").stdout == "42\n"
    finally:
        namespaces_available.cache_clear()
