"""The one place that builds the frames the WebSocket hub sends (SPEC §5): notifications about
jobs, answer deltas (§10) and the hub's own control frames. Notifications carry ids only
(Notify + Fetch); the notifier adds each kept notification's `id` when it publishes it."""

from __future__ import annotations

import orjson

from .jobs.base import Attempt, JobInfo

JOB_STARTED = "job:started"
JOB_PROGRESS = "job:progress"
MESSAGE_UPDATED = "message:updated"
STATE_UPDATED = "state:updated"
JOB_COMPLETED = "job:completed"
JOB_FAILED = "job:failed"
JOB_CANCELLED = "job:cancelled"
MESSAGE_DELTA = "message:delta"  # not kept, no id: only for sockets that asked (`stream`)
RESYNC = "resync"  # the client must fetch over HTTP: its cursor is older than what is kept

# How a delta's JSON text begins (the builder below puts `type` first), so a subscriber can
# tell deltas from kept notifications without parsing them.
DELTA_PREFIX = b'{"type":"message:delta"'


def notification(
    kind: str, *, job_id: str, conversation_id: str, queue: str, attempt: int, **fields
) -> dict:
    """A notification about one job; `fields` come between its ids and `queue`/`attempt`."""
    return {
        "type": kind,
        "jobId": job_id,
        "conversationId": conversation_id,
        **fields,
        "queue": queue,
        "attempt": attempt,
    }


def of_attempt(kind: str, attempt: Attempt, **fields) -> dict:
    """A notification about the attempt in progress or just finished."""
    return notification(
        kind,
        job_id=attempt.job_id,
        conversation_id=attempt.data["conversationId"],
        queue=attempt.queue,
        attempt=attempt.attempt,
        **fields,
    )


def of_job(kind: str, job: JobInfo, **fields) -> dict:
    """A notification about a job no attempt of which is running (cancelled, removed)."""
    return notification(
        kind,
        job_id=job.id,
        conversation_id=job.data["conversationId"],
        queue=job.queue,
        attempt=job.attempts_made,
        **fields,
    )


def message_ids(data: dict) -> dict:
    """The ids a job's started/completed/failed notifications name: its message and, for deep
    research, its state."""
    ids = {"messageId": data["messageId"]}
    if data.get("stateId"):
        ids["stateId"] = data["stateId"]
    return ids


def delta(attempt: Attempt, offset: int, text: str) -> dict:
    """`text` of the answer at character `offset`, as it is generated."""
    return of_attempt(MESSAGE_DELTA, attempt, messageId=attempt.data["messageId"]) | {
        "offset": offset,
        "text": text,
    }


def control(kind: str, **fields) -> dict:
    """One of the hub's own frames: ready, authenticated, subscribed, pong, error, resync…"""
    return {"type": kind, **fields}


def encode(frame: dict) -> bytes:
    return orjson.dumps(frame)
