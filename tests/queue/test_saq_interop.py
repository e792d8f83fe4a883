"""Our queues are SAQ's queues: a plain SAQ client (stock `RedisQueue`, nothing of ours) in
another service enqueues a job that our `worker` process runs, waits for it with SAQ's own
`refresh(until_complete)`, and reads our jobs and workers with SAQ's own operations."""

from __future__ import annotations

import pytest
from saq.job import Status
from saq.queue.redis import RedisQueue

from .conftest import post_chat, until_status

pytestmark = pytest.mark.queue


@pytest.fixture
async def plain_saq(redis_server):
    queues: list[RedisQueue] = []

    async def open_(name: str) -> RedisQueue:
        queue = RedisQueue.from_url(redis_server.url, name=name)
        await queue.connect()
        queues.append(queue)
        return queue

    yield open_
    for queue in queues:
        await queue.disconnect()


async def test_a_plain_saq_client_enqueues_a_job_our_worker_runs(procs, plain_saq):
    worker = await procs.worker("chat")
    chat = await plain_saq("chat")

    job = await chat.enqueue(
        "chat",
        key="from-another-service",
        retries=4,
        retry_delay=1.0,
        retry_backoff=True,
        timeout=0,
        heartbeat=30,
        messageId="from-another-service",
        conversationId="c-1",
        userId="svc",
        question="What does BRCA1 repair?",
    )
    await job.refresh(until_complete=20)

    assert job.status == Status.COMPLETE
    assert "What does BRCA1 repair?" in job.result["text"]
    assert job.attempts == 1
    info = await chat.info(jobs=True)
    assert len(info["workers"]) == 1  # SAQ sees our worker, with SAQ's worker info
    assert info["queued"] == info["active"] == 0
    assert "first heartbeat stored" in worker.log()


async def test_saq_operations_tell_the_truth_about_our_jobs(procs, http, plain_saq):
    api = await procs.serve()
    chat = await plain_saq("chat")
    _, body = await post_chat(http, api, "What does p53 do?")
    job_id = body["jobId"]

    waiting = await chat.job(job_id)  # nothing runs it yet: no worker
    assert waiting.status == Status.QUEUED
    assert waiting.kwargs["question"] == "What does p53 do?"
    assert (waiting.function, waiting.retries, waiting.retry_backoff) == ("chat", 4, True)
    assert await chat.count("queued") == 1
    assert (await chat.info())["queued"] == 1

    await procs.worker("chat")
    await until_status(http, api, job_id)
    done = await chat.job(job_id)
    assert done.status == Status.COMPLETE
    assert done.result["text"] and done.result["userId"] == "alice"
    assert done.started and done.completed >= done.started
    assert [job.key for job in await chat.jobs([job_id])] == [job_id]
    assert await chat.count("incomplete") == 0


async def test_saqs_own_abort_stops_a_job_before_it_runs(procs, http, plain_saq, open_services):
    api = await procs.serve()
    services = await open_services()
    await services.jobs.pause("chat")
    _, body = await post_chat(http, api)
    chat = await plain_saq("chat")

    job = await chat.job(body["jobId"])
    await chat.abort(job, "not wanted")  # SAQ's own abort, from a plain client

    stored = await chat.job(body["jobId"])
    assert stored.status == Status.ABORTED
    assert (await services.jobs.counts("chat")).waiting == 0
    await services.jobs.resume("chat")
    await procs.worker("chat")
    assert (await services.jobs.get("chat", body["jobId"])).state.value == "failed"
