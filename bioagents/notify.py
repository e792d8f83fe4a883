"""Notifications (SPEC §5): publishing them, keeping them for replay, and following the
conversations a `serve` copy's sockets watch.

Every kept notification gets an id `<ms>-<n>`, increasing within its conversation, and is kept
per conversation for `NOTIFY_REPLAY_SECONDS` / `NOTIFY_REPLAY_MAX` so a client can ask for what
it missed (`since`). Answer deltas (§10) are neither kept nor numbered.

`LocalNotifier` (in-process mode) keeps the log in memory and hands notifications to the hub as
they are published. The Redis implementation (`redis_notify.RedisNotifier`) keeps it in Redis,
shared by every `serve` copy, and receives only the conversations its sockets follow.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
import re
import time
from typing import Protocol

from . import events
from .config import Settings

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[0-9]{1,19}-[0-9]{1,19}")  # fits a Redis stream id


def id_order(notification_id: str | None) -> tuple[int, int]:
    """Sort key of a notification id (`<ms>-<n>`); None sorts before every id."""
    if notification_id is None:
        return (0, 0)
    ms, _, n = notification_id.partition("-")
    return (int(ms), int(n))


def is_notification_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


@dataclasses.dataclass(frozen=True)
class Retention:
    """How much of each conversation's notifications is kept for replay."""

    seconds: float = 3600.0
    count: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(settings.notify_replay_seconds, settings.notify_replay_max)


@dataclasses.dataclass(frozen=True)
class Kept:
    """One kept notification: its id and its JSON text (which carries the id too)."""

    id: str
    payload: bytes


@dataclasses.dataclass
class Replay:
    """What a `since` cursor gets: the kept notifications after it, oldest first, or
    `found=False` when the cursor is older than what is kept or unknown (the client must
    re-fetch over HTTP: `resync`)."""

    found: bool
    last_id: str | None  # the newest kept id, or None when nothing is kept
    notifications: list[Kept] = dataclasses.field(default_factory=list)


class Listener(Protocol):
    """What a notifier feeds: the hub."""

    def deliver(self, conversation_id: str, notification_id: str | None, payload: bytes) -> None:
        """A notification (`notification_id` None: an answer delta) of a followed conversation,
        in publish order and never twice."""

    def resync(self, conversation_id: str) -> None:
        """Notifications of a followed conversation may have been missed and cannot be
        replayed (Redis lost them): its sockets must re-fetch over HTTP."""


class Notifier(abc.ABC):
    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._listener: Listener | None = None

    def listen(self, listener: Listener) -> None:
        """Feed the notifications of followed conversations to `listener` (one per process)."""
        self._listener = listener

    def _deliver(self, conversation_id: str, notification_id: str | None, payload: bytes) -> None:
        if self._listener is None:
            return
        try:
            self._listener.deliver(conversation_id, notification_id, payload)
        except Exception:  # a broken listener must not stop the job that published
            log.exception("notification listener failed")

    def _resync(self, conversation_id: str) -> None:
        if self._listener is not None:
            self._listener.resync(conversation_id)

    async def start(self) -> None:
        """Open connections and subscriptions."""

    async def close(self) -> None:
        """Close them."""

    @abc.abstractmethod
    async def publish(self, event: dict) -> None:
        """Keep `event` (built by `events`) in its conversation's log under a new id and send it
        to every copy that follows the conversation, in publish order. Returns once it is
        queued: a notification published while Redis is away is sent when it returns."""

    @abc.abstractmethod
    def publish_delta(self, event: dict) -> None:
        """Send an answer delta to the followers of its conversation; not kept, no id."""

    @abc.abstractmethod
    async def follow(self, conversation_id: str) -> str | None:
        """Deliver the conversation's notifications to the listener from now on (the hub calls
        this for every subscription); returns the newest id delivered or kept, the cursor after
        which live delivery goes on (None when nothing is kept, or when the backend cannot
        say now: then a `resync` follows once it can)."""

    @abc.abstractmethod
    def unfollow(self, conversation_id: str) -> None:
        """Stop delivering the conversation (its last local subscriber left)."""

    @abc.abstractmethod
    async def replay(self, conversation_id: str, since: str) -> Replay:
        """The kept notifications after `since`. Raises QueueUnavailable when the log cannot
        be read."""


class LocalNotifier(Notifier):
    """In-process mode: the log lives in memory (a restart forgets it, so every cursor from
    before is answered `resync`), and notifications reach the hub as they are published."""

    SWEEP_EVERY = 60.0  # seconds between sweeps of conversations whose notifications expired

    def __init__(self, retention: Retention | None = None):
        super().__init__(retention)
        self._logs: dict[str, collections.deque[tuple[float, Kept]]] = {}
        self._last_ms = 0
        self._sequence = 0
        self._swept_at = time.monotonic()

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        if ms > self._last_ms:
            self._last_ms, self._sequence = ms, 0
        else:  # same millisecond, or the clock stepped back: stay increasing
            self._sequence += 1
        return f"{self._last_ms}-{self._sequence}"

    async def publish(self, event: dict) -> None:
        conversation_id = event["conversationId"]
        notification_id = self._next_id()
        payload = events.encode({**event, "id": notification_id})
        entries = self._logs.get(conversation_id)
        if entries is None:
            entries = self._logs[conversation_id] = collections.deque(maxlen=self.retention.count)
        now = time.monotonic()
        entries.append((now, Kept(notification_id, payload)))
        self._expire(entries, now)
        if now - self._swept_at > self.SWEEP_EVERY:
            self._sweep(now)
        self._deliver(conversation_id, notification_id, payload)

    def publish_delta(self, event: dict) -> None:
        self._deliver(event["conversationId"], None, events.encode(event))

    async def follow(self, conversation_id: str) -> str | None:
        return self._newest(conversation_id)

    def unfollow(self, conversation_id: str) -> None:
        return None

    async def replay(self, conversation_id: str, since: str) -> Replay:
        entries = self._logs.get(conversation_id)
        if entries:
            self._expire(entries, time.monotonic())
        kept = [entry for _, entry in entries or ()]
        newest = kept[-1].id if kept else None
        for index in range(len(kept) - 1, -1, -1):
            if kept[index].id == since:
                return Replay(True, newest, kept[index + 1 :])
        return Replay(False, newest)

    def _newest(self, conversation_id: str) -> str | None:
        entries = self._logs.get(conversation_id)
        if entries:
            self._expire(entries, time.monotonic())
        return entries[-1][1].id if entries else None

    def _expire(self, entries: collections.deque, now: float) -> None:
        horizon = now - self.retention.seconds
        while entries and entries[0][0] < horizon:
            entries.popleft()

    def _sweep(self, now: float) -> None:
        """Forget conversations whose notifications have all expired."""
        self._swept_at = now
        for conversation_id in list(self._logs):
            entries = self._logs[conversation_id]
            self._expire(entries, now)
            if not entries:
                del self._logs[conversation_id]
