"""The HTTP server `serve` runs: aiohttp's, except for requests its parser refuses before any
handler sees them (headers too large, a garbled request line). aiohttp answers those in plain
text and logs a traceback for each (a log flood); here they get the JSON error body with the
API's security headers, and one WARNING line (SPEC §4, §12).

The hook is aiohttp's own: `RequestHandler.handle_error`, reached through a `web.Server` and an
`AppRunner` that build our handler."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from .responses import json_response
from .security import API_HEADERS, BOARD_HEADERS, SERVER_NAME

log = logging.getLogger(__name__)

TOO_MANY_HEADERS = "Too many headers received"
# A refused request's path is unknown: it gets the headers of the API and of the board.
REFUSAL_HEADERS = {**BOARD_HEADERS, **API_HEADERS, "Server": SERVER_NAME}


def _refusal(error: HttpProcessingError) -> tuple[int, str]:
    """The status and sentence for a request the parser refused."""
    if isinstance(error, LineTooLong) or error.message == TOO_MANY_HEADERS:
        return 431, "the request's headers (or its request line) are too large"
    return 400, "the request is not well-formed HTTP"


def _answer(
    request: web.BaseRequest, status: int, exc: BaseException | None, message: str | None
) -> tuple[int, str]:
    """The status and sentence for a request answered outside the app, logged once."""
    if isinstance(exc, HttpProcessingError):
        status, sentence = _refusal(exc)
        # Scanners and TLS probes send garbage as their first request: not worth a WARNING.
        level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.WARNING
        log.log(level, "refused a request from %s: %s", request.remote, sentence)
        return status, sentence
    if status == 500:
        log.error("unhandled error outside the handlers", exc_info=exc)
        return status, "internal error; the server log has the details"
    return status, message or "the request could not be answered"


class JsonErrorRequestHandler(RequestHandler):
    __slots__ = ()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A body that cannot be decoded, found while aiohttp drains what a handler left
        unread, is the client's fault: one WARNING line, not a traceback."""
        error = kw.get("exc_info")
        if isinstance(error, RequestPayloadError | HttpProcessingError):
            log.warning("could not read a request's body: %s", error.__class__.__name__)
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for another response
            raise ConnectionError("a response is already on its way; cannot send an error")
        status, sentence = _answer(request, status, exc, message)
        response = json_response({"ok": False, "error": sentence}, status, REFUSAL_HEADERS)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """aiohttp's runner, whose connections use `JsonErrorRequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _JsonErrorServer(
            server.request_handler,
            request_factory=server.request_factory,
            loop=asyncio.get_running_loop(),
            **self._kwargs,
        )


async def serve_until_stopped(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout: float,
    print: Callable[[str], None] = print,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, then shut it down as `web.run_app` does."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        print(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)")
        await stop.wait()
    finally:
        await runner.cleanup()
