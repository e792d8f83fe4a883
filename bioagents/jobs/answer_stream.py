"""An answer as it is generated (SPEC §10): `message:delta` frames for the sockets that asked
to stream, and the message's text so far for a client that arrives mid-answer.

Each delta's text is stored in the message row before the delta is published, so a client that
subscribes and then fetches the message never finds a hole between the text it fetched and the
deltas it receives. Deltas are coalesced to at most one per DELTA_INTERVAL per message, which
also bounds the writes to one per delta, not one per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from .. import events, store
from ..db import Database
from ..notify import Notifier
from .base import Attempt

DELTA_INTERVAL = 0.05  # seconds: at most one delta (and one write) per message this often


class AnswerStream:
    """The `agents.reply.Reply` of one attempt."""

    def __init__(
        self,
        attempt: Attempt,
        db: Database,
        notifier: Notifier,
        interval: float = DELTA_INTERVAL,
    ):
        self.attempt = attempt
        self.db = db
        self.notifier = notifier
        self.interval = interval
        self._message_id = attempt.data["messageId"]
        self._pieces: list[str] = []
        self._length = 0  # characters written
        self._sent = 0  # characters stored and published
        self._written = asyncio.Event()
        self._ending = False
        self._flusher: asyncio.Task | None = None

    async def begin(self) -> None:
        await self.close()
        self._pieces, self._length, self._sent, self._ending = [], 0, 0, False
        # The text of an earlier attempt (failed, stalled or cancelled) is not this one's.
        await self.db.run(store.restart_answer, self._message_id)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    def write(self, text: str) -> None:
        if text:
            self._pieces.append(text)
            self._length += len(text)
            self._written.set()

    async def end(self) -> None:
        self._ending = True
        self._written.set()
        if self._flusher is not None:
            await self._flusher
            self._flusher = None

    async def close(self) -> None:
        """Stop sending (the attempt stopped before its answer was whole)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = -math.inf
        while True:
            await self._written.wait()
            self._written.clear()
            wait = last + self.interval - loop.time()
            if wait > 0 and not self._ending:
                await asyncio.sleep(wait)  # the pieces written meanwhile go in one delta
            await self._flush()
            last = loop.time()
            if self._ending and self._sent == self._length:
                return

    async def _flush(self) -> None:
        text = "".join(self._pieces)
        self._pieces = [text]
        if len(text) == self._sent:
            return
        await self.db.run(store.save_answer_so_far, self._message_id, text)
        self.notifier.publish_delta(events.delta(self.attempt, self._sent, text[self._sent :]))
        self._sent = len(text)
