"""Logging from LOG_LEVEL and LOG_FORMAT (SPEC §11): `text`, or `json` (one object per line,
python-json-logger's orjson formatter) for every line the process writes, aiohttp's start-up
line, access log, uncaught exceptions and warnings included.

Lines written while a job attempt runs carry `jobId`, `queue`, `attempt` and `conversationId`:
job runners wrap each attempt in `job_context(...)`. No line holds a credential: tokens in
query strings, JWTs, Bearer/Basic values and the configured secrets are redacted from the
finished line, whichever logger wrote it.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from .config import Settings

JOB_FIELDS = ("jobId", "queue", "attempt", "conversationId")
_job: contextvars.ContextVar[dict | None] = contextvars.ContextVar("bioagents_job", default=None)


@contextlib.contextmanager
def job_context(
    job_id: str, queue: str, attempt: int, conversation_id: str | None = None
) -> Iterator[None]:
    """Every line logged inside (and in tasks started inside) concerns this job attempt."""
    fields = {"jobId": job_id, "queue": queue, "attempt": attempt}
    if conversation_id:
        fields["conversationId"] = conversation_id
    token = _job.set(fields)
    try:
        yield
    finally:
        _job.reset(token)


class JobFields(logging.Filter):
    """Puts the current job's fields on each record (a record's own `extra` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _job.get()
        if fields:
            for name, value in fields.items():
                record.__dict__.setdefault(name, value)
        return True


# --- redaction --------------------------------------------------------------------------------

SECRET_PARAMS = (
    "token", "access_token", "refresh_token", "id_token", "jwt", "api_key", "apikey", "api-key",
    "key", "password", "passwd", "pwd", "secret", "auth", "authorization", "signature",
)  # fmt: skip
_PATTERNS = (
    # ?token=… and friends in any URL, request line or Referer
    (
        re.compile(
            r"(?i)([?&;](?:" + "|".join(map(re.escape, SECRET_PARAMS)) + r")=)[^&\s\"'\\#;]+"
        ),
        r"\1[redacted]",
    ),
    # a JWT anywhere (header.payload.signature, base64url)
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    # Authorization header values
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [redacted]"),
)
MIN_SECRET_CHARS = 6  # shorter configured values would redact ordinary words


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        literals = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_CHARS:
                literals.add(secret)
                literals.add(orjson.dumps(secret).decode()[1:-1])  # as it appears in JSON
        self._literals = (
            re.compile("|".join(map(re.escape, sorted(literals, key=len, reverse=True))))
            if literals
            else None
        )

    def __call__(self, text: str) -> str:
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        if self._literals is not None:
            text = self._literals.sub("[redacted]", text)
        return text


def secrets_of(settings: Settings) -> list[str]:
    """Every configured credential, so that none is ever printed."""
    names = (
        "secret",
        "admin_password",
        "openai_api_key",
        "metrics_token",
        "api_key",
    )
    return [value for name in names if isinstance(value := getattr(settings, name, ""), str)]


# --- formatters ---------------------------------------------------------------------------------


def _utc_time(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(OrjsonFormatter):
    """`{"time", "level", "logger", "message", …}`: the job fields and any `extra`, and
    `exc_info` with the traceback."""

    def __init__(self, redact: Redactor):
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
        self.redact = redact

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_time(record)

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [job=… queue=… attempt=…]` and the traceback below."""

    def __init__(self, redact: Redactor):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_time(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        job = [f"{name}={record.__dict__[name]}" for name in JOB_FIELDS if name in record.__dict__]
        return f"{line} [{' '.join(job)}]" if job else line

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


# --- set-up -----------------------------------------------------------------------------------


def configure(settings: Settings) -> None:
    """Route every line through one handler on stderr, in the configured format."""
    redact = Redactor(secrets_of(settings))
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobFields())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(redact))
    else:
        handler.setFormatter(TextFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # One access line per request costs throughput: shown from DEBUG on.
    logging.getLogger("aiohttp.access").setLevel(
        logging.WARNING if settings.log_level == "INFO" else settings.log_level
    )
    logging.captureWarnings(True)
    _log_uncaught()


def _log_uncaught() -> None:
    """Uncaught exceptions (main thread, other threads, `__del__`) become log lines too."""
    crash = logging.getLogger("bioagents.crash")

    def main_thread(kind, value, tb) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        crash.critical("uncaught exception", exc_info=(kind, value, tb))

    def other_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        crash.critical(
            "uncaught exception in thread %s",
            args.thread.name if args.thread else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    def unraisable(info) -> None:
        message = info.err_msg or "exception ignored"
        crash.error(
            "%s: %r",
            message,
            info.object,
            exc_info=(info.exc_type, info.exc_value, info.exc_traceback),
        )

    sys.excepthook = main_thread
    threading.excepthook = other_thread
    sys.unraisablehook = unraisable


def startup_line(text: str) -> None:
    """aiohttp's start-up banner (`web.run_app(print=…)`) as one log line."""
    message = " ".join(part.strip("= ") for part in text.splitlines() if part.strip("= "))
    logging.getLogger("aiohttp.web").info("%s", message)


def print_fatal(message: str, environ: dict | None = None) -> None:
    """A line for a failure before logging is set up (bad configuration): JSON when
    LOG_FORMAT=json asks for it, so even that line parses."""
    env = os.environ if environ is None else environ
    if env.get("LOG_FORMAT", "").strip().lower() == "json":
        record = logging.LogRecord("bioagents", logging.CRITICAL, "", 0, message, None, None)
        entry = {"time": _utc_time(record), "level": "CRITICAL", "logger": "bioagents"}
        line = orjson.dumps({**entry, "message": message}).decode()
        print(line, file=sys.stderr, flush=True)
    else:
        print(f"bioagents: {message}", file=sys.stderr, flush=True)
