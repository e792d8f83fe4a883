"""Queue mode's job queue: the JobQueue interface over SAQ's Redis queue.

Jobs are SAQ jobs: each is stored under SAQ's key (`saq:job:<queue>:<id>`) as SAQ's
`Job.to_dict()` JSON less the fields the key already says (`key`, `queue`, `function`) and the
`timeout` every job of ours has (0: liveness is the worker heartbeat); SAQ's own readers
(`queue.job(id)`, `queue.jobs(ids)`) get them back through `BioRedisQueue`. Retained jobs are
most of Redis's memory, so each byte of a record counts. What SAQ lacks is added as indexes
next to the records, each changed only by the atomic scripts in `saq_scripts.py`:

    saq:<queue>:waiting    list   ids ready to run, oldest first (workers pop from the left)
    saq:<queue>:running    hash   id → "<worker> <started ms>": the claim of the active attempt
    saq:<queue>:progress   hash   id → the active attempt's latest progress (JSON)
    saq:<queue>:delayed    zset   id → when its backoff ends (ms, Redis clock)
    saq:<queue>:completed  list   ids in completion order, newest first (a list costs less than
                                  half a zset entry; the count limit keeps it short)
    saq:<queue>:failed     zset   id → when it failed (ms) (no count limit: removal must be cheap)
    saq:<queue>:paused     string present while the queue is paused (every worker checks it)
    saq:<queue>:wake       zset   one member, added when work arrives; idle workers block on it
    saq:<queue>:workers    zset   worker id → heartbeat expiry (ms, Redis clock)

A job's state is read from those indexes: running → active; record status complete/failed →
completed/failed; in `delayed` → delayed; otherwise waiting. `attempts` in the record counts the
attempts that ended (completed or failed); an attempt put back by a graceful stop or a stall
recovery does not count.

`SaqJobQueue` serves routes, board and hub; `saq_worker.Worker` runs the jobs.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis import asyncio as aioredis
from saq.job import Status
from saq.queue.redis import RedisQueue

from ..redis_client import describe, unavailable_as_queue_error
from ..redis_pipeline import AutoPipeline
from . import saq_scripts as scripts
from .base import (
    AttemptError,
    InvalidJobState,
    JobInfo,
    JobNotFound,
    JobQueue,
    JobState,
    QueueCounts,
    QueueUnavailable,
)
from .spec import QueueSpec

SAQ_STATUS = {
    JobState.WAITING: Status.QUEUED.value,
    JobState.DELAYED: Status.QUEUED.value,
    JobState.COMPLETED: Status.COMPLETE.value,
    JobState.FAILED: Status.FAILED.value,
}


def now_ms() -> int:
    return int(time.time() * 1000)


def trim_slack(keep: int | None) -> int:
    """Count retention trims 5 % below the limit at a time, so a full index is not trimmed on
    every single completion (the index never holds more than `keep`)."""
    return 0 if keep is None else keep // 20


class Keys:
    """The Redis keys of one queue (the layout above)."""

    def __init__(self, queue: str):
        base = f"saq:{queue}:"
        self.waiting = base + "waiting"
        self.running = base + "running"
        self.progress = base + "progress"
        self.delayed = base + "delayed"
        self.completed = base + "completed"
        self.failed = base + "failed"
        self.paused = base + "paused"
        self.wake = base + "wake"
        self.workers = base + "workers"
        self.job_prefix = f"saq:job:{queue}:"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id


IMPLIED_FIELDS = ("key", "queue", "function", "timeout")  # not stored: see the module docstring


def new_record(spec: QueueSpec, data: dict, queued_ms: int) -> dict:
    """A fresh job's record: SAQ's Job.to_dict() with defaults and implied fields left out;
    `retries` is SAQ's total attempts."""
    return {
        "kwargs": data,
        "retries": spec.max_attempts,
        "queued": queued_ms,
        "status": Status.QUEUED.value,
    }


def compact(job_dict: dict) -> dict:
    """A SAQ Job.to_dict() as stored here."""
    return {field: value for field, value in job_dict.items() if field not in IMPLIED_FIELDS}


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def job_info(
    queue: str, job_id: str, record_raw, running, progress_raw, delayed_score
) -> JobInfo | None:
    """The interface's view of a stored job (None when there is no record)."""
    if not record_raw:
        return None
    record = orjson.loads(record_raw)
    meta = record.get("meta") or {}
    attempts = record.get("attempts", 0)
    started = record.get("started")
    progress = meta.get("progress")
    run_at = None
    status = record.get("status", Status.QUEUED.value)
    if running is not None:
        state = JobState.ACTIVE
        attempts += 1
        started = int(_text(running).rpartition(" ")[2])
        progress = orjson.loads(progress_raw) if progress_raw else None
    elif status == Status.COMPLETE.value:
        state = JobState.COMPLETED
    elif status in (Status.FAILED.value, Status.ABORTED.value):
        state = JobState.FAILED
    elif delayed_score is not None:
        state = JobState.DELAYED
        run_at = float(delayed_score) / 1000
    else:
        state = JobState.WAITING
    completed = record.get("completed")
    return JobInfo(
        id=job_id,
        queue=queue,
        data=record.get("kwargs") or {},
        state=state,
        attempts_made=attempts,
        max_attempts=record.get("retries", 1),
        progress=progress,
        result=record.get("result") if state is JobState.COMPLETED else None,
        errors=[AttemptError(**error) for error in meta.get("errors", ())],
        queued_at=record.get("queued", 0) / 1000,
        started_at=started / 1000 if started else None,
        finished_at=completed / 1000 if completed and state is not JobState.ACTIVE else None,
        run_at=run_at,
    )


class BioRedisQueue(RedisQueue):
    """One queue: SAQ's RedisQueue with our scripts at its seams (`_enqueue`, `dequeue`,
    `_finish`, `_retry`, `count`, `schedule`, `write_worker_info`) and the operations SAQ
    lacks. Hot-path commands go through the shared AutoPipeline."""

    def __init__(self, redis: aioredis.Redis, pipeline: AutoPipeline, spec: QueueSpec):
        super().__init__(redis, name=spec.name, dump=_dumps, load=orjson.loads)
        self.spec = spec
        self.pipeline = pipeline
        self.keys = Keys(spec.name)
        self.worker_id = f"saq-api-{id(self):x}"  # the claimant when SAQ's dequeue() is used

    def _script(self, script, keys, args, *, retry=False):
        return self.pipeline.script(script, keys, args, retry=retry)

    # --- a job's life (used by saq_worker) --------------------------------------------------

    async def add(self, job_id: str, data: dict) -> bool:
        """Store a waiting job; False when one with that id exists."""
        record = new_record(self.spec, data, now_ms())
        k = self.keys
        return bool(
            await self._script(
                scripts.ENQUEUE, [k.job(job_id), k.waiting, k.wake], [_dumps(record), job_id]
            )
        )

    async def claim(self, worker_id: str, count: int) -> tuple[str, list[tuple[str, dict]]]:
        """Take up to `count` waiting jobs (none while paused) → (claim, [(id, record)])."""
        k = self.keys
        started = now_ms()
        reply = await self._script(
            scripts.CLAIM,
            [k.waiting, k.running, k.paused, k.wake],
            [count, worker_id, k.job_prefix, started],
        )
        if not reply:
            return "", []
        started_raw, ids, records = reply
        claim = f"{worker_id} {_text(started_raw)}"
        jobs = []
        for job_id, raw in zip(ids, records, strict=True):
            job_id = _text(job_id)
            if raw is None:  # a record deleted under a waiting id: drop the orphan id
                self.pipeline.fire("HDEL", k.running, job_id)
                continue
            jobs.append((job_id, orjson.loads(raw)))
        return claim, jobs

    def settle(
        self,
        job_id: str,
        claim: str,
        outcome: JobState,
        record: dict,
        delay: float = 0.0,
    ):
        """Store the end of a claimed attempt. Returns a future that resolves to 1 when it is
        stored, 0 when the claim was lost (another run owns the job now); the command is resent
        until Redis takes it."""
        k = self.keys
        record["status"] = SAQ_STATUS[outcome]
        if outcome is JobState.COMPLETED:
            keep, when = self.spec.keep_completed_count, now_ms()
        elif outcome is JobState.FAILED:
            keep, when = self.spec.keep_failed_count, now_ms()
        else:
            keep, when = None, int(delay * 1000)
        return self._script(
            scripts.SETTLE,
            [
                k.job(job_id),
                k.running,
                k.progress,
                k.waiting,
                k.delayed,
                k.completed,
                k.failed,
                k.wake,
            ],
            [
                job_id,
                claim,
                outcome.value,
                _dumps(record),
                when,
                -1 if keep is None else keep,
                trim_slack(keep),
                k.job_prefix,
            ],
            retry=True,
        )

    def set_progress(self, job_id: str, progress: dict) -> None:
        self.pipeline.hset_latest(self.keys.progress, job_id, _dumps(progress))

    async def record(self, job_id: str) -> dict | None:
        raw = await self.pipeline.call("GET", self.keys.job(job_id))
        return orjson.loads(raw) if raw else None

    async def promote_due(self) -> float | None:
        """Move delayed jobs whose time has come to waiting; seconds until the next is due."""
        k = self.keys
        _, next_ms = await self._script(scripts.PROMOTE_DUE, [k.delayed, k.waiting, k.wake], [])
        return None if next_ms < 0 else next_ms / 1000

    async def find_stalled(self, worker_id: str, full: bool) -> tuple[str, list[str]]:
        """Re-claim for `worker_id` the jobs whose worker stopped heart-beating."""
        k = self.keys
        reply = await self._script(
            scripts.FIND_STALLED, [k.running, k.workers], [worker_id, 1 if full else 0]
        )
        if not reply:
            return "", []
        claim, ids = reply
        return _text(claim), [_text(job_id) for job_id in ids]

    async def reconcile(self, worker_id: str, held: list[str]) -> int:
        """Put back jobs claimed by `worker_id` that it does not hold (a lost claim reply)."""
        k = self.keys
        return await self._script(
            scripts.RECONCILE, [k.running, k.waiting, k.wake], [worker_id, *held]
        )

    async def trim(self) -> list[int]:
        """Retention by age; returns the counts [waiting, active, delayed, completed, failed]."""
        k = self.keys
        now = now_ms()
        return await self._script(
            scripts.STATS,
            [k.completed, k.failed, k.waiting, k.running, k.delayed],
            [
                k.job_prefix,
                now - int(self.spec.keep_completed_seconds * 1000),
                now - int(self.spec.keep_failed_seconds * 1000),
            ],
        )

    # --- SAQ's seams, on this layout ---------------------------------------------------------

    def saq_job(self, job_key: str, record):
        """SAQ's Job from a stored record, raw or parsed (the implied fields put back)."""
        if not record:
            return None
        if not isinstance(record, dict):
            record = orjson.loads(record)
        implied = {"function": self.name, "queue": self.name, "key": job_key, "timeout": 0}
        return self.deserialize({**implied, **record})

    async def _get_job_by_id(self, job_id):
        job_id = _text(job_id)
        raw = await self.pipeline.call("GET", job_id)
        return self.saq_job(self.job_key_from_id(job_id), raw)

    async def jobs(self, job_keys):
        job_keys = list(job_keys)
        if not job_keys:
            return []
        raws = await self.pipeline.call("MGET", *(self.job_id(key) for key in job_keys))
        return [self.saq_job(key, raw) for key, raw in zip(job_keys, raws, strict=True)]

    async def _enqueue(self, job):
        data = job.kwargs or {}
        return job if await self.add(job.key, data) else None

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0):
        claim, jobs = await self.claim(self.worker_id, 1)
        if not jobs:
            return None
        job = self.saq_job(*jobs[0])
        job.worker_id = claim
        job.status = Status.ACTIVE
        return job

    async def _finish(self, job, status, *, result=None, error=None) -> None:
        record = compact(job.to_dict())
        outcome = JobState.COMPLETED if status == Status.COMPLETE else JobState.FAILED
        await self.settle(job.key, job.worker_id or "", outcome, record)

    async def _retry(self, job, error) -> None:
        record = compact(job.to_dict())
        delay = self.spec.backoff(max(1, job.attempts))
        await self.settle(job.key, job.worker_id or "", JobState.DELAYED, record, delay)

    async def count(self, kind) -> int:
        waiting, active, delayed, _, _ = await self.trim()
        return {"queued": waiting, "active": active, "incomplete": waiting + active + delayed}[kind]

    async def schedule(self, lock: int = 1) -> list[str]:
        await self.promote_due()
        return []

    async def write_worker_info(self, worker_id: str, info, ttl: int) -> None:
        await self._script(scripts.HEARTBEAT, [self.keys.workers], [worker_id, ttl * 1000])


def _dumps(value) -> str:
    return orjson.dumps(value).decode()


class SaqJobQueue(JobQueue):
    """The JobQueue interface in queue mode. Every method raises QueueUnavailable when Redis
    cannot be reached."""

    def __init__(self, specs: dict[str, QueueSpec], redis: aioredis.Redis, pipeline: AutoPipeline):
        self.specs = specs
        self.redis = redis
        self.pipeline = pipeline
        self.queues = {name: BioRedisQueue(redis, pipeline, spec) for name, spec in specs.items()}

    def queue(self, name: str) -> BioRedisQueue:
        self.spec(name)  # raises UnknownQueue
        return self.queues[name]

    async def enqueue(self, queue: str, job_id: str, data: dict) -> JobInfo:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            if not await q.add(job_id, data):
                existing = await self.get(queue, job_id)
                if existing is not None:
                    return existing
        return JobInfo(
            id=job_id,
            queue=queue,
            data=data,
            state=JobState.WAITING,
            max_attempts=q.spec.max_attempts,
            queued_at=time.time(),
        )

    async def get(self, queue: str, job_id: str) -> JobInfo | None:
        q = self.queue(queue)
        k = q.keys
        with unavailable_as_queue_error():
            reply = await q._script(
                scripts.GET, [k.job(job_id), k.running, k.progress, k.delayed], [job_id]
            )
        return job_info(queue, job_id, *reply)

    async def _get_many(self, q: BioRedisQueue, ids: list[str]) -> list[JobInfo]:
        if not ids:
            return []
        k = q.keys
        with unavailable_as_queue_error():
            flat = await q._script(
                scripts.GET_MANY, [k.running, k.progress, k.delayed], [k.job_prefix, *ids]
            )
        jobs = []
        for n, i in enumerate(range(0, len(flat), 4)):
            job = job_info(q.name, ids[n], *flat[i : i + 4])
            if job is not None:
                jobs.append(job)
        return jobs

    async def _require(self, queue: str, job_id: str) -> JobInfo:
        job = await self.get(queue, job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} is not in queue {queue}")
        return job

    async def retry(self, queue: str, job_id: str) -> JobInfo:
        q = self.queue(queue)
        job = await self._require(queue, job_id)
        if job.state is not JobState.FAILED:
            raise InvalidJobState(f"job {job_id} is {job.state.value}, not failed")
        with unavailable_as_queue_error():
            record = await q.record(job_id)
            if record is None:
                raise JobNotFound(f"job {job_id} is not in queue {queue}")
            for field in ("attempts", "started", "completed", "result", "error"):
                record.pop(field, None)
            record.get("meta", {}).pop("stalls", None)
            record["status"] = Status.QUEUED.value
            record["queued"] = now_ms()
            k = q.keys
            done = await q._script(
                scripts.RETRY,
                [k.failed, k.job(job_id), k.waiting, k.wake],
                [job_id, _dumps(record)],
            )
        if done == 0:
            raise JobNotFound(f"job {job_id} is not in queue {queue}")
        if done < 0:
            raise InvalidJobState(f"job {job_id} is no longer failed")
        return await self._require(queue, job_id)

    async def retry_failed(self, queue: str) -> int:
        q = self.queue(queue)
        retried = 0
        while True:
            with unavailable_as_queue_error():
                ids = await q.pipeline.call("ZRANGE", q.keys.failed, 0, 199)
            if not ids:
                return retried
            for job_id in ids:
                try:
                    await self.retry(queue, _text(job_id))
                    retried += 1
                except (JobNotFound, InvalidJobState):
                    pass

    async def remove(self, queue: str, job_id: str) -> None:
        q = self.queue(queue)
        k = q.keys
        with unavailable_as_queue_error():
            done = await q._script(
                scripts.REMOVE,
                [k.job(job_id), k.running, k.waiting, k.delayed, k.completed, k.failed, k.progress],
                [job_id],
            )
        if done == 0:
            raise JobNotFound(f"job {job_id} is not in queue {queue}")
        if done < 0:
            raise InvalidJobState(f"job {job_id} is active; it can be removed once it ends")

    async def promote(self, queue: str, job_id: str) -> None:
        q = self.queue(queue)
        k = q.keys
        with unavailable_as_queue_error():
            done = await q._script(
                scripts.PROMOTE, [k.delayed, k.waiting, k.wake, k.job(job_id)], [job_id]
            )
        if done == 0:
            raise JobNotFound(f"job {job_id} is not in queue {queue}")
        if done < 0:
            job = await self.get(queue, job_id)
            state = job.state.value if job else "gone"
            raise InvalidJobState(f"job {job_id} is {state}, not delayed")

    async def pause(self, queue: str) -> None:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            await q.pipeline.call("SET", q.keys.paused, "1")

    async def resume(self, queue: str) -> None:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            await q.pipeline.call("DEL", q.keys.paused)
            await q.pipeline.call("ZADD", q.keys.wake, 0, "w")

    async def is_paused(self, queue: str) -> bool:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            return bool(await q.pipeline.call("EXISTS", q.keys.paused))

    async def counts(self, queue: str) -> QueueCounts:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            waiting, active, delayed, completed, failed = await q.trim()
        return QueueCounts(waiting, active, delayed, completed, failed)

    async def list(self, queue: str, state: JobState, offset: int, limit: int) -> list[JobInfo]:
        q = self.queue(queue)
        k = q.keys
        state = JobState(state)
        if limit <= 0:
            return []
        with unavailable_as_queue_error():
            if state is JobState.WAITING:
                newest = await q.pipeline.call(
                    "LRANGE", k.waiting, -(offset + limit), -(offset + 1)
                )
                ids = [_text(i) for i in reversed(newest)]
            elif state is JobState.ACTIVE:
                entries = await q.pipeline.call("HGETALL", k.running)
                pairs = [
                    (_text(entries[i]), int(_text(entries[i + 1]).rpartition(" ")[2]))
                    for i in range(0, len(entries), 2)
                ]
                pairs.sort(key=lambda pair: pair[1], reverse=True)
                ids = [job_id for job_id, _ in pairs[offset : offset + limit]]
            elif state is JobState.COMPLETED:
                await q.trim()
                newest = await q.pipeline.call("LRANGE", k.completed, offset, offset + limit - 1)
                ids = [_text(i) for i in newest]
            else:
                await q.trim()
                index = k.delayed if state is JobState.DELAYED else k.failed
                newest = await q.pipeline.call("ZREVRANGE", index, offset, offset + limit - 1)
                ids = [_text(i) for i in newest]
        return [job for job in await self._get_many(q, ids) if job.state is state]

    async def clean(self, queue: str, state: JobState, older_than: float) -> int:
        q = self.queue(queue)
        k = q.keys
        state = JobState(state)
        if state is JobState.ACTIVE:
            raise InvalidJobState("active jobs cannot be cleaned")
        cutoff = now_ms() - int(older_than * 1000)
        removed = 0
        with unavailable_as_queue_error():
            if state in (JobState.COMPLETED, JobState.FAILED):
                script, index = (
                    (scripts.REMOVE_COMPLETED_BEFORE, k.completed)
                    if state is JobState.COMPLETED
                    else (scripts.REMOVE_FAILED_BEFORE, k.failed)
                )
                while True:
                    batch = await q._script(script, [index], [k.job_prefix, cutoff, 1000])
                    removed += batch
                    if batch < 1000:
                        return removed
            if state is JobState.WAITING:
                ids = [_text(i) for i in await q.pipeline.call("LRANGE", k.waiting, 0, -1)]
            else:
                ids = [_text(i) for i in await q.pipeline.call("ZRANGE", k.delayed, 0, -1)]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                old = [
                    job.id
                    for job in await self._get_many(q, chunk)
                    if _entered_state_at(job) * 1000 <= cutoff
                ]
                if old:
                    removed += await q._script(
                        scripts.REMOVE_IF_IN,
                        [k.waiting if state is JobState.WAITING else k.delayed],
                        [k.job_prefix, "list" if state is JobState.WAITING else "zset", *old],
                    )
        return removed

    async def workers(self, queue: str) -> int:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            return await q._script(scripts.LIVE_WORKERS, [q.keys.workers], [])

    async def oldest_waiting_age(self, queue: str) -> float | None:
        q = self.queue(queue)
        with unavailable_as_queue_error():
            raw = await q._script(scripts.OLDEST_WAITING, [q.keys.waiting], [q.keys.job_prefix])
        if not raw:
            return None
        return max(0.0, time.time() - orjson.loads(raw).get("queued", 0) / 1000)

    async def health(self) -> dict[str, Any]:
        try:
            with unavailable_as_queue_error():
                await self.pipeline.call("PING")
        except QueueUnavailable as error:
            return {"redis": "unreachable", "redisError": str(error)}
        except Exception as error:
            return {"redis": "error", "redisError": describe(error)}
        return {"redis": "connected"}


def _entered_state_at(job: JobInfo) -> float:
    if job.state is JobState.DELAYED and job.errors:
        return job.errors[-1].at
    return job.queued_at
