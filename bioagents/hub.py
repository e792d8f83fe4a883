"""The WebSocket hub `/api/ws` (SPEC §5): authenticates sockets, keeps their subscriptions and
fans notifications out to them. Each socket has its own outbox so one slow client never delays
a job or another client, and frames reach each client in publish order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import orjson
from aiohttp import WSMsgType, web

from . import auth, metrics, store
from .config import Settings
from .db import Database

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0
HEARTBEAT_SECONDS = 30.0
CLOSE_UNAUTHENTICATED = 4001
MAX_SUBSCRIPTIONS = 200
MAX_OUTBOX = 10_000  # frames queued for one socket before it counts as too slow and is closed
CLOSE_TOO_SLOW = 1008


def _frame(kind: str, **fields) -> str:
    return orjson.dumps({"type": kind, **fields}).decode()


class Client:
    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.user_id: str | None = None
        self.conversations: set[str] = set()
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.writer: asyncio.Task | None = None
        self.too_slow = False

    def send(self, text: str) -> None:
        if self.too_slow:
            return
        if self.outbox.qsize() >= MAX_OUTBOX:
            # A client that reads slower than its conversations publish would hold an
            # unbounded backlog: close it (it reconnects and fetches what it missed).
            self.too_slow = True
            log.warning("closing a WebSocket that fell %d frames behind", MAX_OUTBOX)
            asyncio.get_running_loop().create_task(
                self.ws.close(code=CLOSE_TOO_SLOW, message=b"too slow: notifications dropped")
            )
            return
        self.outbox.put_nowait(text)

    async def write_outbox(self) -> None:
        while (text := await self.outbox.get()) is not None:
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return


class Hub:
    def __init__(self, settings: Settings, db: Database, heartbeat: float | None = None):
        self.settings = settings
        self.db = db
        # Read when the hub is built (like AUTH_TIMEOUT at each socket), not frozen at import.
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        self._subscribers: dict[str, set[Client]] = {}
        self._clients: set[Client] = set()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def deliver(self, conversation_id: str, text: str) -> None:
        """Notifier listener: queue the event for every socket subscribed to the conversation."""
        subscribers = self._subscribers.get(conversation_id, ())
        metrics.notifications_delivered(text, len(subscribers))
        for client in subscribers:
            client.send(text)

    async def close(self) -> None:
        for client in list(self._clients):
            with contextlib.suppress(Exception):
                await client.ws.close(code=1001, message=b"server shutting down")

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat, max_msg_size=self.settings.max_ws_frame_bytes
        )
        await ws.prepare(request)
        client = Client(ws)
        self._clients.add(client)
        client.writer = asyncio.get_running_loop().create_task(client.write_outbox())
        try:
            client.send(_frame("ready"))
            token = request.query.get("token")
            if token is not None:
                if not await self._authenticate(client, {"token": token}):
                    return ws
            elif not await self._wait_for_auth(client):
                return ws
            await self._serve(client)
        finally:
            self._forget(client)
            client.outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.writer, 1.0)
            if not ws.closed:
                await ws.close()
        return ws

    def _forget(self, client: Client) -> None:
        self._clients.discard(client)
        for conversation_id in client.conversations:
            subscribers = self._subscribers.get(conversation_id)
            if subscribers is not None:
                subscribers.discard(client)
                if not subscribers:
                    del self._subscribers[conversation_id]

    async def _reject(self, client: Client, reason: str) -> None:
        client.send(_frame("error", message=reason))
        client.outbox.put_nowait(None)
        with contextlib.suppress(Exception):  # flush the error frame before the close
            await asyncio.wait_for(client.writer, 1.0)
        with contextlib.suppress(Exception):
            await client.ws.close(code=CLOSE_UNAUTHENTICATED, message=b"unauthenticated")

    async def _authenticate(self, client: Client, frame: dict) -> bool:
        try:
            if frame.get("token"):
                if not isinstance(frame["token"], str):
                    raise auth.AuthError("token must be a string")
                user_id = auth.verify_token(self.settings, frame["token"])
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
            await self._reject(client, f"authentication failed: {error}")
            return False
        client.user_id = user_id
        client.send(_frame("authenticated", userId=user_id))
        return True

    async def _wait_for_auth(self, client: Client) -> bool:
        deadline = time.monotonic() + AUTH_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._reject(client, "authentication timed out: no auth frame within 10 s")
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
                client.send(_frame("pong"))
            else:
                client.send(_frame("error", message="authenticate first: send an auth frame"))

    def _parse(self, client: Client, msg) -> dict | None:
        """The frame as a dict, or None after answering an error frame."""
        if msg.type == WSMsgType.BINARY:
            client.send(_frame("error", message="binary frames are not accepted; send JSON text"))
            return None
        if msg.type != WSMsgType.TEXT:
            return None
        try:
            frame = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            client.send(_frame("error", message="frames must be JSON objects"))
            return None
        if not isinstance(frame, dict) or not isinstance(frame.get("action"), str):
            client.send(_frame("error", message="frames must be JSON objects with an action"))
            return None
        return frame

    async def _serve(self, client: Client) -> None:
        async for msg in client.ws:
            frame = self._parse(client, msg)
            if frame is None:
                continue
            action = frame["action"]
            if action == "ping":
                client.send(_frame("pong"))
            elif action == "subscribe":
                await self._subscribe(client, frame.get("conversationId"))
            elif action == "unsubscribe":
                self._unsubscribe(client, frame.get("conversationId"))
            elif action == "auth":
                client.send(_frame("error", message="already authenticated"))
            else:
                client.send(_frame("error", message=f"unknown action {action[:40]!r}"))

    async def _subscribe(self, client: Client, conversation_id) -> None:
        if not _is_uuid(conversation_id):
            client.send(_frame("error", message="subscribe needs a conversationId (a UUID)"))
            return
        try:
            owned = await self.db.run(store.owns_conversation, conversation_id, client.user_id)
        except Exception:
            log.exception("subscription check failed")
            owned = False  # fail closed
        if not owned:
            client.send(
                _frame("error", message="conversation not found", conversationId=conversation_id)
            )
            return
        if conversation_id not in client.conversations:
            if len(client.conversations) >= MAX_SUBSCRIPTIONS:
                client.send(_frame("error", message="too many subscriptions on one socket"))
                return
            client.conversations.add(conversation_id)
            self._subscribers.setdefault(conversation_id, set()).add(client)
        client.send(_frame("subscribed", conversationId=conversation_id))

    def _unsubscribe(self, client: Client, conversation_id) -> None:
        if not isinstance(conversation_id, str) or conversation_id not in client.conversations:
            client.send(_frame("error", message="not subscribed to that conversation"))
            return
        client.conversations.discard(conversation_id)
        subscribers = self._subscribers.get(conversation_id)
        if subscribers is not None:
            subscribers.discard(client)
            if not subscribers:
                del self._subscribers[conversation_id]
        client.send(_frame("unsubscribed", conversationId=conversation_id))


def _is_uuid(value) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
