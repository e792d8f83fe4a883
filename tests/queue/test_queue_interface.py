"""The JobQueue interface over SAQ and Redis (SaqJobQueue): states, counts, newest-first
lists, the delayed state, promote, remove, clean, retry, workers, health, and what it stores.
Jobs run on a real Worker in this event loop, against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest

from bioagents.jobs.base import InvalidJobState, JobNotFound, JobState, QueueUnavailable
from tests.fake_openai import FakeOpenAI

from .conftest import accept_chat, specs_for, wait_until

pytestmark = pytest.mark.queue


async def state_of(services, job_id, queue="chat"):
    job = await services.jobs.get(queue, job_id)
    return job.state if job else None


async def test_a_job_is_stored_as_a_saq_job_with_its_queues_timeout(open_services):
    services = await open_services()
    job_id = await accept_chat(services)

    saq_job = await services.jobs.queue("chat").job(job_id)  # SAQ's own reader
    assert saq_job.key == job_id
    assert saq_job.timeout == 300  # CHAT_JOB_TIMEOUT_SECONDS, as SAQ's own job timeout
    assert saq_job.heartbeat == 2  # STALLED_INTERVAL: liveness for SAQ's sweep
    assert saq_job.retries == 4  # SAQ counts attempts: the first one and 3 retries
    assert saq_job.status == "queued"
    assert saq_job.kwargs["messageId"] == job_id
    assert not saq_job.stuck


async def test_jobs_go_waiting_active_completed_with_counts_and_newest_first_lists(
    open_services,
):
    services = await open_services(workers=["chat"], OFFLINE_LLM_DELAY="0.4")
    jobs = services.jobs
    await jobs.pause("chat")
    ids = [await accept_chat(services, f"question {n}") for n in range(3)]

    assert (await jobs.counts("chat")).waiting == 3
    assert [j.id for j in await jobs.list("chat", JobState.WAITING, 0, 10)] == ids[::-1]
    assert [j.id for j in await jobs.list("chat", JobState.WAITING, 1, 1)] == [ids[1]]
    await asyncio.sleep(0.2)
    assert await jobs.oldest_waiting_age("chat") >= 0.2
    assert await state_of(services, ids[0]) is JobState.WAITING

    await jobs.resume("chat")
    await wait_until(lambda: _count(jobs, "active", 3), what="3 active")
    active = await jobs.list("chat", JobState.ACTIVE, 0, 10)
    assert {j.id for j in active} == set(ids)
    assert all(j.attempts_made == 1 and j.started_at for j in active)

    await wait_until(lambda: _count(jobs, "completed", 3), what="3 completed")
    counts = await jobs.counts("chat")
    assert (counts.waiting, counts.active, counts.delayed, counts.failed) == (0, 0, 0, 0)
    assert await jobs.oldest_waiting_age("chat") is None
    newest_first = [j.id for j in await jobs.list("chat", JobState.COMPLETED, 0, 10)]
    assert sorted(newest_first) == sorted(ids)
    done = await jobs.get("chat", ids[0])
    assert done.state is JobState.COMPLETED
    assert done.attempts_made == 1
    assert done.progress == {"stage": "reply", "percent": 90}
    assert "question 0" in done.result["text"]
    assert done.finished_at >= done.started_at >= done.queued_at


async def _count(jobs, state, expected):
    return getattr(await jobs.counts("chat"), state) == expected


async def test_a_failed_attempt_is_visibly_delayed_and_promote_runs_it_now(open_services):
    async with FakeOpenAI() as fake:
        fake.fail_next(1)
        specs = specs_for({})
        specs["chat"] = specs["chat"].with_(backoff_base=60.0)
        services = await open_services(
            specs, workers=["chat"], LLM_PROVIDER="openai", OPENAI_BASE_URL=fake.base_url
        )
        jobs = services.jobs
        job_id = await accept_chat(services)

        await wait_until(lambda: _count(jobs, "delayed", 1), what="delayed")
        delayed = await jobs.get("chat", job_id)
        assert delayed.state is JobState.DELAYED
        assert delayed.attempts_made == 1
        assert 55 < delayed.run_at - time.time() <= 60.5
        assert delayed.errors[0].attempt == 1
        assert "HTTP 500" in delayed.errors[0].error
        assert "Traceback" in delayed.errors[0].traceback
        assert [j.id for j in await jobs.list("chat", JobState.DELAYED, 0, 5)] == [job_id]
        with pytest.raises(InvalidJobState):
            await jobs.retry("chat", job_id)

        await jobs.promote("chat", job_id)
        await wait_until(lambda: _count(jobs, "completed", 1), what="completed")
        done = await jobs.get("chat", job_id)
        assert done.attempts_made == 2
        assert len(done.errors) == 1
        with pytest.raises(InvalidJobState):
            await jobs.promote("chat", job_id)
        with pytest.raises(JobNotFound):
            await jobs.promote("chat", "no-such-job")


async def test_failed_jobs_are_retried_one_or_all_and_cleaned(open_services):
    async with FakeOpenAI() as fake:
        fake.fail_next(1000)
        specs = specs_for({})
        specs["chat"] = specs["chat"].with_(retries=0)
        services = await open_services(
            specs, workers=["chat"], LLM_PROVIDER="openai", OPENAI_BASE_URL=fake.base_url
        )
        jobs = services.jobs
        ids = [await accept_chat(services, f"q{n}") for n in range(3)]
        await wait_until(lambda: _count(jobs, "failed", 3), what="3 failed")
        failed = await jobs.get("chat", ids[0])
        assert failed.state is JobState.FAILED
        assert failed.attempts_made == 1
        assert failed.error == "the language model service failed (HTTP 500)"
        assert "Traceback" in failed.errors[0].traceback

        await jobs.pause("chat")
        retried = await jobs.retry("chat", ids[0])
        assert (retried.state, retried.attempts_made) == (JobState.WAITING, 0)
        with pytest.raises(InvalidJobState):
            await jobs.retry("chat", ids[0])
        await jobs.resume("chat")
        await wait_until(lambda: _count(jobs, "failed", 3), what="failed again")
        again = await jobs.get("chat", ids[0])
        assert [e.attempt for e in again.errors] == [1, 1]  # each run's failure is kept

        await jobs.pause("chat")
        assert await jobs.retry_failed("chat") == 3
        assert (await jobs.counts("chat")).waiting == 3
        assert await jobs.clean("chat", JobState.WAITING, 3600) == 0
        assert await jobs.clean("chat", JobState.WAITING, 0) == 3
        assert (await jobs.counts("chat")).waiting == 0
        assert await jobs.get("chat", ids[0]) is None

        await jobs.resume("chat")
        fresh = await accept_chat(services, "q3")
        await wait_until(lambda: _count(jobs, "failed", 1), what="one failed")
        assert await jobs.clean("chat", JobState.FAILED, 0) == 1
        assert await jobs.get("chat", fresh) is None
        with pytest.raises(InvalidJobState):
            await jobs.clean("chat", JobState.ACTIVE, 0)


async def test_remove_deletes_a_job_unless_it_is_active(open_services):
    services = await open_services(workers=["chat"], OFFLINE_LLM_DELAY="1.0")
    jobs = services.jobs
    running = await accept_chat(services)
    await wait_until(lambda: _count(jobs, "active", 1), what="active")
    with pytest.raises(InvalidJobState):
        await jobs.remove("chat", running)

    await jobs.pause("chat")
    waiting = await accept_chat(services)
    await jobs.remove("chat", waiting)
    assert await jobs.get("chat", waiting) is None
    assert (await jobs.counts("chat")).waiting == 0
    with pytest.raises(JobNotFound):
        await jobs.remove("chat", waiting)


async def test_workers_are_counted_from_heartbeats_in_redis(open_services, redis):
    idle = await open_services()
    assert await idle.jobs.workers("chat") == 0
    services = await open_services(workers=["chat"])
    assert await idle.jobs.workers("chat") == 1
    assert await idle.jobs.workers("deep-research") == 0
    await services.workers.drain(0)
    assert await idle.jobs.workers("chat") == 0


async def test_redis_errors_become_queue_unavailable(open_services, redis_server):
    services = await open_services()
    assert (await services.jobs.health())["redis"] == "connected"
    redis_server.stop()
    with pytest.raises(QueueUnavailable):
        await services.jobs.enqueue("chat", "job-1", {"question": "?"})
    with pytest.raises(QueueUnavailable):
        await services.jobs.counts("chat")
    health = await services.jobs.health()
    assert health["redis"] == "unreachable"
    redis_server.start()
    assert (await services.jobs.health())["redis"] == "connected"
    await services.jobs.enqueue("chat", "job-1", {"question": "?"})


async def test_saqs_own_api_works_on_this_layout(open_services):
    """SAQ's seams (enqueue, dequeue, finish, count, job) are implemented on our indexes."""
    from saq.job import Job, Status

    services = await open_services()
    queue = services.jobs.queue("chat")
    job = await queue.enqueue(Job(function="chat", key="saq-job-1", kwargs={"question": "?"}))
    assert job is not None
    assert await queue.count("queued") == 1

    taken = await queue.dequeue()  # SAQ's: queued → active list; its worker marks it active
    assert taken.key == "saq-job-1"
    assert await queue.count("active") == 1
    await taken.update(status=Status.ACTIVE)
    assert (await services.jobs.get("chat", "saq-job-1")).state is JobState.ACTIVE

    await taken.finish(Status.COMPLETE, result={"text": "done"})
    stored = await queue.job("saq-job-1")
    assert (stored.status, stored.result) == (Status.COMPLETE, {"text": "done"})
    info = await services.jobs.get("chat", "saq-job-1")
    assert (info.state, info.result) == (JobState.COMPLETED, {"text": "done"})
