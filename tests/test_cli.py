"""The command line (SPEC §1, §2): bad configuration stops `serve` naming the variable,
`migrate` is idempotent, `token` prints a JWT the API accepts, and `serve` runs the whole
flow end to end and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = str(ROOT / "bioagents.py")


def clean_env(tmp_path, **extra) -> dict:
    """The machine's environment without any bioagents setting, on a temp database."""
    names = {
        "USE_JOB_QUEUE", "REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "PORT",
        "HOST", "CHAT_QUEUE_CONCURRENCY", "DEEP_RESEARCH_QUEUE_CONCURRENCY", "AUTH_MODE",
        "CHAT_RATE_LIMIT_PER_MINUTE", "DEEP_RESEARCH_RATE_LIMIT_PER_5MIN", "BIOAGENTS_SECRET",
        "MAX_JWT_EXPIRATION", "ADMIN_USERNAME", "ADMIN_PASSWORD", "MAX_BODY_BYTES",
        "MAX_WS_FRAME_BYTES", "STALLED_INTERVAL", "SHUTDOWN_GRACE_SECONDS", "WORKERS_IN_API",
        "LLM_PROVIDER", "OPENAI_BASE_URL", "OPENAI_API_KEY", "LLM_MODEL", "OFFLINE_LLM_DELAY",
        "LOG_LEVEL", "LOG_FORMAT", "ALLOWED_HOSTS", "BIOAGENTS_API_KEY",
    }  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key not in names}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/cli.db"
    env.update(extra)
    return env


def run(tmp_path, *args, timeout=30, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, PROGRAM, *args],
        env=clean_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "variable, value",
    [
        ("CHAT_QUEUE_CONCURRENCY", "-1"),
        ("DEEP_RESEARCH_QUEUE_CONCURRENCY", "many"),
        ("AUTH_MODE", "magic"),
        ("DATABASE_URL", "not a url"),
        ("REDIS_URL", "http://localhost:6379"),
        ("PORT", "seventy"),
        ("LLM_PROVIDER", "psychic"),
        ("MAX_BODY_BYTES", "0"),
        ("CHAT_RATE_LIMIT_PER_MINUTE", "-5"),
    ],
)
def test_bad_configuration_stops_serve_naming_the_variable(tmp_path, variable, value):
    result = run(tmp_path, "serve", "--port", str(free_port()), **{variable: value})

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert not (tmp_path / "cli.db").exists()  # stopped before touching anything


def test_jwt_mode_without_a_secret_is_refused(tmp_path):
    result = run(tmp_path, "serve", "--port", str(free_port()), AUTH_MODE="jwt")

    assert result.returncode != 0
    assert "BIOAGENTS_SECRET" in result.stderr


def test_serve_on_a_taken_port_says_so_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, "serve", "--port", str(port))

    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_is_idempotent_and_keeps_data(tmp_path):
    first = run(tmp_path, "migrate")
    assert first.returncode == 0, first.stderr
    database = tmp_path / "cli.db"
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert {"users", "conversations", "conversation_states", "states", "messages"} <= tables
        connection.execute("INSERT INTO users (id, created_at) VALUES ('kept', '2024-01-01')")
    connection.close()

    second = run(tmp_path, "migrate")

    assert second.returncode == 0, second.stderr
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT id FROM users").fetchall() == [("kept",)]
    connection.close()


async def test_token_prints_a_jwt_the_api_accepts(tmp_path, make_client):
    result = run(
        tmp_path,
        "token",
        "alice",
        "--ttl",
        "600",
        BIOAGENTS_SECRET="test-secret-0123456789abcdef0123456789",
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2

    client = await make_client(AUTH_MODE="jwt")  # the same BIOAGENTS_SECRET
    response = await client.post(
        "/api/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status == 202
    assert (await response.json())["userId"] == "alice"


def test_token_refuses_a_ttl_beyond_max_jwt_expiration(tmp_path):
    result = run(
        tmp_path, "token", "alice", "--ttl", "7200", BIOAGENTS_SECRET="s", MAX_JWT_EXPIRATION="3600"
    )
    assert result.returncode != 0
    assert "MAX_JWT_EXPIRATION" in result.stderr


def test_token_without_a_secret_fails(tmp_path):
    result = run(tmp_path, "token", "alice")
    assert result.returncode != 0
    assert "BIOAGENTS_SECRET" in result.stderr


async def test_serve_runs_a_chat_end_to_end_and_stops_on_sigterm(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, PROGRAM, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=clean_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        async with aiohttp.ClientSession(headers={"X-User-Id": "alice"}) as http:
            await until_healthy(http, base, server)
            first = await post(http, f"{base}/api/chat", "open a conversation")
            conversation = first["conversationId"]
            await until_status(http, f"{base}{first['pollUrl']}", "completed")

            async with http.ws_connect(f"{base}/api/ws") as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "ready"
                await ws.send_json({"action": "auth", "userId": "alice"})
                assert (await ws.receive_json(timeout=5))["type"] == "authenticated"
                await ws.send_json({"action": "subscribe", "conversationId": conversation})
                assert (await ws.receive_json(timeout=5))["type"] == "subscribed"

                second = await post(
                    http, f"{base}/api/chat", "What does p53 do?", conversationId=conversation
                )
                types = []
                while not types or types[-1] not in ("job:completed", "job:failed"):
                    types.append((await ws.receive_json(timeout=10))["type"])
                assert types[0] == "job:started"
                assert types[-2:] == ["message:updated", "job:completed"]
                async with http.get(f"{base}/api/messages/{second['messageId']}") as response:
                    message = await response.json()
                assert message["status"] == "COMPLETE"
                assert message["content"]

                server.send_signal(signal.SIGTERM)
                closing = await ws.receive(timeout=10)  # open sockets are closed, not dropped
                assert closing.type == aiohttp.WSMsgType.CLOSE, closing
                assert ws.close_code == 1001
        assert server.wait(timeout=20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdout.close()
        server.stderr.close()


async def until_healthy(http, base, server, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read()
        try:
            async with http.get(f"{base}/api/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("serve did not become healthy")


async def post(http, url, message, **body) -> dict:
    async with http.post(url, json={"message": message, **body}) as response:
        assert response.status == 202, await response.text()
        return await response.json()


def start_serve(tmp_path, port, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, PROGRAM, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=clean_env(tmp_path, **env),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.kill()
        server.wait()
    server.stderr.close()


def message_status(tmp_path, message_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(tmp_path / "cli.db") as connection:
        row = connection.execute(
            "SELECT status, content FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
    connection.close()
    return row


async def test_sigterm_lets_an_active_job_finish_before_exiting(tmp_path):
    port = free_port()
    server = start_serve(tmp_path, port, OFFLINE_LLM_DELAY="1.0", SHUTDOWN_GRACE_SECONDS="10")
    try:
        async with aiohttp.ClientSession(headers={"X-User-Id": "alice"}) as http:
            base = f"http://127.0.0.1:{port}"
            await until_healthy(http, base, server)
            accepted = await post(http, f"{base}/api/chat", "finish me")
            await until_status(http, f"{base}{accepted['pollUrl']}", "active")

        server.send_signal(signal.SIGTERM)

        assert server.wait(timeout=20) == 0
        status, content = message_status(tmp_path, accepted["messageId"])
        assert status == "COMPLETE"
        assert content
    finally:
        stop(server)


async def test_a_job_cut_off_by_the_grace_period_is_completed_after_restart(tmp_path):
    port = free_port()
    server = start_serve(tmp_path, port, OFFLINE_LLM_DELAY="5", SHUTDOWN_GRACE_SECONDS="0.2")
    try:
        async with aiohttp.ClientSession(headers={"X-User-Id": "alice"}) as http:
            base = f"http://127.0.0.1:{port}"
            await until_healthy(http, base, server)
            accepted = await post(http, f"{base}/api/chat", "too slow for the grace period")
            await until_status(http, f"{base}{accepted['pollUrl']}", "active")
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=20) == 0
            assert message_status(tmp_path, accepted["messageId"])[0] == "PENDING"

            server = start_serve(tmp_path, port, OFFLINE_LLM_DELAY="0")
            await until_healthy(http, base, server)
            body = await until_status(http, f"{base}{accepted['pollUrl']}", "completed")
        assert body["attemptsMade"] == 1  # the interrupted attempt was not spent
        assert message_status(tmp_path, accepted["messageId"])[0] == "COMPLETE"
    finally:
        stop(server)


async def until_status(http, url, status, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(url) as response:
            body = await response.json()
            if body["status"] == status:
                return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never reached {status}")
