"""Nothing lost across restarts: PENDING messages without a job are enqueued again at start."""

from __future__ import annotations

import datetime as dt
import logging

from . import store
from .db import Database
from .jobs.base import JobQueue, QueueUnavailable
from .jobs.handler import job_data

log = logging.getLogger(__name__)


async def requeue_pending(db: Database, jobs: JobQueue) -> int:
    """Enqueue every PENDING message whose job the queue does not hold; returns how many."""
    requeued = 0
    for message in await db.run(store.pending_messages):
        if message.queue not in jobs.specs:
            continue
        try:
            if await jobs.get(message.queue, message.id) is not None:
                continue
            accepted_at = message.created_at.replace(tzinfo=dt.UTC).timestamp()
            await jobs.enqueue(message.queue, message.id, job_data(message, accepted_at))
        except QueueUnavailable:
            log.warning("queue unavailable; PENDING messages wait for the next start")
            break
        requeued += 1
    if requeued:
        log.info("requeued %d PENDING message(s) left by a previous run", requeued)
    return requeued
