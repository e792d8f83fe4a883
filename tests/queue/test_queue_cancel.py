"""Cancel, timeouts and usage in queue mode (SPEC §10), across real `serve` and `worker`
processes on one Redis, against a fake OpenAI-compatible endpoint that streams (SSE with a
final usage chunk). Cancel is SAQ's abort; a timeout is SAQ's job timeout."""

from __future__ import annotations

import asyncio

import pytest

from tests.fake_openai import FakeOpenAI
from tests.live_support import until_end

from .conftest import get_json, post_chat, saq_record, until_status, wait_until
from .test_queue_live import socket_on, subscribed

pytestmark = pytest.mark.queue

BOARD = "/admin/queues/api/queues"
ALICE = {"X-User-Id": "alice"}


@pytest.fixture
async def fake():
    async with FakeOpenAI() as fake:
        yield fake


def llm(fake: FakeOpenAI, **extra) -> dict:
    return {"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": fake.base_url, **extra}


async def cancel(http, app, job_id: str, queue_path: str = "chat") -> tuple[int, dict]:
    url = f"{app.base_url}/api/{queue_path}/cancel/{job_id}"
    async with http.post(url, headers=ALICE) as response:
        return response.status, await response.json()


async def message_when(http, app, job_id: str, status: str) -> dict:
    async def reached():
        _, message = await get_json(http, app, f"/api/messages/{job_id}")
        return message if message.get("status") == status else None

    return await wait_until(reached, timeout=10, what=f"message {status}")


async def board_job(http, app, queue: str, job_id: str) -> dict:
    return (await get_json(http, app, f"{BOARD}/{queue}/{job_id}"))[1]["job"]


async def test_a_waiting_job_cancelled_never_runs_when_a_worker_comes(procs, http, fake, redis):
    api = await procs.serve(**llm(fake))
    _, first = await post_chat(http, api, "the conversation")
    conversation = first["conversationId"]
    ws = await socket_on(http, api)
    await subscribed(ws, conversation)
    _, body = await post_chat(http, api, "never mind", conversationId=conversation)
    job_id = body["jobId"]  # no worker yet: it waits

    assert await cancel(http, api, job_id) == (
        200,
        {"ok": True, "jobId": job_id, "status": "cancelled"},
    )
    message = await message_when(http, api, job_id, "CANCELLED")
    assert message["error"] == "cancelled"
    frames = await until_end(ws, job_id)
    assert [f["type"] for f in frames] == ["message:updated", "job:cancelled"]
    assert (await saq_record(redis, job_id))["status"] == "aborted"  # in SAQ's words

    await procs.worker("chat", **llm(fake))
    await until_status(http, api, first["jobId"])
    assert all("never mind" not in r.user_content for r in fake.requests)
    job = await board_job(http, api, "chat", job_id)
    assert (job["state"], job["error"], job["attemptsMade"]) == ("failed", "cancelled", 0)
    assert (await cancel(http, api, job_id))[0] == 409


async def test_a_delayed_job_cancelled_is_not_retried(procs, http, fake):
    api = await procs.serve(**llm(fake))
    await procs.worker("deep-research", **llm(fake))
    fake.fail_next(1)
    url = f"{api.base_url}/api/deep-research/start"
    async with http.post(url, json={"message": "a research question"}, headers=ALICE) as response:
        job_id = (await response.json())["jobId"]

    async def delayed():
        job = await board_job(http, api, "deep-research", job_id)
        return job if job["state"] == "delayed" else None

    await wait_until(delayed, what="delayed after the failed attempt (5 s backoff)")
    assert (await cancel(http, api, job_id, "deep-research"))[0] == 200
    await message_when(http, api, job_id, "CANCELLED")
    requests = len(fake.requests)
    job = await board_job(http, api, "deep-research", job_id)
    assert (job["state"], job["error"], job["attemptsMade"]) == ("failed", "cancelled", 1)
    await asyncio.sleep(6)  # past the 5 s backoff the cancelled job would have waited
    assert len(fake.requests) == requests  # never retried


async def test_an_active_attempt_on_a_worker_process_stops_and_keeps_its_text(
    procs, http, fake, redis
):
    api = await procs.serve(**llm(fake))
    await procs.worker("chat", **llm(fake))
    _, first = await post_chat(http, api, "the conversation")
    await until_status(http, api, first["jobId"])
    ws = await socket_on(http, api)
    await subscribed(ws, first["conversationId"])
    fake.hold(after_pieces=2, from_request=len(fake.requests) + 1)
    _, body = await post_chat(http, api, "a long answer", conversationId=first["conversationId"])
    job_id = body["jobId"]
    await fake.until_holding()

    partial = "".join(fake.split(fake.requests[-1].reply)[:2])  # the pieces sent before the hold

    async def text_so_far():
        _, message = await get_json(http, api, f"/api/messages/{job_id}")
        return message["content"] == partial

    await wait_until(text_so_far, what="the answer so far stored")
    assert (await cancel(http, api, job_id))[0] == 200
    message = await message_when(http, api, job_id, "CANCELLED")  # the worker stopped it
    assert message["content"] == partial and message["error"] == "cancelled"
    frames = await until_end(ws, job_id)
    assert [f["type"] for f in frames][-2:] == ["message:updated", "job:cancelled"]
    job = await board_job(http, api, "chat", job_id)
    assert (job["state"], job["error"], job["attemptsMade"]) == ("failed", "cancelled", 1)
    assert (await saq_record(redis, job_id))["status"] == "aborted"
    fake.release()


async def test_a_timed_out_attempt_fails_and_is_retried_after_the_exact_backoff(procs, http, fake):
    env = llm(fake, CHAT_JOB_TIMEOUT_SECONDS=1)  # SAQ's timeout: whole seconds
    api = await procs.serve(**env)
    await procs.worker("chat", **env)
    fake.hold(after_pieces=1, from_request=1)  # the first answer stalls midway
    _, body = await post_chat(http, api, "a stalling answer")
    job_id = body["jobId"]

    async def delayed():
        job = await board_job(http, api, "chat", job_id)
        return job if job["state"] == "delayed" else None

    job = await wait_until(delayed, what="delayed after the timeout")
    failure = job["errors"][0]
    assert failure["error"] == "job timed out after 1 s"
    assert abs(job["runAt"] - failure["at"] - 1.0) < 0.05  # exactly the 1 s backoff
    _, status = await get_json(http, api, f"/api/chat/status/{job_id}")
    assert status["error"] == "job timed out after 1 s"
    fake.release()

    done = await until_status(http, api, job_id)
    assert (done["status"], done["attemptsMade"]) == ("completed", 2)
    stalled, answered = fake.requests[:2]
    assert answered.at - stalled.at >= 2.0  # 1 s timeout + 1 s backoff


async def test_usage_is_the_endpoints_report_summed_per_message_and_kept_per_attempt(
    procs, http, fake
):
    api = await procs.serve(**llm(fake))
    await procs.worker("chat", **llm(fake))
    fake.cut_next(1, after_pieces=2)  # the first attempt's stream breaks off: no usage chunk
    _, body = await post_chat(http, api, "count my tokens")
    job_id = body["jobId"]

    await until_status(http, api, job_id)
    answered = fake.requests[-1]
    reported = fake.usage_for(answered.body, answered.reply)
    _, message = await get_json(http, api, f"/api/messages/{job_id}")
    assert message["usage"] == {
        "promptTokens": reported["prompt_tokens"],
        "completionTokens": reported["completion_tokens"],
    }
    job = await board_job(http, api, "chat", job_id)
    assert [u["attempt"] for u in job["usage"]] == [1, 2]
    assert job["usage"][0]["promptTokens"] == job["usage"][0]["completionTokens"] == 0
    assert job["usage"][1]["completionTokens"] == reported["completion_tokens"]
