"""Notifications across processes (SPEC §5): workers publish each event on
`conversation:<id>`; every `serve` copy pattern-subscribes to `conversation:*` and hands what
arrives to its listeners (the hub), which fan it out to their own sockets.

Order per job: a worker publishes through the shared AutoPipeline, one connection in publish
order, and Redis delivers a connection's messages in that order. The subscription reconnects
and subscribes again for ever, with capped backoff, whenever Redis goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis import asyncio as aioredis

from ..notify import Notifier, channel_for, encode
from .connect import Backoff, describe
from .pipeline import AutoPipeline

log = logging.getLogger(__name__)

PATTERN = channel_for("*")
PREFIX = channel_for("")


class RedisNotifier(Notifier):
    def __init__(
        self,
        pipeline: AutoPipeline,
        subscriber: Callable[[], aioredis.Redis] | None = None,
    ):
        """`subscriber` builds the client for the subscription; None: publish only (a worker
        process has no sockets to feed)."""
        super().__init__()
        self._pipeline = pipeline
        self._subscriber = subscriber
        self._task: asyncio.Task | None = None
        self.subscribed = asyncio.Event()  # set while the subscription is live

    async def start(self) -> None:
        if self._subscriber is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="notify")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def publish(self, conversation_id: str, event: dict) -> None:
        """Queue the event on the pipeline (sent with this turn's other commands, resent when
        Redis comes back) and return at once."""
        self._pipeline.fire("PUBLISH", channel_for(conversation_id), encode(event))

    async def _listen(self) -> None:
        backoff = Backoff()
        lost = False
        client = self._subscriber()
        try:
            while True:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.psubscribe(PATTERN)
                    self.subscribed.set()
                    if lost:
                        log.info("notifications: subscribed to %s again", PATTERN)
                    lost = False
                    backoff.reset()
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message["type"] == "pmessage":
                            self._deliver_message(message)
                except Exception as error:  # whatever broke it, subscribe again
                    self.subscribed.clear()
                    if not lost:
                        log.warning("notifications: subscription lost (%s)", describe(error))
                    lost = True
                    await asyncio.sleep(backoff.next())
                finally:
                    self.subscribed.clear()
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    def _deliver_message(self, message: dict) -> None:
        channel = message["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode()
        data = message["data"]
        if isinstance(data, bytes):
            data = data.decode()
        self._deliver(channel[len(PREFIX) :], data)
