"""`make lab` starts JupyterLab on notebooks/ with no first-run pop-ups (news, update checks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("jupyterlab")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_make_lab_serves_the_course_without_pop_ups(tmp_path):
    port, token = free_port(), "course-test-token"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", JUPYTER_RUNTIME_DIR=str(tmp_path))
    args = f"--no-browser --ip=127.0.0.1 --IdentityProvider.token={token} --ServerApp.open_browser=False"
    proc = subprocess.Popen(
        ["make", "-s", "lab", f"PORT={port}", f"LAB_ARGS={args}"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                get(f"{base}/api/status", token)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        listing = get(f"{base}/api/contents/", token)
        names = {item["name"] for item in listing["content"]}
        assert {"00_how_this_course_works", "01_attention"} <= names, names
        # overrides.json becomes the schema's default; JupyterLab's own default is "none" (ask)
        schema = get(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification", token)["schema"]
        assert schema["properties"]["fetchNews"]["default"] == "false"
        assert schema["properties"]["checkForUpdates"]["default"] is False
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
