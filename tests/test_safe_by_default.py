"""The outside security review's findings (SPEC §12, §3, §4, §9), each attack reproduced as it
was reported against a real `serve` in both modes, over HTTP only: the answer the SPEC gives,
and a server log with no traceback for it."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
import uuid

import aiohttp
import jwt
import pytest

from tests import serve_support
from tests.admin_support import FAIL_MARK
from tests.queue.conftest import ROOT, free_port
from tests.serve_support import (
    API_KEY,
    MODES,
    SECRET,
    assert_quiet,
    outside_failed_jobs,
    raw_request,
)
from tests.test_cli import clean_env

BOARD_API = "/admin/queues/api/queues"
served = serve_support.served  # the fixture


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http, server, method: str, path: str, **kwargs) -> tuple[int, dict, dict]:
    async with http.request(method, server.base_url + path, **kwargs) as response:
        body = await response.json(content_type=None)
        return response.status, dict(response.headers), body


async def board_post(http, server, path: str, auth: dict | None = None) -> tuple[int, dict]:
    """A board action sent the way the board's own page sends it."""
    async with http.get(f"{server.base_url}/admin/queues", headers=auth or {}) as response:
        token = re.search(r'name="csrf-token" content="([^"]+)"', await response.text())[1]
    headers = {**(auth or {}), "X-CSRF-Token": token, "Origin": server.origin}
    status, _, body = await call(http, server, "POST", path, headers=headers)
    return status, body


async def job_state(http, server, queue: str, job_id: str) -> dict | None:
    status, _, body = await call(http, server, "GET", f"{BOARD_API}/{queue}/{job_id}")
    return body["job"] if status == 200 else None


async def failed_job(http, server, job_id: str, queue: str = "chat") -> dict:
    """Wait until a FAIL-ME job has failed every attempt, promoting it past each backoff."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = await job_state(http, server, queue, job_id)
        if job is not None and job["state"] == "failed":
            return job
        if job is not None and job["state"] == "delayed":
            await board_post(http, server, f"{BOARD_API}/{queue}/{job_id}/promote")
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never failed: {job}")


async def ask(http, server, message: str, user: str = "alice") -> dict:
    status, _, body = await call(
        http, server, "POST", "/api/chat", json={"message": message}, headers={"X-User-Id": user}
    )
    assert status == 202, body
    return body


async def message_status(http, server, message_id: str, status: str, user="alice") -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, _, message = await call(
            http, server, "GET", f"/api/messages/{message_id}", headers={"X-User-Id": user}
        )
        if message.get("status") == status:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"message {message_id} never reached {status}: {message}")


def assert_error(status: int, body: dict, expected: int) -> None:
    assert status == expected, body
    assert body["ok"] is False and isinstance(body["error"], str) and body["error"]


# --- 1. DNS rebinding -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_1_a_rebound_dns_name_cannot_reach_the_passwordless_board_or_open_api(
    served, http, mode
):
    server = await served(mode)
    mark = server.log_mark()
    forged = {"Host": f"rebind.attacker.example:{server.port}", "X-User-Id": "alice"}
    some_id = uuid.uuid4()
    reads_and_writes = [
        ("GET", "/admin/queues"),
        ("GET", BOARD_API),
        ("POST", f"{BOARD_API}/chat/pause"),
        ("POST", f"{BOARD_API}/chat/clean/completed"),
        ("GET", f"/api/conversations/{some_id}/messages"),
        ("POST", "/api/chat"),
    ]
    for method, path in reads_and_writes:
        status, _, body = await call(
            http, server, method, path, headers=forged, json={"message": "hi"}
        )
        assert_error(status, body, 421)
        assert "rebind.attacker.example" in body["error"]

    for name in ("localhost", "127.0.0.1", "[::1]"):
        host = {"Host": f"{name}:{server.port}"}
        status, _, body = await call(http, server, "GET", BOARD_API, headers=host)
        assert status == 200, (name, body)
        assert body["queues"][0]["isPaused"] is False  # the forged pause changed nothing
    assert_quiet(server.log_since(mark), len(reads_and_writes))


# --- 2. cross-site forms --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_2_another_sites_form_cannot_create_jobs_in_a_users_name(served, http, mode):
    server = await served(mode)
    mark = server.log_mark()
    form = b"message=" + b"exfiltrate+everything" + b"&userId=victim"
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}
    browsers = [
        {"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://attacker.example"},
        {"Origin": "null"},  # a sandboxed frame
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain: still not our page
    ]
    for headers in browsers:
        for route in ("/api/chat", "/api/deep-research/start"):
            status, _, body = await call(
                http, server, "POST", route, data=form, headers={**urlencoded, **headers}
            )
            assert_error(status, body, 403)
    assert server.rows("messages") == []

    curl = await call(http, server, "POST", "/api/chat", data=form, headers=urlencoded)
    own_page = await call(
        http,
        server,
        "POST",
        "/api/chat",
        data=form,
        headers={**urlencoded, "Origin": server.origin, "Sec-Fetch-Site": "same-origin"},
    )
    assert (curl[0], own_page[0]) == (202, 202)
    assert [row["user_id"] for row in server.rows("messages")] == ["victim", "victim"]
    assert_quiet(server.log_since(mark), 2 * len(browsers))


# --- 3. retry is rate-limited, and errors do not grow without bound -------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_3_retries_count_against_the_users_rate_limit(served, http, mode):
    server = await served(mode, fake_llm=True, CHAT_RATE_LIMIT_PER_MINUTE=2)
    mark = server.log_mark()
    accepted = await ask(http, server, f"{FAIL_MARK} please")
    await failed_job(http, server, accepted["jobId"])
    retry = f"/api/chat/retry/{accepted['jobId']}"
    owner = {"X-User-Id": "alice"}

    first, headers, _ = await call(http, server, "POST", retry, headers=owner)
    assert first == 200
    assert headers["X-RateLimit-Remaining"] == "0"
    await failed_job(http, server, accepted["jobId"])
    status, headers, body = await call(http, server, "POST", retry, headers=owner)

    assert_error(status, body, 429)
    assert int(headers["Retry-After"]) == body["retryAfter"] >= 1
    assert (await job_state(http, server, "chat", accepted["jobId"]))["state"] == "failed"
    assert "Traceback" not in outside_failed_jobs(server.log_since(mark))


@pytest.mark.parametrize("mode", MODES)
async def test_3_a_job_keeps_the_errors_of_its_last_10_attempts(served, http, mode):
    server = await served(mode, fake_llm=True)
    accepted = await ask(http, server, f"{FAIL_MARK} {'x' * 6000}")
    retry = f"/api/chat/retry/{accepted['jobId']}"
    for _ in range(3):  # three rounds of four attempts: 12 failed attempts
        await failed_job(http, server, accepted["jobId"])
        status, _, _ = await call(http, server, "POST", retry, headers={"X-User-Id": "alice"})
        assert status == 200

    job = await failed_job(http, server, accepted["jobId"])

    assert len(job["errors"]) == 10
    assert [error["attempt"] for error in job["errors"]] == [3, 4, 1, 2, 3, 4, 1, 2, 3, 4]
    assert all(len(error["traceback"].encode()) <= 4096 for error in job["errors"])
    assert all(error["traceback"].rstrip().endswith(error["error"]) for error in job["errors"])


# --- 5. bad input is a 4xx, always ----------------------------------------------------------------


def _signed(claims: dict) -> str:
    return jwt.encode(claims, SECRET, "HS256")


def _bearer(claims: dict) -> bytes:
    return f"Authorization: Bearer {_signed(claims)}\r\n".encode()


def as_json_head(port: int) -> bytes:
    return (
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + b"Content-Type: application/json\r\n"
    )


def _bad_requests(port: int) -> dict[str, tuple[bytes, bytes, set[int]]]:
    """name → (request head, body, acceptable statuses), each exactly as the review sent it."""
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    post = b"POST /api/chat HTTP/1.1\r\n" + host
    as_json = as_json_head(port)
    urlencoded = post + b"Content-Type: application/x-www-form-urlencoded"
    multipart = post + b"Content-Type: multipart/form-data; boundary=XX\r\n"
    part = b'--XX\r\nContent-Disposition: form-data; name="message"\r\n'
    hi = b'{"message":"hi"}'
    health = b"GET /api/health HTTP/1.1\r\n" + host
    socket = b"GET /api/ws HTTP/1.1\r\n" + host + b"Connection: Upgrade\r\n"
    listing = f"GET /api/conversations/{uuid.uuid4()}/messages".encode()
    later = int(time.time()) + 60
    return {
        "non-ASCII X-API-Key": (as_json + b"X-API-Key: \xc3\xa9\xff\xfe\r\n", hi, {401}),
        "urlencoded invalid UTF-8": (urlencoded + b"\r\n", b"message=\xff\xfe", {400}),
        "urlencoded unknown charset": (urlencoded + b"; charset=bogus-9\r\n", b"message=hi", {400}),
        "multipart invalid UTF-8": (multipart, part + b"\r\n\xff\xfe\r\n--XX--\r\n", {400}),
        "multipart bogus charset": (
            multipart,
            part + b"Content-Type: text/plain; charset=bogus-9\r\n\r\nhi\r\n--XX--\r\n",
            {400},
        ),
        "multipart truncated": (multipart, part + b"\r\nhel", {400}),
        "multipart without boundary": (
            post + b"Content-Type: multipart/form-data\r\n",
            b"--XX\r\n",
            {400},
        ),
        "before out of range": (
            listing + b"?before=0001-01-01T00:00:00%2B14:00 HTTP/1.1\r\n" + host,
            b"",
            {400},
        ),
        "NUL in the message": (as_json, b'{"message":"a\\u0000b"}', {400}),
        "NUL in the user id": (as_json + b"X-User-Id: a\x00b\r\n", hi, {400}),
        "JWT exp a string": (as_json + _bearer({"sub": "a", "exp": str(later)}), hi, {401}),
        "JWT exp of 400 digits": (
            as_json + _bearer({"sub": "a", "exp": int("9" * 400)}),
            hi,
            {401},
        ),
        "JWT sub with control characters": (
            as_json + _bearer({"sub": "a\x1b[31mb", "exp": later}),
            hi,
            {401},
        ),
        "non-ASCII bearer token": (as_json + b"Authorization: Bearer \xff\xfe.a.b\r\n", hi, {401}),
        "a Content-Encoding the body does not have": (
            as_json + b"Content-Encoding: gzip\r\n",
            b"not gzip at all",
            {400},
        ),
        "socket handshake with non-ASCII Upgrade": (
            socket + b"Upgrade: web\xc5socket\r\n",
            b"",
            {400},
        ),
        "socket handshake with non-ASCII key": (
            socket
            + b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: \xff\xfe\r\n",
            b"",
            {400},
        ),
        "oversized header": (health + b"X-Padding: " + b"a" * 10_000 + b"\r\n", b"", {431}),
        "too many headers": (
            health + b"".join(b"X-H%d: v\r\n" % i for i in range(200)),
            b"",
            {431},
        ),
    }


@pytest.mark.parametrize("mode", MODES)
async def test_5_malformed_requests_are_json_4xx_with_at_most_one_warning_line(served, mode):
    server = await served(mode, BIOAGENTS_API_KEY="é" * 20)  # a non-ASCII key: 40 bytes
    cases = _bad_requests(server.port)
    mark = server.log_mark()

    for name, (head, body, expected) in cases.items():
        status, headers, content = await raw_request(server.port, head, body)
        assert status in expected, (name, status, content)
        assert headers["content-type"].startswith("application/json"), name
        answer = json.loads(content)
        assert answer["ok"] is False and answer["error"], name

    chunked = as_json_head(server.port) + b"Transfer-Encoding: chunked\r\n"
    for broken in (b"zz\r\nhi\r\n0\r\n\r\n", b"ffffffffffffffffff\r\nhi\r\n"):
        status, headers, content = await raw_request(server.port, chunked, broken, chunked=True)
        assert status == 400 and json.loads(content)["ok"] is False, (broken, content)

    assert_quiet(server.log_since(mark), len(cases) + 2)
    assert server.rows("messages") == []
    status, _, _ = await raw_request(
        server.port,
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"X-API-Key: {'é' * 20}\r\n".encode(),
        b'{"message":"hi","userId":"keyed"}',
    )
    assert status == 202  # the non-ASCII key itself works, compared as its UTF-8 bytes


# --- 6. weak and shared secrets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"AUTH_MODE": "jwt", "BIOAGENTS_SECRET": "x"}, "BIOAGENTS_SECRET"),
        ({"AUTH_MODE": "jwt", "BIOAGENTS_SECRET": "s" * 31}, "BIOAGENTS_SECRET"),
        ({"BIOAGENTS_API_KEY": "k"}, "BIOAGENTS_API_KEY"),
    ],
)
def test_6_a_secret_shorter_than_32_bytes_stops_serve(tmp_path, env, variable):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bioagents.py"), "serve", "--port", str(free_port())],
        env={**clean_env(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "32 bytes" in lines[0], result.stderr
    assert not (tmp_path / "cli.db").exists()  # stopped before touching anything


@pytest.mark.parametrize("mode", MODES)
async def test_6_the_jwt_secret_is_no_api_key_and_the_api_key_is_its_own(served, http, mode):
    server = await served(mode, AUTH_MODE="jwt", BIOAGENTS_API_KEY=API_KEY)
    mark = server.log_mark()
    message = {"message": "hi", "userId": "bob"}

    as_secret = await call(
        http, server, "POST", "/api/chat", json=message, headers={"X-API-Key": SECRET}
    )
    as_key = await call(
        http, server, "POST", "/api/chat", json=message, headers={"X-API-Key": API_KEY}
    )

    assert_error(as_secret[0], as_secret[2], 401)
    assert as_key[0] == 202 and as_key[2]["userId"] == "bob"
    assert_quiet(server.log_since(mark), 2)


# --- 7. a brake on guessing the board's password --------------------------------------------------


def _basic(username: str, password: str) -> dict:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    }


@pytest.mark.parametrize("mode", MODES)
async def test_7_ten_wrong_passwords_in_a_minute_brake_the_address(served, http, mode):
    server = await served(mode, ADMIN_PASSWORD="right-password")
    mark = server.log_mark()
    for attempt in range(10):
        status, _, body = await call(
            http, server, "GET", BOARD_API, headers=_basic("admin", f"guess-{attempt}")
        )
        assert_error(status, body, 401)

    status, headers, body = await call(
        http, server, "GET", BOARD_API, headers=_basic("admin", "right-password")
    )

    assert_error(status, body, 429)
    assert 55 <= int(headers["Retry-After"]) <= 60 and body["retryAfter"] >= 55
    assert (await call(http, server, "GET", "/api/health"))[0] == 200  # the API is not braked
    assert_quiet(server.log_since(mark), 11)


# --- 9. an admin's removal stands -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_9_an_owner_cannot_retry_a_job_an_admin_removed(served, http, mode):
    server = await served(mode, fake_llm=True)
    accepted = await ask(http, server, f"{FAIL_MARK} remove me")
    await failed_job(http, server, accepted["jobId"])
    status, _ = await board_post(http, server, f"{BOARD_API}/chat/{accepted['jobId']}/remove")
    assert status == 200
    mark = server.log_mark()

    status, _, body = await call(
        http, server, "POST", f"/api/chat/retry/{accepted['jobId']}", headers={"X-User-Id": "alice"}
    )

    assert_error(status, body, 404)
    assert await job_state(http, server, "chat", accepted["jobId"]) is None
    _, _, message = await call(
        http,
        server,
        "GET",
        f"/api/messages/{accepted['messageId']}",
        headers={"X-User-Id": "alice"},
    )
    assert message["status"] == "FAILED"
    assert_quiet(server.log_since(mark), 1)


# --- 10. anonymous callers are limited per address ------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_10_anonymous_callers_share_their_addresss_rate_limit(served, http, mode):
    server = await served(mode, CHAT_RATE_LIMIT_PER_MINUTE=2, BIOAGENTS_API_KEY=API_KEY)
    mark = server.log_mark()
    fresh_ids = [
        await call(http, server, "POST", "/api/chat", json={"message": "hi"}) for _ in range(2)
    ]
    assert [status for status, _, _ in fresh_ids] == [202, 202]

    for chosen in ({}, {"X-User-Id": "someone-new"}):
        status, _, body = await call(
            http, server, "POST", "/api/chat", json={"message": "hi"}, headers=chosen
        )
        assert_error(status, body, 429)
    known_user = {"X-API-Key": API_KEY, "X-User-Id": "carol"}
    status, _, _ = await call(
        http, server, "POST", "/api/chat", json={"message": "hi"}, headers=known_user
    )
    assert status == 202  # an API-key caller's users are counted as themselves
    assert len(server.rows("users")) == 3 and len(server.rows("conversations")) == 3
    assert_quiet(server.log_since(mark), 2)


# --- 11. headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_11_every_response_carries_its_security_headers_and_no_versions(served, http, mode):
    server = await served(mode, ADMIN_PASSWORD="right-password")
    api = [
        ("GET", "/api/health"),
        ("GET", "/api/openapi.json"),
        ("GET", f"/api/messages/{uuid.uuid4()}"),  # 404
        ("GET", "/api/no-such-route"),
        ("DELETE", "/api/chat"),  # 405
        ("POST", "/api/chat"),  # 415
    ]
    board = [
        ("GET", "/admin/queues"),  # 401
        ("GET", "/admin/queues/no-such-page"),  # 401, then 404 signed in
        ("POST", f"{BOARD_API}/chat/pause"),  # 401, then 403 without CSRF
    ]
    for method, path in api:
        async with http.request(method, server.base_url + path) as response:
            headers = response.headers
            assert headers["Cache-Control"] == "no-store", path
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert headers["Server"] == "bioagents", path
    for auth in ({}, _basic("admin", "right-password")):
        for method, path in board:
            async with http.request(method, server.base_url + path, headers=auth) as response:
                headers = response.headers
                assert "default-src 'none'" in headers["Content-Security-Policy"], path
                assert headers["X-Frame-Options"] == "DENY", path
                assert headers["X-Content-Type-Options"] == "nosniff", path
                assert headers["Server"] == "bioagents", path
    status, headers, _ = await raw_request(
        server.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n"
    )
    assert status == 431 and headers["server"] == "bioagents"
    assert headers["x-content-type-options"] == "nosniff"


# --- 12. health and 503s name the part, never its address -----------------------------------------


async def test_12_health_names_only_known_parts_in_process_mode(served, http):
    server = await served("in-process")
    status, _, body = await call(http, server, "GET", "/api/health")
    assert status == 200
    assert set(body) == {"status", "timestamp", "database", "jobQueue"}
    assert body["jobQueue"]["redis"] == "disabled"
    assert set(body["jobQueue"]) == {"enabled", "redis", "workers", "workersByQueue"}


@pytest.mark.queue
async def test_12_a_redis_outage_is_named_without_its_address_and_leaves_no_row(served, http):
    server = await served("queue")
    known = await ask(http, server, "before the outage")
    await message_status(http, server, known["messageId"], "COMPLETE")
    rows = {table: server.rows(table) for table in ("users", "conversations", "messages")}
    mark = server.log_mark()

    server.redis.stop()
    try:
        health = await call(http, server, "GET", "/api/health")
        new_user = await call(
            http, server, "POST", "/api/chat", json={"message": "hi"}, headers={"X-User-Id": "eve"}
        )
        known_conversation = await call(
            http,
            server,
            "POST",
            "/api/chat",
            json={"message": "again", "conversationId": known["conversationId"]},
            headers={"X-User-Id": "alice"},
        )
    finally:
        server.redis.start()

    status, _, body = health
    assert status == 503 and body["status"] == "degraded" and body["failing"] == ["redis"]
    assert body["jobQueue"]["redis"] == "unreachable"
    for status, _, answer in (new_user, known_conversation):
        assert_error(status, answer, 503)
        assert answer["failing"] == ["redis"]
    for _, _, answer in (health, new_user, known_conversation):
        shown = json.dumps(answer)
        assert str(server.redis.port) not in shown and "127.0.0.1" not in shown, shown
        assert "Error" not in shown and "refused" not in shown, shown
    assert {table: server.rows(table) for table in rows} == rows
    assert "Traceback" not in server.log_since(mark)
