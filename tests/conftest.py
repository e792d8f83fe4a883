"""Shared fixtures: the real app over HTTP and WebSocket (pytest-aiohttp), on a fresh SQLite
file per test. Queue-mode fixtures (a real redis-server) live in tests/queue/conftest.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from bioagents.app import create_app
from bioagents.config import Settings

BASE_ENV = {
    "CHAT_RATE_LIMIT_PER_MINUTE": "0",
    "DEEP_RESEARCH_RATE_LIMIT_PER_5MIN": "0",
    "BIOAGENTS_SECRET": "test-secret-0123456789abcdef0123456789",
    "SHUTDOWN_GRACE_SECONDS": "2",
}


@pytest.fixture
def settings_for(tmp_path):
    """Settings from BASE_ENV plus `env`, on this test's own SQLite file."""

    def build(**env) -> Settings:
        values = {**BASE_ENV, "DATABASE_URL": f"sqlite:///{tmp_path}/bioagents.db"}
        values.update({key: str(value) for key, value in env.items()})
        return Settings.from_env(values)

    return build


@pytest.fixture
def make_client(aiohttp_client, settings_for):
    """`await make_client(**env)`: a test client of a fresh app built with that environment."""

    async def make(settings: Settings | None = None, **env):
        return await aiohttp_client(create_app(settings or settings_for(**env)))

    return make


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture
async def fake_llm():
    """A local OpenAI-compatible endpoint that streams (tests/fake_openai.py)."""
    from tests.fake_openai import FakeOpenAI

    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def llm_client(make_client, fake_llm):
    """A client of an app whose `openai` provider is `fake_llm`."""
    return await make_client(LLM_PROVIDER="openai", OPENAI_BASE_URL=fake_llm.base_url)


def bearer(settings: Settings, user_id: str) -> dict:
    from bioagents.auth import issue_token

    return {"Authorization": f"Bearer {issue_token(settings, user_id)}"}


async def post_chat(client, message="What does p53 do?", user="alice", path="/api/chat", **body):
    response = await client.post(
        path, json={"message": message, **body}, headers={"X-User-Id": user}
    )
    return response, await response.json()


async def open_socket(client, user="alice"):
    """A WebSocket authenticated by first frame as `user` (AUTH_MODE=none)."""
    ws = await client.ws_connect("/api/ws")
    assert (await ws.receive_json())["type"] == "ready"
    await ws.send_json({"action": "auth", "userId": user})
    assert await ws.receive_json() == {"type": "authenticated", "userId": user}
    return ws


async def subscribe(ws, conversation_id: str, **options) -> dict:
    """Subscribe (`options`: since, stream); returns the `subscribed` frame."""
    await ws.send_json({"action": "subscribe", "conversationId": conversation_id, **options})
    frame = await ws.receive_json(timeout=5)
    assert frame["type"] == "subscribed", frame
    assert frame["conversationId"] == conversation_id and "lastId" in frame, frame
    return frame


async def events_until(ws, last_types=("job:completed", "job:failed"), timeout=30.0):
    """Notifications received until one of `last_types` arrives."""
    events = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
        events.append(frame)
        if frame.get("type") in last_types:
            return events


async def wait_for(predicate, timeout=10.0, interval=0.02, what: str = ""):
    """Poll an async predicate until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(interval)
