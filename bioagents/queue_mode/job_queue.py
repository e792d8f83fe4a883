"""The JobQueue interface in queue mode, over one `BioagentsQueue` per queue name.

A job is a SAQ job (`Job.to_dict()` under SAQ's key); its state in the interface's terms comes
from SAQ's status and, for a queued job, its score in SAQ's incomplete set:

    SAQ status             state       where the listing comes from
    queued, score 0        waiting     saq:<queue>:queued (SAQ's)
    queued, score > 0      delayed     saq:<queue>:incomplete, scores > 0 (SAQ's scheduled jobs)
    active, aborting       active      saq:<queue>:active (SAQ's)
    complete               completed   saq:<queue>:completed (ours)
    failed, aborted        failed      saq:<queue>:failed (ours)

Every method raises QueueUnavailable when Redis cannot be reached.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from saq.job import Job, Status

from ..history import Outcome
from ..jobs.base import (
    CANCELLED,
    AttemptError,
    AttemptUsage,
    InvalidJobState,
    JobFilter,
    JobInfo,
    JobNotFound,
    JobQueue,
    JobState,
    QueueCounts,
    QueueUnavailable,
    SearchResult,
)
from ..jobs.spec import QueueSpec
from . import scripts
from .connect import describe, unavailable_as_queue_error
from .pipeline import AutoPipeline
from .queue import BioagentsQueue
from .worker import heartbeat_seconds

FINISHED_BATCH = 1000  # jobs removed per script call when cleaning a finished listing
UNSTARTED_BATCH = 500

STATES = {
    Status.QUEUED: JobState.WAITING,
    Status.NEW: JobState.WAITING,
    Status.ACTIVE: JobState.ACTIVE,
    Status.ABORTING: JobState.ACTIVE,
    Status.COMPLETE: JobState.COMPLETED,
    Status.FAILED: JobState.FAILED,
    Status.ABORTED: JobState.FAILED,
}


def new_job(spec: QueueSpec, job_id: str, data: dict, stalled_interval: float) -> Job:
    """One of our jobs as a SAQ job: its function is the queue's name; `retries` is SAQ's
    total attempts; `retry_delay` with `retry_backoff` the exponential backoff (exact on our
    queue); `timeout` SAQ's own (0: none); `heartbeat` lets SAQ's sweep find a dead worker's
    job."""
    return Job(
        function=spec.name,
        key=job_id,
        kwargs=data,
        retries=spec.max_attempts,
        retry_delay=spec.backoff_base,
        retry_backoff=True,
        timeout=int(spec.timeout),
        heartbeat=heartbeat_seconds(stalled_interval),
        ttl=int(spec.keep_completed_seconds),
    )


def job_info(queue: str, job: Job, score: Any, stage: Any = None) -> JobInfo:
    """The interface's view of a stored SAQ job, its score in the incomplete set and, while it
    runs, its latest stage (`saq:<queue>:progress`, newer than the record's)."""
    state = STATES[job.status]
    run_at = None
    if state is JobState.WAITING and score is not None and float(score) > 0:
        state, run_at = JobState.DELAYED, float(score)
    meta = job.meta or {}
    return JobInfo(
        id=job.key,
        queue=queue,
        data=job.kwargs or {},
        state=state,
        attempts_made=job.attempts,
        max_attempts=job.retries,
        progress=orjson.loads(stage)
        if stage and state is JobState.ACTIVE
        else meta.get("progress"),
        result=job.result if state is JobState.COMPLETED else None,
        errors=[AttemptError(**error) for error in meta.get("errors", ())],
        usage=[
            AttemptUsage(usage["attempt"], usage["promptTokens"], usage["completionTokens"])
            for usage in meta.get("usage", ())
        ],
        queued_at=job.queued / 1000,
        started_at=job.started / 1000 if job.started else None,
        finished_at=job.completed / 1000 if job.completed else None,
        run_at=run_at,
    )


class SaqJobQueue(JobQueue):
    def __init__(
        self,
        queues: dict[str, BioagentsQueue],
        pipeline: AutoPipeline,
        *,
        stalled_interval: float,
    ):
        self.queues = queues
        self.specs = {name: queue.spec for name, queue in queues.items() if queue.spec}
        self.pipeline = pipeline
        self.stalled_interval = stalled_interval

    def queue(self, name: str) -> BioagentsQueue:
        self.spec(name)  # raises UnknownQueue
        return self.queues[name]

    async def enqueue(self, queue: str, job_id: str, data: dict) -> JobInfo:
        q = self.queue(queue)
        job = new_job(q.spec or self.spec(queue), job_id, data, self.stalled_interval)
        with unavailable_as_queue_error():
            if await q.enqueue(job) is None:
                existing = await self.get(queue, job_id)
                if existing is not None:
                    return existing
        self.history.enqueued(queue)
        return job_info(queue, job, 0)

    async def get(self, queue: str, job_id: str) -> JobInfo | None:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            record, score, stage = await q.pipeline.script(
                scripts.GET, [q.job_id(job_id), q._incomplete, q._progress], []
            )
        job = q.deserialize(record) if record else None
        return None if job is None else job_info(queue, job, score, stage)

    async def _get_many(self, q: BioagentsQueue, ids: list[str]) -> list[JobInfo]:
        if not ids:
            return []
        with unavailable_as_queue_error():
            flat = await q.pipeline.script(scripts.GET_MANY, [q._incomplete, q._progress], ids)
        jobs = []
        for i in range(0, len(flat), 3):
            job = q.deserialize(flat[i]) if flat[i] else None
            if job is not None:
                jobs.append(job_info(q.name, job, flat[i + 1], flat[i + 2]))
        return jobs

    async def retry(self, queue: str, job_id: str) -> JobInfo:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            job = await q.job(job_id)
            if job is None:
                raise JobNotFound(f"job {job_id} is not in queue {queue}")
            if job.status not in (Status.FAILED, Status.ABORTED):
                state = STATES[job.status].value
                raise InvalidJobState(f"job {job_id} is {state}, not failed")
            # A fresh set of attempts; the errors of the earlier ones stay on the board.
            job.status = Status.QUEUED
            job.attempts = job.started = job.completed = job.touched = 0
            job.progress = 0.0
            job.result = job.error = job.worker_id = None
            job.queued = int(time.time() * 1000)
            for key in ("stalls", "progress", "claim"):
                job.meta.pop(key, None)
            done = await q.pipeline.script(
                scripts.RETRY_FAILED,
                [job.id, q._failed, q._incomplete, q._queued],
                [q.serialize(job)],
            )
        if done == 0:
            raise JobNotFound(f"job {job_id} is not in queue {queue}")
        if done < 0:
            raise InvalidJobState(f"job {job_id} is no longer failed")
        self.history.enqueued(queue)
        return job_info(queue, job, 0)

    async def retry_failed(self, queue: str) -> int:
        retried = 0
        while True:
            page = await self.list(queue, JobState.FAILED, 0, 200)
            if not page:
                return retried
            for job in page:
                try:
                    await self.retry(queue, job.id)
                    retried += 1
                except (JobNotFound, InvalidJobState):
                    pass

    async def cancel(self, queue: str, job_id: str) -> JobInfo:
        """SAQ's abort: a waiting or delayed job is finished as aborted (failed, CANCELLED) at
        once; an active one is marked aborting, and SAQ's worker holding it stops it within a
        second (our Worker's abort upkeep) and finishes it."""
        q = self.queue(queue)
        with unavailable_as_queue_error():
            record, score, stage = await q.pipeline.script(
                scripts.GET, [q.job_id(job_id), q._incomplete, q._progress], []
            )
            job = q.deserialize(record) if record else None
            if job is None:
                raise JobNotFound(f"job {job_id} is not in queue {queue}")
            before = job_info(queue, job, score, stage)
            if before.state in (JobState.COMPLETED, JobState.FAILED):
                raise InvalidJobState(f"job {job_id} has already {before.state.value}")
            await q.abort(job, CANCELLED)
        if job.status is Status.ABORTED:
            self.history.finished(queue, Outcome.CANCELLED, before.wait_seconds, None)
        return before

    async def remove(self, queue: str, job_id: str) -> None:
        q = self.queue(queue)
        job_key = q.job_id(job_id)
        with unavailable_as_queue_error():
            done = await q.pipeline.script(
                scripts.REMOVE,
                [
                    job_key,
                    q._queued,
                    q._incomplete,
                    q._completed,
                    q._failed,
                    q._claims,
                    q._active,
                    q._about,
                    q._progress,
                ],
                [],
            )
        if done == 0:
            raise JobNotFound(f"job {job_id} is not in queue {queue}")
        if done < 0:
            raise InvalidJobState(f"job {job_id} is active; it can be removed once it ends")

    async def promote(self, queue: str, job_id: str) -> None:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            done = await q.pipeline.script(
                scripts.PROMOTE, [q._incomplete, q._queued, q.job_id(job_id)], []
            )
        if done == 0:
            raise JobNotFound(f"job {job_id} is not in queue {queue}")
        if done < 0:
            job = await self.get(queue, job_id)
            state = job.state.value if job else "gone"
            raise InvalidJobState(f"job {job_id} is {state}, not delayed")

    async def pause(self, queue: str) -> None:
        with unavailable_as_queue_error():
            await self.queue(queue).pause()

    async def resume(self, queue: str) -> None:
        with unavailable_as_queue_error():
            await self.queue(queue).resume()

    async def is_paused(self, queue: str) -> bool:
        with unavailable_as_queue_error():
            return await self.queue(queue).is_paused()

    async def counts(self, queue: str) -> QueueCounts:
        q = self.queue(queue)
        spec = self.spec(queue)
        now_ms = int(time.time() * 1000)
        with unavailable_as_queue_error():
            waiting, active, delayed, completed, failed = await q.pipeline.script(
                scripts.COUNTS,
                [q._queued, q._active, q._incomplete, q._completed, q._failed, q._about],
                [
                    now_ms - int(spec.keep_completed_seconds * 1000),
                    now_ms - int(spec.keep_failed_seconds * 1000),
                ],
            )
        return QueueCounts(waiting, active, delayed, completed, failed)

    async def list(self, queue: str, state: JobState, offset: int, limit: int) -> list[JobInfo]:
        q = self.queue(queue)
        state = JobState(state)
        if limit <= 0:
            return []
        call = q.pipeline.call
        with unavailable_as_queue_error():
            if state is JobState.WAITING:
                newest = await call("LRANGE", q._queued, -(offset + limit), -(offset + 1))
                ids = [_text(i) for i in reversed(newest)]
            elif state is JobState.ACTIVE:
                ids = [_text(i) for i in await call("LRANGE", q._active, 0, -1)]
                running = await self._get_many(q, ids)
                running.sort(key=lambda job: job.started_at or 0, reverse=True)
                return [job for job in running if job.state is state][offset : offset + limit]
            elif state is JobState.DELAYED:
                ids = await call(
                    "ZREVRANGEBYSCORE", q._incomplete, "+inf", "(0", "LIMIT", offset, limit
                )
            else:
                await self.counts(queue)  # trims the listing to its retention by age
                index = q._completed if state is JobState.COMPLETED else q._failed
                ids = await call("ZREVRANGE", index, offset, offset + limit - 1)
        found = await self._get_many(q, [_text(i) for i in ids])
        return [job for job in found if job.state is state]

    async def search(
        self, queue: str, state: JobState, match: JobFilter, offset: int, limit: int
    ) -> SearchResult:
        """Searched inside Redis (`scripts.SEARCH`, over each job's search entry), one page
        at a time; active jobs (a few per worker) through the generic search."""
        state = JobState(state)
        if state is JobState.ACTIVE:
            return await super().search(queue, state, match, offset, limit)
        q = self.queue(queue)
        if state is JobState.WAITING:
            kind, source = "list", q._queued
        elif state is JobState.DELAYED:
            kind, source = "delayed", q._incomplete
        else:
            await self.counts(queue)  # trims the listing to its retention by age
            kind, source = "zset", q._completed if state is JobState.COMPLETED else q._failed
        with unavailable_as_queue_error():
            total, *ids = await q.pipeline.script(
                scripts.SEARCH,
                [source, q._about],
                [
                    kind,
                    match.user or "",
                    (match.text or "").casefold(),
                    "1" if state is JobState.FAILED else "0",
                    offset,
                    limit,
                ],
            )
        jobs = await self._get_many(q, [_text(i) for i in ids])
        return SearchResult([job for job in jobs if job.state is state], total)

    async def clean(self, queue: str, state: JobState, older_than: float) -> int:
        q = self.queue(queue)
        state = JobState(state)
        if state is JobState.ACTIVE:
            raise InvalidJobState("active jobs cannot be cleaned")
        cutoff = time.time() - older_than
        removed = 0
        with unavailable_as_queue_error():
            if state in (JobState.COMPLETED, JobState.FAILED):
                index = q._completed if state is JobState.COMPLETED else q._failed
                while True:
                    batch = await q.pipeline.script(
                        scripts.CLEAN_FINISHED,
                        [index, q._about],
                        [int(cutoff * 1000), FINISHED_BATCH],
                    )
                    removed += batch
                    if batch < FINISHED_BATCH:
                        return removed
            if state is JobState.WAITING:
                raw = await q.pipeline.call("LRANGE", q._queued, 0, -1)
            else:
                raw = await q.pipeline.call("ZRANGEBYSCORE", q._incomplete, "(0", "+inf")
            ids = [_text(i) for i in raw]
            for start in range(0, len(ids), UNSTARTED_BATCH):
                jobs = await self._get_many(q, ids[start : start + UNSTARTED_BATCH])
                old = [
                    q.job_id(job.id)
                    for job in jobs
                    if job.state is state and job.entered_state_at <= cutoff
                ]
                if old:
                    removed += await q.pipeline.script(
                        scripts.REMOVE_UNSTARTED, [q._queued, q._incomplete, q._about], old
                    )
        return removed

    async def workers(self, queue: str) -> int:
        """Live workers serving the queue: SAQ's own live-worker set (`info()["workers"]`)."""
        q = self.queue(queue)
        with unavailable_as_queue_error():
            return await q.pipeline.call("ZCOUNT", q._stats, int(time.time() * 1000), "+inf")

    async def oldest_waiting_age(self, queue: str) -> float | None:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            record = await q.pipeline.script(scripts.OLDEST_WAITING, [q._queued], [])
        job = q.deserialize(record) if record else None
        if job is None:
            return None
        return max(0.0, time.time() - job.queued / 1000)

    async def health(self) -> dict[str, Any]:
        try:
            with unavailable_as_queue_error():
                await self.pipeline.call("PING")
        except QueueUnavailable as error:
            return {"redis": "unreachable", "redisError": str(error)}
        except Exception as error:
            return {"redis": "error", "redisError": describe(error)}
        return {"redis": "connected"}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
