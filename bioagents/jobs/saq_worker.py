"""Queue mode's workers: run the jobs of some queues in this process (SPEC §6).

One `Worker` per process (`worker` command or `serve --with-worker`), one `QueueRunner` per
queue it serves. A runner claims as many waiting jobs as it has free slots in one script call,
and blocks on the queue's wake key (BZPOPMIN) when there are none. Each attempt calls the
JobHandler exactly as the in-process runner does: `run`, then, once the outcome is stored,
`on_completed` or `on_failed(…, final)`.

Liveness: the worker scores itself in each queue's worker set every `STALLED_INTERVAL / 3`
seconds with an expiry `STALLED_INTERVAL` ahead (Redis clock). A running job whose worker's
expiry has passed is stalled: another worker's runner re-claims it (at most every second), puts
it back at the front of the queue without spending an attempt, or fails it with
`STALLED_TWICE` on its second stall.

Graceful stop: stop claiming at once, give active attempts `SHUTDOWN_GRACE_SECONDS`, then cancel
the rest and put them back at the front of the queue without spending an attempt.

Why not SAQ's `Worker`: its per-slot loop costs about six round trips per job and its `stop`
keeps dequeuing through the grace period; this runner keeps SAQ's job records and queue class
and replaces only that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
import uuid
from collections.abc import Callable

from redis import asyncio as aioredis
from redis.exceptions import ResponseError

from ..redis_client import UNAVAILABLE, Backoff, describe
from .base import STALLED_TWICE, Attempt, AttemptError, JobHandler, JobState, QueueUnavailable
from .saq_queue import BioRedisQueue, SaqJobQueue, now_ms
from .saq_scripts import HEARTBEAT

log = logging.getLogger(__name__)

CLAIM_LINGER = 0.001  # seconds a busy runner waits before claiming, to claim several at once
IDLE_WAIT = 2.0  # seconds one BZPOPMIN waits before the runner looks again by itself
MAX_STALLS = 2  # the second stall fails the job
PUT_BACK_TIMEOUT = 5.0  # seconds a stopping worker spends putting cancelled jobs back
TROUBLE = (*UNAVAILABLE, QueueUnavailable, ResponseError)


class Worker:
    def __init__(
        self,
        jobs: SaqJobQueue,
        handler: JobHandler,
        queues: list[str],
        *,
        stalled_interval: float,
        blocking_client: Callable[[], aioredis.Redis],
    ):
        self.jobs = jobs
        self.handler = handler
        self.id = uuid.uuid4().hex[:16]
        self.stalled_interval = stalled_interval
        self.heartbeat_every = min(stalled_interval / 3, 10.0)
        self.sweep_every = min(1.0, stalled_interval / 4)
        self.stopping = False
        self.alive = asyncio.Event()  # set once the first heartbeat is stored
        self._reachable_since: float | None = None
        self._blocking_client = blocking_client
        self.runners = [QueueRunner(self, jobs.queue(name)) for name in queues]
        self._tasks: list[asyncio.Task] = []
        self._stopped = False

    @property
    def pipeline(self):
        return self.jobs.pipeline

    # --- health of the Redis link -------------------------------------------------------------

    def redis_ok(self) -> None:
        if self._reachable_since is None:
            self._reachable_since = time.monotonic()

    def redis_failed(self, error: BaseException, doing: str) -> None:
        if self._reachable_since is not None:
            log.warning("worker %s: %s failed: %s", self.id, doing, describe(error))
        self._reachable_since = None

    def reachable_for(self, seconds: float) -> bool:
        since = self._reachable_since
        return since is not None and time.monotonic() - since >= seconds

    # --- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start heart-beating and the runners; returns at once (Redis may still be away)."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="heartbeat"))
        for runner in self.runners:
            runner.blocking = self._blocking_client()
            runner.start()
        log.info(
            "worker %s serving %s (concurrency %s)",
            self.id,
            ", ".join(r.queue.name for r in self.runners),
            ", ".join(str(r.queue.spec.concurrency) for r in self.runners),
        )

    async def _heartbeat_loop(self) -> None:
        keys = [runner.queue.keys.workers for runner in self.runners]
        ttl_ms = int(self.stalled_interval * 1000)
        backoff = Backoff()
        while True:
            try:
                await self.pipeline.script(HEARTBEAT, keys, [self.id, ttl_ms])
            except TROUBLE as error:
                self.redis_failed(error, "heartbeat")
                await asyncio.sleep(min(backoff.next(), self.heartbeat_every))
                continue
            backoff.reset()
            self.redis_ok()
            if not self.alive.is_set():
                log.info("worker %s: first heartbeat stored; claiming jobs", self.id)
                self.alive.set()
            await asyncio.sleep(self.heartbeat_every)

    async def stop(self, grace: float) -> None:
        """Stop claiming now, wait up to `grace` seconds for active attempts, put the rest
        back without spending an attempt, and leave the worker sets."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping = True
        self.alive.set()  # a runner still waiting for the first heartbeat sees the stop
        for runner in self.runners:
            runner.interrupt()
        fetching = [runner.fetching for runner in self.runners if runner.fetching]
        if fetching:
            _, stuck = await asyncio.wait(fetching, timeout=PUT_BACK_TIMEOUT)
            for task in stuck:  # a claim Redis never answered: its jobs stall and come back
                task.cancel()
        active = [task for runner in self.runners for task in runner.active.values()]
        if active:
            log.info("worker %s: waiting up to %.1f s for %d job(s)", self.id, grace, len(active))
            await asyncio.wait(active, timeout=grace)
        leftover = []
        for runner in self.runners:
            for job_id, task in runner.active.items():
                if job_id in runner.in_handler:
                    task.cancel()
                leftover.append(task)
        if leftover:
            log.info("worker %s: putting %d job(s) back", self.id, len(leftover))
            await asyncio.wait(leftover, timeout=PUT_BACK_TIMEOUT)
        for runner in self.runners:
            await runner.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*TROUBLE, TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        self.pipeline.call("ZREM", runner.queue.keys.workers, self.id)
                        for runner in self.runners
                    )
                ),
                2.0,
            )
        await self.pipeline.flush(2.0)
        log.info("worker %s stopped", self.id)

    async def call_hook(self, hook) -> None:
        try:
            await hook
        except Exception:
            log.exception("job hook failed")


class QueueRunner:
    """Claims and runs one queue's jobs in this process, and does the queue's upkeep: delayed
    jobs whose backoff ended, stalled jobs, retention by age."""

    def __init__(self, worker: Worker, queue: BioRedisQueue):
        self.worker = worker
        self.queue = queue
        self.spec = queue.spec
        self.blocking: aioredis.Redis | None = None
        self.active: dict[str, asyncio.Task] = {}
        self.in_handler: set[str] = set()  # active jobs whose handler.run is still running
        self.held: set[str] = set()  # ids this process has claimed and not yet settled
        self.fetching: asyncio.Task | None = None
        self._upkeep: list[asyncio.Task] = []
        self._slot_free = asyncio.Event()
        self._schedule_now = asyncio.Event()
        self._claiming = asyncio.Lock()  # claims, stall sweeps and reconciles never overlap
        self._needs_reconcile = False
        self._waiting: asyncio.Task | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        name = self.queue.name
        self.fetching = loop.create_task(self._fetch_loop(), name=f"fetch:{name}")
        self._upkeep = [
            loop.create_task(self._schedule_loop(), name=f"schedule:{name}"),
            loop.create_task(self._stall_loop(), name=f"stalls:{name}"),
            loop.create_task(self._retention_loop(), name=f"retention:{name}"),
        ]

    def interrupt(self) -> None:
        """Stop claiming at once: wake the fetch loop wherever it waits."""
        self._slot_free.set()
        if self._waiting is not None:
            self._waiting.cancel()

    async def close(self) -> None:
        for task in self._upkeep:
            task.cancel()
        await asyncio.gather(*self._upkeep, return_exceptions=True)
        if self.blocking is not None:
            with contextlib.suppress(Exception):
                await self.blocking.aclose()

    # --- claiming -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        worker = self.worker
        await worker.alive.wait()
        backoff = Backoff()
        while not worker.stopping:
            free = self.spec.concurrency - len(self.active)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            if self.active and free < self.spec.concurrency:
                # Busy: let a few more slots free up so one claim takes several jobs.
                await asyncio.sleep(CLAIM_LINGER)
                free = self.spec.concurrency - len(self.active)
            try:
                async with self._claiming:
                    if self._needs_reconcile:
                        await self.queue.reconcile(worker.id, list(self.held))
                        self._needs_reconcile = False
                    claim, jobs = await self.queue.claim(worker.id, free)
                    for job_id, record in jobs:
                        self._start(job_id, claim, record)
            except TROUBLE as error:
                # The claim may have run with its reply lost: reconcile before the next one.
                self._needs_reconcile = True
                worker.redis_failed(error, f"claim on {self.queue.name}")
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            worker.redis_ok()
            if not jobs:
                await self._wait_for_work(backoff)

    async def _wait_for_work(self, backoff: Backoff) -> None:
        """Block until work may have arrived (the wake key), IDLE_WAIT passes, or stop."""
        self._waiting = asyncio.ensure_future(
            asyncio.wait_for(
                self.blocking.bzpopmin(self.queue.keys.wake, IDLE_WAIT), IDLE_WAIT + 5.0
            )
        )
        try:
            await asyncio.wait({self._waiting})
            if not self._waiting.cancelled():
                self._waiting.result()
        except TROUBLE as error:
            self.worker.redis_failed(error, f"waiting on {self.queue.name}")
            await asyncio.sleep(backoff.next())
        finally:
            self._waiting = None

    def _start(self, job_id: str, claim: str, record: dict) -> None:
        self.held.add(job_id)
        self.in_handler.add(job_id)
        task = asyncio.get_running_loop().create_task(self._execute(job_id, claim, record))
        self.active[job_id] = task

    def _ended(self, job_id: str) -> None:
        self.active.pop(job_id, None)
        self.in_handler.discard(job_id)
        self.held.discard(job_id)
        self._slot_free.set()

    # --- one attempt ----------------------------------------------------------------------------

    async def _execute(self, job_id: str, claim: str, record: dict) -> None:
        queue = self.queue
        worker = self.worker
        handler = worker.handler
        latest = {}

        async def set_progress(value: dict) -> None:
            latest["progress"] = value
            queue.set_progress(job_id, value)

        attempt = Attempt(
            queue=queue.name,
            job_id=job_id,
            data=record.get("kwargs") or {},
            attempt=record.get("attempts", 0) + 1,
            max_attempts=record.get("retries", self.spec.max_attempts),
            set_progress=set_progress,
        )
        started = int(claim.rpartition(" ")[2])
        try:
            if worker.stopping:  # claimed as the stop began: back it goes, untouched
                await queue.settle(job_id, claim, JobState.WAITING, record)
                return
            try:
                result = await handler.run(attempt)
            except asyncio.CancelledError:
                self.in_handler.discard(job_id)
                await queue.settle(job_id, claim, JobState.WAITING, record)
                raise
            except Exception as error:
                self.in_handler.discard(job_id)
                await self._attempt_failed(attempt, claim, record, started, latest, error)
                return
            self.in_handler.discard(job_id)
            meta = _meta_with(record, latest)
            done = {
                **record,
                "attempts": attempt.attempt,
                "started": started,
                "completed": now_ms(),
                "result": result,
            }
            if meta:
                done["meta"] = meta
            if await queue.settle(job_id, claim, JobState.COMPLETED, done):
                await worker.call_hook(handler.on_completed(attempt, result))
            else:
                log.warning("job %s completed after another run took it over", job_id)
        except TROUBLE as error:
            # Only when the worker stops while Redis is away: the claim stays, the worker's
            # heartbeat ends, and another worker recovers the job as stalled.
            log.warning("job %s: outcome not stored (%s)", job_id, describe(error))
        finally:
            self._ended(job_id)

    async def _attempt_failed(self, attempt, claim, record, started, latest, error) -> None:
        message = f"{error.__class__.__name__}: {error}" if str(error) else repr(error)
        failure = AttemptError(attempt.attempt, message, traceback.format_exc(), time.time())
        final = attempt.is_last
        meta = _meta_with(record, latest)
        meta["errors"] = [*meta.get("errors", ()), failure.to_json()]
        done = {
            **record,
            "attempts": attempt.attempt,
            "started": started,
            "error": message,
            "meta": meta,
        }
        delay = 0.0
        if final:
            done["completed"] = now_ms()
        else:
            delay = self.spec.backoff(attempt.attempt)
        outcome = JobState.FAILED if final else JobState.DELAYED
        if not await self.queue.settle(attempt.job_id, claim, outcome, done, delay):
            log.warning("job %s failed after another run took it over", attempt.job_id)
            return
        if not final:
            self.wake_scheduler_in(delay)
        await self.worker.call_hook(self.worker.handler.on_failed(attempt, message, final))

    # --- upkeep ---------------------------------------------------------------------------------

    def wake_scheduler_in(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self._schedule_now.set)

    async def _schedule_loop(self) -> None:
        """Delayed → waiting when the backoff ends: this process wakes at the exact time of the
        delays it set; every process also looks at least once a second."""
        backoff = Backoff()
        while True:
            self._schedule_now.clear()
            try:
                next_due = await self.queue.promote_due()
                backoff.reset()
                timeout = 1.0 if next_due is None else min(max(next_due, 0.002), 1.0)
            except TROUBLE as error:
                self.worker.redis_failed(error, f"scheduling {self.queue.name}")
                timeout = backoff.next()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._schedule_now.wait(), timeout)

    async def _stall_loop(self) -> None:
        worker = self.worker
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(worker.sweep_every)
            # After an outage, give every live worker one heartbeat before judging anyone.
            if worker.stopping or not worker.reachable_for(worker.heartbeat_every + 0.5):
                continue
            full = time.monotonic() - last_full >= worker.stalled_interval / 2
            try:
                async with self._claiming:
                    if full or self._needs_reconcile:
                        await self.queue.reconcile(worker.id, list(self.held))
                        self._needs_reconcile = False
                    claim, stalled = await self.queue.find_stalled(worker.id, full)
                    self.held.update(stalled)
            except TROUBLE as error:
                self._needs_reconcile = True
                worker.redis_failed(error, f"stall check on {self.queue.name}")
                continue
            if full:
                last_full = time.monotonic()
            for job_id in stalled:
                try:
                    await self._recover(job_id, claim)
                except TROUBLE as error:
                    worker.redis_failed(error, f"recovering stalled job {job_id}")
                finally:
                    self.held.discard(job_id)

    async def _recover(self, job_id: str, claim: str) -> None:
        """A stalled job: back to the front of the queue, or failed on its second stall."""
        record = await self.queue.record(job_id)
        if record is None:
            await self.queue.pipeline.call("HDEL", self.queue.keys.running, job_id)
            return
        meta = dict(record.get("meta") or {})
        meta["stalls"] = meta.get("stalls", 0) + 1
        attempt_number = record.get("attempts", 0) + 1
        if meta["stalls"] < MAX_STALLS:
            log.warning("job %s stalled (its worker stopped); starting it again", job_id)
            await self.queue.settle(job_id, claim, JobState.WAITING, {**record, "meta": meta})
            return
        log.warning("job %s stalled twice; failing it", job_id)
        failure = AttemptError(
            attempt_number,
            STALLED_TWICE,
            f"attempt {attempt_number} lost its worker (no heartbeat for "
            f"{self.worker.stalled_interval:g} s), the second stall of this job",
            time.time(),
        )
        meta["errors"] = [*meta.get("errors", ()), failure.to_json()]
        done = {
            **record,
            "attempts": attempt_number,
            "error": STALLED_TWICE,
            "completed": now_ms(),
            "meta": meta,
        }
        if await self.queue.settle(job_id, claim, JobState.FAILED, done):
            attempt = Attempt(
                queue=self.queue.name,
                job_id=job_id,
                data=record.get("kwargs") or {},
                attempt=attempt_number,
                max_attempts=record.get("retries", self.spec.max_attempts),
                set_progress=_no_progress,
            )
            await self.worker.call_hook(self.worker.handler.on_failed(attempt, STALLED_TWICE, True))

    async def _retention_loop(self) -> None:
        shortest = min(self.spec.keep_completed_seconds, self.spec.keep_failed_seconds)
        every = min(5.0, max(0.25, shortest / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.queue.trim()
            except TROUBLE as error:
                self.worker.redis_failed(error, f"retention on {self.queue.name}")


def _meta_with(record: dict, latest: dict) -> dict:
    meta = dict(record.get("meta") or {})
    if "progress" in latest:
        meta["progress"] = latest["progress"]
    return meta


async def _no_progress(value: dict) -> None:
    return None
