"""The embedded default: jobs run inside `serve` with the same semantics as queue mode
(concurrency, exact backoff, states, retention, pause/resume), kept in memory. A restart loses
no accepted request because PENDING messages are enqueued again at start (`recovery.py`)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import traceback

from .. import logs
from ..history import History, MemoryHistory, Outcome
from .base import (
    CANCELLED,
    MAX_ATTEMPT_RECORDS,
    Attempt,
    AttemptError,
    AttemptTimedOut,
    InvalidJobState,
    JobFilter,
    JobHandler,
    JobInfo,
    JobNotFound,
    JobQueue,
    JobState,
    QueueCounts,
    SearchResult,
    cut_traceback,
    failure_text,
    now,
)
from .spec import QueueSpec

log = logging.getLogger(__name__)

CANCEL_WAIT = 5.0  # seconds cancel() waits for a stopped attempt to be stored


class _Queue:
    """One queue's jobs, indexed by state."""

    def __init__(self, spec: QueueSpec):
        self.spec = spec
        self.jobs: dict[str, JobInfo] = {}
        self.waiting: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.active: dict[str, asyncio.Task] = {}
        self.attempts: dict[str, Attempt] = {}  # the attempt each active task runs
        self.cancelling: set[str] = set()  # active jobs whose task cancel() stopped
        self.delayed: dict[str, asyncio.TimerHandle] = {}
        self.completed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.failed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.paused = False

    def index(self, state: JobState):
        return {
            JobState.WAITING: self.waiting,
            JobState.ACTIVE: self.active,
            JobState.DELAYED: self.delayed,
            JobState.COMPLETED: self.completed,
            JobState.FAILED: self.failed,
        }[state]


class InProcessJobQueue(JobQueue):
    def __init__(
        self, specs: dict[str, QueueSpec], handler: JobHandler, history: History | None = None
    ):
        self.specs = specs
        self.handler = handler
        self.history = MemoryHistory() if history is None else history
        self._queues = {name: _Queue(spec) for name, spec in specs.items()}
        self._closing = False

    def _queue(self, name: str) -> _Queue:
        self.spec(name)  # raises UnknownQueue
        return self._queues[name]

    def _job(self, queue: str, job_id: str) -> tuple[_Queue, JobInfo]:
        q = self._queue(queue)
        job = q.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} is not in queue {queue}")
        return q, job

    # --- running -----------------------------------------------------------------------------

    def _pump(self, q: _Queue) -> None:
        """Start waiting jobs while the queue is running and has free slots."""
        while q.waiting and not q.paused and not self._closing:
            if len(q.active) >= q.spec.concurrency:
                return
            job_id, _ = q.waiting.popitem(last=False)
            job = q.jobs[job_id]
            job.state = JobState.ACTIVE
            job.attempts_made += 1
            job.started_at = now()
            job.finished_at = None
            job.progress = None
            attempt = self._attempt(q, job)
            q.attempts[job_id] = attempt
            q.active[job_id] = asyncio.get_running_loop().create_task(self._run(q, job, attempt))

    def _attempt(self, q: _Queue, job: JobInfo) -> Attempt:
        async def set_progress(value: dict) -> None:
            job.progress = value

        return Attempt(
            queue=q.spec.name,
            job_id=job.id,
            data=job.data,
            attempt=job.attempts_made,
            max_attempts=job.max_attempts,
            set_progress=set_progress,
        )

    async def _run(self, q: _Queue, job: JobInfo, attempt: Attempt) -> None:
        with logs.job_context(job.id, q.spec.name, attempt.attempt, job.data.get("conversationId")):
            await self._execute(q, job, attempt)

    async def _execute(self, q: _Queue, job: JobInfo, attempt: Attempt) -> None:
        log.debug("attempt %d of %d started", attempt.attempt, attempt.max_attempts)
        timeout = q.spec.timeout
        try:
            async with asyncio.timeout(timeout or None) as deadline:
                result = await self.handler.run(attempt)
        except asyncio.CancelledError:
            if job.id not in q.cancelling:
                # Cut off by a graceful stop: back to the front of the queue, the attempt not
                # spent (after a restart the PENDING message brings the job back the same way).
                self._ended(q, job.id)
                job.state = JobState.WAITING
                job.attempts_made -= 1
                job.started_at = None
                job.progress = None
                q.waiting[job.id] = None
                q.waiting.move_to_end(job.id, last=False)
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # the stop was ours, and it is handled here
            await self._attempt_cancelled(q, job, attempt)
        except TimeoutError as error:
            failure = AttemptTimedOut(timeout) if deadline.expired() else error
            await self._attempt_failed(q, job, attempt, failure)
        except Exception as error:
            await self._attempt_failed(q, job, attempt, error)
        else:
            self._ended(q, job.id)
            job.state = JobState.COMPLETED
            job.result = result
            job.finished_at = now()
            self._record_usage(q, job, attempt)
            q.completed[job.id] = None
            self._trim(q)
            self.history.finished(q.spec.name, Outcome.COMPLETED, job.wait_seconds, job.run_seconds)
            log.debug("completed in %.3f s", job.run_seconds)
            await self._call_hook(self.handler.on_completed(attempt, result))
        finally:
            if q.active.get(job.id) is asyncio.current_task():  # not a newer attempt's
                self._ended(q, job.id)
            self._pump(q)

    def _ended(self, q: _Queue, job_id: str) -> None:
        q.active.pop(job_id, None)
        q.attempts.pop(job_id, None)
        q.cancelling.discard(job_id)

    async def _attempt_failed(self, q: _Queue, job: JobInfo, attempt: Attempt, error) -> None:
        """Store a failed attempt (the traceback of the exception being handled) as delayed, or
        failed when it was the last, then call the hook."""
        self._ended(q, job.id)
        message = failure_text(error)
        log.warning("attempt %d failed: %s", attempt.attempt, _detail(error))
        trace = cut_traceback(traceback.format_exc())
        job.errors.append(AttemptError(attempt.attempt, message, trace, now()))
        del job.errors[:-MAX_ATTEMPT_RECORDS]
        self._record_usage(q, job, attempt)
        final = job.attempts_made >= job.max_attempts
        if final:
            self._settle_failed(q, job)
            timed_out = isinstance(error, AttemptTimedOut)
            outcome = Outcome.TIMED_OUT if timed_out else Outcome.FAILED
            self.history.finished(q.spec.name, outcome, job.wait_seconds, job.run_seconds)
        else:
            delay = q.spec.backoff(job.attempts_made)
            self.history.retried(q.spec.name)
            log.info("attempt %d failed, next in %g s: %s", attempt.attempt, delay, message)
            job.state = JobState.DELAYED
            job.run_at = now() + delay
            q.delayed[job.id] = asyncio.get_running_loop().call_later(
                delay, self._delay_over, q, job.id
            )
        await self._call_hook(self.handler.on_failed(attempt, message, final))

    async def _attempt_cancelled(self, q: _Queue, job: JobInfo, attempt: Attempt) -> None:
        """Store an active attempt that cancel() stopped as failed, never to be retried by
        itself, then call the hook."""
        if job.state is not JobState.ACTIVE:
            return
        self._ended(q, job.id)
        stopped = f"attempt {attempt.attempt} was stopped: the job was cancelled"
        job.errors.append(AttemptError(attempt.attempt, CANCELLED, stopped, now()))
        del job.errors[:-MAX_ATTEMPT_RECORDS]
        self._record_usage(q, job, attempt)
        self._settle_failed(q, job)
        self.history.finished(q.spec.name, Outcome.CANCELLED, job.wait_seconds, job.run_seconds)
        await self._call_hook(self.handler.on_cancelled(attempt))

    def _record_usage(self, q: _Queue, job: JobInfo, attempt: Attempt) -> None:
        job.usage.append(attempt.usage_record())
        del job.usage[:-MAX_ATTEMPT_RECORDS]
        usage = attempt.usage
        if usage.prompt_tokens or usage.completion_tokens:
            self.history.used_tokens(q.spec.name, usage.prompt_tokens, usage.completion_tokens)

    def _settle_failed(self, q: _Queue, job: JobInfo) -> None:
        job.state = JobState.FAILED
        job.finished_at = now()
        job.run_at = None
        q.failed[job.id] = None
        self._trim(q)

    async def _call_hook(self, hook) -> None:
        try:
            await hook
        except Exception:
            log.exception("job hook failed")

    def _delay_over(self, q: _Queue, job_id: str) -> None:
        if q.delayed.pop(job_id, None) is None:
            return
        job = q.jobs[job_id]
        job.state = JobState.WAITING
        job.run_at = None
        q.waiting[job_id] = None
        self._pump(q)

    def _trim(self, q: _Queue) -> None:
        """Retention: drop finished jobs past their age or count (SPEC §6)."""
        horizon = now()
        for index, seconds, count in (
            (q.completed, q.spec.keep_completed_seconds, q.spec.keep_completed_count),
            (q.failed, q.spec.keep_failed_seconds, q.spec.keep_failed_count),
        ):
            while index and count is not None and len(index) > count:
                q.jobs.pop(index.popitem(last=False)[0], None)
            while index:
                oldest = q.jobs[next(iter(index))]
                if horizon - (oldest.finished_at or horizon) <= seconds:
                    break
                q.jobs.pop(index.popitem(last=False)[0], None)

    # --- the interface -----------------------------------------------------------------------

    async def close(self) -> None:
        self._closing = True
        for q in self._queues.values():
            for handle in q.delayed.values():
                handle.cancel()
            tasks = list(q.active.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self, timeout: float) -> None:
        """Graceful stop (SPEC §6): start no more jobs, give the active ones `timeout` seconds,
        then cut off the rest, which go back to the front of their queue unspent."""
        self._closing = True
        tasks = [task for q in self._queues.values() for task in q.active.values()]
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=timeout)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def enqueue(self, queue: str, job_id: str, data: dict) -> JobInfo:
        q = self._queue(queue)
        existing = q.jobs.get(job_id)
        if existing is not None:
            return existing
        job = JobInfo(
            id=job_id,
            queue=queue,
            data=data,
            state=JobState.WAITING,
            max_attempts=q.spec.max_attempts,
            queued_at=now(),
        )
        q.jobs[job_id] = job
        q.waiting[job_id] = None
        self.history.enqueued(queue)
        self._pump(q)
        return job

    async def get(self, queue: str, job_id: str) -> JobInfo | None:
        return self._queue(queue).jobs.get(job_id)

    async def retry(self, queue: str, job_id: str) -> JobInfo:
        q, job = self._job(queue, job_id)
        if job.state is not JobState.FAILED:
            raise InvalidJobState(f"job {job_id} is {job.state.value}, not failed")
        del q.failed[job_id]
        job.state = JobState.WAITING
        job.attempts_made = 0
        job.finished_at = None
        job.result = None
        job.queued_at = now()
        q.waiting[job_id] = None
        self.history.enqueued(queue)
        self._pump(q)
        return job

    async def retry_failed(self, queue: str) -> int:
        q = self._queue(queue)
        ids = list(q.failed)
        for job_id in ids:
            await self.retry(queue, job_id)
        return len(ids)

    async def cancel(self, queue: str, job_id: str) -> JobInfo:
        q, job = self._job(queue, job_id)
        if job.state in (JobState.COMPLETED, JobState.FAILED):
            raise InvalidJobState(f"job {job_id} has already {job.state.value}")
        before = dataclasses.replace(job, errors=list(job.errors), usage=list(job.usage))
        if job.state is JobState.ACTIVE:
            task = q.active[job_id]
            attempt = q.attempts[job_id]
            q.cancelling.add(job_id)
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_WAIT)
            if task.done():  # a task cancelled before its first step never ran `_run`
                await self._attempt_cancelled(q, job, attempt)
            return before
        if job.state is JobState.WAITING:
            del q.waiting[job_id]
            reason = "cancelled while waiting: no attempt ran"
        else:
            q.delayed.pop(job_id).cancel()
            reason = f"cancelled while waiting to retry after attempt {job.attempts_made}"
        job.errors.append(AttemptError(job.attempts_made, CANCELLED, reason, now()))
        self._settle_failed(q, job)
        self.history.finished(q.spec.name, Outcome.CANCELLED, job.wait_seconds, None)
        return before

    async def remove(self, queue: str, job_id: str) -> None:
        q, job = self._job(queue, job_id)
        if job.state is JobState.ACTIVE:
            raise InvalidJobState(f"job {job_id} is active; it can be removed once it ends")
        index = q.index(job.state)
        handle = index.pop(job_id, None)
        if isinstance(handle, asyncio.TimerHandle):
            handle.cancel()
        del q.jobs[job_id]

    async def promote(self, queue: str, job_id: str) -> None:
        q, job = self._job(queue, job_id)
        if job.state is not JobState.DELAYED:
            raise InvalidJobState(f"job {job_id} is {job.state.value}, not delayed")
        q.delayed[job_id].cancel()
        self._delay_over(q, job_id)

    async def pause(self, queue: str) -> None:
        self._queue(queue).paused = True

    async def resume(self, queue: str) -> None:
        q = self._queue(queue)
        q.paused = False
        self._pump(q)

    async def is_paused(self, queue: str) -> bool:
        return self._queue(queue).paused

    async def counts(self, queue: str) -> QueueCounts:
        q = self._queue(queue)
        self._trim(q)
        return QueueCounts(
            waiting=len(q.waiting),
            active=len(q.active),
            delayed=len(q.delayed),
            completed=len(q.completed),
            failed=len(q.failed),
        )

    async def list(self, queue: str, state: JobState, offset: int, limit: int) -> list[JobInfo]:
        q = self._queue(queue)
        self._trim(q)
        return list(itertools.islice(_newest_first(q, JobState(state)), offset, offset + limit))

    async def search(
        self, queue: str, state: JobState, match: JobFilter, offset: int, limit: int
    ) -> SearchResult:
        q = self._queue(queue)
        self._trim(q)
        found = [job for job in _newest_first(q, JobState(state)) if match.matches(job)]
        return SearchResult(found[offset : offset + limit], len(found))

    async def clean(self, queue: str, state: JobState, older_than: float) -> int:
        q = self._queue(queue)
        state = JobState(state)
        if state is JobState.ACTIVE:
            raise InvalidJobState("active jobs cannot be cleaned")
        horizon = now() - older_than
        removed = 0
        for job_id in list(q.index(state)):
            job = q.jobs[job_id]
            if job.entered_state_at <= horizon:
                await self.remove(queue, job_id)
                removed += 1
        return removed

    async def workers(self, queue: str) -> int:
        self._queue(queue)
        return 0 if self._closing else 1

    async def oldest_waiting_age(self, queue: str) -> float | None:
        q = self._queue(queue)
        if not q.waiting:
            return None
        return max(0.0, now() - q.jobs[next(iter(q.waiting))].queued_at)

    async def health(self) -> dict:
        # The SPEC's health shape always names Redis; this mode does not use it.
        return {"redis": "disabled"}


def _newest_first(q: _Queue, state: JobState):
    ids = q.index(state)
    if state in (JobState.ACTIVE, JobState.DELAYED):
        return iter(sorted((q.jobs[i] for i in ids), key=lambda j: j.queued_at, reverse=True))
    return (q.jobs[i] for i in reversed(ids.keys()))


def _detail(error: BaseException) -> str:
    """The error and its causes in one line, for the log (never shown to users)."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(parts) < 5:
        text = str(current).strip().splitlines()[0][:300] if str(current).strip() else ""
        parts.append(
            f"{current.__class__.__name__}: {text}" if text else current.__class__.__name__
        )
        current = current.__cause__
    return " <- ".join(parts)
