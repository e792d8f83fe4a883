"""Redis clients built from `REDIS_URL` (SPEC §2): `redis://`, `rediss://`, `unix://` and
`redis+sentinel://h1:26379,h2:26379/<service>[/<db>]`.

Four kinds, because one set of socket settings cannot serve them all:
- `general`: short commands; a reply that takes 10 s means the server is gone.
- `pipeline`: the AutoPipeline's connection, which bounds its round trips itself.
- `blocking`: `BZPOPMIN` waits for work; redis-py's socket timeout would break such a wait, so
  it has none and the caller bounds each wait itself.
- `pubsub`: a subscription idles for minutes; it pings to find a dead peer instead.

Connections are opened on demand, so a client never gives up: each command after an outage
connects again. Long-lived loops (workers, subscriptions) retry with `Backoff`.
"""

from __future__ import annotations

import contextlib
import random
from urllib.parse import parse_qs, unquote, urlsplit

from redis import asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from ..jobs.base import QueueUnavailable

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
REPLY_TIMEOUT = 10.0  # seconds; every script we run answers in well under a millisecond

# Errors that mean "Redis cannot be reached right now" (LOADING after a restart included).
UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,  # a failover in progress: the old master turned replica
    ConnectionError,
    TimeoutError,
    OSError,
)


def connect(url: str, kind: str = "general", *, name: str = "bioagents") -> aioredis.Redis:
    """A client for `url` with the socket settings of `kind` (see the module docstring)."""
    options: dict = {
        "socket_connect_timeout": 3.0,
        "socket_keepalive": True,
        "client_name": f"{name}:{kind}",
    }
    if kind == "general":
        # One quick retry covers a pooled connection the server closed while idle (a restart);
        # only connection errors, so a command whose reply was merely slow is never resent.
        options.update(
            socket_timeout=REPLY_TIMEOUT,
            health_check_interval=30,
            retry=Retry(
                ExponentialBackoff(cap=0.5, base=0.05),
                1,
                supported_errors=(redis_errors.ConnectionError,),
            ),
        )
    elif kind == "pipeline":
        # AutoPipeline bounds each round trip itself and decides what may be resent.
        options.update(socket_timeout=None, retry=Retry(ExponentialBackoff(), 0))
    elif kind == "blocking":
        options.update(socket_timeout=None, retry=Retry(ExponentialBackoff(), 0))
    elif kind == "pubsub":
        options.update(socket_timeout=None, health_check_interval=15)
    else:
        raise ValueError(f"unknown Redis client kind {kind!r}")

    if urlsplit(url).scheme == SENTINEL_SCHEME:
        return _sentinel_master(url, options)
    return aioredis.Redis.from_url(url, **options)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict]:
    """`redis+sentinel://[:password@]h1[:port],h2[:port]/service[/db][?sentinel_password=]`
    → ([(host, port)…], service, master connection options)."""
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise ValueError(f"REDIS_URL names an empty sentinel host: {url!r}")
        sentinels.append((host, int(port) if port else DEFAULT_SENTINEL_PORT))
    path = [piece for piece in parts.path.split("/") if piece]
    if not path:
        raise ValueError("REDIS_URL redis+sentinel:// needs a service name: /<service>")
    options: dict = {}
    if len(path) > 1:
        options["db"] = int(path[1])
    if auth:
        username, _, password = auth.partition(":")
        if username:
            options["username"] = unquote(username)
        if password:
            options["password"] = unquote(password)
    query = parse_qs(parts.query)
    if "sentinel_password" in query:
        options["sentinel_password"] = query["sentinel_password"][0]
    return sentinels, path[0], options


def _sentinel_master(url: str, options: dict) -> aioredis.Redis:
    sentinels, service, master_options = parse_sentinel_url(url)
    sentinel_password = master_options.pop("sentinel_password", None)
    sentinel_kwargs = {"socket_connect_timeout": 3.0, "socket_timeout": 3.0}
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(service, **options, **master_options)


def describe(error: BaseException) -> str:
    """One line for logs and 503 bodies."""
    if isinstance(error, QueueUnavailable):
        return str(error)
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"Redis unreachable ({error.__class__.__name__}{': ' + text[:200] if text else ''})"


@contextlib.contextmanager
def unavailable_as_queue_error():
    """Raise QueueUnavailable for any error that means Redis cannot be reached."""
    try:
        yield
    except QueueUnavailable:
        raise
    except UNAVAILABLE as error:
        raise QueueUnavailable(describe(error)) from error


class Backoff:
    """Capped exponential delays with a little jitter, for loops that retry for ever."""

    def __init__(self, first: float = 0.05, cap: float = 2.0):
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * (0.8 + 0.4 * random.random())

    def reset(self) -> None:
        self._next = self.first
