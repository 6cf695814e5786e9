"""A learner's notebook, run where it cannot reach the grader (lesson 00 explains grading).

When a notebook is graded, its cells run in a separate Python process, the *sandbox*, and
the checks run in the grader's own process, which never executes learner code. A check
calls the learner's function through :class:`Sandbox.call`: the arguments are copied into
the sandbox, the function runs there under the exercise's rules
(:mod:`course_lib.checks.guard`), and only data comes back (:mod:`course_lib.wire`). So
nothing a notebook does (patching the checks or PyTorch, hooks on IPython, rewriting test
cells) can change a verdict.

On Linux the sandbox gets its own mount, process and network namespaces (``unshare``): the
whole filesystem is read-only except its working folder, the instructor's files
(solutions, gradebook, submissions) are hidden, ``/dev`` holds only null, zero, full,
random and urandom, no network, and every process it starts ends with it. Then it drops
every capability. Where that is not possible (macOS, a container that forbids namespaces)
it runs as a plain process in a fresh folder, and :attr:`Sandbox.isolation` says so.

A cell that runs past its time limit is interrupted; one that ignores the interrupt gets
the process killed, and a new sandbox replays the cells before it (not that one), so it
costs only its own cell. :class:`Limits` bounds the whole notebook too: CPU and wall time in
all, address space, processes, file sizes, the working folder's size and the output kept.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import wire

MAX_OUTPUT_CHARS = 100_000  # per cell; the rest is cut
KEEP_DEVICES = ("null", "zero", "full", "random", "urandom")
MiB = 1 << 20
# the grader's environment variables a sandbox is started with (and LC_*); see Sandbox._environment
PASSED_ON = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "OMP_NUM_THREADS",
                       "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES"})


@dataclass
class Limits:
    """What one notebook may use in the sandbox, in all (the per-cell limit is ``Sandbox.timeout``).

    - ``cpu_seconds``, ``wall_seconds``: CPU time of the sandbox's Python and elapsed time, over
      every cell and call together; once spent, the remaining cells are not run and the
      remaining calls fail at once.
    - ``memory_mib``: address space of each of its processes (``RLIMIT_AS``); an allocation past
      it fails with an out-of-memory error in the learner's cell.
    - ``processes``: processes and threads of the sandbox's user (``RLIMIT_NPROC``; enforced where
      the grader is root, which gives each sandbox a user of its own).
    - ``file_mib``: the largest file it may write (``RLIMIT_FSIZE``); ``work_mib``: the size of
      its working folder (a tmpfs, where namespaces are available).
    - ``output_chars``: what is kept of everything its cells and calls print, in all.
    """

    cpu_seconds: float = 180
    wall_seconds: float = 600
    memory_mib: int = 4096
    processes: int = 256
    file_mib: int = 256
    work_mib: int = 512
    output_chars: int = 1_000_000

    def apply(self) -> None:
        """Set the resource limits of this process (inherited by every process it starts); Unix only."""
        import resource

        wanted = {
            "RLIMIT_AS": self.memory_mib * MiB, "RLIMIT_FSIZE": self.file_mib * MiB, "RLIMIT_CORE": 0,
            "RLIMIT_NOFILE": 1024, "RLIMIT_CPU": int(self.cpu_seconds) + 30,
        }
        if os.environ.get("COURSE_SANDBOX_UID") is not None:  # a user of its own: count its processes
            wanted["RLIMIT_NPROC"] = self.processes
        for name, value in wanted.items():
            kind = getattr(resource, name, None)
            if kind is None:
                continue
            soft, hard = resource.getrlimit(kind)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(kind, (value, value))

    def describe(self) -> str:
        return (f"{self.cpu_seconds:g} s of CPU time and {self.wall_seconds:g} s in all, {self.memory_mib} MiB of "
                f"address space, {self.processes} processes, files up to {self.file_mib} MiB, a {self.work_mib} MiB "
                f"working folder, {self.output_chars:,} characters of output")


# =========================================================================== inside the sandbox


class _Capture(io.TextIOBase):
    """A bounded text buffer standing in for sys.stdout or sys.stderr."""

    def __init__(self, limit: int = MAX_OUTPUT_CHARS):
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit
        self.cut = False

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        room = self.limit - self.size
        if room > 0:
            self.parts.append(text[:room])
            self.size += min(len(text), room)
        if len(text) > room:
            self.cut = True
        return len(text)

    def text(self) -> str:
        return "".join(self.parts) + ("\n[output cut]\n" if self.cut else "")


@contextlib.contextmanager
def _captured():
    out, err = _Capture(), _Capture()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        sys.stdout, sys.stderr = saved


def _error(err: BaseException) -> dict:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return {"ename": type(err).__name__, "evalue": str(err)[:5000], "traceback": "".join(lines)[-20000:]}


def _sync_state(value):
    """What the grader needs to see of an argument after a call: its contents if it can be changed in place."""
    if hasattr(value, "sandbox_state"):
        return ("state", wire.encode(value.sandbox_state()))
    if isinstance(value, (list, dict)) or type(value).__name__ == "Tensor" or isinstance(value, tuple):
        return ("value", wire.encode(value))
    return None


class _Server:
    """The sandbox's side: run cells in an IPython shell, and call the learner's functions for the checks."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd = read_fd, write_fd
        from IPython.core.interactiveshell import InteractiveShell

        class Shell(InteractiveShell):
            def enable_gui(self, gui=None):  # no event loop here: figures are drawn off-screen (Agg)
                pass

        self.shell = Shell.instance(colors="NoColor", history_length=0)
        self.shell.history_manager.enabled = False
        # what the lessons import: loaded before any learner code, as a kernel would have them
        import torch  # noqa: F401

        from course_lib.checks import guard

        self.guard = guard

    def reply(self, message: dict) -> None:
        try:
            data = wire.dumps(message)
        except Exception as err:  # what the answer returned or left in its arguments cannot be sent
            error = {"ename": "TypeError", "evalue": f"what the function returned or did to its arguments cannot be "
                     f"sent back to the grader: {type(err).__name__}: {err}", "traceback": ""}
            data = wire.dumps({"ok": False, "error": error, "stdout": message.get("stdout", ""), "stderr": ""})
        wire.write_frame(self.write_fd, data)

    def serve(self) -> None:
        while True:
            try:
                message = wire.loads_trusted(wire.read_frame(self.read_fd))
            except EOFError:
                return
            except KeyboardInterrupt:  # an interrupt that came after its cell had finished
                continue
            op = message["op"]
            try:
                if op == "cell":
                    self.reply(self.run_cell(message["source"]))
                elif op == "call":
                    self.reply(self.call(message))
                elif op == "exit":
                    return
            except KeyboardInterrupt:
                self.reply({"ok": False, "error": {"ename": "KeyboardInterrupt", "evalue": "interrupted", "traceback": ""},
                            "stdout": "", "stderr": ""})

    def run_cell(self, source: str) -> dict:
        with _captured() as (out, err):
            result = self.shell.run_cell(source, store_history=False)
        failure = result.error_in_exec or result.error_before_exec
        return {"ok": failure is None, "error": _error(failure) if failure is not None else None,
                "stdout": out.text(), "stderr": err.text()}

    def call(self, message: dict) -> dict:
        name = message["name"]
        fn = self.shell.user_ns.get(name)
        if fn is None:
            err = NameError(f"name {name!r} is not defined: run the cell that defines it")
            return {"ok": False, "error": _error(err), "stdout": "", "stderr": ""}
        args, kwargs = message["args"], message["kwargs"]
        rules = self.guard.Rules.from_dict(message["rules"]) if message["rules"] else None
        if message.get("workers") or message.get("driver"):
            return self.call_driver(fn, rules, message)
        value, failure, violations = None, None, None
        with _captured() as (out, err):
            try:
                if rules is None:
                    value = fn(*args, **kwargs)
                else:
                    with self.guard.watch(rules) as seen:
                        try:
                            value = fn(*args, **kwargs)
                        finally:
                            if seen:
                                violations = seen.message(name)
            except Exception as exc:  # the learner's error, reported to the check
                failure = exc
        return {
            "ok": failure is None, "value": wire.encode(value), "error": _error(failure) if failure else None,
            "violations": violations, "args": [_sync_state(a) for a in args],
            "kwargs": {k: _sync_state(v) for k, v in kwargs.items()}, "stdout": out.text(), "stderr": err.text(),
        }

    def call_driver(self, fn, rules, message: dict) -> dict:
        """Run a check's driver here, handing it the learner's ``fn`` watched by ``rules`` (``answer``).

        ``message["driver"]`` names it (``"course_lib.checks.<module>:<function>"``) and it runs once,
        ``driver(answer, *args)``: for what cannot cross to the grader, such as the gradients a
        learner's loss lets through. With ``message["workers"]`` (the driver, a world size and a
        timeout) rank r of a process group of forked copies of this process runs
        ``driver(r, world_size, answer, *args)``. The reply's value is what the driver returned (a
        list in rank order with workers), as data only.
        """
        from course_lib.distributed import run_forked

        spec = message.get("workers") or {"driver": message["driver"]}
        try:
            driver = _driver(spec["driver"])
        except Exception as err:  # noqa: BLE001  (the check named a driver that is not there)
            return {"ok": False, "error": _error(err), "stdout": "", "stderr": ""}
        answer = fn if rules is None else self.guard.watched(fn, rules)
        value, failure = None, None
        with _captured() as (out, err):
            try:
                if "world_size" in spec:
                    value = run_forked(driver, int(spec["world_size"]), answer, *message["args"], timeout=float(spec["timeout"]))
                else:
                    value = driver(answer, *message["args"])
            except Exception as exc:  # the learner's error, the watch's verdict, or a rank that raised, died or hung
                failure = exc
        return {"ok": failure is None, "value": wire.encode(value), "error": _error(failure) if failure else None,
                "violations": None, "args": [], "kwargs": {}, "stdout": out.text(), "stderr": err.text()}


def _driver(spec: str):
    """The function ``"course_lib.checks.<module>:<function>"`` names (a check's own code, run in the sandbox)."""
    module, _, qualname = str(spec).partition(":")
    if not module.startswith("course_lib.checks."):
        raise ValueError(f"a driver must live in course_lib.checks, got {spec!r}")
    driver = importlib.import_module(module)
    for part in qualname.split("."):
        driver = getattr(driver, part)
    return driver


def _serve_main(read_fd: int, write_fd: int, isolation: str) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    limits = os.environ.pop("COURSE_SANDBOX_LIMITS", None)
    if limits and sys.platform != "win32":
        Limits(**json.loads(limits)).apply()
    server = _Server(read_fd, write_fd)
    server.reply({"ok": True, "ready": True, "isolation": isolation, "pid": os.getpid()})
    server.serve()


# --------------------------------------------------------------------------- isolation (Linux, as namespace root)


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        points.append(point)
    return points


def _blocked_ancestor(path: str) -> str | None:
    """The highest folder above ``path``, or ``path`` itself, that other users may not enter, or None.

    ``/root`` is often 700, and so is a folder made by ``mktemp -d`` that holds a clone of the course.
    """
    parts = Path(path).resolve().parts
    for i in range(2, len(parts) + 1):
        folder = os.path.join(*parts[:i])
        if not os.stat(folder).st_mode & 0o001:
            return folder
    return None


def _make_reachable(paths: list[str], stage: str) -> list[str]:
    """Let an unprivileged user reach ``paths`` whose ancestors are closed, without opening anything else.

    The closed ancestor is covered by an empty folder in which only the paths themselves
    reappear (bound from a staging folder). Returns the problems met.
    """
    problems, moved = [], {}
    outermost = [p for p in sorted(set(paths)) if not any(p.startswith(q.rstrip(os.sep) + os.sep) for q in paths if q != p)]
    for number, path in enumerate(outermost):
        blocked = _blocked_ancestor(path)
        if blocked is None:
            continue
        target = os.path.join(stage, f"reach{number}")
        os.makedirs(target)
        if not _mount("--bind", path, target):
            problems.append(f"{path} could not be reached")
            continue
        moved.setdefault(blocked, []).append((path, target))
    for blocked, pairs in moved.items():
        # a closed folder that is itself needed is listed (Python reads the folders on its path)
        itself = any(path == blocked for path, _ in pairs)
        _mount("-t", "tmpfs", "-o", f"mode={'755' if itself else '711'},nosuid,nodev", "tmpfs", blocked)
        for path, target in pairs:
            if path == blocked:  # the folder's own mode cannot change: its entries reappear one by one
                _bind_entries(target, path)
                continue
            os.makedirs(path, exist_ok=True)
            for parent in Path(path).parents:
                if str(parent).startswith(blocked):
                    os.chmod(parent, 0o711)
            _mount("--bind", target, path)
    return problems


def _bind_entries(source: str, folder: str) -> None:
    """Make every entry of ``source`` appear in the (empty, open) ``folder``: bound, or a symlink copied."""
    for name in os.listdir(source):
        src, dst = os.path.join(source, name), os.path.join(folder, name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
            continue
        if os.path.isdir(src):
            os.mkdir(dst)
        else:
            Path(dst).touch()
        _mount("--bind", src, dst)


def _loopback_up() -> bool:
    """Bring up the loopback interface of the sandbox's own network namespace (``ip link set lo up``).

    Only the sandbox's processes are on it: the checks of lesson 07 run a process group over
    it; nothing outside the sandbox can be reached.
    """
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH14s", b"lo", 0, bytes(14))
            flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, request)[:18])[1]
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, bytes(14)))
        return True
    except OSError:
        return False


def _isolate(workdir: str, hide: list[str], reach: list[str]) -> list[str]:
    """Inside fresh namespaces: read-only everything, a bare /dev, hidden secrets, a writable workdir.

    Returns what could not be done (empty when all went as planned).
    """
    problems = []
    if not _loopback_up():
        problems.append("no loopback network (the process groups of lesson 07 cannot meet)")
    stage = tempfile.mkdtemp(prefix="stage-", dir=workdir)
    _mount("--make-rprivate", "/")
    problems += _make_reachable(reach, stage)
    for name in KEEP_DEVICES:
        Path(stage, name).touch()
        _mount("--bind", f"/dev/{name}", f"{stage}/{name}")
    if not _mount("-t", "tmpfs", "-o", "mode=755,nosuid", "tmpfs", "/dev"):
        problems.append("/dev could not be replaced")
    for name in KEEP_DEVICES:
        Path("/dev", name).touch()
        _mount("--bind", f"{stage}/{name}", f"/dev/{name}")
    os.makedirs("/dev/shm", exist_ok=True)
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/dev/shm")
    problems += _small_workdir(workdir, stage, reach)
    for point in sorted(set(_mount_points()), key=len):
        if point == "/proc" or point.startswith(("/proc/", "/dev")):
            continue
        if not _mount("-o", "remount,bind,ro,nosuid,nodev", point) and point == "/":
            problems.append("the root filesystem could not be made read-only")
    for path in hide:
        if os.path.isdir(path):
            ok = _mount("-t", "tmpfs", "-o", "ro,mode=000", "tmpfs", path)
        elif os.path.exists(path):
            ok = _mount("--bind", "/dev/null", path)
        else:
            continue
        if not ok:
            problems.append(f"{path} could not be hidden")
    if not (_mount("--bind", workdir, workdir) and _mount("-o", "remount,bind,rw,nosuid,nodev", workdir)):
        problems.append("the working folder could not be made writable")
    return problems


def _small_workdir(workdir: str, stage: str, reach: list[str]) -> list[str]:
    """Put the working folder, with a copy of its files, on a tmpfs of ``COURSE_SANDBOX_WORK_MIB`` MiB.

    Where nothing the sandbox needs (the interpreter, ``course_lib``) lies beside the working
    folder, the tmpfs covers the folder that holds it (``/tmp``), so that the working folders of
    other sandboxes are out of sight as well.
    """
    size = os.environ.get("COURSE_SANDBOX_WORK_MIB")
    if not size:
        return []
    parent = os.path.dirname(workdir)
    covers_parent = not any(os.path.commonpath([parent, os.path.realpath(p)]) == parent for p in reach)
    uid = os.environ.get("COURSE_SANDBOX_UID")
    holder = tempfile.mkdtemp(prefix="work-", dir=stage)
    owner = ",mode=755" if covers_parent else (f",uid={uid},gid={uid},mode=700" if uid is not None else ",mode=777")
    if not _mount("-t", "tmpfs", "-o", f"size={int(size)}m,nosuid,nodev{owner}", "tmpfs", holder):
        return ["the working folder's size could not be limited"]
    inside = Path(holder) / os.path.basename(workdir) if covers_parent else Path(holder)
    copy_plain_files(Path(workdir), inside, skip=lambda item: str(item) == stage)
    if uid is not None:  # the learner's files are the learner's, as in their own kernel
        for item in [inside, *inside.rglob("*")]:
            os.lchown(item, int(uid), int(uid))
    os.chmod(inside, 0o700 if uid is not None else 0o777)
    if not _mount("--move", holder, parent if covers_parent else workdir):
        return ["the working folder's size could not be limited"]
    return []


def _isolate_main(args) -> None:
    problems = _isolate(args.workdir, args.hide, args.reach)
    os.chdir(args.workdir)  # the folder as now mounted (writable), not the read-only one below it
    unprivileged = os.environ.get("COURSE_SANDBOX_UID") is not None
    who = f"a user of its own (uid {os.environ['COURSE_SANDBOX_UID']})" if unprivileged else "no capabilities"
    isolation = f"namespaces (mount, pid, network), read-only filesystem, instructor files hidden, {who}"
    if problems:
        isolation += "; but " + "; ".join(problems)
    command = [sys.executable, "-m", "course_lib.sandbox", "serve", "--read-fd", str(args.read_fd),
               "--write-fd", str(args.write_fd), "--isolation", isolation]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        command[-1] = isolation.replace(who, "capabilities kept (no setpriv)")
    elif unprivileged:
        uid = os.environ["COURSE_SANDBOX_UID"]
        command = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                   "--bounding-set=-all", "--no-new-privs", *command]
    else:
        command = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", *command]
    os.execv(command[0], command)


# =========================================================================== in the grader


class SandboxError(RuntimeError):
    """The sandbox could not start, or broke the protocol."""


@dataclass
class CellResult:
    """What a cell printed and how it ended."""

    ok: bool
    stdout: str = ""
    stderr: str = ""
    error: dict | None = None  # {"ename", "evalue", "traceback"}
    timed_out: bool = False


@dataclass
class CallResult:
    """What a call of the learner's function returned, raised, broke and printed."""

    ok: bool
    value: object = None
    error: dict | None = None
    violations: str | None = None
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False


def copy_plain_files(src: Path, dest: Path, skip=lambda path: False) -> None:
    """Copy the regular files and folders under ``src`` into ``dest``; links and special files are left out.

    A submitted folder is the learner's: a link in it could point at the instructor's files.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if skip(item) or item.is_symlink():
            continue
        if item.is_dir():
            copy_plain_files(item, dest / item.name, skip)
        elif item.is_file():
            shutil.copyfile(item, dest / item.name)


_sandboxes_started = itertools.count()


def _own_uid() -> int:
    """A user id that no account and no other sandbox has: from this process's id and a count of its sandboxes."""
    return 3_000_000_000 + os.getpid() * 64 + next(_sandboxes_started) % 64


def die_with_parent() -> None:
    """In the child, before it runs: be killed when the grader's process ends (Linux), so that no sandbox outlives it."""
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _needed_paths() -> list[str]:
    """What the sandbox's Python must read: the interpreter, its packages and course_lib."""
    paths = {sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[1]), os.path.realpath(sys.executable)}
    paths |= {os.path.dirname(os.path.realpath(p)) for p in (sys.executable,)}
    return sorted(p for p in paths if os.path.isdir(p))


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether ``unshare`` can give the sandbox its own namespaces here (Linux with user namespaces, or root)."""
    if sys.platform != "linux" or shutil.which("unshare") is None or os.environ.get("COURSE_SANDBOX") == "none":
        return False
    probe = subprocess.run(_unshare_prefix() + ["true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def _unshare_prefix() -> list[str]:
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]


class Sandbox:
    """The learner's notebook in its own process; see the module docstring.

    ``hide``: paths the sandbox must not see (the instructor's files). ``files``: a folder
    whose contents are copied into the sandbox's working folder (the notebook's own folder,
    for data files it reads). ``timeout``: CPU seconds a cell or a call may use (all threads of
    the sandbox's Python together), so that a busy machine does not cut honest work short;
    ``wall_timeout`` (default ten times as long) stops a cell that waits without computing.
    """

    def __init__(self, hide=(), files: Path | None = None, timeout: float = 60, wall_timeout: float | None = None,
                 grace: float = 5, limits: Limits | None = None):
        self.hide = [str(Path(p).resolve()) for p in hide]
        self.files = files
        self.timeout, self.grace = timeout, grace
        self.wall_timeout = wall_timeout if wall_timeout is not None else 10 * timeout
        self.limits = limits or Limits()
        self.cpu_used = self.wall_used = 0.0  # by every cell and call so far (replays included)
        self.output_left = self.limits.output_chars
        self.history: list[str] = []  # cells to replay after a restart
        self.isolation = "not started"
        self.restarts = 0
        self.proc: subprocess.Popen | None = None
        # where the grader is root, each sandbox runs as a user of its own (no name, no files, no
        # other processes), so that its process limit counts only its own processes
        self.uid = _own_uid() if os.geteuid() == 0 else None
        self.workdir = tempfile.mkdtemp(prefix="course-sandbox-")
        if files is not None and Path(files).is_dir():
            copy_plain_files(Path(files), Path(self.workdir), skip=lambda p: p.suffix == ".ipynb" or p.name == ".ipynb_checkpoints")
        if self.uid is not None:  # only this sandbox's user may enter its folder
            os.chown(self.workdir, self.uid, self.uid)
            os.chmod(self.workdir, 0o700)
        else:
            os.chmod(self.workdir, 0o777)
        self._start()

    # ----------------------------------------------------------------- process

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = self._environment()
        use_namespaces = namespaces_available()
        if use_namespaces:
            command = _unshare_prefix() + [sys.executable, "-m", "course_lib.sandbox", "isolate",
                                           "--read-fd", str(to_child_r), "--write-fd", str(from_child_w),
                                           "--workdir", self.workdir]
            command += [f"--hide={p}" for p in self.hide] + [f"--reach={p}" for p in _needed_paths()]
        else:
            command = [sys.executable, "-m", "course_lib.sandbox", "serve", "--read-fd", str(to_child_r),
                       "--write-fd", str(from_child_w), "--isolation", "a plain process (no namespaces here)"]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command, pass_fds=(to_child_r, from_child_w), cwd=self.workdir, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     start_new_session=True, preexec_fn=die_with_parent)
        os.close(to_child_r)
        os.close(from_child_w)
        self._to, self._from = to_child_w, from_child_r
        deadline = time.monotonic() + 300
        ready = self._receive(lambda: time.monotonic() > deadline or self.proc.poll() is not None)
        if ready is None or not ready.get("ready"):
            self.close()
            raise SandboxError(f"the grading sandbox did not start:\n{self._stderr_tail()}")
        self.isolation = ready["isolation"]
        self._pid = self._serve_pid()

    def _environment(self) -> dict:
        """What the sandbox's Python is started with: a few named variables of the grader's, no more.

        The grader's environment may hold secrets (tokens, passwords) and paths into the
        instructor's folders (caches that PyTorch records there, such as
        ``TORCHINDUCTOR_CACHE_DIR``), so only :data:`PASSED_ON` is passed on; every cache and
        temporary folder is the sandbox's working folder.
        """
        env = {k: v for k, v in os.environ.items() if k in PASSED_ON or k.startswith("LC_")}
        if self.uid is not None:  # the grader is root: the sandbox runs as a user of its own
            env["COURSE_SANDBOX_UID"] = str(self.uid)
        limits = {k: getattr(self.limits, k) for k in ("cpu_seconds", "memory_mib", "processes", "file_mib")}
        env["COURSE_SANDBOX_LIMITS"] = json.dumps(limits)
        env["COURSE_SANDBOX_WORK_MIB"] = str(self.limits.work_mib)
        package_parent = str(Path(__file__).resolve().parents[1])
        # one thread: CPU time then measures the work, not threads spinning while they wait for a core
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(HOME=self.workdir, TMPDIR=self.workdir, MPLBACKEND="Agg", IPYTHONDIR=f"{self.workdir}/.ipython",
                   MPLCONFIGDIR=f"{self.workdir}/.matplotlib", XDG_CACHE_HOME=f"{self.workdir}/.cache",
                   TORCHINDUCTOR_CACHE_DIR=f"{self.workdir}/.cache/torchinductor",
                   TRITON_CACHE_DIR=f"{self.workdir}/.cache/triton", HF_HUB_OFFLINE="1",
                   PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=package_parent)
        return env

    def _serve_pid(self) -> int | None:
        """The pid of the process that runs the cells (a child of ``unshare`` when namespaces are used)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids = children.read_text().split()
            if pids and Path(f"/proc/{pids[0]}/cmdline").exists() and "unshare" in Path(f"/proc/{self.proc.pid}/cmdline").read_text():
                return int(pids[0])
        return self.proc.pid

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-4000:].decode(errors="replace")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for fd in (getattr(self, "_to", None), getattr(self, "_from", None)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to = self._from = None

    def close(self) -> None:
        """End the sandbox, every process it started, and delete its folder."""
        self._kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------- messages

    def _send(self, message: dict) -> None:
        wire.write_frame(self._to, wire.dumps(message))

    def _cpu_seconds(self) -> float | None:
        """CPU seconds (user + system, all threads) the sandbox's Python has used, where /proc tells."""
        try:
            fields = Path(f"/proc/{self._pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _budget(self, cpu_seconds: float, wall_seconds: float):
        """A function that says True once ``cpu_seconds`` of the sandbox's CPU time, or ``wall_seconds``, have gone by."""
        start_cpu, start_wall = self._cpu_seconds(), time.monotonic()

        def spent() -> bool:
            wall = time.monotonic() - start_wall
            if wall > wall_seconds:
                return True
            now = self._cpu_seconds()
            if start_cpu is None or now is None:  # no /proc here: the limit counts wall time
                return wall > cpu_seconds
            return now - start_cpu > cpu_seconds

        return spent

    def _read(self, size: int, spent) -> bytes | None:
        """``size`` bytes from the sandbox, or None once ``spent()`` says time is up or when it has died."""
        chunks, left = [], size
        while left:
            ready = select.select([self._from], [], [], 0.2)[0]
            if not ready and spent():
                self._in_sync = not chunks
                return None
            if not ready:
                continue
            chunk = os.read(self._from, min(left, 1 << 20))
            if not chunk:
                self._in_sync = False
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _receive(self, spent) -> dict | None:
        """The next message, or None once ``spent()`` is true or when the process died."""
        header = self._read(8, spent)
        if header is None:
            return None
        size = int.from_bytes(header, "little")
        deadline = time.monotonic() + 120  # the message has begun: the rest follows at once
        body = self._read(size, lambda: time.monotonic() > deadline) if size <= wire.MAX_MESSAGE_BYTES else None
        if body is None:
            self._in_sync = False
            return None
        try:
            message = wire.loads_untrusted(body)
        except Exception as err:  # noqa: BLE001  (what the sandbox sent is not data)
            text = f"what the function returned or did to its arguments could not be read back: {err}"
            message = {"ok": False, "error": {"ename": "TypeError", "evalue": text, "traceback": ""}}
        return message if isinstance(message, dict) else None

    def _exchange(self, message: dict) -> tuple[dict | None, str]:
        """Send ``message`` and wait for the reply; past the time limit interrupt it, then kill the sandbox.

        Returns (reply, how): how is "ok", "interrupted" (past the time limit, then stopped by
        the interrupt), "killed" (it ignored the interrupt) or "died" (the process ended on its
        own). After "killed" or "died" the sandbox is restarted and its history replayed.
        """
        cpu_left = self.limits.cpu_seconds - self.cpu_used
        wall_left = self.limits.wall_seconds - self.wall_used
        if cpu_left <= 0 or wall_left <= 0:
            return None, "spent"
        cpu_limit, wall_limit = min(self.timeout, cpu_left), min(self.wall_timeout, wall_left)
        self._budget_bound = cpu_limit < self.timeout or wall_limit < self.wall_timeout
        pid, cpu_before, wall_before = self._pid, self._cpu_seconds(), time.monotonic()
        reply, how = self._exchange_within(message, cpu_limit, wall_limit)
        wall = time.monotonic() - wall_before
        cpu_after = self._cpu_seconds() if self._pid == pid and how in ("ok", "interrupted") else None
        self.wall_used += wall
        if cpu_before is not None and cpu_after is not None:
            self.cpu_used += max(0.0, cpu_after - cpu_before)
        else:  # the process was killed or died, and its count with it: charge what it was given, at most
            self.cpu_used += min(cpu_limit, wall)
        if how in ("killed", "died"):
            self.restart()
        return reply, how

    def _exchange_within(self, message: dict, cpu_seconds: float, wall_seconds: float) -> tuple[dict | None, str]:
        self._in_sync = True
        try:
            self._send(message)
        except OSError:
            return None, "died"
        reply = self._receive(self._budget(cpu_seconds, wall_seconds))
        if reply is not None:
            return reply, "ok"
        if self._in_sync and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGINT)
            deadline = time.monotonic() + self.grace
            reply = self._receive(lambda: time.monotonic() > deadline)
            if reply is not None:
                return reply, "interrupted"
            how = "killed"
        else:
            how = "died"
        self._kill()
        return None, how

    def restart(self) -> None:
        """A fresh sandbox with every cell of the history run again (their output is not kept)."""
        self._kill()
        self.restarts += 1
        self._start()
        history, self.history = self.history, []
        for source in history:
            self.run_cell(source, remember=True)

    # ----------------------------------------------------------------- what the grader calls

    def run_cell(self, source: str, remember: bool = True) -> CellResult:
        """Run one code cell; past the time limit it is interrupted (or the process killed) and reported."""
        reply, how = self._exchange({"op": "cell", "source": source})
        if how in ("killed", "died", "spent"):
            return CellResult(False, error=self._stopped(how, "the cell"), timed_out=how != "died")
        if remember:
            self.history.append(source)
        result = CellResult(bool(reply.get("ok")), self._keep(reply.get("stdout")), self._keep(reply.get("stderr")),
                            reply.get("error"), how == "interrupted")
        if how == "interrupted":
            result.ok, result.error = False, self._stopped(how, "the cell")
        return result

    def call(self, name: str, args: tuple, kwargs: dict, rules: dict | None = None, workers: dict | None = None,
             driver: str | None = None) -> CallResult:
        """Call the learner's function ``name`` with copies of ``args`` and ``kwargs``, watched by ``rules``.

        With ``workers`` (``{"driver": "course_lib.checks.<module>:<function>", "world_size": N,
        "timeout": seconds}``) the call runs the driver on N ranks of a process group instead,
        each handing it the learner's function (see ``_Server.call_driver``). With ``driver``
        (``"course_lib.checks.<module>:<function>"``) the sandbox runs ``driver(function, *args)`` once
        and sends back what it returns (see ``_Server.call_driver``).
        """
        reply, how = self._exchange({"op": "call", "name": name, "args": tuple(args), "kwargs": dict(kwargs),
                                     "rules": rules, "workers": workers, "driver": driver})
        if how != "ok":
            return CallResult(False, error=self._stopped(how, name), timed_out=how != "died")
        return CallResult(bool(reply.get("ok")), reply.get("value"), reply.get("error"), reply.get("violations"),
                          list(reply.get("args") or []), dict(reply.get("kwargs") or {}),
                          self._keep(reply.get("stdout")), self._keep(reply.get("stderr")))

    def _keep(self, text) -> str:
        """What is kept of ``text`` printed by the learner's code: the notebook's output limit counts it all."""
        text = str(text or "")
        if len(text) <= self.output_left:
            self.output_left -= len(text)
            return text
        kept, self.output_left = text[:max(self.output_left, 0)], 0
        return kept + f"\n[output cut: the notebook printed more than {self.limits.output_chars:,} characters in all]\n"

    def _stopped(self, how: str, what: str) -> dict:
        """The error a cell or call gets when it was stopped (or its process ended)."""
        if how == "spent" or (how in ("interrupted", "killed") and self._budget_bound):
            limits = self.limits
            text = (f"the notebook has used its whole time budget ({limits.cpu_seconds:g} s of CPU time, "
                    f"{limits.wall_seconds:g} s in all), so {what} " + ("was not run" if how == "spent" else "was stopped"))
            return {"ename": "BudgetSpentError", "evalue": text, "traceback": ""}
        return _stopped(how, what, self.timeout)


def _stopped(how: str, what: str, timeout: float) -> dict:
    """The error a cell or call gets when it was stopped (or its process ended)."""
    text = {
        "interrupted": f"{what} ran past its time limit ({timeout:g} s of CPU time) and was interrupted",
        "killed": f"{what} ran past its time limit ({timeout:g} s of CPU time) and ignored the interrupt; "
                  "the process was stopped and the cells before it run again",
        "died": f"the Python process ended while running {what} (a crash, os._exit or too much memory)",
    }[how]
    return {"ename": "CellTimeoutError" if how != "died" else "ProcessEnded", "evalue": text, "traceback": ""}


# =========================================================================== command line (the sandbox's entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.sandbox")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("isolate", "serve"):
        p = sub.add_parser(name)
        p.add_argument("--read-fd", type=int, required=True)
        p.add_argument("--write-fd", type=int, required=True)
        if name == "isolate":
            p.add_argument("--workdir", required=True)
            p.add_argument("--hide", action="append", default=[])
            p.add_argument("--reach", action="append", default=[])
        else:
            p.add_argument("--isolation", default="")
    args, _ = parser.parse_known_args(argv)
    if args.command == "isolate":
        _isolate_main(args)
    else:
        _serve_main(args.read_fd, args.write_fd, args.isolation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
