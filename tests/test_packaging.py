"""A regular (non-editable) install serves the board: the wheel carries templates/ and static/
inside the package, and the `bioagents` command is installed with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

from tests.queue.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_board_and_serves_it_installed_elsewhere(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", ROOT],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("bioagents-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "bioagents/templates/base.html" in names
    assert "bioagents/static/vendor/htmx.org-2.0.11/htmx.min.js" in names
    assert any(name.endswith("entry_points.txt") for name in names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel],
        check=True,
        capture_output=True,
    )
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(site),  # the installed copy, with the test venv's dependencies
        "DATABASE_URL": f"sqlite:///{tmp_path}/installed.db",
        "PORT": str(port),
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "bioagents.cli", "serve"],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/api/health", server)
        page = _get(f"{base}/admin/queues")
        assert '<meta name="csrf-token"' in page
        assert "htmx" in _get(f"{base}/static/vendor/htmx.org-2.0.11/htmx.min.js")
        where = subprocess.run(
            [sys.executable, "-c", "import bioagents; print(bioagents.__file__)"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert where.startswith(str(site))  # the installed copy served it, not the checkout
    finally:
        server.terminate()
        server.wait(timeout=15)


def _wait_for(url: str, server: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(url)
            return
        except OSError:
            assert server.poll() is None, "serve exited"
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.1)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
