"""Retention per outcome, by count and by age (SPEC §6), with short values: queue specs are
data, so the tests build theirs with `spec.with_(…)`."""

from __future__ import annotations

import asyncio

import pytest

from bioagents.jobs.base import JobState
from tests.fake_openai import FakeOpenAI

from .conftest import accept_chat, specs_for, wait_until

pytestmark = pytest.mark.queue


async def test_completed_jobs_beyond_the_count_are_removed_oldest_first(open_services, redis):
    specs = specs_for({})
    specs["chat"] = specs["chat"].with_(keep_completed_count=3, concurrency=1)
    services = await open_services(specs, workers=["chat"])
    jobs = services.jobs
    ids = []
    for n in range(6):
        ids.append(await accept_chat(services, f"question {n}"))
        await wait_until(lambda: _completed(jobs, ids[-1]), what=f"job {n} completed")

    assert (await jobs.counts("chat")).completed == 3
    kept = [job.id for job in await jobs.list("chat", JobState.COMPLETED, 0, 10)]
    assert kept == ids[:2:-1]  # the three newest, newest first
    for job_id in ids[:3]:
        assert await jobs.get("chat", job_id) is None
        assert not await redis.exists(f"saq:job:chat:{job_id}")


async def _completed(jobs, job_id):
    job = await jobs.get("chat", job_id)
    return job is not None and job.state is JobState.COMPLETED


async def test_finished_jobs_leave_after_their_age_each_outcome_its_own(open_services, redis):
    async with FakeOpenAI() as fake:
        specs = specs_for({})
        specs["chat"] = specs["chat"].with_(
            retries=0, keep_completed_seconds=1.0, keep_failed_seconds=2.5
        )
        services = await open_services(
            specs, workers=["chat"], LLM_PROVIDER="openai", OPENAI_BASE_URL=fake.base_url
        )
        jobs = services.jobs
        completed = await accept_chat(services, "answered")
        await wait_until(lambda: _completed(jobs, completed), what="completed")
        fake.fail_next(1)
        failed = await accept_chat(services, "not answered")
        await wait_until(lambda: _count(jobs, "failed", 1), what="failed")

        await asyncio.sleep(1.3)
        counts = await jobs.counts("chat")
        assert (counts.completed, counts.failed) == (0, 1)
        assert not await redis.exists(f"saq:job:chat:{completed}")
        assert (await jobs.get("chat", failed)).state is JobState.FAILED

        await asyncio.sleep(1.5)
        assert (await jobs.counts("chat")).failed == 0
        assert await jobs.get("chat", failed) is None


async def _count(jobs, state, expected):
    return getattr(await jobs.counts("chat"), state) == expected
