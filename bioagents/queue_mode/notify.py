"""Notifications across processes (SPEC §5), in Redis:

    conversation:<id>     channel  every notification and answer delta of the conversation
    notifications:<id>    stream   its kept notifications (entry field `e`: the JSON without
                                   its id), capped at NOTIFY_REPLAY_MAX entries and
                                   NOTIFY_REPLAY_SECONDS, expiring when idle that long

Publishing a kept notification is one script (`PUBLISH_KEPT`) that appends it to the stream
and publishes it with the stream entry's id as its `id`, so the log and the live channel never
disagree. Deltas are a plain PUBLISH. Everything a process publishes goes through its
AutoPipeline, one connection in publish order.

A `serve` copy SUBSCRIBEs only to the conversations its sockets follow (`follow`/`unfollow`,
driven by the hub's first and last local subscriber), so N copies do not each receive all the
traffic. Once Redis confirms a subscription, the copy reads the stream: to learn the newest id
(a new follow) or to catch up from the last id it delivered (after the connection was lost and
subscribed again); frames that arrive meanwhile are held and handed on after, without
duplicates. So an open socket misses nothing across a Redis restart, and learns with `resync`
when Redis lost what it missed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
from collections.abc import Callable

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from .. import events
from ..jobs.base import QueueUnavailable
from ..notify import Kept, Notifier, Replay, Retention, id_order, is_notification_id
from .connect import Backoff, describe
from .pipeline import AutoPipeline, Script

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "conversation:"
LOG_PREFIX = "notifications:"
FOLLOW_WAIT = 2.0  # seconds a new subscription waits for Redis before going on without cursor
KEEPALIVE = 15.0  # seconds of silence on the subscription before it is PINGed
SUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE when a whole set is subscribed again
ID_MARK = b'"id":"'

# KEYS: the conversation's stream. ARGV: channel, the event's JSON, max entries, retention ms.
# Returns the new id.
PUBLISH_KEPT = Script(
    """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', 'e', ARGV[2])
local ms = tonumber(string.match(id, '^(%d+)'))
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', ms - tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[1], string.sub(ARGV[2], 1, -2) .. ',"id":"' .. id .. '"}')
return id
"""
)

# KEYS: the conversation's stream. ARGV: since ('' = from the oldest kept), at most this many
# entries (0 = none, only the newest id). Returns {found, newest id or false, entries}; found is
# 0 when `since` is not in the stream (older than what is kept, or unknown).
REPLAY = Script(
    """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = false
if newest[1] then last = newest[1][1] end
local limit = tonumber(ARGV[2])
if limit == 0 then return {1, last, {}} end
local start = '-'
if ARGV[1] ~= '' then
  if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return {0, last, {}} end
  start = '(' .. ARGV[1]
end
return {1, last, redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', limit)}
"""
)


def channel_for(conversation_id: str) -> str:
    return CHANNEL_PREFIX + conversation_id


def log_key(conversation_id: str) -> str:
    return LOG_PREFIX + conversation_id


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_replay(reply: list) -> Replay:
    found, last, entries = reply
    kept = []
    for entry_id, fields in entries:
        body = fields[fields.index(b"e") + 1]
        kept.append(Kept(_text(entry_id), body[:-1] + b',"id":"' + entry_id + b'"}'))
    return Replay(bool(found), _text(last) if last else None, kept)


class _Sync(enum.Enum):
    """What the next confirmed subscription of a followed conversation must read."""

    FIRST = "first"  # newly followed: only the newest id, which its followers take as cursor
    FROM_CURSOR = "from cursor"  # was live before the connection broke: what came after
    RESYNC = "resync"  # its followers went on without a cursor: they must re-fetch


class _Followed:
    """One conversation this copy follows."""

    __slots__ = ("cursor", "held", "live", "sync")

    def __init__(self) -> None:
        self.cursor: str | None = None  # the newest id handed to the listener
        self.held: list[tuple[str | None, bytes]] | None = []  # None once live
        self.live = asyncio.Event()
        self.sync = _Sync.FIRST


class RedisNotifier(Notifier):
    def __init__(
        self,
        pipeline: AutoPipeline,
        subscriber: Callable[[], aioredis.Redis] | None = None,
        *,
        retention: Retention | None = None,
    ):
        """`subscriber` builds the client whose connection carries the subscriptions; None:
        publish only (a worker process has no sockets to feed). `retention` defaults to the
        NOTIFY_REPLAY_* settings of the environment."""
        super().__init__(retention)
        self._pipeline = pipeline
        self._subscriber = subscriber
        self._followed: dict[str, _Followed] = {}
        self._conn = None  # the subscription's connection while it is up
        self._session = 0  # counts connections, so a late catch-up of an old one is ignored
        self._outbox: list[tuple] = []  # commands for the subscription connection
        self._outbox_ready = asyncio.Event()
        self._unconfirmed: collections.Counter[str] = collections.Counter()
        self._due: dict[str, int] = {}  # conversation → session whose subscription confirmed
        self._due_ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._lost_logged = False  # one warning per outage
        self.received = 0  # messages read from the subscription (for benchmarks)
        self.subscribed = asyncio.Event()  # set while the subscription connection is up

    # --- publishing --------------------------------------------------------------------------

    async def publish(self, event: dict) -> None:
        conversation_id = event["conversationId"]
        done = self._pipeline.script(
            PUBLISH_KEPT,
            [log_key(conversation_id)],
            [
                channel_for(conversation_id),
                events.encode(event),
                self.retention.count,
                int(self.retention.seconds * 1000),
            ],
            retry=True,
        )
        done.add_done_callback(_report_unpublished)

    def publish_delta(self, event: dict) -> None:
        self._pipeline.fire("PUBLISH", channel_for(event["conversationId"]), events.encode(event))

    # --- following ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._subscriber is not None and not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._subscription(), name="notify-subscription"),
                loop.create_task(self._catch_up_loop(), name="notify-catch-up"),
            ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._subscriber is not None:
            log.info("notifications: %d messages received from Redis", self.received)

    async def follow(self, conversation_id: str) -> str | None:
        if self._subscriber is None:
            raise RuntimeError("this notifier only publishes: it was built without subscriber")
        state = self._followed.get(conversation_id)
        if state is None:
            state = self._followed[conversation_id] = _Followed()
            if self._conn is not None:
                self._subscribe([conversation_id])
        if not state.live.is_set():
            try:
                await asyncio.wait_for(state.live.wait(), FOLLOW_WAIT)
            except TimeoutError:
                if self._followed.get(conversation_id) is state and state.sync is _Sync.FIRST:
                    state.sync = _Sync.RESYNC
                return None
        return state.cursor if self._followed.get(conversation_id) is state else None

    def unfollow(self, conversation_id: str) -> None:
        state = self._followed.pop(conversation_id, None)
        if state is None:
            return
        state.live.set()  # a follow() still waiting sees the state is gone
        self._due.pop(conversation_id, None)
        if self._conn is not None:
            self._send(("UNSUBSCRIBE", channel_for(conversation_id)))

    async def replay(self, conversation_id: str, since: str) -> Replay:
        if not is_notification_id(since):
            return Replay(False, None)
        try:
            reply = await self._pipeline.script(
                REPLAY, [log_key(conversation_id)], [since, self.retention.count]
            )
        except RedisError as error:
            raise QueueUnavailable(describe(error)) from error
        return parse_replay(reply)

    # --- the subscription connection ---------------------------------------------------------

    def _send(self, command: tuple) -> None:
        self._outbox.append(command)
        self._outbox_ready.set()

    def _subscribe(self, conversation_ids: list[str]) -> None:
        for start in range(0, len(conversation_ids), SUBSCRIBE_CHUNK):
            chunk = conversation_ids[start : start + SUBSCRIBE_CHUNK]
            self._unconfirmed.update(chunk)
            self._send(("SUBSCRIBE", *(channel_for(c) for c in chunk)))

    async def _subscription(self) -> None:
        """Keep one subscription connection up for ever, subscribed to every followed
        conversation; connect again with capped backoff whenever it breaks."""
        assert self._subscriber is not None
        backoff = Backoff()
        client = self._subscriber()
        try:
            while True:
                conn = None
                try:
                    conn = await client.connection_pool.get_connection()
                    await self._run_session(conn, backoff)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # whatever broke it, subscribe again
                    self._lost(error)
                    await asyncio.sleep(backoff.next())
                finally:
                    self._conn = None
                    self.subscribed.clear()
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.disconnect()
                        with contextlib.suppress(Exception):
                            await client.connection_pool.release(conn)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _run_session(self, conn, backoff: Backoff) -> None:
        self._session += 1
        self._outbox.clear()
        self._unconfirmed.clear()
        # No await between taking the connection and listing the conversations: a follow()
        # that comes after subscribes by itself, one that came before is in this list.
        self._conn = conn
        self._subscribe(list(self._followed))
        self.subscribed.set()
        writer = asyncio.get_running_loop().create_task(self._write_outbox(conn))
        try:
            await self._read_replies(conn, backoff)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    async def _write_outbox(self, conn) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            # redis-py would quietly open a fresh connection, without our subscriptions.
            if not conn.is_connected:
                raise ConnectionError("the subscription connection is closed")
            try:
                await conn.send_packed_command(conn.pack_commands(batch), check_health=False)
            except Exception:
                await conn.disconnect()  # the reader sees it and the session starts over
                raise

    async def _read_replies(self, conn, backoff: Backoff) -> None:
        pinged = False
        heard = False
        while True:
            reply = await conn.read_response(timeout=KEEPALIVE)
            if reply is None:  # silence: make sure the peer is still there
                if pinged:
                    raise ConnectionError(f"no reply to PING within {KEEPALIVE:g} s")
                self._send(("PING",))
                pinged = True
                continue
            pinged = False
            if not heard:
                heard = True
                backoff.reset()
                if self._lost_logged:
                    log.info("notifications: subscribed again")
                    self._lost_logged = False
            if isinstance(reply, list) and reply:
                kind = reply[0]
                if kind == b"message":
                    self._on_message(reply[1], reply[2])
                elif kind == b"subscribe":
                    self._on_confirmed(reply[1])

    def _lost(self, error: BaseException) -> None:
        """The connection broke: hold every conversation's frames until it has caught up."""
        if not self._lost_logged:
            log.warning("notifications: subscription lost (%s)", describe(error))
            self._lost_logged = True
        self._conn = None
        self._session += 1  # a catch-up still under way belongs to the broken connection
        self._due.clear()
        for state in self._followed.values():
            if state.held is None:
                state.held = []
                state.live.clear()

    # --- what arrives --------------------------------------------------------------------------

    def _on_message(self, channel: bytes, payload: bytes) -> None:
        self.received += 1
        conversation_id = channel[len(CHANNEL_PREFIX) :].decode()
        state = self._followed.get(conversation_id)
        if state is None:  # an UNSUBSCRIBE still on its way
            return
        if payload.startswith(events.DELTA_PREFIX):
            notification_id = None
        else:
            notification_id = payload[payload.rindex(ID_MARK) + len(ID_MARK) : -2].decode()
        if state.held is not None:
            state.held.append((notification_id, payload))
            return
        if notification_id is not None:
            state.cursor = notification_id
        self._deliver(conversation_id, notification_id, payload)

    def _on_confirmed(self, channel: bytes) -> None:
        conversation_id = channel[len(CHANNEL_PREFIX) :].decode()
        remaining = self._unconfirmed[conversation_id] - 1
        if remaining > 0:  # an earlier SUBSCRIBE's answer: wait for the latest one
            self._unconfirmed[conversation_id] = remaining
            return
        self._unconfirmed.pop(conversation_id, None)
        state = self._followed.get(conversation_id)
        if state is not None and state.held is not None:
            self._due[conversation_id] = self._session
            self._due_ready.set()

    async def _catch_up_loop(self) -> None:
        """Read the log of each conversation whose subscription Redis confirmed, then let its
        frames flow. All due conversations go to Redis in one pipelined batch."""
        backoff = Backoff()
        while True:
            await self._due_ready.wait()
            self._due_ready.clear()
            due, self._due = self._due, {}
            reads = []
            for conversation_id, session in due.items():
                state = self._followed.get(conversation_id)
                if state is None or state.held is None or session != self._session:
                    continue
                since, limit = "", 0
                if state.sync is _Sync.FROM_CURSOR:
                    since, limit = state.cursor or "", self.retention.count
                future = self._pipeline.script(REPLAY, [log_key(conversation_id)], [since, limit])
                reads.append((conversation_id, session, state, future))
            failed = False
            missed = 0
            for conversation_id, session, state, future in reads:
                try:
                    replay = parse_replay(await future)
                except (QueueUnavailable, RedisError, ValueError) as error:
                    log.warning("notifications: catching up failed (%s)", describe(error))
                    self._due.setdefault(conversation_id, session)
                    failed = True
                    continue
                if self._followed.get(conversation_id) is state and session == self._session:
                    missed += self._caught_up(conversation_id, state, replay)
            if missed:
                log.info("notifications: caught up on %d missed from the log", missed)
            if failed:
                await asyncio.sleep(backoff.next())
                self._due_ready.set()
            else:
                backoff.reset()

    def _caught_up(self, conversation_id: str, state: _Followed, replay: Replay) -> int:
        """Hand on what the log holds after the cursor, then the held frames; returns how
        many came from the log."""
        missed = 0
        if state.sync is _Sync.FROM_CURSOR and replay.found:
            for kept in replay.notifications:
                state.cursor = kept.id
                self._deliver(conversation_id, kept.id, kept.payload)
            missed = len(replay.notifications)
        else:
            if state.sync is not _Sync.FIRST:
                self._resync(conversation_id)
            state.cursor = replay.last_id
        state.sync = _Sync.FROM_CURSOR
        held, state.held = state.held or [], None
        floor = id_order(state.cursor)
        for notification_id, payload in held:
            if notification_id is not None:
                order = id_order(notification_id)
                if order <= floor:
                    continue  # already in the log read above
                floor, state.cursor = order, notification_id
            self._deliver(conversation_id, notification_id, payload)
        state.live.set()
        return missed


def _report_unpublished(done: asyncio.Future) -> None:
    if done.cancelled():
        return
    error = done.exception()
    if error is not None:
        log.warning("notification not published: %s", describe(error))
