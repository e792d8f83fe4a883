"""Browser-test fixtures: a real `python bioagents.py serve` on 127.0.0.1 whose LLM client talks
to a fake OpenAI-compatible server (tests/admin_support.py), and Debian's Chromium driven by
Playwright (never `playwright install`)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USERNAME, PASSWORD = "admin", "board-test-password"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}

# Records what the page's CSP blocked, so a test can assert nothing was.
CSP_PROBE = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up:\n{log.read_text()}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclasses.dataclass
class Board:
    """The running server and the fake LLM behind it, with the HTTP calls tests need."""

    url: str
    llm_url: str

    @property
    def auth(self) -> dict:
        pair = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict, str]:
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data else {}
        sent.update(headers or {})
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read().decode()

    def json(self, method: str, path: str, body=None, headers=None) -> dict:
        status, _, text = self.request(method, path, body, headers)
        assert status < 400, (status, text)
        return json.loads(text)

    def chat(self, message: str) -> str:
        """Ask a question over the public API; returns the job id."""
        return self.json("POST", "/api/chat", {"message": message, "userId": "browser"})["jobId"]

    def board_post(self, path: str) -> dict:
        """A board action, sent the way the board's page sends it."""
        _, _, page = self.request("GET", "/admin/queues", headers=self.auth)
        token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)
        headers = {**self.auth, "X-CSRF-Token": token, "Origin": self.url}
        return self.json("POST", path, headers=headers)

    def job(self, queue: str, job_id: str) -> dict | None:
        status, _, text = self.request(
            "GET", f"/admin/queues/api/queues/{queue}/{job_id}", headers=self.auth
        )
        return json.loads(text)["job"] if status == 200 else None

    def queue(self, name: str) -> dict:
        queues = self.json("GET", "/admin/queues/api/queues", headers=self.auth)["queues"]
        return next(queue for queue in queues if queue["name"] == name)

    def wait_for_state(self, queue: str, job_id: str, *states: str, timeout=30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(queue, job_id)
            if job is not None and job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never reached {states}: {job}")
            time.sleep(0.05)

    def fail(self, queue: str, job_id: str) -> dict:
        """Drive a FAIL-ME job through all its attempts, promoting it past each backoff."""
        while True:
            job = self.wait_for_state(queue, job_id, "delayed", "failed")
            if job["state"] == "failed":
                return job
            try:
                self.board_post(f"/admin/queues/api/queues/{queue}/{job_id}/promote")
            except AssertionError:
                pass  # it left `delayed` on its own meanwhile

    def set_llm_broken(self, broken: bool) -> None:
        path = "/break" if broken else "/heal"
        urllib.request.urlopen(urllib.request.Request(self.llm_url + path, method="POST"))


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("board")
    llm_port, port = _free_port(), _free_port()
    llm_log, serve_log = tmp / "fake-llm.log", tmp / "serve.log"
    llm = subprocess.Popen(
        [sys.executable, "-m", "tests.admin_support", "--port", str(llm_port)],
        cwd=ROOT,
        stdout=llm_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp}/board.db",
        "ADMIN_USERNAME": USERNAME,
        "ADMIN_PASSWORD": PASSWORD,
        "LLM_PROVIDER": "openai",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
        "CHAT_RATE_LIMIT_PER_MINUTE": "0",
        "DEEP_RESEARCH_RATE_LIMIT_PER_5MIN": "0",
        "USE_JOB_QUEUE": "false",
        "SHUTDOWN_GRACE_SECONDS": "2",
    }
    serve = subprocess.Popen(
        [sys.executable, "bioagents.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=serve_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{llm_port}/", llm, llm_log)
        _wait_until_up(f"http://127.0.0.1:{port}/api/health", serve, serve_log)
        yield Board(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{llm_port}")
    finally:
        _stop(serve)
        _stop(llm)


# Module scope, not session: while Playwright's sync API is open it keeps an event loop
# running in this thread, which pytest-asyncio's tests in later modules cannot share.
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclasses.dataclass
class Watched:
    """A page plus what went wrong in it: JS errors, console errors, CSP violations."""

    page: object
    errors: list[str]
    dialogs: list[str]  # confirmations shown (and accepted)

    def problems(self) -> list[str]:
        violations = self.page.evaluate("window.__cspViolations || []")
        return [*self.errors, *(f"CSP blocked {v}" for v in violations)]


def open_page(browser, board: Board, viewport=LAPTOP, credentials=True) -> Watched:
    context = browser.new_context(
        viewport=viewport,
        base_url=board.url,
        http_credentials={"username": USERNAME, "password": PASSWORD} if credentials else None,
    )
    context.add_init_script(CSP_PROBE)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            errors.append(f"console: {message.text}") if message.type == "error" else None
        ),
    )
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    return Watched(page, errors, dialogs)


@pytest.fixture
def watched(browser, board):
    opened = open_page(browser, board)
    yield opened
    opened.page.context.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
