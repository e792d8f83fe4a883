"""Notifications (SPEC §5): publishers and the listeners that receive them.

`LocalNotifier` hands events to listeners in this process (in-process mode). The Redis
implementation (`redis_notify.RedisNotifier`) publishes on `conversation:<id>` and every `serve`
copy listens there. The hub is a listener either way.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable

import orjson

log = logging.getLogger(__name__)

Listener = Callable[[str, str], None]  # (conversation_id, JSON text of the event)


def channel_for(conversation_id: str) -> str:
    return f"conversation:{conversation_id}"


def encode(event: dict) -> str:
    return orjson.dumps(event).decode()


class Notifier(abc.ABC):
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _deliver(self, conversation_id: str, text: str) -> None:
        for listener in self._listeners:
            try:
                listener(conversation_id, text)
            except Exception:  # a broken listener must not stop the others or the job
                log.exception("notification listener failed")

    async def start(self) -> None:
        """Open connections and subscriptions."""

    async def close(self) -> None:
        """Close them."""

    @abc.abstractmethod
    async def publish(self, conversation_id: str, event: dict) -> None:
        """Send `event` to every listener of `conversation_id`, in publish order."""


class LocalNotifier(Notifier):
    async def publish(self, conversation_id: str, event: dict) -> None:
        self._deliver(conversation_id, encode(event))
