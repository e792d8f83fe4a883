"""The HTTP API (SPEC §4). Handlers translate HTTP to calls of the store and the job queue."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import orjson
from aiohttp import web

from . import auth, job_actions, store
from .db import Message
from .errors import ApiError
from .jobs.base import InvalidJobState, JobNotFound, JobState, QueueUnavailable
from .jobs.handler import job_data
from .jobs.spec import CHAT, DEEP_RESEARCH
from .keys import BACKEND, DB, JOBS, SETTINGS
from .openapi import openapi_document
from .usage import TokenUsage

MAX_MESSAGE_CHARS = 20000
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
RATE_WINDOWS = {CHAT: 60.0, DEEP_RESEARCH: 300.0}


def _dumps(value) -> str:
    return orjson.dumps(value).decode()


def json(body: dict, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


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
    if content_type in FORM_TYPES:
        form = await request.post()
        return {key: value for key, value in form.items() if isinstance(value, str)}
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
    try:
        return auth.resolve(
            request.app[SETTINGS],
            authorization,
            request.headers.get("X-API-Key"),
            chosen,
        )
    except auth.AuthError as error:
        raise ApiError(401, str(error), {"WWW-Authenticate": "Bearer"}) from None


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
    return message


# --- accepting work ---------------------------------------------------------------------------


async def _rate_limit(request: web.Request, queue: str, user_id: str) -> dict:
    settings = request.app[SETTINGS]
    limit = (
        settings.chat_rate_limit_per_minute
        if queue == CHAT
        else settings.deep_research_rate_limit_per_5min
    )
    if limit <= 0:
        return {}
    limiter = request.app[BACKEND].limiter
    try:
        decision = await limiter.hit(f"{queue}:{user_id}", limit, RATE_WINDOWS[queue])
    except QueueUnavailable as error:
        raise ApiError(503, str(error)) from None
    headers = decision.headers()
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after)
        raise ApiError(
            429,
            f"rate limit reached: {limit} {queue} requests per "
            f"{int(RATE_WINDOWS[queue])} s; retry in {decision.retry_after} s",
            headers,
            retryAfter=decision.retry_after,
        )
    return headers


async def _accept(request: web.Request, queue: str) -> web.Response:
    body = await read_body(request)
    question = _question(body)
    conversation_id = body.get("conversationId")
    if conversation_id not in (None, ""):
        conversation_id = _uuid_or_400(conversation_id, "conversationId")
    else:
        conversation_id = None
    identity = identify(request, body.get("userId"))
    headers = await _rate_limit(request, queue, identity.user_id)

    db = request.app[DB]
    try:
        accepted = await db.run(
            store.accept_message,
            identity.user_id,
            conversation_id,
            question,
            queue,
            dedupe=queue == DEEP_RESEARCH,
        )
    except store.NotOwned:
        raise ApiError(404, "conversation not found") from None
    message = accepted.message
    if not accepted.deduplicated:
        try:
            await request.app[JOBS].enqueue(queue, message.id, job_data(message, time.time()))
        except QueueUnavailable as error:
            await db.run(store.fail_message, message.id, f"not queued: {error}")
            raise ApiError(503, f"the job queue is unavailable: {error}") from None
    poll = (
        f"/api/chat/status/{message.id}"
        if queue == CHAT
        else f"/api/deep-research/status/{message.id}"
    )
    reply = {
        "jobId": message.id,
        "messageId": message.id,
        "conversationId": message.conversation_id,
        "userId": identity.user_id,
        "status": "queued",
        "pollUrl": poll,
    }
    if accepted.deduplicated:
        reply["deduplicated"] = True
    return json(reply, status=202, headers=headers)


async def post_chat(request: web.Request) -> web.Response:
    return await _accept(request, CHAT)


async def post_deep_research(request: web.Request) -> web.Response:
    return await _accept(request, DEEP_RESEARCH)


# --- reading ----------------------------------------------------------------------------------


async def _owned_message(request: web.Request, name: str, queue: str | None = None) -> Message:
    message_id = _path_uuid(request, name, status="not_found")
    identity = identify(request)
    message = await request.app[DB].run(store.message_for_user, message_id, identity.user_id)
    if message is None or (queue is not None and message.queue != queue):
        raise ApiError(404, "job not found", status="not_found")
    return message


async def _job(request: web.Request, message: Message):
    try:
        return await request.app[JOBS].get(message.queue, message.id)
    except QueueUnavailable as error:
        raise ApiError(503, f"the job queue is unavailable: {error}") from None


def _result_from_message(message: Message) -> dict:
    return {
        "text": message.content,
        "userId": message.user_id,
        "responseTime": message.response_time_ms,
    }


async def chat_status(request: web.Request) -> web.Response:
    message = await _owned_message(request, "jobId", CHAT)
    job = await _job(request, message)
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
        return json(body)
    # The job left the queue (retention, or an in-process restart): the message row tells.
    body = {"status": "waiting", "progress": None, "attemptsMade": 0}
    if message.status == Message.COMPLETE:
        body.update(status="completed", attemptsMade=1, result=_result_from_message(message))
    elif message.status in (Message.FAILED, Message.CANCELLED):
        body.update(status="failed", attemptsMade=1, error=message.error)
    return json(body)


async def deep_research_status(request: web.Request) -> web.Response:
    message = await _owned_message(request, "messageId", DEEP_RESEARCH)
    job = await _job(request, message)
    values = (
        await request.app[DB].run(store.state_values, message.state_id) if message.state_id else {}
    )
    status = {
        Message.COMPLETE: "completed",
        Message.FAILED: "failed",
        Message.CANCELLED: "failed",
    }.get(message.status, "processing")
    body = {"status": status, "messageId": message.id, "conversationId": message.conversation_id}
    stages = request.app[JOBS].specs[DEEP_RESEARCH].stages
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
    return json(body)


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
    return json(message_json(message, state))


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
    return json({"messages": [message_json(m, states.get(m.state_id)) for m in messages]})


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
    except ValueError:
        raise ApiError(400, "before must be a message id or an ISO 8601 time") from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


# --- retry ------------------------------------------------------------------------------------


async def _retry(request: web.Request, queue: str) -> web.Response:
    message = await _owned_message(request, "jobId", queue)
    jobs = request.app[JOBS]
    db = request.app[DB]
    try:
        job = await jobs.get(queue, message.id)
        if job is None:
            if message.status not in (Message.FAILED, Message.CANCELLED):
                raise ApiError(400, f"the job is not failed (message is {message.status})")
            previous = 0
            await db.run(store.reopen_message, message.id)
            await jobs.enqueue(queue, message.id, job_data(message, time.time()))
        else:
            previous = (await job_actions.retry(jobs, db, queue, message.id)).previous_attempts
    except InvalidJobState as error:
        raise ApiError(400, str(error)) from None
    except JobNotFound:
        raise ApiError(404, "job not found", status="not_found") from None
    except QueueUnavailable as error:
        raise ApiError(503, f"the job queue is unavailable: {error}") from None
    return json(
        {"ok": True, "jobId": message.id, "status": "retrying", "previousAttempts": previous}
    )


async def retry_chat(request: web.Request) -> web.Response:
    return await _retry(request, CHAT)


async def retry_deep_research(request: web.Request) -> web.Response:
    return await _retry(request, DEEP_RESEARCH)


# --- cancel -----------------------------------------------------------------------------------


async def _cancel(request: web.Request, queue: str) -> web.Response:
    message = await _owned_message(request, "jobId", queue)
    app = request.app
    try:
        await job_actions.cancel(app[JOBS], app[DB], app[BACKEND].notifier, queue, message.id)
    except InvalidJobState as error:
        raise ApiError(409, f"the job cannot be cancelled: {error}") from None
    except JobNotFound:
        if message.status != Message.PENDING:  # finished, and past the queue's retention
            raise ApiError(409, f"the job has already ended ({message.status})") from None
        raise ApiError(404, "job not found", status="not_found") from None
    except QueueUnavailable as error:
        raise ApiError(503, f"the job queue is unavailable: {error}") from None
    return json({"ok": True, "jobId": message.id, "status": "cancelled"})


async def cancel_chat(request: web.Request) -> web.Response:
    return await _cancel(request, CHAT)


async def cancel_deep_research(request: web.Request) -> web.Response:
    return await _cancel(request, DEEP_RESEARCH)


# --- operations -------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    database_ok = await app[DB].ping()
    jobs = app[JOBS]
    job_queue: dict = {"enabled": settings.use_job_queue}
    problems = []
    if not database_ok:
        problems.append("database")
    details = await jobs.health()
    job_queue.update(details)
    workers = {name: await _safe_workers(jobs, name) for name in jobs.specs}
    job_queue["workers"] = max(workers.values(), default=0)
    job_queue["workersByQueue"] = workers
    if settings.use_job_queue:
        if details.get("redis") != "connected":
            problems.append("redis")
        elif not any(workers.values()):
            problems.append("workers")
    body = {
        "status": "degraded" if problems else "ok",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "database": "connected" if database_ok else "unreachable",
        "jobQueue": job_queue,
    }
    if problems:
        body["failing"] = problems
        body["error"] = "degraded: " + ", ".join(problems) + " failing"
    return json(body, status=503 if problems else 200)


async def _safe_workers(jobs, name: str) -> int:
    try:
        return await jobs.workers(name)
    except Exception:
        return 0


async def openapi(request: web.Request) -> web.Response:
    return json(openapi_document())


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/chat", post_chat)
    app.router.add_post("/api/deep-research/start", post_deep_research)
    app.router.add_get("/api/chat/status/{jobId}", chat_status)
    app.router.add_get("/api/deep-research/status/{messageId}", deep_research_status)
    app.router.add_post("/api/chat/retry/{jobId}", retry_chat)
    app.router.add_post("/api/deep-research/retry/{jobId}", retry_deep_research)
    app.router.add_post("/api/chat/cancel/{jobId}", cancel_chat)
    app.router.add_post("/api/deep-research/cancel/{jobId}", cancel_deep_research)
    app.router.add_get("/api/messages/{messageId}", get_message)
    app.router.add_get("/api/conversations/{conversationId}/messages", conversation_messages)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/openapi.json", openapi)
