"""The JobQueue contract, one suite for every implementation (as SAQ runs one TestQueue against
each of its backends): in-process, and queue mode's SaqJobQueue with SAQ's own Worker running
the jobs over a real redis-server. The job's work is scripted by its data (`do`): the queue
under test is real in both modes.

States, counts and newest-first lists; exact backoff; retention by count and age; pause;
retry, remove, promote, clean; search; graceful stop; stalls (queue mode: a worker of the
in-process queue cannot die without its whole process)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
import uuid

import pytest

from bioagents.jobs.base import (
    STALLED_TWICE,
    Attempt,
    AttemptFailure,
    InvalidJobState,
    JobFilter,
    JobNotFound,
    JobState,
)
from bioagents.jobs.inprocess import InProcessJobQueue
from bioagents.jobs.spec import HOUR, QueueSpec, Stage
from tests.conftest import wait_for

QUEUE = "contract"
SPEC = QueueSpec(
    name=QUEUE,
    concurrency=2,
    retries=3,
    backoff_base=0.2,  # 0.2, 0.4, 0.8 s: the shape of SPEC §6's 1-2-4 s, faster
    keep_completed_seconds=HOUR,
    keep_completed_count=3,
    keep_failed_seconds=HOUR,
    keep_failed_count=None,
    stages=(Stage("work", 50),),
)
MODES = ["in-process", "redis"]


class ScriptedHandler:
    """A job whose data says what it does: `{"do": "ok" | "fail" | "fail-then-ok" | "sleep"}`."""

    def __init__(self) -> None:
        self.started: dict[str, list[float]] = {}
        self.outcomes: list[tuple[str, str, bool]] = []

    async def run(self, attempt: Attempt) -> dict:
        self.started.setdefault(attempt.job_id, []).append(time.monotonic())
        await attempt.set_progress({"stage": "work", "percent": 50})
        do = attempt.data.get("do", "ok")
        if do == "sleep":
            await asyncio.sleep(attempt.data.get("seconds", 30))
        if do == "fail" or (do == "fail-then-ok" and attempt.attempt < 3):
            raise AttemptFailure(f"scripted failure {attempt.attempt}")
        return {"text": f"done {attempt.job_id}"}

    async def on_completed(self, attempt: Attempt, result: dict) -> None:
        self.outcomes.append((attempt.job_id, "completed", True))

    async def on_failed(self, attempt: Attempt, error: str, final: bool) -> None:
        self.outcomes.append((attempt.job_id, error, final))

    async def on_cancelled(self, attempt: Attempt) -> None:
        self.outcomes.append((attempt.job_id, "cancelled", True))


@dataclasses.dataclass
class System:
    jobs: object
    handler: ScriptedHandler
    drain: object
    mode: str
    services: object = None

    async def add(self, do: str = "ok", user: str = "alice", question: str = "q", **data) -> str:
        job_id = str(uuid.uuid4())
        payload = {"userId": user, "question": question, "do": do, **data}
        await self.jobs.enqueue(QUEUE, job_id, payload)
        return job_id

    async def state(self, job_id: str) -> JobState | None:
        job = await self.jobs.get(QUEUE, job_id)
        return None if job is None else job.state

    async def until(self, job_id: str, state: JobState, timeout: float = 10.0):
        async def reached():
            job = await self.jobs.get(QUEUE, job_id)
            return job if job is not None and job.state is state else None

        return await wait_for(reached, timeout, what=f"{job_id} {state.value}")


@pytest.fixture(params=MODES)
async def open_system(request, tmp_path):
    """`await open_system(spec)`: the queue `QUEUE` with that spec and its job runner, in the
    mode of this test's parameter; closed at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_(spec: QueueSpec = SPEC) -> System:
            handler = ScriptedHandler()
            if request.param == "in-process":
                jobs = InProcessJobQueue({QUEUE: spec}, handler)
                await jobs.start()
                stack.push_async_callback(jobs.close)
                return System(jobs, handler, jobs.drain, "in-process")
            from bioagents.config import Settings
            from bioagents.queue_mode.services import open_queue_services
            from tests.queue.conftest import RedisServer

            server = RedisServer(tmp_path / "redis")
            server.start()
            stack.callback(server.stop)
            settings = Settings.from_env(
                {
                    "USE_JOB_QUEUE": "true",
                    "REDIS_URL": server.url,
                    "DATABASE_URL": f"sqlite:///{tmp_path}/unused.db",
                    "STALLED_INTERVAL": "1",
                }
            )
            services = await stack.enter_async_context(
                open_queue_services(settings, {QUEUE: spec}, subscribe=False)
            )
            workers = await stack.enter_async_context(services.running_workers(handler, [QUEUE]))
            await asyncio.wait_for(workers.ready(), 10)
            return System(services.jobs, handler, workers.drain, "redis", services)

        yield open_


@pytest.fixture
async def system(open_system):
    return await open_system()


async def test_jobs_go_waiting_active_completed_with_counts_and_newest_first_lists(system):
    jobs = system.jobs
    await jobs.pause(QUEUE)
    ids = [await system.add("sleep", seconds=0.4) for _ in range(3)]
    assert (await jobs.counts(QUEUE)).waiting == 3
    assert [j.id for j in await jobs.list(QUEUE, JobState.WAITING, 0, 10)] == ids[::-1]
    assert [j.id for j in await jobs.list(QUEUE, JobState.WAITING, 1, 1)] == [ids[1]]
    assert await jobs.oldest_waiting_age(QUEUE) >= 0

    await jobs.resume(QUEUE)
    first = await system.until(ids[0], JobState.ACTIVE)
    assert first.attempts_made == 1 and first.started_at >= first.queued_at
    assert (await jobs.counts(QUEUE)).active == 2  # the queue's concurrency
    for job_id in ids:
        done = await system.until(job_id, JobState.COMPLETED)
        assert done.result == {"text": f"done {job_id}"}
        assert done.attempts_made == 1
        assert done.progress == {"stage": "work", "percent": 50}
        assert done.finished_at >= done.started_at
    counts = await jobs.counts(QUEUE)
    assert (counts.waiting, counts.active, counts.delayed, counts.completed) == (0, 0, 0, 3)
    assert await jobs.oldest_waiting_age(QUEUE) is None
    listed = [j.id for j in await jobs.list(QUEUE, JobState.COMPLETED, 0, 10)]
    assert sorted(listed) == sorted(ids)


async def test_a_failing_job_is_retried_after_exact_backoff_then_fails(system):
    job_id = await system.add("fail")
    failed = await system.until(job_id, JobState.FAILED, timeout=15)

    starts = system.handler.started[job_id]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(starts) == SPEC.max_attempts == failed.attempts_made
    for gap, backoff in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert backoff <= gap < backoff + 0.5, gaps  # no jitter: never sooner, never much later
    assert [e.attempt for e in failed.errors] == [1, 2, 3, 4]
    assert failed.error == "scripted failure 4"  # the sentence users see
    assert "scripted failure 4" in failed.errors[-1].traceback
    finals = [final for jid, _, final in system.handler.outcomes if jid == job_id]
    assert finals == [False, False, False, True]


async def test_a_failed_attempt_is_visibly_delayed_and_promote_runs_it_now(open_system):
    system = await open_system(dataclasses.replace(SPEC, backoff_base=30.0))
    job_id = await system.add("fail-then-ok")
    delayed = await system.until(job_id, JobState.DELAYED)
    assert delayed.run_at > time.time() + 20
    assert delayed.error == "scripted failure 1"
    assert (await system.jobs.counts(QUEUE)).delayed == 1
    with pytest.raises(InvalidJobState):
        await system.jobs.retry(QUEUE, job_id)

    await system.jobs.promote(QUEUE, job_id)
    await system.until(job_id, JobState.DELAYED)  # attempt 2 fails too, and waits again
    await system.jobs.promote(QUEUE, job_id)
    done = await system.until(job_id, JobState.COMPLETED)
    assert done.attempts_made == 3
    with pytest.raises(InvalidJobState):
        await system.jobs.promote(QUEUE, job_id)
    with pytest.raises(JobNotFound):
        await system.jobs.promote(QUEUE, "no-such-job")


async def test_completed_jobs_are_kept_up_to_their_count(system):
    ids = [await system.add() for _ in range(5)]
    for job_id in ids:
        await system.until(job_id, JobState.COMPLETED) if job_id == ids[-1] else None
    await wait_for(lambda: _completed(system, 3), what="3 kept")
    kept = {j.id for j in await system.jobs.list(QUEUE, JobState.COMPLETED, 0, 10)}
    assert len(kept) == 3 and kept <= set(ids)
    assert sum([await system.jobs.get(QUEUE, i) is None for i in ids]) == 2


async def _completed(system, n):
    return (await system.jobs.counts(QUEUE)).completed == n


async def test_a_paused_queue_accepts_jobs_and_starts_none_until_resumed(system):
    await system.jobs.pause(QUEUE)
    assert await system.jobs.is_paused(QUEUE)
    job_id = await system.add()
    await asyncio.sleep(0.6)
    assert await system.state(job_id) is JobState.WAITING
    assert system.handler.started.get(job_id) is None
    await system.jobs.resume(QUEUE)
    assert not await system.jobs.is_paused(QUEUE)
    await system.until(job_id, JobState.COMPLETED)


async def test_retry_gives_a_failed_job_a_fresh_set_of_attempts(system):
    job_id = await system.add("fail")
    await system.until(job_id, JobState.FAILED, timeout=15)
    retried = await system.jobs.retry(QUEUE, job_id)
    assert retried.state in (JobState.WAITING, JobState.ACTIVE)
    again = await system.until(job_id, JobState.FAILED, timeout=15)
    assert again.attempts_made == SPEC.max_attempts
    assert len(again.errors) == 2 * SPEC.max_attempts  # the board keeps the earlier errors
    assert (await system.jobs.retry_failed(QUEUE)) == 1
    with pytest.raises(JobNotFound):
        await system.jobs.retry(QUEUE, "no-such-job")
    ok = await system.add()
    await system.until(ok, JobState.COMPLETED)
    with pytest.raises(InvalidJobState):
        await system.jobs.retry(QUEUE, ok)


async def test_remove_deletes_a_job_unless_it_is_active(system):
    running = await system.add("sleep", seconds=5)
    await system.until(running, JobState.ACTIVE)
    with pytest.raises(InvalidJobState):
        await system.jobs.remove(QUEUE, running)
    await system.jobs.pause(QUEUE)
    waiting = await system.add()
    await system.jobs.remove(QUEUE, waiting)
    assert await system.jobs.get(QUEUE, waiting) is None
    assert (await system.jobs.counts(QUEUE)).waiting == 0
    with pytest.raises(JobNotFound):
        await system.jobs.remove(QUEUE, waiting)


async def test_clean_removes_jobs_older_than_asked_in_a_state(system):
    done = [await system.add() for _ in range(2)]
    failed = await system.add("fail")
    for job_id in done:
        await system.until(job_id, JobState.COMPLETED)
    await system.until(failed, JobState.FAILED, timeout=15)
    assert await system.jobs.clean(QUEUE, JobState.COMPLETED, 3600) == 0
    assert await system.jobs.clean(QUEUE, JobState.COMPLETED, 0) == 2
    assert await system.jobs.clean(QUEUE, JobState.FAILED, 0) == 1
    await system.jobs.pause(QUEUE)
    waiting = await system.add()
    assert await system.jobs.clean(QUEUE, JobState.WAITING, 0) == 1
    assert await system.jobs.get(QUEUE, waiting) is None
    with pytest.raises(InvalidJobState):
        await system.jobs.clean(QUEUE, JobState.ACTIVE, 0)
    counts = await system.jobs.counts(QUEUE)
    assert (counts.waiting, counts.completed, counts.failed) == (0, 0, 0)


async def test_search_finds_jobs_by_user_and_text_paged_newest_first(system):
    await system.jobs.pause(QUEUE)
    ids = [
        await system.add(user="alice", question="What does P53 do?"),
        await system.add(user="bob", question="p53 and apoptosis"),
        await system.add(user="alice", question="BRCA1 repair"),
        await system.add(user="alice", question='quotes "p53" \\ too'),
    ]
    by_user = await system.jobs.search(QUEUE, JobState.WAITING, JobFilter(user="alice"), 0, 10)
    assert [j.id for j in by_user.jobs] == [ids[3], ids[2], ids[0]] and by_user.total == 3
    by_text = await system.jobs.search(QUEUE, JobState.WAITING, JobFilter(text="p53"), 0, 10)
    assert {j.id for j in by_text.jobs} == {ids[0], ids[1], ids[3]}
    both = await system.jobs.search(
        QUEUE, JobState.WAITING, JobFilter(user="alice", text="P53"), 1, 1
    )
    assert (both.total, [j.id for j in both.jobs]) == (2, [ids[0]])
    quoted = await system.jobs.search(QUEUE, JobState.WAITING, JobFilter(text='"p53" \\'), 0, 5)
    assert [j.id for j in quoted.jobs] == [ids[3]]
    nothing = await system.jobs.search(QUEUE, JobState.WAITING, JobFilter(user="carol"), 0, 5)
    assert (nothing.total, nothing.jobs) == (0, [])


async def test_search_finds_failed_jobs_by_their_error(system):
    failed = await system.add("fail", question="anything")
    await system.until(failed, JobState.FAILED, timeout=15)
    found = await system.jobs.search(
        QUEUE, JobState.FAILED, JobFilter(text="SCRIPTED FAILURE 4"), 0, 5
    )
    assert [j.id for j in found.jobs] == [failed]


async def test_graceful_stop_puts_a_cut_off_job_back_without_spending_an_attempt(system):
    long = await system.add("sleep", seconds=30)
    await system.until(long, JobState.ACTIVE)
    await system.drain(0.2)
    back = await system.jobs.get(QUEUE, long)
    assert (back.state, back.attempts_made) == (JobState.WAITING, 0)
    assert system.handler.outcomes == []  # no hook: the attempt did not end, it was put back


async def test_a_stalled_job_runs_again_unspent_and_fails_on_its_second_stall(system):
    if system.mode == "in-process":
        pytest.skip(
            "in-process jobs run inside the serve process: they cannot lose their worker "
            "without the whole process (restart recovery covers that: tests/test_recovery.py)"
        )
    queue = system.services.queues[QUEUE]
    await system.drain(0)  # from here on, only this test's "dead worker" takes the job
    job_id = await system.add("sleep", seconds=30)
    for stall in (1, 2):
        taken = await _take_and_die(queue)
        assert taken.key == job_id
        await asyncio.sleep(taken.heartbeat + 0.3)
        assert job_id in " ".join(await queue.sweep(lock=0.001))  # what each worker runs
        expected = JobState.WAITING if stall == 1 else JobState.FAILED
        recovered = await system.until(job_id, expected)
        assert recovered.attempts_made == (0 if stall == 1 else 1)  # a stall spends none
    assert recovered.error == STALLED_TWICE
    assert system.handler.outcomes[-1] == (job_id, STALLED_TWICE, True)


async def _take_and_die(queue):
    """Take a job as SAQ's worker does (dequeue, mark active), then never touch it again: the
    worker's process is gone."""
    from saq.job import Status

    queue.stopping = False  # the drained workers' flag: this test takes jobs itself
    job = await queue.dequeue(timeout=5)
    job.attempts += 1
    job.started = int(time.time() * 1000)
    job.worker_id = "gone"
    await job.update(status=Status.ACTIVE)
    return job
