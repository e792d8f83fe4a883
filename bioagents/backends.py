"""The one place that picks the implementations of a mode (SPEC §1): the job queue, the
notifier and the rate limiter. Everything else talks to the interfaces."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from .agents.llm import LLM
from .config import Settings
from .db import Database
from .jobs.base import JobQueue
from .jobs.handler import AgentJobHandler
from .jobs.inprocess import InProcessJobQueue
from .jobs.spec import QueueSpec
from .notify import LocalNotifier, Notifier
from .ratelimit import MemoryRateLimiter, RateLimiter


@dataclasses.dataclass
class Backend:
    jobs: JobQueue
    notifier: Notifier
    limiter: RateLimiter
    # Stops taking jobs and waits up to `grace` seconds for active ones (SPEC §6 graceful stop).
    drain: Callable[[float], Awaitable[None]]
    close: Callable[[], Awaitable[None]]
    queue_mode: bool = False


async def open_backend(
    settings: Settings,
    specs: dict[str, QueueSpec],
    db: Database,
    llm: LLM,
    *,
    run_workers: bool,
) -> Backend:
    """Open the mode's backend. In queue mode `run_workers` also runs SAQ workers in this
    process (`serve --with-worker`); in-process mode always runs its jobs here."""
    if settings.use_job_queue:
        from .queue_mode import open_queue_backend

        return await open_queue_backend(settings, specs, db, llm, run_workers=run_workers)

    notifier = LocalNotifier()
    handler = AgentJobHandler(db, notifier, llm, specs)
    jobs = InProcessJobQueue(specs, handler)
    limiter = MemoryRateLimiter()
    await jobs.start()

    async def close() -> None:
        await jobs.close()
        await notifier.close()

    return Backend(jobs, notifier, limiter, drain=jobs.drain, close=close)
