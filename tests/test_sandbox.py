"""The grading sandbox (course_lib.sandbox) and the data-only wire back from it (course_lib.wire)."""

from __future__ import annotations

import io
import os
import pickle
import time

import numpy as np
import pytest
import torch
from pathlib import Path

from course_lib import wire
from course_lib.sandbox import Limits, Sandbox, namespaces_available
from tests.conftest import REPO, processes_running

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


def test_a_state_dict_comes_back_as_a_plain_dict_of_tensors():
    model = torch.nn.Linear(3, 2)
    got = wire.loads_untrusted(wire.dumps(wire.encode(model.state_dict())))
    assert type(got) is dict and list(got) == ["weight", "bias"]
    assert all(type(v) is torch.Tensor for v in got.values()) and torch.equal(got["weight"], model.weight.detach())


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
    if os.geteuid() == 0:  # a user of its own, who may not enter another sandbox's folder
        assert sandbox.run_cell("print(os.getuid())").stdout == f"{sandbox.uid}\n"
        with Sandbox(timeout=3) as other:
            assert other.uid != sandbox.uid
            assert not sandbox.run_cell(f"os.listdir({other.workdir!r})").ok


@pytest.mark.skipif(not namespaces_available(), reason="without a network namespace the sandbox shares the machine's loopback")
def test_the_sandboxs_loopback_is_its_own(sandbox):
    """Its loopback is up (lesson 07's ranks meet there) but is not the machine's: a server here cannot be reached."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        reach = sandbox.run_cell(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        assert not reach.ok and reach.error["ename"] in ("ConnectionRefusedError", "TimeoutError", "OSError"), reach.error
    own = sandbox.run_cell("import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
                           "c = socket.create_connection(s.getsockname(), timeout=2); print('connected')")
    assert own.ok and own.stdout == "connected\n", own.error


@pytest.mark.skipif(os.geteuid() != 0 or not namespaces_available(), reason="only a grader that is root gives the sandbox a user of its own")
def test_a_needed_folder_that_others_may_not_enter_is_reached(monkeypatch):
    """A clone of the course in a folder made by ``mktemp -d`` (mode 700): the sandbox's user still reaches it."""
    import shutil
    import tempfile

    from course_lib import sandbox as sandbox_module

    closed = Path(tempfile.mkdtemp(prefix="closed-course-"))  # 700, right under /tmp
    try:
        (closed / "pkg").mkdir()
        (closed / "pkg" / "data.txt").write_text("inside")
        (closed / "link").symlink_to("pkg")
        needed = sandbox_module._needed_paths
        monkeypatch.setattr(sandbox_module, "_needed_paths", lambda: [*needed(), str(closed)])
        with Sandbox(timeout=30) as box:
            probe = box.run_cell(f"import os\nprint(open('{closed}/link/data.txt').read(), sorted(os.listdir('{closed}')))")
            assert probe.ok and probe.stdout == "inside ['link', 'pkg']\n", probe.error
            assert not box.run_cell(f"open('{closed}/pkg/data.txt', 'w')").ok  # still read-only
    finally:
        shutil.rmtree(closed)


def test_the_graders_environment_is_not_passed_on_and_caches_are_the_sandboxs_own(monkeypatch, tmp_path):
    # a grader that compiled something has PyTorch's cache folder in its environment; a read-only
    # folder there must not break `import torch` in the sandbox, and secrets must not reach it
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "graders-cache"))
    monkeypatch.setenv("INSTRUCTOR_TOKEN", "secret")
    with Sandbox(timeout=30) as box:
        probe = box.run_cell(
            "import os, tempfile\n"
            "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
            "print(cache_dir()); print(tempfile.gettempdir()); print(os.environ.get('INSTRUCTOR_TOKEN'))")
        assert probe.ok, probe.error
        cache, temporary, token = probe.stdout.split()
        assert Path(cache).is_relative_to(box.workdir) and temporary == box.workdir
        assert token == "None"
    assert not (tmp_path / "graders-cache").exists()


@pytest.mark.skipif(not namespaces_available(), reason="without a process namespace a detached process can outlive it")
def test_no_process_outlives_the_sandbox():
    marker = f"sleep-{os.getpid()}-{id(object())}"
    with Sandbox(timeout=5) as box:
        started = box.run_cell(f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', "
                               f"{marker!r}], start_new_session=True)\nprint(p.pid)")
        assert started.ok, started.error
        for _ in range(100):  # on a busy machine the new Python may take a moment to show up
            if processes_running(marker):
                break
            time.sleep(0.1)
        assert processes_running(marker), (started.stdout, box.run_cell("print(p.poll())").stdout)
    assert box.proc.poll() is not None
    for _ in range(50):
        if not processes_running(marker):
            break
        time.sleep(0.1)
    assert not processes_running(marker)


def test_without_namespaces_it_still_runs_and_says_so(monkeypatch):
    monkeypatch.setenv("COURSE_SANDBOX", "none")
    namespaces_available.cache_clear()
    try:
        with Sandbox(timeout=5) as box:
            assert "plain process" in box.isolation
            assert box.run_cell("print(6 * 7)").stdout == "42\n"
    finally:
        namespaces_available.cache_clear()


# --------------------------------------------------------------------------- limits for the whole notebook


def test_the_time_budget_counts_every_cell_and_then_no_cell_runs():
    with Sandbox(timeout=2, grace=2, limits=Limits(cpu_seconds=3, wall_seconds=60)) as box:
        first = box.run_cell("while True:\n    pass")
        assert first.timed_out and first.error["ename"] == "CellTimeoutError"
        second = box.run_cell("while True:\n    pass")  # one second is left: the budget stops it
        assert second.timed_out and second.error["ename"] == "BudgetSpentError" and "stopped" in second.error["evalue"]
        third = box.run_cell("print('never')")
        assert not third.ok and "was not run" in third.error["evalue"] and third.stdout == ""
        assert not box.call("print", (1,), {}).ok
        assert 3 <= box.cpu_used < 5


def test_the_wall_clock_budget_stops_a_notebook_that_waits():
    with Sandbox(timeout=30, limits=Limits(wall_seconds=3)) as box:
        start = time.monotonic()
        result = box.run_cell("import time\ntime.sleep(60)")
        assert result.error["ename"] == "BudgetSpentError" and time.monotonic() - start < 20
        assert box.run_cell("print(1)").error["ename"] == "BudgetSpentError"


def test_output_is_bounded_for_the_whole_notebook():
    with Sandbox(timeout=5, limits=Limits(output_chars=1000)) as box:
        assert box.run_cell("print('a' * 599)").stdout == "a" * 599 + "\n"
        cut = box.run_cell("print('b' * 599)").stdout
        assert cut.startswith("b" * 400) and "b" * 401 not in cut and "output cut" in cut
        assert "output cut" in box.run_cell("print('c')").stdout


@pytest.fixture(scope="module")
def small():
    with Sandbox(timeout=20, limits=Limits(memory_mib=1536, file_mib=8, work_mib=32, processes=64)) as box:
        yield box


def test_an_allocation_past_the_memory_limit_fails_in_its_cell(small):
    result = small.run_cell("import torch\nx = torch.empty(2 * 2**30, dtype=torch.uint8)")
    assert not result.ok and "allocate" in result.error["evalue"], result.error
    assert small.run_cell("y = bytearray(2 * 2**30)").error["ename"] == "MemoryError"
    assert small.run_cell("z = torch.ones(1000)\nprint(int(z.sum()))").stdout == "1000\n"


def test_a_file_past_the_size_limit_cannot_be_written(small):
    result = small.run_cell("open('big', 'wb').write(b'x' * (9 * 2**20))")
    assert not result.ok and "File too large" in result.error["evalue"], result.error
    assert small.run_cell("open('fine', 'wb').write(b'x' * 2**20)").ok


@pytest.mark.skipif(not namespaces_available(), reason="the working folder is a tmpfs only with namespaces")
def test_the_working_folder_has_a_size(small):
    cell = "for i in range(6):\n    open(f'part{i}', 'wb').write(b'x' * (7 * 2**20))"
    result = small.run_cell(cell)
    assert not result.ok and "No space left" in result.error["evalue"], result.error


@pytest.mark.skipif(os.geteuid() != 0 or not namespaces_available(), reason="the process limit needs a user of its own (a root grader)")
def test_a_fork_bomb_meets_the_process_limit(small):
    cell = """
import os, time
children = []
try:
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError as err:
    print("stopped after", len(children), type(err).__name__)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"""
    out = small.run_cell(cell).stdout
    assert out.startswith("stopped after") and int(out.split()[2]) < 64, out
