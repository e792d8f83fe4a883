"""Helpers the API tests share: reading the messages table behind the app, and waiting for a
job to finish over HTTP."""

from __future__ import annotations

import sqlite3

from bioagents.config import Settings
from bioagents.keys import SETTINGS
from tests.conftest import wait_for


def app_settings(client) -> Settings:
    """The settings the test client's app runs with."""
    return client.server.app[SETTINGS]


def message_rows(settings: Settings) -> list[dict]:
    """Every row of the messages table, read straight from the SQLite file."""
    connection = sqlite3.connect(settings.sqlite_path)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM messages")]
    except sqlite3.OperationalError:  # the table does not exist yet
        return []
    finally:
        connection.close()


def pending_rows(settings: Settings) -> list[dict]:
    return [row for row in message_rows(settings) if row["status"] == "PENDING"]


async def get_json(client, path: str, user: str = "alice", headers: dict | None = None):
    response = await client.get(path, headers={"X-User-Id": user, **(headers or {})})
    return response.status, await response.json()


async def message_when(client, message_id: str, status: str, user: str = "alice", timeout=15):
    """GET /api/messages/{id} until it has `status`; returns the body."""

    async def reached():
        code, body = await get_json(client, f"/api/messages/{message_id}", user)
        return body if code == 200 and body["status"] == status else None

    return await wait_for(reached, timeout=timeout)


async def chat_status_when(client, job_id: str, status: str, user: str = "alice", timeout=15):
    """GET /api/chat/status/{id} until it reports `status`; returns the body."""

    async def reached():
        code, body = await get_json(client, f"/api/chat/status/{job_id}", user)
        return body if code == 200 and body["status"] == status else None

    return await wait_for(reached, timeout=timeout)


async def research_status_when(client, message_id: str, status: str, user="alice", timeout=20):
    async def reached():
        code, body = await get_json(client, f"/api/deep-research/status/{message_id}", user)
        return body if code == 200 and body["status"] == status else None

    return await wait_for(reached, timeout=timeout)
