"""Every error answered as JSON `{"ok": false, "error": "<one sentence>"}` (SPEC §4)."""

from __future__ import annotations

import logging

from aiohttp import web

from .keys import SETTINGS

log = logging.getLogger(__name__)


class ApiError(Exception):
    # Positional-only, so a body field may itself be called `status` (`status="not_found"`).
    def __init__(self, status: int, error: str, headers: dict | None = None, /, **extra):
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> web.Response:
        body = {"ok": False, "error": self.error, **self.extra}
        return web.json_response(body, status=self.status, headers=self.headers)


REASONS = {
    400: "the request is malformed",
    401: "authentication required",
    403: "forbidden",
    404: "not found",
    405: "method not allowed for this route",
    413: "the request body is too large",
    415: "unsupported content type",
}


@web.middleware
async def json_errors(request: web.Request, handler):
    """Turn aiohttp's HTTP errors and unexpected exceptions into JSON, never HTML or tracebacks."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400 or error.content_type == "application/json":
            raise
        reason = REASONS.get(error.status, error.reason or "error").lower()
        if error.status == 404:
            reason = f"no route for {request.method} {request.path}"
        elif error.status == 413:
            reason = f"the request body is larger than {request.app[SETTINGS].max_body_bytes} bytes"
        headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
        return ApiError(error.status, reason, headers).response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "internal error; the server log has the details").response()
