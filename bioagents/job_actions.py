"""Actions on jobs that must keep the message rows in step: used by the retry routes of the
API and by the board's buttons.

A manual retry reopens the FAILED message, and a job removed before it finished fails its
PENDING message with a reason and announces it, so no accepted request is left PENDING forever
(SPEC §6 "nothing lost"). A job an admin removes is remembered as removed, so its owner's retry
cannot bring it back (SPEC §12)."""

from __future__ import annotations

import dataclasses
import functools
import time

from . import events, store
from .db import Database, Message
from .jobs.base import InvalidJobState, JobInfo, JobNotFound, JobQueue, JobState
from .jobs.handler import announce_cancelled, job_data
from .notify import Notifier
from .usage import TokenUsage

UNFINISHED = (JobState.WAITING, JobState.DELAYED)
CLEANABLE = (JobState.COMPLETED, JobState.FAILED, JobState.WAITING, JobState.DELAYED)
LIST_BATCH = 1000


@dataclasses.dataclass
class Retried:
    job: JobInfo
    previous_attempts: int


async def retry(jobs: JobQueue, db: Database, queue: str, job_id: str) -> Retried:
    """Retry one failed job. Raises JobNotFound, or InvalidJobState when it has not failed."""
    job = await jobs.get(queue, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} is not in queue {queue}")
    if job.state is not JobState.FAILED:
        raise InvalidJobState(f"only failed jobs can be retried; this one is {job.state.value}")
    # The in-process queue hands out its live JobInfo: read what we need before it changes.
    previous, last_error = job.attempts_made, job.error
    await db.run(store.reopen_message, job_id)
    try:
        retried = await jobs.retry(queue, job_id)
    except JobNotFound:
        # Removed meanwhile: the message goes back to FAILED. (InvalidJobState means another
        # admin retried it first; the message is theirs to answer then.)
        await db.run(store.fail_message, job_id, last_error or "failed")
        raise
    return Retried(retried, previous)


async def check_retryable(db: Database, message: Message, job: JobInfo | None) -> None:
    """An owner's retry applies to a failed job, or, when the queue no longer holds it (an
    in-process restart, retention), to a FAILED message, unless an admin removed the job.
    Raises InvalidJobState or JobNotFound."""
    if job is not None:
        if job.state is not JobState.FAILED:
            raise InvalidJobState(f"only failed jobs can be retried; this one is {job.state.value}")
        return
    if message.status not in (Message.FAILED, Message.CANCELLED):
        raise InvalidJobState(f"only failed jobs can be retried; this message is {message.status}")
    if await db.run(store.was_removed, message.id):
        raise JobNotFound(f"job {message.id} was removed by an admin")


async def enqueue_again(jobs: JobQueue, db: Database, message: Message) -> None:
    """Retry a FAILED message whose job the queue no longer holds (see `check_retryable`); the
    message stays FAILED when the queue refuses it."""
    await db.run(store.reopen_message, message.id)
    try:
        await jobs.enqueue(message.queue, message.id, job_data(message, time.time()))
    except Exception:
        await db.run(store.fail_message, message.id, message.error or "failed")
        raise


async def retry_failed(jobs: JobQueue, db: Database, queue: str) -> int:
    """Retry every failed job of the queue; returns how many were retried.

    Job by job rather than `JobQueue.retry_failed`, because each job's message must be reopened
    before its new attempt can answer it; a job another admin retried meanwhile is skipped."""
    retried = 0
    for job_id in await _ids_in_state(jobs, queue, JobState.FAILED):
        try:
            await retry(jobs, db, queue, job_id)
        except (JobNotFound, InvalidJobState):
            continue
        retried += 1
    return retried


async def cancel(
    jobs: JobQueue, db: Database, notifier: Notifier, queue: str, job_id: str
) -> JobInfo:
    """Cancel a job (SPEC §10); returns it as it was. A waiting or delayed job's message ends
    CANCELLED here, announced as its attempt would; an active job's is settled by the process
    that runs it once the attempt has stopped (`JobHandler.on_cancelled`).
    Raises JobNotFound, or InvalidJobState when the job has completed or failed."""
    job = await jobs.cancel(queue, job_id)
    if job.state in UNFINISHED:
        notification = functools.partial(events.of_job, job=job)
        await announce_cancelled(db, notifier, job.id, TokenUsage(), notification)
    return job


async def remove(
    jobs: JobQueue, db: Database, notifier: Notifier, queue: str, job_id: str
) -> JobInfo:
    """Delete a job that is not active. Raises JobNotFound or InvalidJobState."""
    job = await jobs.get(queue, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} is not in queue {queue}")
    state = job.state
    await jobs.remove(queue, job_id)
    await db.run(store.mark_removed, [job_id])
    if state in UNFINISHED:
        await _give_up(db, notifier, job, f"removed from the {queue} queue by an admin")
    return job


async def clean(
    jobs: JobQueue,
    db: Database,
    notifier: Notifier,
    queue: str,
    state: JobState,
    older_than: float,
) -> int:
    """Remove the jobs in `state` older than `older_than` seconds; returns how many."""
    if state not in CLEANABLE:
        raise InvalidJobState(f"{state.value} jobs cannot be cleaned")
    # A completed job's message cannot be retried, so only the others need remembering.
    before = [] if state is JobState.COMPLETED else await _jobs_in_state(jobs, queue, state)
    removed = await jobs.clean(queue, state, older_than)
    gone = [job for job in before if await jobs.get(queue, job.id) is None]
    await db.run(store.mark_removed, [job.id for job in gone])
    if state in UNFINISHED:
        for job in gone:
            await _give_up(db, notifier, job, f"cleaned from the {queue} queue by an admin")
    return removed


async def _give_up(db: Database, notifier: Notifier, job: JobInfo, reason: str) -> None:
    """Fail the unfinished job's message and tell its subscribers, as a last failed attempt
    would: message:updated, then job:failed with the reason."""
    if not await db.run(store.fail_message, job.id, reason):
        return
    if not job.data.get("conversationId"):
        return
    await notifier.publish(events.of_job(events.MESSAGE_UPDATED, job, messageId=job.id))
    await notifier.publish(
        events.of_job(events.JOB_FAILED, job, **events.message_ids(job.data), error=reason)
    )


async def _jobs_in_state(jobs: JobQueue, queue: str, state: JobState) -> list[JobInfo]:
    found: list[JobInfo] = []
    while True:
        page = await jobs.list(queue, state, len(found), LIST_BATCH)
        found.extend(page)
        if len(page) < LIST_BATCH:
            return found


async def _ids_in_state(jobs: JobQueue, queue: str, state: JobState) -> list[str]:
    return [job.id for job in await _jobs_in_state(jobs, queue, state)]
