"""Real `python bioagents.py serve` processes for black-box tests, in either mode (SPEC §1):
in-process, or queue mode on the test's own redis-server with the workers in the same process
(`--with-worker`). Tests talk to them over HTTP (or raw bytes on a socket) and read their log
and their SQLite file; nothing else of the program is imported."""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.queue.conftest import ROOT, AppProcess, RedisServer, free_port

MODES = ["in-process", pytest.param("queue", marks=pytest.mark.queue)]
SECRET = "served-test-secret-0123456789abcdef0123"  # BIOAGENTS_SECRET, 39 bytes
API_KEY = "served-test-api-key-0123456789abcdef012"  # BIOAGENTS_API_KEY, 39 bytes


class Served:
    """One running `serve`, with what a black-box test needs of it."""

    def __init__(
        self,
        process: AppProcess,
        database: Path,
        llm_url: str | None = None,
        redis: RedisServer | None = None,
    ):
        self.process = process
        self.database = database
        self.llm_url = llm_url
        self.redis = redis  # queue mode: the redis-server it uses (a test may stop it)

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def origin(self) -> str:
        return self.base_url

    def log_mark(self) -> int:
        return len(self.process.log())

    def log_since(self, mark: int) -> str:
        return self.process.log()[mark:]

    def rows(self, table: str) -> list[dict]:
        connection = sqlite3.connect(self.database)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in connection.execute(f"SELECT * FROM {table}")]
        finally:
            connection.close()

    def set_llm_broken(self, broken: bool) -> None:
        assert self.llm_url, "started without fake_llm=True"
        path = "/break" if broken else "/heal"
        urllib.request.urlopen(urllib.request.Request(self.llm_url + path, method="POST"))


def outside_failed_jobs(log: str) -> str:
    """The log without the lines SAQ's worker writes for a job attempt that failed ("Error
    processing job" and its traceback): a failed job's traceback belongs in the log (SPEC §12);
    a request's does not."""
    kept, skipping = [], False
    for line in log.splitlines():
        if re.match(r"\d{4}-\d\d-\d\d", line):
            skipping = "Error processing job" in line
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def assert_quiet(log: str, requests: int) -> None:
    """What bad input may leave in the log: no traceback, no ERROR, and at most one WARNING
    line per request (SPEC §12)."""
    assert "Traceback" not in log, log[-3000:]
    assert not re.search(r"\bERROR\b", log), log[-3000:]
    warnings = [line for line in log.splitlines() if re.search(r"\bWARNING\b", line)]
    assert len(warnings) <= requests, warnings


async def raw_request(
    port: int, head: bytes, body: bytes = b"", *, chunked: bool = False
) -> tuple[int, dict, bytes]:
    """Send exactly these bytes: `head` is the request line and header lines, each ending in
    CRLF; Content-Length (unless `chunked`: `body` is then sent as it is) and Connection: close
    follow, then `body`. Returns the status, the headers (lower-cased names) and the body of
    the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        length = f"Content-Length: {len(body)}\r\n".encode() if body and not chunked else b""
        writer.write(head + length + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head_bytes, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, content


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:  # not listening yet, or answering an error (HTTPError)
        return False


class _Started:
    """Everything one test started, stopped by pid at its end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.redis: RedisServer | None = None
        self.processes: list[AppProcess] = []
        self.llms: list[subprocess.Popen] = []

    def redis_url(self) -> str:
        if self.redis is None:
            self.redis = RedisServer(self.folder / "redis")
            self.redis.start()
        return self.redis.url

    def fake_llm(self) -> str:
        port = free_port()
        log = (self.folder / f"fake-llm-{port}.log").open("w")
        self.llms.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.admin_support", "--port", str(port)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _listening(port), f"fake LLM on {port}")
        return url

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for llm in self.llms:
            llm.terminate()
            llm.wait(timeout=10)
        if self.redis is not None:
            self.redis.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def base_env(folder: Path, name: str) -> dict[str, str]:
    return {
        "USE_JOB_QUEUE": "false",
        "DATABASE_URL": f"sqlite:///{folder}/{name}.db",
        "BIOAGENTS_SECRET": SECRET,
        "CHAT_RATE_LIMIT_PER_MINUTE": "0",
        "DEEP_RESEARCH_RATE_LIMIT_PER_5MIN": "0",
        "SHUTDOWN_GRACE_SECONDS": "2",
        "STALLED_INTERVAL": "2",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def served(tmp_path):
    """`await served(mode, *args, fake_llm=False, **env)`: a running `serve` (its extra command
    line `args`, its environment on top of the defaults), returned once it answers."""
    started = _Started(tmp_path)

    async def start(mode: str, *args: str, fake_llm: bool = False, **env) -> Served:
        name = f"serve-{len(started.processes) + 1}"
        values = base_env(tmp_path, name)
        extra = list(args)
        if mode == "queue":
            values.update(USE_JOB_QUEUE="true", REDIS_URL=started.redis_url())
            extra.append("--with-worker")
        llm_url = None
        if fake_llm:
            llm_url = started.fake_llm()
            values.update(LLM_PROVIDER="openai", OPENAI_BASE_URL=f"{llm_url}/v1", LLM_MODEL="fake")
        values.update({key: str(value) for key, value in env.items()})
        process = AppProcess(name, [], values, tmp_path)
        process.port = free_port()
        process.args = ["serve", "--port", str(process.port), *extra]
        if "--host" not in extra:
            process.args += ["--host", "127.0.0.1"]
        started.processes.append(process.start())
        health = f"{process.base_url}/api/health"

        def ready() -> bool:
            if process.process.poll() is not None:
                raise AssertionError(f"{name} exited:\n{process.log()[-3000:]}")
            return _answers(health)

        await asyncio.to_thread(_wait, ready, f"{name} healthy")
        redis = started.redis if mode == "queue" else None
        return Served(process, tmp_path / f"{name}.db", llm_url, redis)

    yield start
    started.stop()
