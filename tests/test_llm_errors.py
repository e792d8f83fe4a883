"""What users see of a language-model failure (SPEC §12): one generic sentence per kind, in the
status route, the message and `job:failed`; the provider's own text and host go to the board
(the attempt's traceback) and the log only."""

from __future__ import annotations

import socket

import pytest
from aiohttp import web

from tests.admin_support import fail_job
from tests.api_support import chat_status_when, message_when
from tests.conftest import post_chat
from tests.fake_openai import FakeOpenAI
from tests.live_support import until_end, watched_conversation

PROVIDER_TEXT = "upstream pool exhausted at llm-7.internal.example:8443"


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_an_http_failure_reads_as_one_sentence_and_the_board_keeps_the_details(
    make_client, aiohttp_server
):
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": PROVIDER_TEXT}}, status=500)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", broken)
    server = await aiohttp_server(app)
    client = await make_client(LLM_PROVIDER="openai", OPENAI_BASE_URL=str(server.make_url("/v1")))
    _, body = await post_chat(client, "fails")
    sentence = "the language model service failed (HTTP 500)"
    assert (await chat_status_when(client, body["jobId"], "delayed"))["error"] == sentence
    job = await fail_job(client, "chat", body["jobId"])
    assert {e["error"] for e in job["errors"]} == {sentence}
    assert all(PROVIDER_TEXT in e["traceback"] for e in job["errors"])
    message = await message_when(client, body["jobId"], "FAILED")
    assert message["error"] == sentence
    assert (await chat_status_when(client, body["jobId"], "failed"))["error"] == sentence
    page = await (await client.get(f"/admin/queues/queue/chat/{body['jobId']}")).text()
    assert PROVIDER_TEXT in page


async def test_the_failed_notification_carries_the_sentence_only(make_client):
    async with FakeOpenAI() as fake:
        client = await make_client(LLM_PROVIDER="openai", OPENAI_BASE_URL=fake.base_url)
        ws, conversation = await watched_conversation(client)
        fake.fail_next(4, status=502)
        _, body = await post_chat(client, "doomed", conversationId=conversation)
        await fail_job(client, "chat", body["jobId"])
        failed = (await until_end(ws))[-1]
    assert failed["type"] == "job:failed"
    assert failed["error"] == "the language model service failed (HTTP 502)"


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        ({"OPENAI_BASE_URL": "closed"}, "the language model service could not be reached"),
        ({"LLM_TIMEOUT_SECONDS": "0.3"}, "the language model service timed out"),
    ],
)
async def test_unreachable_and_silent_providers_read_as_one_sentence(make_client, env, sentence):
    async with FakeOpenAI() as fake:
        fake.hold(after_pieces=1)  # silent after its first piece
        base_url = closed_port_url() if env.get("OPENAI_BASE_URL") == "closed" else fake.base_url
        client = await make_client(
            LLM_PROVIDER="openai", **{**env, "OPENAI_BASE_URL": f"{base_url}"}
        )
        _, body = await post_chat(client, "anyone there?")
        status = await chat_status_when(client, body["jobId"], "delayed")
        assert status["error"] == sentence
        fake.release()
