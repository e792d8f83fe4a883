"""Automatic pipelining: the commands a process issues during one event-loop turn (and while
the previous round trip is in flight) go to Redis as one pipeline on one connection.

Why: a job's life is a dozen small commands (progress, notifications, its final state), and
a worker runs many jobs at once. One round trip per command costs far more Python time than
the commands cost Redis; one pipeline per turn makes the cost per job a fraction of that.
Why one connection: Redis runs a connection's commands in order, so a progress write, the
notification that announces it and the job's final state can never overtake each other.

Each command is either *retried* (idempotent: published events, progress, the job-settling
script) — kept and resent in order when Redis comes back — or not, and then its caller gets
QueueUnavailable at once (an HTTP request answers 503 instead of hanging).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from ..jobs.base import QueueUnavailable
from .connect import REPLY_TIMEOUT, UNAVAILABLE, Backoff, describe

pack_command: Callable[..., Any] | None
try:  # hiredis packs commands in C, several times faster than redis-py's Python packer
    from hiredis import pack_command
except ImportError:  # pragma: no cover - redis[hiredis] is a dependency
    pack_command = None

log = logging.getLogger(__name__)

MAX_BACKLOG = 200_000  # retried commands kept while Redis is away; the oldest go first
IDLE_CHECK_AFTER = 5.0  # seconds; a connection idle longer is PINGed before use


class Script:
    """A Lua script sent by its SHA1 (loaded on every new connection)."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Entry:
    __slots__ = ("args", "future", "retry", "script")

    def __init__(self, args, future, retry, script=None):
        self.args = args
        self.future = future
        self.retry = retry
        self.script = script


class AutoPipeline:
    def __init__(self, redis: aioredis.Redis, *, name: str = "pipeline", close_client: bool = True):
        """Sends on one connection taken from `redis`'s pool; `close_client` also closes
        `redis` itself on close (False when the client is shared)."""
        self._pool = redis.connection_pool
        self._redis = redis
        self._close_client = close_client
        self._name = name
        self._pending: list[_Entry] = []
        self._latest: dict[tuple, _Entry] = {}  # coalesced HSETs not yet sent
        self._scripts: dict[str, Script] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._conn = None
        self._load_scripts = False  # the connection may lack a script: load them all first
        self._last_io = 0.0
        self._failing = False  # the last round trip failed (log one warning per outage)
        self._closed = False
        self.round_trips = 0
        self.commands = 0

    # --- submitting ------------------------------------------------------------------------

    def call(self, *args, retry: bool = False) -> asyncio.Future:
        """Queue one command; the future resolves to its reply (or raises its error)."""
        future = asyncio.get_running_loop().create_future()
        self._submit(_Entry(args, future, retry))
        return future

    def script(self, script: Script, keys: list, args: list, *, retry: bool = False):
        """Queue one EVALSHA of `script`; returns the reply's future."""
        if script.sha not in self._scripts:
            self._scripts[script.sha] = script
            self._load_scripts = True
        future = asyncio.get_running_loop().create_future()
        entry = _Entry(("EVALSHA", script.sha, len(keys), *keys, *args), future, retry, script)
        self._submit(entry)
        return future

    def fire(self, *args) -> None:
        """Queue one command whose reply nobody awaits; retried until Redis takes it."""
        self._submit(_Entry(args, None, True))

    def hset_latest(self, key: str, field: str, value) -> None:
        """Fire `HSET key field value`, replacing the value of one still waiting to be sent."""
        entry = self._latest.get((key, field))
        if entry is not None:
            entry.args = ("HSET", key, field, value)
            return
        entry = _Entry(("HSET", key, field, value), None, True)
        self._latest[(key, field)] = entry
        self._submit(entry)

    def _submit(self, entry: _Entry) -> None:
        if self._closed:
            if entry.future is not None:
                entry.future.set_exception(QueueUnavailable("the Redis pipeline is closed"))
            return
        self._pending.append(entry)
        self._idle.clear()
        if not self._wakeup.is_set():
            self._wakeup.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    # --- sending ---------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                self._latest.clear()
                try:
                    replies = await self._round_trip(batch)
                except UNAVAILABLE as error:
                    await self._drop_connection()
                    self._requeue_after_failure(batch, error)
                    if self._pending:
                        await asyncio.sleep(backoff.next())
                    continue
                if self._failing:
                    log.info("Redis reachable again")
                    self._failing = False
                backoff.reset()
                self._resolve(batch, replies)
            self._idle.set()

    async def _round_trip(self, batch: list[_Entry]) -> list:
        conn = await self._connection()
        self.round_trips += 1
        self.commands += len(batch)
        if pack_command is not None:
            packed = b"".join([pack_command(entry.args) for entry in batch])
        else:
            packed = b"".join(conn.pack_commands([entry.args for entry in batch]))
        await conn.send_packed_command(packed, check_health=False)
        replies = []
        async with asyncio.timeout(REPLY_TIMEOUT):
            for _ in batch:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as error:
                    replies.append(error)
        return replies

    def _resolve(self, batch: list[_Entry], replies: list) -> None:
        reload = []
        for entry, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and entry.script is not None:
                reload.append(entry)  # the script cache was flushed; the command did not run
            elif entry.future is None:
                if isinstance(reply, ResponseError):
                    log.warning("Redis refused %s: %s", entry.args[0], reply)
            elif not entry.future.done():
                if isinstance(reply, ResponseError):
                    entry.future.set_exception(reply)
                else:
                    entry.future.set_result(reply)
        if reload:
            self._load_scripts = True
            self._pending[:0] = reload

    def _requeue_after_failure(self, batch: list[_Entry], error: BaseException) -> None:
        reason = describe(error)
        kept = []
        for entry in batch:
            if entry.retry and not (entry.future is not None and entry.future.done()):
                kept.append(entry)
            elif entry.future is not None and not entry.future.done():
                entry.future.set_exception(QueueUnavailable(reason))
        self._pending[:0] = kept
        if len(self._pending) > MAX_BACKLOG:
            dropped = len(self._pending) - MAX_BACKLOG
            for entry in self._pending[:dropped]:
                if entry.future is not None and not entry.future.done():
                    entry.future.set_exception(QueueUnavailable(reason))
            del self._pending[:dropped]
            log.warning("Redis away: dropped the %d oldest queued commands", dropped)
        if not self._failing:
            log.warning("%s; commands that can be resent wait for it", reason)
            self._failing = True

    async def _connection(self):
        loop_time = asyncio.get_running_loop().time()
        if self._conn is not None and loop_time - self._last_io > IDLE_CHECK_AFTER:
            # A connection idle for a while may have been closed by a Redis restart: find out
            # with a PING rather than with a command that cannot be resent.
            try:
                await self._conn.send_command("PING")
                async with asyncio.timeout(REPLY_TIMEOUT):
                    await self._conn.read_response()
            except UNAVAILABLE:
                await self._drop_connection()
        self._last_io = loop_time
        if self._conn is None:
            self._conn = await self._pool.get_connection()
            self._load_scripts = True
        if self._load_scripts:
            for script in list(self._scripts.values()):
                await self._conn.send_command("SCRIPT", "LOAD", script.source)
                await self._conn.read_response()
            self._load_scripts = False
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    # --- closing ---------------------------------------------------------------------------

    async def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for everything queued to be sent; True when it was."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (waiting up to `timeout`), then release the connection."""
        if self._task is not None:
            await self.flush(timeout)
        self._closed = True
        for entry in self._pending:
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(QueueUnavailable("the Redis pipeline is closed"))
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._drop_connection()
        if self._close_client:
            await self._redis.aclose()
