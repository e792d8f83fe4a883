"""The HTTP API (SPEC §4). Handlers translate HTTP to calls of the store and the job queue;
the errors those raise are answered by `errors.json_errors`."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from . import auth, forms, job_actions, metrics, store
from .db import Message
from .errors import ApiError
from .jobs.base import InvalidJobState, JobNotFound, JobState
from .jobs.handler import job_data
from .jobs.spec import RESEARCH_AGENT, QueueSpec, queue_specs
from .keys import DB, JOBS, LIMITER, NOTIFIER, SETTINGS
from .openapi import openapi_document
from .ratelimit import subject_key
from .responses import json_response
from .usage import TokenUsage

MAX_MESSAGE_CHARS = 20000


# --- request parsing -------------------------------------------------------------------------


async def read_body(request: web.Request) -> dict:
    """The JSON or form body as a dict; 400, 413 or 415 otherwise."""
    if request.content_length and request.content_length > request.app[SETTINGS].max_body_bytes:
        raise ApiError(
            413, f"the request body is larger than {request.app[SETTINGS].max_body_bytes} bytes"
        )
    content_type = request.content_type
    if content_type == "application/json":
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise ApiError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the JSON body must be an object")
        return body
    if forms.is_form(request):
        return await forms.read_form(request)
    raise ApiError(415, "send the body as application/json or a form")


def identify(request: web.Request, body_user_id=None) -> auth.Identity:
    authorization = request.headers.get("Authorization")
    chosen = None
    if not authorization:  # a JWT caller's chosen id is ignored, so never judged either
        try:
            chosen = auth.check_user_id(request.headers.get("X-User-Id")) or auth.check_user_id(
                body_user_id if body_user_id is not None else request.query.get("userId")
            )
        except ValueError as error:
            raise ApiError(400, str(error)) from None
    return auth.resolve(
        request.app[SETTINGS], authorization, request.headers.get("X-API-Key"), chosen
    )


def _uuid_or_400(value, field: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{field} must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(400, f"{field} must be a UUID, got {value[:60]!r}") from None


def _path_uuid(request: web.Request, name: str, **not_found) -> str:
    """Path ids that are not UUIDs cannot exist: 404 like any unknown id (with the same
    `not_found` body fields)."""
    value = request.match_info[name]
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(404, f"no such {name}", **not_found) from None


def _question(body: dict) -> str:
    message = body.get("message")
    if message is None:
        raise ApiError(400, "message is required")
    if not isinstance(message, str):
        raise ApiError(400, "message must be a string")
    if not message.strip():
        raise ApiError(400, "message must not be empty")
    if len(message) > MAX_MESSAGE_CHARS:
        raise ApiError(400, f"message must be at most {MAX_MESSAGE_CHARS} characters")
    if "\x00" in message:  # PostgreSQL cannot store it; no database gets it
        raise ApiError(400, "message must not contain NUL characters")
    return message


# --- accepting work ---------------------------------------------------------------------------


async def _rate_limit(request: web.Request, spec: QueueSpec, identity: auth.Identity) -> dict:
    """Count the request in its queue's window (SPEC §4, §12); 429 when the window is full."""
    queue, limit = spec.name, spec.rate_limit
    if limit <= 0:
        return {}
    limiter = request.app[LIMITER]
    key = subject_key(queue, identity.user_id, anonymous=identity.anonymous, remote=request.remote)
    decision = await limiter.hit(key, limit, spec.rate_window)
    headers = decision.headers()
    if not decision.allowed:
        metrics.rate_limited(queue)
        headers["Retry-After"] = str(decision.retry_after)
        raise ApiError(
            429,
            f"rate limit reached: {limit} {queue} requests per "
            f"{int(spec.rate_window)} s; retry in {decision.retry_after} s",
            headers,
            retryAfter=decision.retry_after,
        )
    return headers


async def _accept(request: web.Request, spec: QueueSpec) -> web.Response:
    body = await read_body(request)
    question = _question(body)
    conversation_id = body.get("conversationId")
    if conversation_id not in (None, ""):
        conversation_id = _uuid_or_400(conversation_id, "conversationId")
    else:
        conversation_id = None
    identity = identify(request, body.get("userId"))
    headers = await _rate_limit(request, spec, identity)

    db = request.app[DB]
    accepted = await db.run(
        store.accept_message,
        identity.user_id,
        conversation_id,
        question,
        spec.name,
        dedupe=spec.dedupe,
        keeps_state=spec.keeps_state,
    )
    message = accepted.message
    if not accepted.deduplicated:
        await _enqueue_or_withdraw(request, accepted)
    reply = {
        "jobId": message.id,
        "messageId": message.id,
        "conversationId": message.conversation_id,
        "userId": identity.user_id,
        "status": "queued",
        "pollUrl": spec.poll_url(message.id),
    }
    if accepted.deduplicated:
        reply["deduplicated"] = True
    return json_response(reply, status=202, headers=headers)


async def _enqueue_or_withdraw(request: web.Request, accepted: store.Accepted) -> None:
    """A request the queue refuses (503) leaves no row behind: no message, and no conversation
    or user that it created (SPEC §9)."""
    message = accepted.message
    try:
        await request.app[JOBS].enqueue(message.queue, message.id, job_data(message, time.time()))
    except Exception:
        await request.app[DB].run(store.withdraw, accepted)
        raise


# --- reading ----------------------------------------------------------------------------------


async def _owned_message(
    request: web.Request, name: str, queue: str, identity: auth.Identity | None = None
) -> Message:
    message_id = _path_uuid(request, name, status="not_found")
    identity = identity or identify(request)
    message = await request.app[DB].run(store.message_for_user, message_id, identity.user_id)
    if message is None or message.queue != queue:
        raise ApiError(404, "job not found", status="not_found")
    return message


def _result_from_message(message: Message) -> dict:
    return {
        "text": message.content,
        "userId": message.user_id,
        "responseTime": message.response_time_ms,
    }


async def chat_status(request: web.Request, spec: QueueSpec) -> web.Response:
    """SPEC §4's job status: the queue's view of one attempt after another."""
    message = await _owned_message(request, "jobId", spec.name)
    job = await request.app[JOBS].get(message.queue, message.id)
    if job is not None:
        body = {
            "status": job.state.value,
            "progress": job.progress,
            "attemptsMade": job.attempts_made,
        }
        if job.state is JobState.COMPLETED:
            body["result"] = job.result
        # The latest attempt's error while it matters: between attempts and at the end.
        if job.error is not None and job.state in (JobState.DELAYED, JobState.FAILED):
            body["error"] = job.error
        return json_response(body)
    # The job left the queue (retention, or an in-process restart): the message row tells.
    body = {"status": "waiting", "progress": None, "attemptsMade": 0}
    if message.status == Message.COMPLETE:
        body.update(status="completed", attemptsMade=1, result=_result_from_message(message))
    elif message.status in (Message.FAILED, Message.CANCELLED):
        body.update(status="failed", attemptsMade=1, error=message.error)
    return json_response(body)


async def research_status(request: web.Request, spec: QueueSpec) -> web.Response:
    """SPEC §4's research status: the run's stages as stored, whatever attempt is running."""
    message = await _owned_message(request, "messageId", spec.name)
    job = await request.app[JOBS].get(message.queue, message.id)
    values = (
        await request.app[DB].run(store.state_values, message.state_id) if message.state_id else {}
    )
    status = {
        Message.COMPLETE: "completed",
        Message.FAILED: "failed",
        Message.CANCELLED: "failed",
    }.get(message.status, "processing")
    body = {"status": status, "messageId": message.id, "conversationId": message.conversation_id}
    stages = spec.stages
    completed_steps = [stage.name for stage in stages if stage.name in values]
    current = (job.progress if job is not None else None) or {}
    body["progress"] = {
        "stage": current.get("stage") or (completed_steps[-1] if completed_steps else None),
        "percent": 100 if status == "completed" else current.get("percent", 0),
        "completedSteps": completed_steps,
    }
    if status == "completed":
        papers = (job.result or {}).get("papers") if job is not None and job.result else None
        if papers is None:
            papers = [
                line[2:].strip()
                for line in values.get("literature", "").splitlines()
                if line.startswith("- ")
            ]
        body["result"] = {"text": message.content, "papers": papers}
    elif status == "failed":
        body["error"] = message.error
    elif job is not None and job.error:
        body["error"] = job.error
    return json_response(body)


def message_json(message: Message, state: dict | None) -> dict:
    return {
        "id": message.id,
        "conversationId": message.conversation_id,
        "userId": message.user_id,
        "question": message.question,
        "content": message.content,
        "status": message.status,
        "error": message.error,
        "responseTime": message.response_time_ms,
        "createdAt": _iso(message.created_at),
        "updatedAt": _iso(message.updated_at),
        "state": state,
        "usage": TokenUsage(message.prompt_tokens, message.completion_tokens).to_json(),
    }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.replace(tzinfo=dt.UTC).isoformat()


async def get_message(request: web.Request) -> web.Response:
    message_id = _path_uuid(request, "messageId")
    identity = identify(request)
    db = request.app[DB]
    message = await db.run(store.message_for_user, message_id, identity.user_id)
    if message is None:
        raise ApiError(404, "message not found")
    state = await db.run(store.state_values, message.state_id) if message.state_id else None
    return json_response(message_json(message, state))


async def conversation_messages(request: web.Request) -> web.Response:
    conversation_id = _path_uuid(request, "conversationId")
    identity = identify(request)
    limit = _int_query(request, "limit", 50, 1, 200)
    before = _before(request.query.get("before"))
    db = request.app[DB]
    if isinstance(before, str):  # a message id: the page ends before that message
        anchor = await db.run(store.message_for_user, before, identity.user_id)
        if anchor is None or anchor.conversation_id != conversation_id:
            raise ApiError(400, "before names no message of this conversation")
        before = anchor.created_at
    messages = await db.run(
        store.conversation_messages, conversation_id, identity.user_id, limit, before
    )
    if messages is None:
        raise ApiError(404, "conversation not found")
    states = await db.run(store.states_of, [m.state_id for m in messages if m.state_id])
    return json_response({"messages": [message_json(m, states.get(m.state_id)) for m in messages]})


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}")
    return value


def _before(raw: str | None):
    """`before` is a message id or an ISO 8601 time."""
    if not raw:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise ApiError(400, "before must be a message id or an ISO 8601 time") from None
    return value


# --- retry ------------------------------------------------------------------------------------


async def retry(request: web.Request, spec: QueueSpec) -> web.Response:
    """The owner retries a failed job. It counts against their rate limit for the queue; a
    job the queue no longer holds (restart, retention) is enqueued again, unless an admin
    removed it (SPEC §4, §12)."""
    queue = spec.name
    identity = identify(request)
    message = await _owned_message(request, "jobId", queue, identity)
    jobs, db = request.app[JOBS], request.app[DB]
    job = await jobs.get(queue, message.id)
    await job_actions.check_retryable(db, message, job)  # before it counts against the limit
    headers = await _rate_limit(request, spec, identity)
    if job is None:
        await job_actions.enqueue_again(jobs, db, message)
        previous = 0
    else:
        previous = (await job_actions.retry(jobs, db, queue, message.id)).previous_attempts
    body = {"ok": True, "jobId": message.id, "status": "retrying", "previousAttempts": previous}
    return json_response(body, headers=headers)


# --- cancel -----------------------------------------------------------------------------------


async def cancel(request: web.Request, spec: QueueSpec) -> web.Response:
    """The owner cancels a job (SPEC §10): 409 once it has ended."""
    message = await _owned_message(request, "jobId", spec.name)
    app = request.app
    try:
        await job_actions.cancel(app[JOBS], app[DB], app[NOTIFIER], spec.name, message.id)
    except InvalidJobState as error:
        raise ApiError(409, f"the job cannot be cancelled: {error}") from None
    except JobNotFound:
        if message.status != Message.PENDING:  # finished, and past the queue's retention
            raise ApiError(409, f"the job has already ended ({message.status})") from None
        raise ApiError(404, "job not found", status="not_found") from None
    return json_response({"ok": True, "jobId": message.id, "status": "cancelled"})


# --- operations -------------------------------------------------------------------------------


REDIS_STATES = ("connected", "disabled")  # anything else a backend reports is "unreachable"


async def health(request: web.Request) -> web.Response:
    """Which part is down, for anyone to read: never an address or an error text (SPEC §12)."""
    app = request.app
    settings = app[SETTINGS]
    jobs = app[JOBS]
    database_ok = await app[DB].ping()
    reported = (await jobs.health()).get("redis")
    redis = reported if reported in REDIS_STATES else "unreachable"
    workers = {name: await _safe_workers(jobs, name) for name in jobs.specs}
    failing = [] if database_ok else ["database"]
    if settings.use_job_queue:
        if redis != "connected":
            failing.append("redis")
        elif not any(workers.values()):
            failing.append("workers")
    body: dict[str, Any] = {
        "status": "degraded" if failing else "ok",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "database": "connected" if database_ok else "unreachable",
        "jobQueue": {
            "enabled": settings.use_job_queue,
            "redis": redis,
            "workers": max(workers.values(), default=0),
            "workersByQueue": workers,
        },
    }
    if failing:
        body["failing"] = failing
        body["error"] = "degraded: " + ", ".join(failing) + " failing"
    return json_response(body, status=503 if failing else 200)


async def _safe_workers(jobs, name: str) -> int:
    try:
        return await jobs.workers(name)
    except Exception:
        return 0


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(queue_specs(request.app[SETTINGS]).values()))


def _for(handler, spec: QueueSpec):
    """`handler(request, spec)` as the route handler of one queue."""

    async def route(request: web.Request) -> web.StreamResponse:
        return await handler(request, spec)

    route.__name__ = f"{handler.__name__}_{spec.name.replace('-', '_')}"
    return route


def setup_routes(app: web.Application) -> None:
    """Each queue's routes from its spec (`jobs/spec.py`), then the routes all queues share."""
    for spec in queue_specs(app[SETTINGS]).values():
        status = research_status if spec.agent == RESEARCH_AGENT else chat_status
        app.router.add_post(spec.accept_path, _for(_accept, spec))
        app.router.add_get(spec.status_path, _for(status, spec))
        app.router.add_post(f"{spec.path}/retry/{{jobId}}", _for(retry, spec))
        app.router.add_post(f"{spec.path}/cancel/{{jobId}}", _for(cancel, spec))
    app.router.add_get("/api/messages/{messageId}", get_message)
    app.router.add_get("/api/conversations/{conversationId}/messages", conversation_messages)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/openapi.json", openapi)
