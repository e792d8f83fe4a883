"""The app on PostgreSQL (`DATABASE_URL=postgresql://…`, SPEC §8): a real, temporary server.

Skipped, saying why, where Debian's PostgreSQL server or psycopg2 is missing (the README's test
command installs both)."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from tests.api_support import get_json, message_when, research_status_when
from tests.conftest import post_chat
from tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.postgres
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "X-User-Id": "nul"}


def _server_binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as Debian's postgres user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (the postgres extra)")
    bin_dir = _server_binaries()
    if bin_dir is None:
        pytest.skip("Debian's postgresql server package is not installed")
    # Not under pytest's tmp folder: as root that is private, and the server runs as postgres.
    data = tempfile.mkdtemp(prefix="bioagents-pg-")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_server_user([f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    server = subprocess.Popen(
        _as_server_user(
            [
                f"{bin_dir}/postgres",
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(
                [f"{bin_dir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


async def test_chat_and_research_run_end_to_end_on_postgresql(make_client, postgres_url):
    client = await make_client(DATABASE_URL=postgres_url)
    _, chat = await post_chat(client, "What does p53 do?")
    conversation = chat["conversationId"]
    _, research = await post_chat(
        client, "Is p53 druggable?", path="/api/deep-research/start", conversationId=conversation
    )

    message = await message_when(client, chat["messageId"], "COMPLETE")
    assert "What does p53 do?" in message["content"]
    status = await research_status_when(client, research["messageId"], "completed")
    assert status["progress"]["completedSteps"][-1] == "reply"

    code, listing = await get_json(client, f"/api/conversations/{conversation}/messages")
    assert code == 200
    assert [m["id"] for m in listing["messages"]] == [chat["messageId"], research["messageId"]]
    assert listing["messages"][1]["state"]["reply"] == listing["messages"][1]["content"]


async def test_ownership_and_deduplication_hold_on_postgresql(make_client, postgres_url):
    client = await make_client(DATABASE_URL=postgres_url, OFFLINE_LLM_DELAY="0.2")
    _, first = await post_chat(client, "long run", path="/api/deep-research/start")
    conversation = first["conversationId"]
    _, again = await post_chat(
        client, "again", path="/api/deep-research/start", conversationId=conversation
    )
    assert again["deduplicated"] is True and again["jobId"] == first["jobId"]

    response, body = await post_chat(
        client, "intruder", user="mallory", conversationId=conversation
    )
    assert response.status == 404 and body["ok"] is False
    code, _ = await get_json(client, f"/api/messages/{first['messageId']}", user="mallory")
    assert code == 404


class _ReplyWithNul(FakeOpenAI):
    @staticmethod
    def reply_for(body: dict, number: int) -> str:
        return "before\x00after"


async def test_nul_characters_never_reach_postgresql(make_client, postgres_url, caplog):
    caplog.set_level(logging.WARNING)
    async with _ReplyWithNul() as llm:
        client = await make_client(
            DATABASE_URL=postgres_url, LLM_PROVIDER="openai", OPENAI_BASE_URL=llm.base_url
        )
        for body in (
            {"message": "a\x00b", "userId": "nul"},
            {"message": "hi", "userId": "a\x00b"},
            {"message": "hi", "userId": "nul", "conversationId": "\x00"},
        ):
            response = await client.post("/api/chat", json=body)
            assert response.status == 400, body
            assert (await response.json())["ok"] is False
        form = await client.post("/api/chat", data=b"message=a%00b", headers=FORM_HEADERS)
        assert form.status == 400

        _, accepted = await post_chat(client, "a model that answers with a NUL", user="nul")
        message = await message_when(client, accepted["messageId"], "COMPLETE", user="nul")

    assert message["content"] == "beforeafter"  # stored without the NUL PostgreSQL refuses
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
