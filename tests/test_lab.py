"""`make lab`: the learners' JupyterLab on notebooks/, with no first-run pop-ups (news, update
checks), without nbgrader's instructor tools, and with a terminal that finds `course`.
`make lab INSTRUCTOR=1`: the course's root, with nbgrader's tools."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("jupyterlab")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
TOKEN = "course-test-token"
INSTRUCTOR_PLUGINS = {
    "@jupyter/nbgrader:menu",
    "@jupyter/nbgrader:formgrader",
    "@jupyter/nbgrader:create-assignment",
    "@jupyter/nbgrader:course-list",
    "@jupyter/nbgrader:assignment-list",
}
# what the instructor-side server extensions serve: 404 when they are off
INSTRUCTOR_URLS = [
    "/formgrader/static/css/nbgrader.css",  # nbgrader.server_extensions.formgrader
    "/formgraders",  # nbgrader.server_extensions.course_list
    "/assignments",  # nbgrader.server_extensions.assignment_list
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, method: str = "GET"):
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def get(url: str):
    return json.loads(request(url))


def status(url: str) -> int:
    try:
        request(url)
        return 200
    except urllib.error.HTTPError as e:
        return e.code


def page_config(base: str) -> dict:
    """The page config that the JupyterLab page hands to the browser."""
    html = request(f"{base}/lab").decode()
    return json.loads(re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S).group(1))


@contextlib.contextmanager
def make_lab(tmp_path: Path, *make_args: str, cwd: Path = REPO):
    """Start `make lab MAKE_ARGS` in ``cwd`` on a free port (its output is not a terminal); yield its base URL."""
    port = free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", JUPYTER_RUNTIME_DIR=str(tmp_path))
    env.pop("JUPYTER_CONFIG_PATH", None)
    args = f"--no-browser --ip=127.0.0.1 --IdentityProvider.token={TOKEN} --ServerApp.open_browser=False"
    proc = subprocess.Popen(
        ["make", "-s", "lab", f"PORT={port}", f"LAB_ARGS={args}", *make_args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                get(f"{base}/api/status")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield base
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


async def run_in_terminal(base: str, cwd: str, command: str, expect: re.Pattern, seconds: float = 30) -> re.Match:
    """Open a terminal in folder ``cwd`` as JupyterLab's launcher does, type ``command``, wait for output that matches ``expect``."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    body = json.dumps({"cwd": cwd}).encode()
    req = urllib.request.Request(f"{base}/api/terminals", data=body, method="POST", headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        name = json.loads(r.read())["name"]
    url = f"{base.replace('http', 'ws', 1)}/terminals/websocket/{name}"
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {TOKEN}"}))
    try:
        await ws.write_message(json.dumps(["stdin", command + "\r"]))
        output = ""
        deadline = time.monotonic() + seconds
        while not (found := expect.search(output)):
            message = await asyncio.wait_for(ws.read_message(), timeout=max(deadline - time.monotonic(), 0.1))
            assert message is not None, f"the terminal closed; it printed:\n{output}"
            kind, *payload = json.loads(message)
            if kind == "stdout":
                output += payload[0]
        return found
    finally:
        ws.close()
        request(f"{base}/api/terminals/{name}", method="DELETE")


def test_make_lab_serves_the_course_without_pop_ups(tmp_path):
    with make_lab(tmp_path) as base:
        listing = get(f"{base}/api/contents/")
        names = {item["name"] for item in listing["content"]}
        assert {"00_how_this_course_works", "01_attention"} <= names, names
        # overrides.json becomes the schema's default; JupyterLab's own default is "none" (ask)
        schema = get(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification")["schema"]
        assert schema["properties"]["fetchNews"]["default"] == "false"
        assert schema["properties"]["checkForUpdates"]["default"] is False

        # nbgrader's instructor tools are off, in the page and on the server; the learners' Validate button stays
        config = page_config(base)
        assert INSTRUCTOR_PLUGINS <= set(config["disabledExtensions"]), config["disabledExtensions"]
        assert "@jupyter/nbgrader:validate-assignment" not in config["disabledExtensions"]
        assert [status(base + url) for url in INSTRUCTOR_URLS] == [404] * len(INSTRUCTOR_URLS)

        # a terminal opened from a lesson's folder (where `make check` cannot work) finds `course`
        lesson = "00_how_this_course_works"
        command = 'echo "at=$(pwd) course=$(command -v course)"'
        found = asyncio.run(run_in_terminal(base, lesson, command, re.compile(r"at=(\S+) course=(\S*)\r?\n")))
        assert Path(found.group(1)).resolve() == (REPO / "notebooks" / lesson).resolve()
        assert Path(found.group(2)) == REPO / ".venv" / "bin" / "course", found.group(0)


def test_make_lab_instructor_opens_the_root_with_nbgraders_tools(tmp_path):
    with make_lab(tmp_path, "INSTRUCTOR=1") as base:
        names = {item["name"] for item in get(f"{base}/api/contents/")["content"]}
        assert {"solutions", "notebooks", "nbgrader_config.py"} <= names, names
        config = page_config(base)
        assert not INSTRUCTOR_PLUGINS & set(config["disabledExtensions"]), config["disabledExtensions"]
        served = {url: status(base + url) for url in INSTRUCTOR_URLS}
        assert 404 not in served.values(), served
