"""Nothing lost, nothing answered twice (SPEC §6): workers killed, frozen or stopped mid-job,
and Redis stopped or restarted under load. STALLED_INTERVAL is 2 s in these tests."""

from __future__ import annotations

import asyncio
import signal

import pytest

from bioagents.jobs.base import STALLED_TWICE

from .conftest import (
    ChannelRecorder,
    get_json,
    owner_of,
    post_chat,
    until_status,
    wait_until,
)

pytestmark = pytest.mark.queue

STALLED_INTERVAL = 2.0
RECOVERY_BOUND = STALLED_INTERVAL + 4.0  # SPEC: "within STALLED_INTERVAL + a few seconds"


async def test_a_killed_workers_job_completes_elsewhere_with_one_answer(
    procs, http, redis, redis_server
):
    api = await procs.serve()
    doomed = await procs.worker("chat", OFFLINE_LLM_DELAY=2.0)
    async with ChannelRecorder(redis_server) as channel:
        _, body = await post_chat(http, api)
        job_id = body["jobId"]
        first_owner = await wait_until(lambda: owner_of(redis, job_id), what="job running")

        async def first_run_announced():  # its job:started is on its way just after the claim
            return channel.of(job_id, "job:started")

        await wait_until(first_run_announced, what="the first run's job:started")
        doomed.signal(signal.SIGKILL)
        await procs.worker("chat", OFFLINE_LLM_DELAY=0.2)

        done = await until_status(http, api, job_id, timeout=RECOVERY_BOUND + 2.0)
        assert done["status"] == "completed"
        assert done["attemptsMade"] == 1  # a stall does not spend an attempt
        _, message = await get_json(http, api, f"/api/messages/{job_id}")
        assert message["status"] == "COMPLETE"
        await asyncio.sleep(0.3)
        assert len(channel.of(job_id, "job:started")) == 2  # the killed run and the restart
        assert len(channel.of(job_id, "message:updated")) == 1
        assert len(channel.of(job_id, "job:completed")) == 1
    assert await owner_of(redis, job_id) is None
    assert first_owner


async def test_a_job_that_stalls_twice_fails_with_the_limit_message(
    procs, http, redis, redis_server
):
    api = await procs.serve()
    slow = {"OFFLINE_LLM_DELAY": 30}
    first = await procs.worker("chat", **slow)
    async with ChannelRecorder(redis_server) as channel:
        _, body = await post_chat(http, api)
        job_id = body["jobId"]
        first_owner = await wait_until(lambda: owner_of(redis, job_id), what="first run")
        first.signal(signal.SIGKILL)

        second = await procs.worker("chat", **slow)

        async def taken_over():
            owner = await owner_of(redis, job_id)
            return owner if owner not in (None, first_owner) else None

        await wait_until(taken_over, timeout=RECOVERY_BOUND, what="second run")
        await asyncio.sleep(0.3)  # let the second run start its attempt
        second.signal(signal.SIGKILL)
        await procs.worker("chat", **slow)

        done = await until_status(http, api, job_id, timeout=RECOVERY_BOUND + 2.0)
        assert done["status"] == "failed"
        assert done["error"] == STALLED_TWICE
        assert done["attemptsMade"] == 1
        _, message = await get_json(http, api, f"/api/messages/{job_id}")
        assert (message["status"], message["error"]) == ("FAILED", STALLED_TWICE)
        await asyncio.sleep(0.3)
        failed = channel.of(job_id, "job:failed")
        assert [e["error"] for e in failed] == [STALLED_TWICE]
    await asyncio.sleep(1.0)
    assert (await get_json(http, api, f"/api/chat/status/{job_id}"))[1]["status"] == "failed"


async def test_a_duplicate_run_never_writes_a_second_answer(procs, http, redis, redis_server):
    """A worker frozen mid-job (SIGSTOP: a partition, a long GC pause) loses its job to another
    worker, then wakes and finishes its own run: the first answer stands, announced once."""
    api = await procs.serve()
    frozen = await procs.worker("chat", OFFLINE_LLM_DELAY=2.5)
    async with ChannelRecorder(redis_server) as channel:
        _, body = await post_chat(http, api)
        job_id = body["jobId"]
        await wait_until(lambda: owner_of(redis, job_id), what="first run")
        frozen.signal(signal.SIGSTOP)
        await procs.worker("chat", OFFLINE_LLM_DELAY=0.2)
        done = await until_status(http, api, job_id, timeout=RECOVERY_BOUND + 2.0)
        assert done["status"] == "completed"
        _, answered = await get_json(http, api, f"/api/messages/{job_id}")

        frozen.signal(signal.SIGCONT)
        await wait_until(
            lambda: _logged(frozen, "after it was recovered elsewhere"),
            timeout=10,
            what="the frozen run to finish",
        )
        await asyncio.sleep(0.3)
        assert len(channel.of(job_id, "message:updated")) == 1
        assert len(channel.of(job_id, "job:completed")) == 1
        _, message = await get_json(http, api, f"/api/messages/{job_id}")
        assert message["updatedAt"] == answered["updatedAt"]
        assert message["content"] == answered["content"]
        assert (await get_json(http, api, f"/api/chat/status/{job_id}"))[1]["attemptsMade"] == 1


async def _logged(app, text: str) -> bool:
    return text in app.log()


async def test_sigterm_mid_job_exits_zero_and_the_job_completes(procs, http, redis):
    api = await procs.serve()
    worker = await procs.worker("chat", OFFLINE_LLM_DELAY=1.5, SHUTDOWN_GRACE_SECONDS=10)
    _, body = await post_chat(http, api)
    await wait_until(lambda: owner_of(redis, body["jobId"]), what="job running")
    worker.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    _, later = await post_chat(http, api, "asked during the stop")

    assert await asyncio.to_thread(worker.wait, 15) == 0
    done = await chat_status_of(http, api, body["jobId"])
    assert (done["status"], done["attemptsMade"]) == ("completed", 1)
    # The stopping worker took nothing new: the later job waits for the next worker.
    assert (await chat_status_of(http, api, later["jobId"]))["status"] == "waiting"
    await procs.worker("chat")
    assert (await until_status(http, api, later["jobId"]))["status"] == "completed"


async def chat_status_of(http, api, job_id):
    return (await get_json(http, api, f"/api/chat/status/{job_id}"))[1]


async def test_sigterm_past_the_grace_puts_the_job_back_without_spending_an_attempt(
    procs, http, redis
):
    api = await procs.serve()
    worker = await procs.worker("chat", OFFLINE_LLM_DELAY=30, SHUTDOWN_GRACE_SECONDS=0.5)
    _, body = await post_chat(http, api)
    job_id = body["jobId"]
    await wait_until(lambda: owner_of(redis, job_id), what="job running")
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 15) == 0

    back = await chat_status_of(http, api, job_id)
    assert (back["status"], back["attemptsMade"]) == ("waiting", 0)
    assert (await get_json(http, api, f"/api/messages/{job_id}"))[1]["status"] == "PENDING"
    await procs.worker("chat")
    done = await until_status(http, api, job_id)
    assert (done["status"], done["attemptsMade"]) == ("completed", 1)


async def test_jobs_survive_a_redis_restart_with_appendonly(procs, http, redis_server):
    api = await procs.serve()
    await procs.worker("chat", CHAT_QUEUE_CONCURRENCY=2, OFFLINE_LLM_DELAY=0.8)
    ids = [(await post_chat(http, api, f"question {n}"))[1]["jobId"] for n in range(6)]
    await asyncio.sleep(0.3)  # two running, four waiting

    await asyncio.to_thread(redis_server.stop)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(redis_server.start)

    for job_id in ids:
        done = await until_status(http, api, job_id, timeout=30)
        assert done["status"] == "completed", done
        _, message = await get_json(http, api, f"/api/messages/{job_id}")
        assert message["status"] == "COMPLETE"


async def test_redis_down_answers_503_and_leaves_no_row_then_recovers(procs, http, redis_server):
    api = await procs.serve()
    await procs.worker()
    _, first = await post_chat(http, api)
    conversation = first["conversationId"]
    await until_status(http, api, first["jobId"])

    await asyncio.to_thread(redis_server.stop)
    status, body = await post_chat(http, api, "while Redis is down", conversationId=conversation)
    assert status == 503
    assert body["ok"] is False and "unavailable" in body["error"]
    _, listed = await get_json(http, api, f"/api/conversations/{conversation}/messages")
    assert [m["status"] for m in listed["messages"]] == ["COMPLETE"]  # SPEC §9: no row
    async with http.get(f"{api.base_url}/api/health") as response:
        assert response.status == 503
        health = await response.json()
    assert health["status"] == "degraded" and "redis" in health["failing"]

    await asyncio.to_thread(redis_server.start)

    async def accepted():
        status, body = await post_chat(http, api, "after", conversationId=conversation)
        return body if status == 202 else None

    after = await wait_until(accepted, timeout=10, what="POST accepted again")
    assert (await until_status(http, api, after["jobId"], timeout=15))["status"] == "completed"

    async def healthy():
        async with http.get(f"{api.base_url}/api/health") as response:
            return response.status == 200

    await wait_until(healthy, timeout=15, what="health ok again")
