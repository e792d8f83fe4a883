"""Helpers for the admin-board tests: a fake OpenAI-compatible LLM that fails on demand (so jobs
fail for real, through the LLM client), and the headers a board POST needs."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import time

from aiohttp import web

FAIL_MARK = "FAIL-ME"  # questions containing this fail while the fake LLM is "broken"
# The error body is HTML on purpose: the board must show it escaped, never as markup.
ERROR_BODY = '<img src=x onerror="alert(1)"><b>model overloaded</b>'
BROKEN = web.AppKey("broken", dict)


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    question = body["messages"][-1]["content"]
    if request.app[BROKEN]["on"] and FAIL_MARK in question:
        return web.Response(status=500, text=ERROR_BODY, content_type="text/html")
    answer = f"fake answer to: {question}"
    if not body.get("stream"):
        return web.json_response(
            {"choices": [{"message": {"role": "assistant", "content": answer}}]}
        )
    # Server-sent events, as the OpenAI API streams: one content chunk, then [DONE].
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    chunk = {"choices": [{"index": 0, "delta": {"content": answer}}]}
    await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n")
    await response.write_eof()
    return response


async def _heal(request: web.Request) -> web.Response:
    request.app[BROKEN]["on"] = False
    return web.json_response({"broken": False})


async def _break(request: web.Request) -> web.Response:
    request.app[BROKEN]["on"] = True
    return web.json_response({"broken": True})


def fake_llm_app() -> web.Application:
    """POST /v1/chat/completions answers 500 for FAIL_MARK questions until POST /heal."""
    app = web.Application()
    app[BROKEN] = {"on": True}
    app.router.add_post("/v1/chat/completions", _completions)
    app.router.add_post("/heal", _heal)
    app.router.add_post("/break", _break)
    return app


def llm_env(base_url: str) -> dict:
    """The environment that points the app's LLM client at the fake."""
    return {"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": f"{base_url}/v1", "LLM_MODEL": "fake"}


def csrf_token_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert match, "the page has no csrf-token meta tag"
    return match.group(1)


# --- driving the board of a pytest-aiohttp client ---------------------------------------------


def basic_auth(username: str, password: str) -> dict:
    """The Authorization header of HTTP Basic auth."""
    pair = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


def origin_of(client) -> str:
    return f"http://{client.server.host}:{client.server.port}"


async def board_token(client, auth: dict | None = None) -> str:
    response = await client.get("/admin/queues", headers=auth or {})
    assert response.status == 200, await response.text()
    return csrf_token_of(await response.text())


async def board_post(client, path: str, *, auth: dict | None = None, headers=None, **kwargs):
    """POST as the board's own page does: CSRF header and same Origin (`auth`: basic_auth)."""
    token = await board_token(client, auth)
    sent = {"X-CSRF-Token": token, "Origin": origin_of(client), **(auth or {}), **(headers or {})}
    return await client.post(path, headers=sent, **kwargs)


async def job_of(client, queue: str, job_id: str) -> dict | None:
    response = await client.get(f"/admin/queues/api/queues/{queue}/{job_id}")
    if response.status == 404:
        return None
    assert response.status == 200, await response.text()
    return (await response.json())["job"]


async def job_in_state(client, queue: str, job_id: str, *states: str, timeout=20.0) -> dict:
    """Wait until the job is in one of `states` (as the board's JSON API reports it)."""
    deadline = time.monotonic() + timeout
    while True:
        job = await job_of(client, queue, job_id)
        if job is not None and job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never reached {states}; last seen {job}")
        await asyncio.sleep(0.02)


async def fail_job(client, queue: str, job_id: str) -> dict:
    """Let a job the fake LLM refuses fail every attempt, promoting it past each backoff
    through the board (the real retry path, without waiting 1 + 2 + 4 seconds)."""
    while True:
        job = await job_in_state(client, queue, job_id, "delayed", "failed")
        if job["state"] == "failed":
            return job
        response = await board_post(client, f"/admin/queues/api/queues/{queue}/{job_id}/promote")
        assert response.status in (200, 400), await response.text()


if __name__ == "__main__":  # used by the browser tests: python -m tests.admin_support --port N
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(fake_llm_app(), host="127.0.0.1", port=args.port, print=None)
