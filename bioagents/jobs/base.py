"""The one job-queue interface that routes, board and hub talk to, and the types it speaks.

Two implementations: `inprocess.InProcessJobQueue` (the embedded default, runs jobs itself) and
`queue_mode.job_queue.SaqJobQueue` (Redis; jobs run on SAQ's workers, `queue_mode.worker`).
Both call a `JobHandler` to execute an attempt, so what a job does and what it announces is
the same in both modes.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..history import History, NotRecorded
from ..usage import TokenUsage
from .spec import QueueSpec


class JobState(str, enum.Enum):
    WAITING = "waiting"  # accepted, ready for a worker (or held by a paused queue)
    ACTIVE = "active"  # an attempt is running
    DELAYED = "delayed"  # failed an attempt, waiting out its backoff before the next
    COMPLETED = "completed"  # an attempt succeeded; `result` is set
    FAILED = "failed"  # the last attempt failed (or it stalled twice); `errors` says why


STATES = tuple(JobState)
STALLED_TWICE = "job stalled more than allowable limit"
MAX_STALLS = 2  # the second stall fails the job (SPEC §6)
MAX_TRACEBACK_BYTES = 4096  # each attempt's traceback kept cut to 4 KiB (SPEC §12)
CANCELLED = "cancelled"  # the error of a job cancelled by its owner or an admin (SPEC §10)
INTERNAL_FAILURE = "the job failed because of an internal error"


class JobError(Exception):
    """Base of the errors the interface raises."""


class QueueUnavailable(JobError):
    """The backend (Redis) cannot be reached; the caller answers 503."""


class JobNotFound(JobError):
    """No such job in that queue (never existed, removed, or past retention)."""


class InvalidJobState(JobError):
    """The action does not apply to the job's state (retry a job that has not failed, …)."""


class UnknownQueue(JobError):
    """No queue by that name."""


class AttemptFailure(Exception):
    """An attempt failed for a reason its user may read: `str()` is one generic sentence
    (SPEC §12 "what users see"); the details go in the cause, which the board's traceback and
    the log show."""


class AttemptTimedOut(AttemptFailure):
    """The attempt ran longer than its queue's timeout and was stopped."""

    def __init__(self, seconds: float):
        super().__init__(f"job timed out after {seconds:g} s")


def failure_text(error: BaseException) -> str:
    """The one line users see for a failed attempt (status routes, message, `job:failed`)."""
    if isinstance(error, AttemptFailure) and str(error):
        return str(error)
    return INTERNAL_FAILURE


@dataclasses.dataclass
class AttemptError:
    attempt: int
    error: str  # one line, shown to users
    traceback: str  # the full traceback, shown on the board
    at: float  # epoch seconds

    def to_json(self) -> dict:
        return {
            "attempt": self.attempt,
            "error": self.error,
            "traceback": self.traceback,
            "at": self.at,
        }


@dataclasses.dataclass
class AttemptUsage:
    """The model's token usage of one attempt that ended (whatever its outcome)."""

    attempt: int
    prompt_tokens: int
    completion_tokens: int

    def to_json(self) -> dict:
        return {
            "attempt": self.attempt,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
        }


MAX_ATTEMPT_RECORDS = 10  # per-attempt errors and usage kept on a job (SPEC §12)


@dataclasses.dataclass
class JobInfo:
    id: str
    queue: str
    data: dict
    state: JobState
    attempts_made: int = 0  # counts from 1, includes the attempt in progress
    max_attempts: int = 1
    progress: dict | None = None  # {"stage", "percent"} of the latest stage
    result: dict | None = None
    errors: list[AttemptError] = dataclasses.field(default_factory=list)
    usage: list[AttemptUsage] = dataclasses.field(default_factory=list)  # oldest first
    queued_at: float = 0.0
    started_at: float | None = None  # the latest attempt's start
    finished_at: float | None = None
    run_at: float | None = None  # when a delayed job becomes waiting again

    @property
    def name(self) -> str:
        return self.queue

    @property
    def error(self) -> str | None:
        return self.errors[-1].error if self.errors else None

    @property
    def wait_seconds(self) -> float | None:
        return None if self.started_at is None else max(0.0, self.started_at - self.queued_at)

    @property
    def entered_state_at(self) -> float:
        """When the job entered its current state: what `clean`'s age counts from."""
        if self.state in (JobState.COMPLETED, JobState.FAILED):
            return self.finished_at or self.queued_at
        if self.state is JobState.DELAYED and self.errors:
            return self.errors[-1].at
        if self.state is JobState.ACTIVE and self.started_at:
            return self.started_at
        return self.queued_at

    @property
    def run_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "queue": self.queue,
            "name": self.name,
            "data": self.data,
            "state": self.state.value,
            "attemptsMade": self.attempts_made,
            "maxAttempts": self.max_attempts,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "errors": [e.to_json() for e in self.errors],
            "usage": [u.to_json() for u in self.usage],
            "queuedAt": self.queued_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "runAt": self.run_at,
        }


@dataclasses.dataclass
class QueueCounts:
    waiting: int = 0
    active: int = 0
    delayed: int = 0
    completed: int = 0
    failed: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """What a job list is narrowed to (SPEC §7 search). Empty fields match every job."""

    user: str | None = None  # the job's user id, exactly
    text: str | None = None  # in the question, any case; for failed jobs also in the error

    def __bool__(self) -> bool:
        return bool(self.user or self.text)

    @functools.cached_property
    def _folded(self) -> str:
        return (self.text or "").casefold()

    def matches(self, job: JobInfo) -> bool:
        data = job.data
        if self.user and data.get("userId") != self.user:
            return False
        if not self.text:
            return True
        if self._folded in str(data.get("question", "")).casefold():
            return True
        return job.state is JobState.FAILED and self._folded in (job.error or "").casefold()


@dataclasses.dataclass
class SearchResult:
    jobs: list[JobInfo]  # the requested page, newest first
    total: int  # how many jobs in the state match, for the pager


@dataclasses.dataclass
class Attempt:
    """One run of a job, handed to the JobHandler by the queue implementation."""

    queue: str
    job_id: str
    data: dict
    attempt: int  # 1-based
    max_attempts: int
    set_progress: Callable[[dict], Awaitable[None]]  # stores progress on the job
    # What the model spent in this attempt so far: the handler adds to it while it runs; the
    # queue stores it on the job (`JobInfo.usage`) once the attempt ends, whatever the outcome.
    usage: TokenUsage = dataclasses.field(default_factory=TokenUsage)

    @property
    def is_last(self) -> bool:
        return self.attempt >= self.max_attempts

    def usage_record(self) -> AttemptUsage:
        return AttemptUsage(self.attempt, self.usage.prompt_tokens, self.usage.completion_tokens)


class JobHandler(Protocol):
    """What a job does; the queue implementations call `run`, then, once the outcome is stored,
    exactly one of the `on_*` hooks, with the same Attempt (its `usage` filled by `run`)."""

    async def run(self, attempt: Attempt) -> dict:
        """Execute the attempt; return the result or raise to fail it. A stop (cancel, timeout,
        shutdown) arrives as asyncio.CancelledError at an await, and must not be swallowed."""

    async def on_completed(self, attempt: Attempt, result: dict) -> None:
        """Called after the job is stored as completed."""

    async def on_failed(self, attempt: Attempt, error: str, final: bool) -> None:
        """Called after the failure is stored (as delayed when not final, else failed);
        `error` is `failure_text` of what `run` raised (AttemptTimedOut for a timeout)."""

    async def on_cancelled(self, attempt: Attempt) -> None:
        """Called after an active attempt stopped by `JobQueue.cancel` is stored as failed with
        CANCELLED (never retried by itself). Not called for jobs cancelled before they ran."""


class JobRunner(Protocol):
    """What runs jobs in this process: the in-process queue, or queue mode's SAQ workers."""

    async def drain(self, grace: float) -> None:
        """Graceful stop (SPEC §6): take no more jobs, give active ones `grace` seconds, and
        put the rest back without spending an attempt."""


class JobQueue(abc.ABC):
    """Enqueue, inspect and manage jobs. All methods raise QueueUnavailable when the backend
    cannot be reached and UnknownQueue for a queue name outside `specs`."""

    specs: dict[str, QueueSpec]
    # Where the queue's jobs are recorded as they end (history.py): the board's charts and the
    # counters of /metrics read it. An implementation that runs jobs sets its own.
    history: History = NotRecorded()

    async def start(self) -> None:
        """Open connections and start background tasks (runners, sweepers)."""

    async def close(self) -> None:
        """Stop background tasks and close connections."""

    @abc.abstractmethod
    async def enqueue(self, queue: str, job_id: str, data: dict) -> JobInfo:
        """Add a waiting job; `job_id` is the message id."""

    @abc.abstractmethod
    async def get(self, queue: str, job_id: str) -> JobInfo | None: ...

    @abc.abstractmethod
    async def retry(self, queue: str, job_id: str) -> JobInfo:
        """Put a failed job back to waiting with a fresh set of attempts.
        Raises JobNotFound, or InvalidJobState when it has not failed."""

    @abc.abstractmethod
    async def retry_failed(self, queue: str) -> int:
        """Retry every failed job of the queue; returns how many."""

    @abc.abstractmethod
    async def cancel(self, queue: str, job_id: str) -> JobInfo:
        """Cancel a job; returns it as it was when cancelled (its state says which case).

        Waiting or delayed: it never runs; it is failed at once with error CANCELLED, and the
        caller settles its message (`job_actions.cancel`). Active: its attempt is stopped
        within 2 s wherever it runs, stored as failed with CANCELLED and handed to
        `JobHandler.on_cancelled` by the process that ran it; this may return before that.
        A cancelled job is never retried by itself; `retry` runs it again.
        Raises JobNotFound, or InvalidJobState when it has completed or failed."""

    @abc.abstractmethod
    async def remove(self, queue: str, job_id: str) -> None:
        """Delete a job that is not active. Raises JobNotFound or InvalidJobState."""

    @abc.abstractmethod
    async def promote(self, queue: str, job_id: str) -> None:
        """Make a delayed job waiting now. Raises JobNotFound or InvalidJobState."""

    @abc.abstractmethod
    async def pause(self, queue: str) -> None: ...

    @abc.abstractmethod
    async def resume(self, queue: str) -> None: ...

    @abc.abstractmethod
    async def is_paused(self, queue: str) -> bool: ...

    @abc.abstractmethod
    async def counts(self, queue: str) -> QueueCounts: ...

    @abc.abstractmethod
    async def list(self, queue: str, state: JobState, offset: int, limit: int) -> list[JobInfo]:
        """Jobs in `state`, newest first."""

    async def search(
        self, queue: str, state: JobState, match: JobFilter, offset: int, limit: int
    ) -> SearchResult:
        """Jobs in `state` that `match` accepts, newest first, and how many there are.

        This version reads the whole state through `list` a thousand at a time: correct for
        any implementation; implementations override it with a faster one."""
        found: list[JobInfo] = []
        total, start, batch = 0, 0, 1000
        while True:
            jobs = await self.list(queue, state, start, batch)
            for job in jobs:
                if match.matches(job):
                    if offset <= total < offset + limit:
                        found.append(job)
                    total += 1
            if len(jobs) < batch:
                return SearchResult(found, total)
            start += batch

    @abc.abstractmethod
    async def clean(self, queue: str, state: JobState, older_than: float) -> int:
        """Remove jobs in `state` (completed, failed, waiting or delayed) that entered it more
        than `older_than` seconds ago; returns how many."""

    @abc.abstractmethod
    async def workers(self, queue: str) -> int:
        """Live worker processes serving the queue."""

    @abc.abstractmethod
    async def oldest_waiting_age(self, queue: str) -> float | None:
        """Seconds the oldest waiting job has waited, or None."""

    async def health(self) -> dict[str, Any]:
        """Backend-specific health fields for /api/health (`redis`, …); raise nothing."""
        return {}

    def spec(self, queue: str) -> QueueSpec:
        try:
            return self.specs[queue]
        except KeyError:
            raise UnknownQueue(f"there is no queue named {queue!r}") from None


def now() -> float:
    return time.time()


def describe_traceback(trace: str, timeout: float = 0) -> str:
    """The line users see for an attempt that failed with `trace` where no job code could say
    (SAQ's worker caught it): a timeout names its limit (as AttemptTimedOut does); a reason
    that is no traceback ("cancelled", SAQ's "swept") stands as it is; anything else is an
    internal error."""
    lines = [line for line in trace.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if timeout and last.split(":")[0] in ("TimeoutError", "asyncio.exceptions.TimeoutError"):
        return str(AttemptTimedOut(timeout))
    if len(lines) == 1 and not last.startswith("Traceback"):
        return last
    return INTERNAL_FAILURE


def cut_traceback(trace: str) -> str:
    """The traceback's last MAX_TRACEBACK_BYTES: its end names the error and where it rose."""
    raw = trace.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_TRACEBACK_BYTES:
        return trace
    marker = "… (cut)\n"
    tail = raw[-(MAX_TRACEBACK_BYTES - len(marker.encode())) :]
    return marker + tail.decode("utf-8", "ignore")
