"""Queue mode's queue: SAQ's `RedisQueue`, on SAQ's own keys and record format, so that SAQ's
own operations (`job()`, `jobs()`, `info()`, `count()`, `sweep()`, `abort()`, `enqueue()` from
a plain SAQ client in another process, SAQ's web UI) tell the truth about our jobs.

What changes, and why (each override below says which upstream behaviour it replaces):
- SAQ's queue operations each take one round trip: one Lua script (`scripts.py`) sent through
  the process's AutoPipeline, instead of two to six commands.
- Additions that change no SAQ meaning: a pause shared by every worker, the completed and
  failed listings the board pages through, claim tokens that stop a worker whose attempt was
  recovered elsewhere from writing over it.
- With a `QueueSpec` (our queues), SAQ's policies are replaced by SPEC §6's: exact backoff
  (SAQ always adds full jitter), retention per outcome by age and count (SAQ: one ttl for
  every outcome, no count), a stalled job put back without spending an attempt and failed on
  its second stall (SAQ: aborted or retried as any failure), a job cut off by a graceful stop
  put back at the front without spending an attempt (SAQ: retried, attempt spent), and each
  failed attempt's error kept in `meta["errors"]` (SAQ keeps only the last).
Without a spec (as SAQ's own test suite builds it) the queue keeps SAQ's policies.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from redis import asyncio as aioredis
from saq.job import TERMINAL_STATUSES, Job, Status
from saq.queue.redis import PubSubMultiplexer, RedisQueue
from saq.utils import now

from ..jobs.base import (
    MAX_ATTEMPT_RECORDS,
    MAX_STALLS,
    STALLED_TWICE,
    AttemptError,
    cut_traceback,
    describe_traceback,
)
from ..jobs.spec import QueueSpec
from . import scripts
from .pipeline import AutoPipeline, Script

logger = logging.getLogger("saq")  # SAQ's own logger: our overrides log as SAQ would

# saq.Worker.process retries a job cut off by its stop() with this error.
SAQ_STOP_ERROR = "cancelled"
# A job function may leave here the one-line error its attempt failed with (for users); the
# queue keeps it, with the traceback, in `meta["errors"]`.
ATTEMPT_ERROR = "attempt_error"
CLAIM = "claim"  # meta key: the claim token of the attempt a worker holds
PAUSED_POLL = 0.25  # seconds between looks at a paused queue
BLOCK_AT_MOST = 1.0  # seconds one BLMOVE blocks, so a stop or a pause is noticed soon
CLAIM_GRACE_MS = 30_000  # a held job whose worker never marked it active counts as stalled after


class BioagentsQueue(RedisQueue):
    """SAQ's RedisQueue with one-round-trip operations and SPEC §6's additions.

    Same constructor and `from_url(url, **kwargs)` as `RedisQueue`; ours are keyword arguments:
    `spec` (the queue's QueueSpec: SPEC §6's policies instead of SAQ's) and `pipeline` (an
    AutoPipeline to share with the process's other Redis users, for its event loop)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        name: str = "default",
        dump: Any = None,
        load: Any = None,
        max_concurrent_ops: int = 20,
        swept_error_message: str | None = None,
        *,
        spec: QueueSpec | None = None,
        pipeline: AutoPipeline | None = None,
    ) -> None:
        super().__init__(redis, name, dump, load, max_concurrent_ops, swept_error_message)
        self.spec = spec
        self.stopping = False  # set by our Worker's stop: dequeue takes nothing more
        # Called after the sweep recovered a stalled job, with whether it failed it (on its
        # second stall); set by our Worker, which tells the job's handler and the history:
        # the worker that ran it is gone and cannot.
        self.on_stalled: Callable[[Job, bool], Awaitable[None]] | None = None
        self._claims = self.namespace("claims")
        self._completed = self.namespace("completed")
        self._failed = self.namespace("failed")
        self._paused = self.namespace("paused")
        self._about = self.namespace("about")
        self._progress = self.namespace("progress")
        self._shared_pipeline = pipeline
        self._pipelines: dict[asyncio.AbstractEventLoop, AutoPipeline] = {}
        self._held: dict[str, str] = {}  # job key → claim token of attempts this process holds
        self._stored: dict[int, bool] = {}  # id(job) → was its latest retry/finish stored?
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Future] = set()
        self._blocking = asyncio.Lock()  # one blocking dequeue per queue and process
        self._live_pubsub = LivePubSubMultiplexer(redis.pubsub(), prefix=self._pubsub.prefix)
        self._pubsub = self._live_pubsub

    # --- Redis access -------------------------------------------------------------------------

    @property
    def pipeline(self) -> AutoPipeline:
        """The AutoPipeline of the running event loop: one per loop, because a connection
        belongs to the loop that opened it (a sync job may call `asyncio.run(job.refresh())`)."""
        loop = asyncio.get_running_loop()
        pipeline = self._pipelines.get(loop)
        if pipeline is None:
            shared = self._shared_pipeline
            if shared is not None and not self._pipelines:
                pipeline = shared
            else:
                client = self.redis if not self._pipelines else _same_server(self.redis)
                pipeline = AutoPipeline(client, close_client=client is not self.redis)
            self._pipelines[loop] = pipeline
        return pipeline

    def _script(self, script: Script, keys: list, args: list) -> asyncio.Future:
        return self.pipeline.script(script, keys, args)

    async def disconnect(self) -> None:
        for handle in self._timers:
            handle.cancel()
        loop = asyncio.get_running_loop()
        pipeline = self._pipelines.pop(loop, None)
        if pipeline is not None and pipeline is not self._shared_pipeline:
            await pipeline.close()
        await super().disconnect()

    # --- SAQ's reads, on the same pipeline --------------------------------------------------
    # Upstream reads on other pooled connections; ours go through the pipeline that carries
    # this process's writes, so a read issued after a write sees it (as SAQ's callers expect:
    # `finish()` then `refresh()`).

    async def _get_job_by_id(self, job_id: bytes | str) -> Job | None:
        return self.deserialize(await self.pipeline.call("GET", job_id))

    async def jobs(self, job_keys: Iterable[str]) -> list[Job | None]:
        ids = [self.job_id(key) for key in job_keys]
        if not ids:
            return []
        return [self.deserialize(record) for record in await self.pipeline.call("MGET", *ids)]

    async def count(self, kind: Any) -> int:
        if kind == "queued":
            return await self.pipeline.call("LLEN", self._queued)
        if kind == "active":
            return await self.pipeline.call("LLEN", self._active)
        if kind == "incomplete":
            return await self.pipeline.call("ZCARD", self._incomplete)
        raise ValueError(f"Can't count unknown type {kind}")

    async def listen(
        self,
        job_keys: Iterable[str],
        callback: Any,
        timeout: float | None = 10,
        poll_interval: float = 0.5,
    ) -> None:
        """Upstream: subscribes and waits for status messages; a job that finished before the
        subscription took effect is never reported, so `refresh(until_complete)` can wait for
        ever. Ours: once the subscription is live, a job already finished is reported once,
        then messages as upstream."""
        keys = list(job_keys)
        if not keys:
            return
        multiplexer = self._live_pubsub
        queue = await multiplexer.subscribe(*(self.job_id(key) for key in keys))
        try:
            await multiplexer.live.wait()
            finished = [
                (job.key, job.status)
                for job in await self.jobs(keys)
                if job is not None and job.status in TERMINAL_STATUSES
            ]
            for key, status in finished:
                if await _call(callback, key, status):
                    return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            while True:
                wait = None if deadline is None else deadline - loop.time()
                if wait is not None and wait <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(queue.get(), wait)
                key = self.job_key_from_id(message["channel"])
                status = Status[_text(message["data"]).upper()]
                if await _call(callback, key, status):
                    return
        finally:
            await multiplexer.unsubscribe(queue)

    # --- claims -------------------------------------------------------------------------------

    def _claim_of(self, job: Job) -> str:
        """The claim token to guard this write with: only for an attempt this process holds."""
        token = job.meta.get(CLAIM)
        return token if token and self._held.get(job.key) == token else ""

    def _took(self, reply: list, token: str) -> Job | None:
        job_id, record = _text(reply[1]), reply[2]
        if not record:  # a record deleted under a queued id: forget the orphan
            self.pipeline.script(
                scripts.FORGET,
                [self._active, self._incomplete, self._claims, self._about, self._progress],
                [job_id],
            )
            return None
        job = self.deserialize(record)
        if job is None:
            return None
        job.meta[CLAIM] = token
        self._held[job.key] = token
        return job

    def _settled(self, job: Job, stored: bool) -> None:
        if job.meta.get(CLAIM) and self._held.get(job.key) == job.meta[CLAIM]:
            del self._held[job.key]
            self._stored[id(job)] = stored

    def outcome_stored(self, job: Job) -> bool:
        """Whether the retry or finish of an attempt this process held was stored (False: the
        attempt was recovered elsewhere meanwhile, so its outcome is not the job's). Asked
        once per attempt, by the worker's after-process hook."""
        return self._stored.pop(id(job), True)

    # --- SAQ's operations, one round trip each --------------------------------------------------

    async def _enqueue(self, job: Job) -> Job | None:
        """Upstream: its enqueue script (kept), run outside the AutoPipeline. Ours also takes a
        re-enqueued finished job out of the finished listings."""
        done = await self._script(
            scripts.ENQUEUE,
            [
                self._incomplete,
                job.id,
                self._queued,
                job.abort_id,
                self._completed,
                self._failed,
                self._about,
            ],
            [self.serialize(job), _number(job.scheduled), search_entry(job)],
        )
        if not done:
            return None
        if logger.isEnabledFor(logging.INFO):  # job.info() costs more than the enqueue itself
            logger.info("Enqueuing %s", job.info(logger.isEnabledFor(logging.DEBUG)))
        return job

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        """Upstream: every idle worker slot blocks in its own BLMOVE queued → active, then GETs
        (two round trips); a paused queue does not exist; a stopping worker keeps taking jobs.
        Ours: one script when work is queued; otherwise one slot per queue and process blocks
        in SAQ's BLMOVE (a second at most) while the others wait their turn here, then claims
        what it took; nothing while paused or stopping."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        while not self.stopping:
            reply = await self._take()
            if reply is not _NOTHING:
                if reply is not _PAUSED:
                    return reply
                await asyncio.sleep(_remaining(loop, deadline, PAUSED_POLL))
            else:
                async with self._blocking:
                    job = await self._take_blocking(_remaining(loop, deadline, BLOCK_AT_MOST))
                if job is not None:
                    return job
            if deadline is not None and loop.time() >= deadline:
                return None
        return None

    async def _take(self) -> Any:
        """A job, _PAUSED or _NOTHING, without waiting."""
        while True:
            token = _new_token()
            reply = await self._script(
                scripts.DEQUEUE, [self._queued, self._active, self._paused, self._claims], [token]
            )
            if not reply:
                return _NOTHING
            if reply[0] == 0:
                return _PAUSED
            job = self._took(reply, token)
            if job is not None:
                return job

    async def _take_blocking(self, wait: float) -> Job | None:
        """Block in SAQ's BLMOVE for up to `wait` seconds, then claim what it took."""
        if self.stopping or wait <= 0:
            return None
        reply = await self._take()  # a sibling slot may have left work behind
        if reply is not _NOTHING:
            return None if reply is _PAUSED else reply
        seconds: Any = wait  # Redis 6+ takes fractional seconds; redis-py's annotation says int
        job_id = await self.redis.blmove(self._queued, self._active, seconds, "LEFT", "RIGHT")
        if job_id is None:
            return None
        token = _new_token()
        reply = await self._script(
            scripts.CLAIM_MOVED,
            [self._queued, self._active, self._paused, self._claims, job_id],
            [token, job_id, "1" if self.stopping else "0"],
        )
        return self._took(reply, token) if reply[0] == 1 else None

    async def _update(self, job: Job, status: Status | None = None, **kwargs: Any) -> None:
        """Upstream: GET the stored status when none is given, then SET and PUBLISH (a status
        changed in between, such as an abort, is overwritten). Ours: one script that writes only
        over the status it expects and never over aborting/aborted. SAQ's worker marking the
        job it has just taken active does not wait for the reply: nothing it does next depends
        on it, the pipeline keeps the order of this process's commands, and an abort that
        raced it is found in Redis by the abort upkeep."""
        if status is Status.ACTIVE and self._claim_of(job):
            job.status = status
            started = self._script(
                scripts.UPDATE,
                [job.id, self._claims],
                [self.serialize(job), status.value, "set", self._claim_of(job)],
            )
            started.add_done_callback(_log_unstored_start)
            return
        await self._write(job, status)

    async def _write(self, job: Job, status: Status | None) -> bool:
        """SAQ's update: False when this worker's claim on the job was lost."""
        mode = "keep" if status is None else "set"
        if status is not None:
            job.status = status
        claim = self._claim_of(job)
        for _ in range(3):
            reply = await self._script(
                scripts.UPDATE,
                [job.id, self._claims],
                [self.serialize(job), job.status.value, mode, claim],
            )
            if reply[0] != 0:
                return reply[0] == 1
            job.status = Status(_text(reply[1]))
            if job.status in (Status.ABORTING, Status.ABORTED) and reply[2]:
                job.error = _text(reply[2])  # the abort's reason, which SAQ's worker reads
            mode = "keep"
        return False

    async def heartbeat(self, job: Job) -> bool:
        """Touch a running job (SAQ's heartbeat: `job.update()`); False once the worker's
        claim was lost (the job was recovered from a stall)."""
        job.touched = now()
        return await self._write(self.copy(job), None)

    def record_progress(self, job: Job, stage: dict) -> None:
        """Store a running attempt's latest stage, without waiting: one small hash write on
        the pipeline (a later stage sent in the same turn replaces it), so it reaches Redis
        before whatever this process sends next, such as the notification announcing it.
        SAQ's record gets the stage (`progress`, `meta`) at the job's next heartbeat or its
        end: rewriting the whole record per stage cost more than the rest of a chat's queue
        work (bench/queue.py)."""
        self.pipeline.hset_latest(self._progress, job.id, orjson.dumps(stage))

    def serialize(self, job: Job) -> bytes | str:
        """Upstream's, without the claim token, which only the process holding it needs."""
        if CLAIM not in job.meta:
            return super().serialize(job)
        record = job.to_dict()
        record["meta"] = {key: value for key, value in job.meta.items() if key != CLAIM}
        return self._dump(record)

    async def _retry(self, job: Job, error: str | None) -> None:
        """Upstream: several commands; the delay jittered; a job cut off by a stop spends an
        attempt and waits out its backoff. Ours: one script; with a spec, exact backoff and
        the attempt's error kept; a job cut off by our worker's stop is put back unspent."""
        if self.stopping and error == SAQ_STOP_ERROR:
            await self._put_back(job)
            return
        if self.spec is not None:
            self._keep_error(job, error)
            delay = exact_backoff(job)
        else:
            delay = job.next_retry_delay()
        await self._requeue(job, delay)
        if delay:
            self._promote_in(delay)

    async def _requeue(self, job: Job, delay: float, *, front: bool = False) -> bool:
        if delay:
            score, push = _number(time.time() + delay), "0"
        else:
            score, push = _number(job.scheduled), "2" if front else "1"
        stored = bool(
            await self._script(
                scripts.RETRY,
                [
                    job.id,
                    self._queued,
                    self._active,
                    self._incomplete,
                    self._claims,
                    self._progress,
                ],
                [self.serialize(job), self._claim_of(job), score, push],
            )
        )
        self._settled(job, stored)
        return stored

    async def _put_back(self, job: Job) -> bool:
        """Back to the front of the queue without spending the attempt it was on."""
        job.status = Status.QUEUED
        job.attempts = max(0, job.attempts - 1)
        job.error = None
        job.started = 0
        job.progress = 0.0
        job.meta.pop("progress", None)
        job.worker_id = None
        return await self._requeue(job, 0.0, front=True)

    async def _finish(
        self, job: Job, status: Status, *, result: Any = None, error: str | None = None
    ) -> None:
        """Upstream: several commands; one ttl for every outcome. Ours: one script that also
        keeps the completed/failed listings, with SPEC §6's retention per outcome (by age and
        count) when the queue has a spec; finishing twice with one status changes nothing."""
        entry = ""
        if status is not Status.COMPLETE:
            if self.spec is not None:
                self._keep_error(job, error)
            entry = search_entry(job, last_error_of(job) or error or "")
        ttl_ms, age_ms, keep = self._retention(job, status)
        index, other = (
            (self._completed, self._failed)
            if status is Status.COMPLETE
            else (self._failed, self._completed)
        )
        stored = await self._script(
            scripts.FINISH,
            [
                job.id,
                self._active,
                self._incomplete,
                self._claims,
                index,
                other,
                self._about,
                self._progress,
            ],
            [
                self.serialize(job),
                self._claim_of(job),
                ttl_ms,
                status.value,
                now(),
                age_ms,
                keep,
                entry,
            ],
        )
        self._settled(job, bool(stored))

    def _retention(self, job: Job, status: Status) -> tuple[int, int, int]:
        """(record ttl ms: 0 for ever, < 0 delete; listing age ms or -1; count or -1)."""
        spec = self.spec
        if spec is None:
            ttl = job.ttl
            return (int(ttl * 1000) if ttl > 0 else ttl), -1, -1
        seconds: float
        count: int | None
        if status is Status.COMPLETE:
            seconds, count = spec.keep_completed_seconds, spec.keep_completed_count
        else:
            seconds, count = spec.keep_failed_seconds, spec.keep_failed_count
        return int(seconds * 1000), int(seconds * 1000), -1 if count is None else count

    async def abort(self, job: Job, error: str, ttl: float = 5) -> None:
        """Upstream: a pipeline, then a finish or LREM; a scheduled (delayed) job is left
        aborting for ever. Ours: one script; a job that had not started (queued or delayed) is
        finished as aborted at once (`job.status` is then `aborted`); one a worker holds stays
        `aborting` until that worker stops and finishes it."""
        job.status = Status.ABORTING
        job.error = error
        unstarted = await self._script(
            scripts.ABORT,
            [job.id, self._queued, self._incomplete, self._active, job.abort_id],
            [self.serialize(job), error, max(1, int(ttl * 1000))],
        )
        if unstarted:
            await self.finish(job, Status.ABORTED, error=error)
            self.pipeline.call("DEL", job.abort_id)

    # --- scheduling and stalls ------------------------------------------------------------------

    def _promote_in(self, delay: float) -> None:
        """SAQ's schedule() runs once a second under a lock; a backoff also ends exactly."""
        loop = asyncio.get_running_loop()
        self._timers = {h for h in self._timers if not h.cancelled() and h.when() > loop.time()}
        self._timers.add(loop.call_later(delay, self._promote_now))

    def _promote_now(self) -> None:
        task = asyncio.ensure_future(self.promote_due())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def promote_due(self) -> list[str]:
        """SAQ's schedule(), without its lock: make the jobs whose time has come ready."""
        try:
            ids = await self._script(
                scripts.PROMOTE_DUE, [self._incomplete, self._queued], [_number(time.time())]
            )
        except Exception as error:  # the next schedule() upkeep does it within a second
            logger.debug("promote_due failed: %s", error)
            return []
        return [_text(job_id) for job_id in ids]

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        """Upstream: sweeps an active job whose status is not `active` at once (a job between
        its dequeue and its first update included), and retries a stalled job as any failure.
        Ours: one script reads what workers hold; a job held but not yet marked active counts
        only once its claim is older than its heartbeat (or timeout); with a spec, a stalled
        job is put back without spending an attempt and fails on its second stall (SPEC §6),
        and a job left aborting by a dead worker is finished as aborted."""
        reply = await self._script(
            scripts.SWEEP_SCAN,
            [self._sweep, self._active, self._claims],
            [max(1, int(lock * 1000)), f"{now()}:sweep"],
        )
        if not reply:
            return []
        swept = []
        for raw_id, record, token in zip(*reply, strict=True):
            job_id = _text(raw_id)
            if not record:
                swept.append(job_id)
                await self._script(
                    scripts.FORGET,
                    [self._active, self._incomplete, self._claims, self._about, self._progress],
                    [job_id],
                )
                logger.info("Sweeping missing job %s", job_id)
                continue
            job = self.deserialize(record)
            if job is None or not _stalled(job, _text(token) if token else None, self.spec):
                continue
            swept.append(job_id)
            if logger.isEnabledFor(logging.INFO):
                logger.info("Sweeping job %s", job.info(logger.isEnabledFor(logging.DEBUG)))
            if self.spec is None:
                await self._sweep_as_saq(job, abort)
            else:
                await self._recover(job)
        return swept

    async def _sweep_as_saq(self, job: Job, abort: float) -> None:
        await self.abort(job, error=self.swept_error_message)
        try:
            await job.refresh(abort)
        except TimeoutError:
            logger.info("Could not abort job %s", job.id)
        if job.retryable:
            await self.retry(job, error=self.swept_error_message)
        else:
            await self.finish(job, Status.ABORTED, error=self.swept_error_message)

    async def _recover(self, job: Job) -> None:
        """A job whose worker is gone (SPEC §6): finished if it was being aborted; else back
        to the front of the queue, or failed on its second stall."""
        if job.status is Status.ABORTING:
            await self.finish(job, Status.ABORTED, error=job.error or "aborted")
            return
        stalls = int(job.meta.get("stalls", 0)) + 1
        job.meta["stalls"] = stalls
        if stalls < MAX_STALLS:
            logger.warning("job %s stalled (its worker stopped); starting it again", job.id)
            await self._put_back(job)
            if self.on_stalled is not None:
                await self.on_stalled(job, False)
            return
        logger.warning("job %s stalled twice; failing it", job.id)
        job.meta[ATTEMPT_ERROR] = STALLED_TWICE
        await self.finish(
            job,
            Status.FAILED,
            error=f"attempt {job.attempts} lost its worker (no heartbeat for {job.heartbeat} s), "
            "the second stall of this job",
        )
        if self.on_stalled is not None:
            await self.on_stalled(job, True)

    # --- the attempt errors SAQ does not keep -----------------------------------------------

    def _keep_error(self, job: Job, error: str | None) -> None:
        """Keep the failed attempt's one-line error and traceback in `meta["errors"]` (the last
        MAX_ATTEMPT_RECORDS, tracebacks cut), and cut SAQ's `error` (the traceback) the same way."""
        trace = cut_traceback(error or "")
        line = job.meta.pop(ATTEMPT_ERROR, None) or describe_traceback(trace, job.timeout)
        entry = AttemptError(job.attempts, line, trace, time.time())
        job.meta["errors"] = [*job.meta.get("errors", ()), entry.to_json()][-MAX_ATTEMPT_RECORDS:]
        job.error = trace or line

    # --- what SAQ lacks -------------------------------------------------------------------------

    async def pause(self) -> None:
        await self.pipeline.call("SET", self._paused, "1")

    async def resume(self) -> None:
        await self.pipeline.call("DEL", self._paused)

    async def is_paused(self) -> bool:
        return bool(await self.pipeline.call("EXISTS", self._paused))

    async def forget_worker(self, worker_id: str) -> None:
        """Leave SAQ's live-worker set at once (a stopped worker), not when its info expires."""
        key = self.namespace(f"worker_info:{worker_id}")
        await self.pipeline.call("ZREM", self._stats, key)
        await self.pipeline.call("DEL", key)


class LivePubSubMultiplexer(PubSubMultiplexer):
    """SAQ's multiplexer, telling when its pattern subscription is live (Redis confirmed it)."""

    def __init__(self, pubsub: Any, prefix: str) -> None:
        super().__init__(pubsub, prefix)
        self.live = asyncio.Event()

    async def _start(self) -> None:
        await self.pubsub.psubscribe(f"{self.prefix}*")
        while True:
            try:
                message = await self.pubsub.get_message(timeout=None)
                if not message:
                    continue
                if message["type"] == "psubscribe":
                    self.live.set()
                elif message["type"] == "pmessage":
                    message["channel"] = _text(message["channel"])
                    self.publish(message["channel"], message)
            except asyncio.CancelledError:
                return
            except Exception:
                logger.exception("Failed to consume message")

    async def _close(self) -> None:
        self.live.clear()
        await super()._close()


async def _call(callback: Any, key: str, status: Status) -> bool:
    result = callback(key, status)
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


def search_entry(job: Job, error: str = "") -> str:
    """What the board's search reads of a job (scripts.SEARCH): its user id as it is, its last
    error and question case-folded, as "<user>\x1f<error>\x1f<question>"."""
    kwargs = job.kwargs or {}
    user = str(kwargs.get("userId") or "").replace("\x1f", " ")
    question = str(kwargs.get("question") or "").casefold()
    return f"{user}\x1f{error.replace(chr(31), ' ').casefold()}\x1f{question}"


def last_error_of(job: Job) -> str:
    """The one-line error of the job's latest failed attempt, if one was kept."""
    errors = job.meta.get("errors") or ()
    return errors[-1]["error"] if errors else ""


def exact_backoff(job: Job) -> float:
    """SAQ's exponential backoff without its jitter: retry_delay * 2 ** (attempts - 1), capped
    by `retry_backoff` when that is a number (SPEC §6: 1-2-4 s, 5-10 s)."""
    if job.retry_backoff is False:
        return job.retry_delay
    delay = job.retry_delay * 2 ** max(job.attempts - 1, 0)
    cap = job.retry_backoff
    if cap is not True and isinstance(cap, int | float) and cap > 0:
        delay = min(delay, float(cap))
    return delay


def _stalled(job: Job, token: str | None, spec: QueueSpec | None) -> bool:
    """Whether a held job's worker is gone: SAQ's `stuck` (its timeout or heartbeat passed)
    for a job marked active; for one held but not yet marked active, its claim's age."""
    if job.status in (Status.ACTIVE, Status.ABORTING):
        return job.stuck
    if token is None:
        # First seen without a claim: SAQ sweeps it at once; ours has just been stamped, so
        # the next sweep can tell whether it is a dead worker's or one being claimed now.
        return spec is None
    claimed_ms = int(token.partition(":")[0] or 0)
    grace_ms = (job.heartbeat or job.timeout) * 1000 or CLAIM_GRACE_MS
    return now() - claimed_ms > grace_ms


def _log_unstored_start(reply: asyncio.Future) -> None:
    if reply.cancelled():
        return
    if reply.exception() is not None:
        logger.warning("marking a job active failed: %s", reply.exception())
    elif reply.result()[0] != 1:
        logger.info("a job taken was aborted or recovered before it was marked active")


_NOTHING = object()
_PAUSED = object()


def _remaining(loop: asyncio.AbstractEventLoop, deadline: float | None, at_most: float) -> float:
    return at_most if deadline is None else max(0.0, min(at_most, deadline - loop.time()))


def _new_token() -> str:
    return f"{now()}:{secrets.token_hex(6)}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: float) -> str:
    """A score as SAQ's scripts compare it: whole numbers without a decimal point."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if not isinstance(value, float) else repr(value)


def _same_server(redis: aioredis.Redis) -> aioredis.Redis:
    """A client with its own connection pool to the same server, for another event loop."""
    pool = redis.connection_pool
    try:
        return aioredis.Redis(
            connection_pool=type(pool)(
                connection_class=pool.connection_class, **pool.connection_kwargs
            )
        )
    except TypeError:  # a pool that cannot be copied this way (Sentinel): share it, as SAQ does
        return redis
