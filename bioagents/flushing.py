"""Counts kept in a process and sent to Redis every few seconds: the job history and the
per-process metrics counters. One loop per store: it flushes every `interval` seconds, warns
once per outage (what was counted waits for the next flush), and flushes a last time on close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis import exceptions as redis_errors

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis_errors.RedisError, OSError)


class PeriodicFlush:
    def __init__(self, flush: Callable[[], Awaitable[None]], interval: float, what: str):
        """`flush` sends what accumulated and raises redis-py's errors (keeping it pending);
        `what` names the store in the warning."""
        self.flush = flush
        self.interval = interval
        self.what = what
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.what)

    async def close(self) -> None:
        """Stop the loop, then send what is left (a Redis that is away keeps it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(*REDIS_ERRORS):
            await self.flush()

    async def _loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except REDIS_ERRORS as error:
                if not failing:
                    log.warning("%s not written to Redis, will retry: %s", self.what, error)
                failing = True
            else:
                failing = False
