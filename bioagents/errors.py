"""Every error answered as JSON `{"ok": false, "error": "<one sentence>"}` (SPEC §4), mapped
to its HTTP status in one place: `ApiError` carries its status, and the errors the job queue,
the store, auth and the database raise get theirs from the tables below."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import peewee as pw
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .auth import AuthError
from .history import HistoryUnavailable
from .jobs.base import InvalidJobState, JobNotFound, QueueUnavailable, UnknownQueue
from .keys import SETTINGS
from .responses import json_response
from .store import NotOwned

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer with an HTTP status and one human sentence; `extra` fields join the body."""

    # Positional-only, so a body field may itself be called `status` (`status="not_found"`).
    def __init__(
        self, status: int, error: str, headers: Mapping[str, str] | None = None, /, **extra
    ):
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> web.Response:
        body = {"ok": False, "error": self.error, **self.extra}
        return json_response(body, status=self.status, headers=self.headers)


# The domain's errors say what went wrong in a sentence a caller may read.
STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (UnknownQueue, 404),
    (JobNotFound, 404),
    (NotOwned, 404),
    (InvalidJobState, 400),
    (AuthError, 401),
)
# A part that cannot be reached: answered 503 naming the part, never its address or error text.
UNAVAILABLE_PART: tuple[tuple[type[Exception], str], ...] = (
    (QueueUnavailable, "redis"),
    (HistoryUnavailable, "redis"),
    (pw.OperationalError, "database"),
    (pw.InterfaceError, "database"),
)
# aiohttp could not decode the body (a Content-Encoding or chunking that lies).
UNREADABLE_BODY = (RequestPayloadError,)
HEADERS_OF = {401: {"WWW-Authenticate": "Bearer"}}

REASONS = {
    400: "the request is malformed",
    401: "authentication required",
    403: "forbidden",
    404: "not found",
    405: "method not allowed for this route",
    413: "the request body is too large",
    415: "unsupported content type",
}


UNAVAILABLE_SENTENCE = {
    "redis": "the job queue (redis) is unavailable; try again shortly",
    "database": "the database is unavailable; try again shortly",
}


def _unavailable(part: str) -> ApiError:
    return ApiError(503, UNAVAILABLE_SENTENCE[part], failing=[part])


def _from_domain(request: web.Request, error: Exception) -> ApiError | None:
    if isinstance(error, UNREADABLE_BODY):
        return ApiError(
            400, "the body cannot be decoded: its Content-Encoding or chunking is broken"
        )
    for kind, status in STATUS_OF:
        if isinstance(error, kind):
            return ApiError(status, str(error), HEADERS_OF.get(status))
    for kind, part in UNAVAILABLE_PART:
        if isinstance(error, kind):
            log.warning("%s unavailable on %s %s: %s", part, request.method, request.path, error)
            return _unavailable(part)
    return None


def _from_http_exception(request: web.Request, error: web.HTTPException) -> ApiError:
    reason = REASONS.get(error.status, error.reason or "error").lower()
    if error.status == 404:
        reason = f"no route for {request.method} {request.path[:200]}"
    elif error.status == 413:
        reason = f"the request body is larger than {request.app[SETTINGS].max_body_bytes} bytes"
    headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
    return ApiError(error.status, reason, headers)


@web.middleware
async def json_errors(request: web.Request, handler):
    """Turn every error into its JSON answer, never HTML or a traceback."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400 or error.content_type == "application/json":
            raise
        return _from_http_exception(request, error).response()
    except Exception as error:
        mapped = _from_domain(request, error)
        if mapped is None:
            log.exception("unhandled error on %s %s", request.method, request.path)
            mapped = ApiError(500, "internal error; the server log has the details")
        return mapped.response()
