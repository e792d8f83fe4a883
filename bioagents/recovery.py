"""Nothing lost across restarts: at start, every PENDING message is brought in line with its
job. A message without a job is enqueued again; one whose job already failed (its worker died
between storing the failure and writing the message) is failed with the job's error."""

from __future__ import annotations

import datetime as dt
import logging

from . import store
from .db import Database
from .jobs.base import JobQueue, JobState, QueueUnavailable
from .jobs.handler import job_data

log = logging.getLogger(__name__)


async def requeue_pending(db: Database, jobs: JobQueue) -> int:
    """Reconcile the PENDING messages with the queue; returns how many were enqueued again."""
    requeued = failed = 0
    for message in await db.run(store.pending_messages):
        if message.queue not in jobs.specs:
            continue
        try:
            job = await jobs.get(message.queue, message.id)
            if job is None:
                accepted_at = message.created_at.replace(tzinfo=dt.UTC).timestamp()
                await jobs.enqueue(message.queue, message.id, job_data(message, accepted_at))
                requeued += 1
            elif job.state is JobState.FAILED:
                error = job.error or "failed"
                failed += await db.run(store.fail_message, message.id, error)
        except QueueUnavailable:
            log.warning("queue unavailable; PENDING messages wait for the next start")
            break
    if requeued:
        log.info("requeued %d PENDING message(s) left by a previous run", requeued)
    if failed:
        log.info("failed %d PENDING message(s) whose jobs had failed", failed)
    return requeued
