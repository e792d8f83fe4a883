"""The WebSocket hub `/api/ws` (SPEC §5, §10, §12): authenticates sockets, keeps their
subscriptions, replays what a reconnecting client missed, and fans notifications out.

A notification can go to thousands of sockets, so the work per socket is kept small: each
conversation's frames of one event-loop turn (a job's started and progress frames often come in
one) are built and joined once, and at the end of the turn each socket gets them in one write
to its transport, in the order they were produced. No task or queue is kept per socket. A socket
that does not read and would let more than MAX_BACKLOG_BYTES pile up in this process is closed
(1008): it reconnects and replays.

The hub is the notifier's listener: it follows a conversation (`Notifier.follow`) while at
least one of its sockets is subscribed to it, and hands each subscription the frames after its
cursor: `subscribed {lastId}`, then the replayed frames (`since`) or `resync`, then the live
ones. Frames that arrive while a subscription is being set up are held and sent after, without
duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import uuid
from urllib.parse import parse_qsl

import jwt
import orjson
from aiohttp import WSMsgType, web

from . import auth, events, metrics, store
from .config import Settings
from .db import Database
from .jobs.base import QueueUnavailable
from .notify import Notifier, Replay, id_order

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0
HEARTBEAT_SECONDS = 30.0
CLOSE_UNAUTHENTICATED = 4001
CLOSE_POLICY = 1008  # too slow, or too many sockets for one user
MAX_SUBSCRIPTIONS = 200
MAX_BACKLOG_BYTES = 1 << 20  # written to one socket and not yet taken by it
MAX_CURSOR_CHARS = 64
MAX_ID_CHARS = 100
SWEEP_SECONDS = 1.0  # how often expired tokens are looked for (HEARTBEAT_SECONDS: pings)
PING_FRAME = b"\x89\x00"  # an empty WebSocket ping (RFC 6455 §5.5.2)
TEXT, PONG = 0x1, 0xA  # WebSocket opcodes
CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


def ws_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """A final, unmasked WebSocket frame (RFC 6455 §5.2) carrying `payload`. Text frames are
    sent uncompressed even where permessage-deflate was offered, which RFC 7692 allows."""
    first, length = 0x80 | opcode, len(payload)
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


class Subscription:
    """One socket's subscription to one conversation."""

    __slots__ = ("client", "held", "stream")

    def __init__(self, client: Client):
        self.client = client
        self.stream = False  # also send `message:delta` frames (§10)
        # Frames (id or None, frame) that arrived while the subscription is being set up;
        # None once it is live.
        self.held: list[tuple[str | None, bytes]] | None = []


class Client:
    __slots__ = (
        "closing",
        "conversations",
        "expires_at",
        "heard",
        "hub",
        "pending",
        "transport",
        "user_id",
        "ws",
    )

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, transport: asyncio.Transport | None):
        self.hub = hub
        self.ws = ws
        self.transport = transport
        self.user_id: str | None = None
        self.conversations: list[str] = []  # those it subscribes to (the hub keeps the rest)
        self.pending: list[bytes] | None = None  # frames of this turn, not yet written
        self.closing: asyncio.Task | None = None  # the close the hub started, awaited at the end
        self.heard = True  # a frame (a pong, at least) arrived since the last server ping
        self.expires_at: float | None = None  # when its JWT expires (epoch seconds)

    def write(self, frame: bytes) -> None:
        """Queue `frame` for the end of this event-loop turn."""
        if self.closing is not None:
            return
        if self.pending is None:
            self.pending = [frame]
            self.hub.flush_soon(self)
        else:
            self.pending.append(frame)

    def send(self, frame: dict) -> None:
        """Queue one of the hub's own frames, after the notifications delivered before it."""
        self.hub.spread_batches()
        self.write(ws_frame(events.encode(frame)))

    def flush(self) -> None:
        """Write the queued frames, as far as MAX_BACKLOG_BYTES allows; a socket that cannot
        take them all is closed as too slow."""
        pending, self.pending = self.pending, None
        transport = self.transport
        if not pending or self.closing is not None or transport is None or transport.is_closing():
            return
        room = MAX_BACKLOG_BYTES - transport.get_write_buffer_size()
        if len(pending) == 1 and len(pending[0]) <= room:
            transport.write(pending[0])
            return
        fitting = []
        for frame in pending:
            room -= len(frame)
            if room < 0:
                break
            fitting.append(frame)
        if fitting:
            transport.write(b"".join(fitting))
        if len(fitting) < len(pending):
            log.warning("closing a WebSocket that fell %d bytes behind", MAX_BACKLOG_BYTES)
            self.close_soon(CLOSE_POLICY, b"too slow: notifications dropped")

    def close_soon(self, code: int, reason: bytes) -> None:
        """Start closing the socket from outside its handler (which awaits the close)."""
        if self.closing is None:
            self.flush()
            self.closing = asyncio.get_running_loop().create_task(
                self.ws.close(code=code, message=reason)
            )


class Hub:
    """Built with the app (its route is the hub's own `handle`: no wrapper coroutine kept per
    socket); `attach` hands it the database and the notifier once the backend is open."""

    db: Database
    notifier: Notifier

    def __init__(self, settings: Settings, heartbeat: float | None = None):
        self.settings = settings
        # Read when the hub is built (like AUTH_TIMEOUT at each socket), not frozen at import.
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        self._subscriptions: dict[str, dict[Client, Subscription]] = {}
        self._clients: set[Client] = set()
        self._sockets_per_user: dict[str, int] = {}
        # Frames of this turn, per conversation (is it a delta, frame), and the sockets they
        # have been spread to, written at the end of the turn.
        self._batches: dict[str, list[tuple[bool, bytes]]] = {}
        self._unflushed: list[Client] = []
        self._flush_scheduled = False
        self._setting_up: dict[str, set[Subscription]] = {}  # subscriptions that hold frames
        self._sweeper: asyncio.Task | None = None

    def attach(self, db: Database, notifier: Notifier) -> None:
        """Check subscriptions in `db` and serve what `notifier` delivers."""
        self.db = db
        self.notifier = notifier
        notifier.listen(self)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # --- writing ---------------------------------------------------------------------------------

    def flush_soon(self, client: Client) -> None:
        """Write `client`'s queued frames at the end of this event-loop turn."""
        self._unflushed.append(client)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.spread_batches()
        unflushed, self._unflushed = self._unflushed, []
        self._flush_scheduled = False
        for client in unflushed:
            client.flush()

    def spread_batches(self) -> None:
        """Queue this turn's notifications on the live subscriptions' sockets."""
        batches, self._batches = self._batches, {}
        for conversation_id, frames in batches.items():
            subscriptions = self._subscriptions.get(conversation_id)
            if not subscriptions:
                continue
            everything = b"".join([frame for _, frame in frames])
            kept = everything
            if any(is_delta for is_delta, _ in frames):
                kept = b"".join([frame for is_delta, frame in frames if not is_delta])
            for subscription in subscriptions.values():
                if subscription.held is None:
                    chunk = everything if subscription.stream else kept
                    if chunk:
                        subscription.client.write(chunk)

    # --- the notifier's listener ---------------------------------------------------------------

    def deliver(self, conversation_id: str, notification_id: str | None, payload: bytes) -> None:
        subscriptions = self._subscriptions.get(conversation_id)
        if not subscriptions:
            return
        metrics.notifications_delivered(payload, len(subscriptions))
        self._queue(conversation_id, notification_id, ws_frame(payload), notification_id is None)

    def resync(self, conversation_id: str) -> None:
        if conversation_id not in self._subscriptions:
            return
        frame = ws_frame(
            events.encode(events.control(events.RESYNC, conversationId=conversation_id))
        )
        self._queue(conversation_id, None, frame, False)

    def _queue(
        self, conversation_id: str, notification_id: str | None, frame: bytes, is_delta: bool
    ) -> None:
        for subscription in self._setting_up.get(conversation_id, ()):
            if subscription.held is not None and (subscription.stream or not is_delta):
                subscription.held.append((notification_id, frame))
        batch = self._batches.get(conversation_id)
        if batch is None:
            batch = self._batches[conversation_id] = []
            self._schedule_flush()
        batch.append((is_delta, frame))

    # --- sockets -------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        self._flush()
        for client in list(self._clients):
            with contextlib.suppress(Exception):
                await client.ws.close(code=1001, message=b"server shutting down")

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # Every open socket pays for what it keeps, so it keeps little: no compression (a zlib
        # context costs more than the rest of the socket), no timers of its own (the sweeper
        # pings and expires all sockets), no helper coroutine and no last frame kept while it
        # waits for the next.
        ws = web.WebSocketResponse(
            autoping=False, max_msg_size=self.settings.max_ws_frame_bytes, compress=False
        )
        await ws.prepare(request)
        client = Client(self, ws, request.transport)
        self._clients.add(client)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        try:
            client.send(events.control("ready"))
            token = _token_in(request.query_string)
            if token is not None:
                authenticated = await self._authenticate(client, {"token": token})
                del token
            else:
                authenticated = await self._wait_for_auth(client)
            while authenticated:  # `receive` directly: `async for` adds a frame per socket
                msg = await ws.receive()
                if msg.type in CLOSED:
                    break
                await self._receive(client, msg)
                del msg
        finally:
            self._forget(client)
            if client.closing is not None:
                with contextlib.suppress(Exception):
                    await client.closing
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    def _forget(self, client: Client) -> None:
        self._clients.discard(client)
        for conversation_id in client.conversations:
            self._drop_subscription(client, conversation_id)
        client.conversations = []
        if client.user_id is not None:
            remaining = self._sockets_per_user.get(client.user_id, 1) - 1
            if remaining > 0:
                self._sockets_per_user[client.user_id] = remaining
            else:
                self._sockets_per_user.pop(client.user_id, None)
            client.user_id = None

    def _stop_holding(self, conversation_id: str, subscription: Subscription) -> None:
        setting_up = self._setting_up.get(conversation_id)
        if setting_up is not None:
            setting_up.discard(subscription)
            if not setting_up:
                del self._setting_up[conversation_id]

    def _subscription(self, client: Client, conversation_id: str) -> Subscription | None:
        return self._subscriptions.get(conversation_id, {}).get(client)

    def _drop_subscription(self, client: Client, conversation_id: str) -> None:
        subscriptions = self._subscriptions.get(conversation_id)
        if subscriptions is None:
            return
        subscription = subscriptions.pop(client, None)
        if subscription is not None:
            self._stop_holding(conversation_id, subscription)
        if not subscriptions:
            del self._subscriptions[conversation_id]
            self.notifier.unfollow(conversation_id)

    async def _refuse(self, client: Client, reason: str, code: int, close_reason: bytes) -> None:
        client.send(events.control("error", message=reason))
        client.flush()  # before aiohttp writes the close frame
        with contextlib.suppress(Exception):
            await client.ws.close(code=code, message=close_reason)

    # --- authentication ------------------------------------------------------------------------

    async def _authenticate(self, client: Client, frame: dict) -> bool:
        expires_at = None
        try:
            if frame.get("token"):
                if not isinstance(frame["token"], str):
                    raise auth.AuthError("token must be a string")
                user_id = auth.verify_token(self.settings, frame["token"])
                expires_at = _expiry(frame["token"])
            elif self.settings.auth_mode == "none" and "userId" in frame:
                chosen = auth.check_user_id(frame["userId"])
                if chosen is None:
                    raise auth.AuthError("userId must not be empty")
                user_id = chosen
            else:
                raise auth.AuthError(
                    'send {"action":"auth","token":"<jwt>"}'
                    if self.settings.auth_mode == "jwt"
                    else 'send {"action":"auth","token":"<jwt>"} or {"action":"auth",'
                    '"userId":"<id>"}'
                )
        except (auth.AuthError, ValueError) as error:
            await self._refuse(
                client,
                f"authentication failed: {error}",
                CLOSE_UNAUTHENTICATED,
                b"unauthenticated",
            )
            return False
        limit = self.settings.max_sockets_per_user
        if self._sockets_per_user.get(user_id, 0) >= limit:
            await self._refuse(
                client,
                f"too many open sockets: at most {limit} per user",
                CLOSE_POLICY,
                b"too many sockets",
            )
            return False
        self._sockets_per_user[user_id] = self._sockets_per_user.get(user_id, 0) + 1
        client.user_id = user_id
        client.expires_at = expires_at
        client.send(events.control("authenticated", userId=user_id))
        return True

    async def _sweep(self) -> None:
        """For all sockets at once (cheaper than timers per socket): close JWT sockets whose
        token has expired (SPEC §12), within SWEEP_SECONDS; every `heartbeat` seconds, drop the
        sockets that sent nothing, not even a pong, since the last ping, and ping the rest."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.heartbeat
        while True:
            await asyncio.sleep(min(SWEEP_SECONDS, self.heartbeat))
            now = time.time()
            expired = [
                client
                for client in self._clients
                if client.expires_at is not None and client.expires_at <= now
            ]
            for client in expired:
                client.expires_at = None
                client.send(events.control("error", message="the token has expired"))
                client.close_soon(CLOSE_UNAUTHENTICATED, b"token expired")
            if loop.time() >= next_ping:
                next_ping = loop.time() + self.heartbeat
                self._ping_all()

    def _ping_all(self) -> None:
        for client in list(self._clients):
            if client.heard:
                client.heard = False
                client.write(PING_FRAME)
            elif client.closing is None and client.transport is not None:
                log.info("dropping a WebSocket that answered no ping for %g s", self.heartbeat)
                client.transport.close()  # dead: no close handshake to wait for

    async def _wait_for_auth(self, client: Client) -> bool:
        deadline = time.monotonic() + AUTH_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._refuse(
                    client,
                    "authentication timed out: no auth frame within 10 s",
                    CLOSE_UNAUTHENTICATED,
                    b"unauthenticated",
                )
                return False
            try:
                msg = await client.ws.receive(timeout=remaining)
            except TimeoutError:
                continue
            if msg.type in CLOSED:
                return False
            if self._control(client, msg):
                continue
            frame = self._parse(client, msg)
            if frame is None:
                continue
            action = frame.get("action")
            if action == "auth":
                return await self._authenticate(client, frame)
            if action == "ping":
                client.send(events.control("pong"))
            else:
                client.send(
                    events.control("error", message="authenticate first: send an auth frame")
                )

    # --- client frames -------------------------------------------------------------------------

    def _control(self, client: Client, msg) -> bool:
        """Answer a WebSocket ping or take a pong (autoping is off); True when it was one."""
        client.heard = True
        if msg.type == WSMsgType.PING:
            client.write(ws_frame(msg.data, PONG))
            return True
        return msg.type == WSMsgType.PONG

    async def _receive(self, client: Client, msg) -> None:
        if self._control(client, msg):
            return
        frame = self._parse(client, msg)
        if frame is not None:
            await self._act(client, frame)

    def _parse(self, client: Client, msg) -> dict | None:
        """The frame as a dict, or None after answering an error frame."""
        if msg.type == WSMsgType.BINARY:
            client.send(
                events.control("error", message="binary frames are not accepted; send JSON text")
            )
            return None
        if msg.type != WSMsgType.TEXT:
            return None
        try:
            frame = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            client.send(events.control("error", message="frames must be JSON objects"))
            return None
        if not isinstance(frame, dict) or not isinstance(frame.get("action"), str):
            client.send(
                events.control("error", message="frames must be JSON objects with an action")
            )
            return None
        return frame

    async def _act(self, client: Client, frame: dict) -> None:
        """Answer one frame of an authenticated socket."""
        action = frame["action"]
        if action == "ping":
            client.send(events.control("pong"))
        elif action == "subscribe":
            await self._subscribe(client, frame)
        elif action == "unsubscribe":
            self._unsubscribe(client, frame.get("conversationId"))
        elif action == "auth":
            client.send(events.control("error", message="already authenticated"))
        else:
            client.send(events.control("error", message=f"unknown action {action[:40]!r}"))

    async def _subscribe(self, client: Client, frame: dict) -> None:
        conversation_id = _conversation_id(frame.get("conversationId"))
        if conversation_id is None:
            client.send(
                events.control("error", message="subscribe needs a conversationId (a UUID)")
            )
            return
        since = frame.get("since")
        if since is not None and (not isinstance(since, str) or len(since) > MAX_CURSOR_CHARS):
            client.send(events.control("error", message="since must be a notification id"))
            return
        stream = frame.get("stream", False)
        if not isinstance(stream, bool):
            client.send(events.control("error", message="stream must be true or false"))
            return
        try:
            owned = await self.db.run(store.owns_conversation, conversation_id, client.user_id)
        except Exception:
            log.exception("subscription check failed")
            owned = False  # fail closed
        if not owned:
            client.send(
                events.control(
                    "error", message="conversation not found", conversationId=conversation_id
                )
            )
            return
        subscription = self._subscription(client, conversation_id)
        if subscription is None:
            if len(client.conversations) >= MAX_SUBSCRIPTIONS:
                client.send(events.control("error", message="too many subscriptions on one socket"))
                return
            subscription = Subscription(client)
            client.conversations.append(conversation_id)
            self._subscriptions.setdefault(conversation_id, {})[client] = subscription
        elif subscription.held is not None:
            client.send(events.control("error", message="already subscribing to it"))
            return
        else:
            self.spread_batches()  # what it was live for reaches it before it starts holding
            subscription.held = []
        self._setting_up.setdefault(conversation_id, set()).add(subscription)
        subscription.stream = stream
        cursor, replay = await self._position(conversation_id, since)
        if self._subscription(client, conversation_id) is not subscription:
            return  # the socket went away meanwhile
        self._start_live(client, subscription, conversation_id, cursor, replay)

    async def _position(self, conversation_id: str, since: str | None):
        """Follow the conversation; returns (cursor, replay of `since` or None)."""
        cursor = await self.notifier.follow(conversation_id)
        if since is None:
            return cursor, None
        try:
            return cursor, await self.notifier.replay(conversation_id, since)
        except QueueUnavailable as error:
            log.warning("replay unavailable (%s): the client is told to resync", error)
            return cursor, Replay(False, None)

    def _start_live(
        self,
        client: Client,
        subscription: Subscription,
        conversation_id: str,
        cursor: str | None,
        replay: Replay | None,
    ) -> None:
        newest = cursor
        if replay is not None and id_order(replay.last_id) > id_order(newest):
            newest = replay.last_id
        client.send(events.control("subscribed", conversationId=conversation_id, lastId=newest))
        floor = id_order(cursor)
        if replay is not None and replay.found:
            for kept in replay.notifications:
                client.write(ws_frame(kept.payload))
                floor = max(floor, id_order(kept.id))
        elif replay is not None:
            client.send(events.control(events.RESYNC, conversationId=conversation_id))
        self._stop_holding(conversation_id, subscription)
        held, subscription.held = subscription.held or [], None
        for notification_id, frame in held:
            if notification_id is not None:
                order = id_order(notification_id)
                if order <= floor:
                    continue  # replayed already, or older than the cursor
                floor = order
            client.write(frame)

    def _unsubscribe(self, client: Client, raw_conversation_id) -> None:
        conversation_id = _conversation_id(raw_conversation_id)
        if conversation_id is None or conversation_id not in client.conversations:
            client.send(events.control("error", message="not subscribed to that conversation"))
            return
        self._drop_subscription(client, conversation_id)
        client.conversations.remove(conversation_id)
        client.send(events.control("unsubscribed", conversationId=conversation_id))


def _token_in(query_string: str) -> str | None:
    """`?token=` of the socket's URL. Parsed here rather than through `request.query`, which
    the request would keep, parsed, for as long as the socket is open."""
    for name, value in parse_qsl(query_string):
        if name == "token":
            return value
    return None


def _conversation_id(value) -> str | None:
    """The id in the canonical form HTTP uses (`str(uuid.UUID(...))`), or None."""
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _expiry(token: str) -> float | None:
    """The `exp` of a token `auth.verify_token` has just accepted."""
    claims = jwt.decode(token, options={"verify_signature": False})
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) else None
