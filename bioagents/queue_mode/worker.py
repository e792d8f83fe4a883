"""Queue mode's workers: SAQ's own `saq.Worker` runs our jobs (SPEC §1, §6).

SAQ's worker serves one queue, so a process runs one per queue it serves: `bioagents.py worker`
one per `--queue`, `serve --with-worker` one per queue. What we add sits at SAQ's seams:
- the job function (registered under the queue's name, which every job of ours names as its
  `function`) runs one `Attempt` through the `JobHandler`, the same handler the in-process
  queue calls, so a job does and announces the same in both modes;
- `before_process` starts the attempt's heartbeat (SAQ's `job.update()`, every third of
  STALLED_INTERVAL; the job's `heartbeat` field makes SAQ's sweep judge it by that);
- `after_process` stops it and, once the outcome is stored, calls the handler's hooks:
  `on_completed`, or `on_failed` (final or not);
- `startup` stores the worker's info at once, so health counts it from its first second;
- `stop` is overridden (see there): upstream's keeps waiting on idle dequeues and can interrupt
  the put-back of a job cut off by the end of the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

from saq import Worker as SaqWorker
from saq.job import Job, Status

from .. import logs
from ..history import History, Outcome
from ..jobs.base import MAX_ATTEMPT_RECORDS, STALLED_TWICE, Attempt, JobHandler, failure_text
from .queue import ATTEMPT_ERROR, BioagentsQueue, last_error_of

log = logging.getLogger(__name__)

PUT_BACK_TIMEOUT = 5.0  # seconds a stopping worker waits for cut-off jobs to be put back


def heartbeat_seconds(stalled_interval: float) -> int:
    """A job's SAQ `heartbeat`: without a touch for this long, its worker counts as gone."""
    return max(1, math.ceil(stalled_interval))


class Worker(SaqWorker):
    # The process owns SIGTERM/SIGINT (`serve`'s aiohttp, or the `worker` command), and one
    # signal stops the workers of every queue; upstream would install its own handlers.
    SIGNALS: list = []

    def __init__(
        self,
        queue: BioagentsQueue,
        handler: JobHandler,
        history: History,
        *,
        stalled_interval: float,
        shutdown_grace: float,
    ) -> None:
        spec = queue.spec
        if spec is None:
            raise ValueError("our Worker runs queues built with a QueueSpec")
        self.bio_queue = queue
        self.handler = handler
        self.history = history
        self.touch_every = max(0.2, stalled_interval / 3)
        self.grace = shutdown_grace
        super().__init__(
            queue,
            functions=[(spec.name, self.run_attempt)],
            concurrency=spec.concurrency,
            startup=self.on_startup,
            before_process=self.before_attempt,
            after_process=self.after_attempt,
            timers={
                "schedule": 1,
                "worker_info": max(1, round(stalled_interval / 3)),
                "sweep": max(1, min(5, round(stalled_interval / 4))),
                "abort": 1,
            },
            # Upstream's own wait in stop(), which ours leaves with nothing running.
            shutdown_grace_period_s=int(PUT_BACK_TIMEOUT),
        )
        self.ready = asyncio.Event()
        queue.on_stalled = self.stalled
        self._attempts: dict[int, Attempt] = {}  # id(job) → its attempt
        self._heartbeats: dict[int, asyncio.Task] = {}
        self._upkeep: list[asyncio.Task] = []
        self._stopped_once: asyncio.Future | None = None

    # --- the job function and its hooks ------------------------------------------------------

    async def run_attempt(self, ctx: Any, **data: Any) -> Any:
        """The function of every job of this queue: one attempt through the handler."""
        job: Job = ctx["job"]

        async def set_progress(value: dict) -> None:
            job.meta["progress"] = value  # in SAQ's record from the next heartbeat or the end
            job.progress = value.get("percent", 0) / 100
            self.bio_queue.record_progress(job, value)

        attempt = Attempt(
            queue=self.bio_queue.name,
            job_id=job.key,
            data=data,
            attempt=job.attempts,
            max_attempts=job.retries,
            set_progress=set_progress,
        )
        self._attempts[id(job)] = attempt
        with logs.job_context(job.key, attempt.queue, attempt.attempt, data.get("conversationId")):
            try:
                return await self.handler.run(attempt)
            except Exception as error:
                job.meta[ATTEMPT_ERROR] = failure_text(error)
                raise
            finally:  # whatever the outcome (a timeout, a cancel included): SAQ stores it next
                usage = [*job.meta.get("usage", ()), attempt.usage_record().to_json()]
                job.meta["usage"] = usage[-MAX_ATTEMPT_RECORDS:]

    async def before_attempt(self, ctx: Any) -> None:
        job: Job = ctx["job"]
        self._heartbeats[id(job)] = asyncio.create_task(self._beat(job), name=f"beat:{job.key}")

    async def _beat(self, job: Job) -> None:
        """SAQ's heartbeat for a running job; a lost claim (the job was recovered elsewhere
        as stalled) stops this attempt, whose outcome would no longer be the job's."""
        while True:
            await asyncio.sleep(self.touch_every)
            try:
                held = await self.bio_queue.heartbeat(job)
            except Exception as error:  # Redis away: the next beat tries again
                log.warning("job %s: heartbeat failed: %s", job.key, error)
                continue
            if not held:
                log.warning("job %s: its claim was lost (recovered elsewhere); stopping", job.key)
                task_context = self.job_task_contexts.get(job)
                if task_context is not None:
                    task_context["aborted"] = "claim lost"
                    task_context["task"].cancel()
                return

    async def after_attempt(self, ctx: Any) -> None:
        job: Job = ctx["job"]
        beat = self._heartbeats.pop(id(job), None)
        if beat is not None:
            beat.cancel()
        attempt = self._attempts.pop(id(job), None)
        if attempt is None:  # the function never started
            return
        if not self.bio_queue.outcome_stored(job):
            log.warning(
                "job %s: attempt %d ended after it was recovered elsewhere",
                job.key,
                attempt.attempt,
            )
            return
        name = self.bio_queue.name
        if attempt.usage.prompt_tokens or attempt.usage.completion_tokens:
            self.history.used_tokens(
                name, attempt.usage.prompt_tokens, attempt.usage.completion_tokens
            )
        if job.status is Status.COMPLETE:
            self._finished(job, Outcome.COMPLETED)
            await self._hook(self.handler.on_completed(attempt, job.result))
        elif job.status is Status.FAILED:
            timed_out = isinstance(ctx.get("exception"), TimeoutError)
            self._finished(job, Outcome.TIMED_OUT if timed_out else Outcome.FAILED)
            await self._hook(self.handler.on_failed(attempt, last_error(job), True))
        elif job.status is Status.QUEUED and "exception" in ctx:
            self.history.retried(name)
            await self._hook(self.handler.on_failed(attempt, last_error(job), False))
        elif job.status is Status.ABORTED:
            self._finished(job, Outcome.CANCELLED)
            await self._hook(self.handler.on_cancelled(attempt))

    def _finished(self, job: Job, outcome: Outcome) -> None:
        wait = (job.started - job.queued) / 1000 if job.started and job.queued else None
        run = (job.completed - job.started) / 1000 if job.completed and job.started else None
        self.history.finished(self.bio_queue.name, outcome, wait, run)

    async def stalled(self, job: Job, failed: bool) -> None:
        """The sweep recovered a stalled job; on its second stall it failed it, and its message
        and subscribers learn it here, as from a last failed attempt."""
        self.history.stalled(self.bio_queue.name)
        if not failed:
            return
        self._finished(job, Outcome.FAILED)
        attempt = Attempt(
            queue=self.bio_queue.name,
            job_id=job.key,
            data=job.kwargs or {},
            attempt=job.attempts,
            max_attempts=job.retries,
            set_progress=_no_progress,
        )
        await self._hook(self.handler.on_failed(attempt, STALLED_TWICE, True))

    async def _hook(self, hook: Any) -> None:
        try:
            await hook
        except Exception:
            log.exception("job hook failed")

    async def on_startup(self, ctx: Any) -> None:
        await self.worker_info(self.timers["worker_info"] + 1)
        self.ready.set()
        log.info(
            "worker %s: first heartbeat stored; serving %s (concurrency %d)",
            self.id,
            self.bio_queue.name,
            self.concurrency,
        )

    # --- upkeep and stop ---------------------------------------------------------------------

    async def abort(self, abort_threshold: float) -> None:
        """Upstream looks only at jobs that have run longer than the poll interval, so stopping
        an aborted job can take two intervals; ours looks at every running job each second
        (SPEC §10: an active attempt stops within 2 s)."""
        await super().abort(0)

    async def upkeep(self) -> list[asyncio.Task]:
        self._upkeep = await super().upkeep()
        return self._upkeep

    async def stop(self) -> None:
        """Upstream waits for every task, idle dequeues and upkeep sleeps included, then
        cancels them all twice (its wait_for's cancel, then cancel_tasks): the second cancel
        can interrupt the put-back of a job cut off at the end of the grace period, and
        `start()` runs that stop concurrently with any other caller's. Ours (SPEC §6 graceful
        stop), run once whoever calls: take no job from now on, stop the upkeep, give running
        attempts the grace period, cancel each process still running exactly once (upstream's
        process() then puts its job back, unspent, as ours counts it), then let upstream's
        stop finish with nothing left running."""
        if self._stopped_once is None:
            self._stopped_once = asyncio.ensure_future(self._stop_gracefully())
        await asyncio.shield(self._stopped_once)

    async def _stop_gracefully(self) -> None:
        self.bio_queue.stopping = True
        self.event.set()
        for task in self._upkeep:
            task.cancel()
        processes = [task for task in self.tasks if task not in self._upkeep]
        if processes:
            await asyncio.wait(processes, timeout=self.grace)
        running = [task for task in processes if not task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=PUT_BACK_TIMEOUT)
        await super().stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.bio_queue.forget_worker(self.id), 2.0)


def last_error(job: Job) -> str:
    """The one-line error of the job's latest failed attempt."""
    return last_error_of(job) or job.error or "failed"


async def _no_progress(value: dict) -> None:
    return None
