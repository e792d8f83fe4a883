"""The WebSocket hub `/api/ws` (SPEC §5, §10, §12): authenticates sockets, keeps their
subscriptions, replays what a reconnecting client missed, and fans notifications out.

A notification can go to thousands of sockets: its WebSocket frame is built once and written
straight to each socket's transport, in the order frames are produced, so a socket's frames
never overtake each other and no task or queue is kept per socket. A socket that does not read
and lets more than MAX_BACKLOG_BYTES pile up is closed (1008): it reconnects and replays.

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

import jwt
import orjson
from aiohttp import WSMsgType, web

from . import auth, events, store
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


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (RFC 6455 §5.2) carrying `payload`. It is sent
    uncompressed even where permessage-deflate was offered, which RFC 7692 allows."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
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
    __slots__ = ("closing", "expiry", "subscriptions", "transport", "user_id", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None):
        self.ws = ws
        self.transport = transport
        self.user_id: str | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self.closing: asyncio.Task | None = None  # the close the hub started, awaited at the end
        self.expiry: asyncio.TimerHandle | None = None  # closes a JWT socket when it expires

    def write(self, frame: bytes) -> None:
        transport = self.transport
        if self.closing is not None or transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_BACKLOG_BYTES:
            log.warning("closing a WebSocket that fell %d bytes behind", MAX_BACKLOG_BYTES)
            self.close_soon(CLOSE_POLICY, b"too slow: notifications dropped")
            return
        transport.write(frame)

    def send(self, frame: dict) -> None:
        self.write(text_frame(events.encode(frame)))

    def close_soon(self, code: int, reason: bytes) -> None:
        """Start closing the socket from outside its handler (which awaits the close)."""
        if self.closing is None:
            self.closing = asyncio.get_running_loop().create_task(
                self.ws.close(code=code, message=reason)
            )


class Hub:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        notifier: Notifier,
        heartbeat: float | None = None,
    ):
        self.settings = settings
        self.db = db
        self.notifier = notifier
        # Read when the hub is built (like AUTH_TIMEOUT at each socket), not frozen at import.
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        self._subscriptions: dict[str, dict[Client, Subscription]] = {}
        self._clients: set[Client] = set()
        self._sockets_per_user: dict[str, int] = {}
        notifier.listen(self)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def conversation_count(self) -> int:
        return len(self._subscriptions)

    # --- the notifier's listener ---------------------------------------------------------------

    def deliver(self, conversation_id: str, notification_id: str | None, payload: bytes) -> None:
        subscriptions = self._subscriptions.get(conversation_id)
        if not subscriptions:
            return
        frame = text_frame(payload)
        is_delta = notification_id is None
        for subscription in subscriptions.values():
            if is_delta and not subscription.stream:
                continue
            if subscription.held is not None:
                subscription.held.append((notification_id, frame))
            else:
                subscription.client.write(frame)

    def resync(self, conversation_id: str) -> None:
        subscriptions = self._subscriptions.get(conversation_id)
        if not subscriptions:
            return
        frame = text_frame(
            events.encode(events.control(events.RESYNC, conversationId=conversation_id))
        )
        for subscription in subscriptions.values():
            if subscription.held is not None:
                subscription.held.append((None, frame))
            else:
                subscription.client.write(frame)

    # --- sockets -------------------------------------------------------------------------------

    async def close(self) -> None:
        for client in list(self._clients):
            with contextlib.suppress(Exception):
                await client.ws.close(code=1001, message=b"server shutting down")

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # No compression: frames are small, and a zlib context per socket costs more memory
        # than the rest of the socket.
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat, max_msg_size=self.settings.max_ws_frame_bytes, compress=False
        )
        await ws.prepare(request)
        client = Client(ws, request.transport)
        self._clients.add(client)
        try:
            client.send(events.control("ready"))
            token = request.query.get("token")
            if token is not None:
                authenticated = await self._authenticate(client, {"token": token})
            else:
                authenticated = await self._wait_for_auth(client)
            if authenticated:
                await self._serve(client)
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
        if client.expiry is not None:
            client.expiry.cancel()
        for conversation_id in client.subscriptions:
            self._drop_subscription(client, conversation_id)
        client.subscriptions = {}
        if client.user_id is not None:
            remaining = self._sockets_per_user.get(client.user_id, 1) - 1
            if remaining > 0:
                self._sockets_per_user[client.user_id] = remaining
            else:
                self._sockets_per_user.pop(client.user_id, None)
            client.user_id = None

    def _drop_subscription(self, client: Client, conversation_id: str) -> None:
        subscriptions = self._subscriptions.get(conversation_id)
        if subscriptions is None:
            return
        subscriptions.pop(client, None)
        if not subscriptions:
            del self._subscriptions[conversation_id]
            self.notifier.unfollow(conversation_id)

    async def _refuse(self, client: Client, reason: str, code: int, close_reason: bytes) -> None:
        client.send(events.control("error", message=reason))
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
                user_id = auth.check_user_id(frame["userId"])
                if user_id is None:
                    raise auth.AuthError("userId must not be empty")
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
        if expires_at is not None:
            loop = asyncio.get_running_loop()
            client.expiry = loop.call_at(
                loop.time() + max(0.0, expires_at - time.time()), self._expire, client
            )
        client.send(events.control("authenticated", userId=user_id))
        return True

    def _expire(self, client: Client) -> None:
        """The socket's JWT has expired (SPEC §12 sessions)."""
        client.send(events.control("error", message="the token has expired"))
        client.close_soon(CLOSE_UNAUTHENTICATED, b"token expired")

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
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return False
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

    async def _serve(self, client: Client) -> None:
        async for msg in client.ws:
            frame = self._parse(client, msg)
            if frame is None:
                continue
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
        subscription = client.subscriptions.get(conversation_id)
        if subscription is None:
            if len(client.subscriptions) >= MAX_SUBSCRIPTIONS:
                client.send(events.control("error", message="too many subscriptions on one socket"))
                return
            subscription = Subscription(client)
            client.subscriptions[conversation_id] = subscription
            self._subscriptions.setdefault(conversation_id, {})[client] = subscription
        elif subscription.held is not None:
            client.send(events.control("error", message="already subscribing to it"))
            return
        else:
            subscription.held = []
        subscription.stream = stream
        cursor, replay = await self._position(conversation_id, since)
        if client.subscriptions.get(conversation_id) is not subscription:
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
                client.write(text_frame(kept.payload))
                floor = max(floor, id_order(kept.id))
        elif replay is not None:
            client.send(events.control(events.RESYNC, conversationId=conversation_id))
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
        if conversation_id is None or conversation_id not in client.subscriptions:
            client.send(events.control("error", message="not subscribed to that conversation"))
            return
        del client.subscriptions[conversation_id]
        self._drop_subscription(client, conversation_id)
        client.send(events.control("unsubscribed", conversationId=conversation_id))


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
