"""Logs (SPEC §11): with LOG_FORMAT=json every line a real `serve` writes on stdout and stderr is
one JSON object — the start-up line and the access log included — with time, level, logger and
message, and jobId, queue, attempt, conversationId where the line concerns a job; no line holds
a token, a password, an API key or a JWT, at any level."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import time

import aiohttp

from bioagents import logs
from bioagents.auth import issue_token
from bioagents.config import Settings
from tests.admin_support import basic_auth
from tests.test_cli import PROGRAM, ROOT, clean_env, free_port

SECRET = "log-test-secret-0123456789abcdef0123"
ADMIN_PASSWORD = "board-password-5678"
METRICS_TOKEN = "metrics-token-9abc"
REQUIRED = ("time", "level", "logger", "message")


def json_lines(text: str, stream: str) -> list[dict]:
    """Every line of `text` parsed; fails on the first that is not one JSON object."""
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"{stream} line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"{stream} line {number} is not an object: {line!r}"
        assert all(key in entry for key in REQUIRED), f"{stream} line {number}: {line!r}"
        parsed.append(entry)
    return parsed


async def _exercise(base: str, jwt: str) -> str:
    """Requests that make every kind of line: a job, an authenticated socket with ?token=,
    credentials in query strings, Basic auth, a bearer scrape, a 404. Returns the job id."""
    bearer = {"Authorization": f"Bearer {jwt}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/api/chat", json={"message": "p53?"}, headers=bearer) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["jobId"]
        ws = await http.ws_connect(f"{base.replace('http', 'ws')}/api/ws?token={jwt}")
        assert (await ws.receive_json())["type"] == "ready"
        assert (await ws.receive_json())["type"] == "authenticated"
        await ws.close()
        deadline = time.monotonic() + 15
        while True:
            async with http.get(f"{base}/api/chat/status/{job_id}", headers=bearer) as r:
                if (await r.json())["status"] == "completed":
                    break
            assert time.monotonic() < deadline, "the job never completed"
            await asyncio.sleep(0.05)
        leaky = f"{base}/api/health?token={jwt}&password={ADMIN_PASSWORD}&api_key=k-{SECRET}"
        async with http.get(leaky) as r:
            assert r.status == 200
        async with http.get(
            f"{base}/admin/queues", headers=basic_auth("admin", ADMIN_PASSWORD)
        ) as r:
            assert r.status == 200
        scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        async with http.get(f"{base}/metrics", headers=scrape) as r:
            assert r.status == 200
        async with http.get(f"{base}/api/nothing-here?token={jwt}") as r:
            assert r.status == 404
    return job_id


def test_every_line_of_a_serve_is_json_with_job_fields_and_no_credentials(tmp_path):
    port = free_port()
    env = clean_env(
        tmp_path,
        LOG_FORMAT="json",
        LOG_LEVEL="DEBUG",
        AUTH_MODE="jwt",
        BIOAGENTS_SECRET=SECRET,
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        METRICS_TOKEN=METRICS_TOKEN,
        CHAT_RATE_LIMIT_PER_MINUTE="0",
        PYTHONUNBUFFERED="1",
    )
    server = subprocess.Popen(
        [sys.executable, PROGRAM, "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "serve never came up"
                time.sleep(0.05)
        settings = Settings.from_env(env)
        jwt = issue_token(settings, "log-tester")
        job_id = asyncio.run(_exercise(base, jwt))
    finally:
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr.decode()[-3000:]

    out, err = stdout.decode(), stderr.decode()
    entries = json_lines(out, "stdout") + json_lines(err, "stderr")
    messages = [entry["message"] for entry in entries]
    assert any(m.startswith("Running on http://127.0.0.1:") for m in messages), messages[:10]
    access = [e for e in entries if e["logger"] == "aiohttp.access"]
    assert any("/api/ws?token=[redacted]" in e["message"] for e in access), access
    assert any(
        "token=[redacted]&password=[redacted]&api_key=[redacted]" in e["message"] for e in access
    )
    about_job = [e for e in entries if e.get("jobId") == job_id]
    assert about_job, "no line carries the job's id"
    for entry in about_job:
        assert entry["queue"] == "chat" and entry["attempt"] == 1 and entry["conversationId"]
    for secret in (jwt, SECRET, ADMIN_PASSWORD, METRICS_TOKEN):
        assert secret not in out + err, f"a credential reached the log: {secret[:12]}…"


def test_a_configuration_error_is_a_json_line_too(tmp_path):
    result = subprocess.run(
        [sys.executable, PROGRAM, "serve"],
        env=clean_env(tmp_path, LOG_FORMAT="json", PORT="many"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    [entry] = json_lines(result.stderr, "stderr")
    assert entry["level"] == "CRITICAL" and "PORT" in entry["message"]
    assert result.stdout == ""


def test_uncaught_exceptions_and_warnings_are_json_lines_without_credentials(tmp_path):
    program = (
        "import warnings\n"
        "from bioagents import logs\n"
        "from bioagents.config import Settings\n"
        "logs.configure(Settings.from_env())\n"
        "warnings.warn('careful now')\n"
        "raise RuntimeError('boom at /api/ws?token=abc.def.ghi with ' + 'Bearer ' + 'x' * 20)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=clean_env(tmp_path, LOG_FORMAT="json"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    entries = json_lines(result.stderr, "stderr")
    warning = next(e for e in entries if e["logger"] == "py.warnings")
    assert "careful now" in warning["message"] and warning["level"] == "WARNING"
    crash = next(e for e in entries if e["level"] == "CRITICAL")
    assert crash["message"] == "uncaught exception"
    assert "RuntimeError: boom at /api/ws?token=[redacted]" in crash["exc_info"]
    assert "Bearer [redacted]" in crash["exc_info"] and "x" * 20 not in result.stderr


def test_text_lines_name_the_job_they_concern(capsys):
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(logs.JobFields())
    handler.setFormatter(logs.TextFormatter(logs.Redactor(["s3cret-value"])))
    logger = logging.getLogger("tests.text-format")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.job_context("job-1", "chat", 2, "conv-9"):
            logger.warning("attempt failed with s3cret-value inside")
        logger.warning("no job here")
    finally:
        logger.removeHandler(handler)
    first, second = capsys.readouterr().err.splitlines()
    assert first.endswith(
        "WARNING tests.text-format: attempt failed with [redacted] inside "
        "[jobId=job-1 queue=chat attempt=2 conversationId=conv-9]"
    )
    assert second.endswith("no job here")
