"""Queue mode (SPEC §1): the Redis backend of `serve`, and the `worker` command.

Both open the same pieces over one Redis: the job queue (`jobs.saq_queue`), notifications
(`redis_notify`), rate limits (`redis_ratelimit`), all sending through one AutoPipeline, and
— in `worker` or `serve --with-worker` — the workers (`jobs.saq_worker`).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from .agents.llm import LLM, build_llm
from .backends import Backend
from .config import Settings
from .db import Database
from .jobs.handler import AgentJobHandler
from .jobs.saq_queue import SaqJobQueue
from .jobs.saq_worker import Worker
from .jobs.spec import QueueSpec, queue_specs
from .redis_client import connect
from .redis_notify import RedisNotifier
from .redis_pipeline import AutoPipeline
from .redis_ratelimit import RedisRateLimiter

log = logging.getLogger(__name__)


class QueueServices:
    """The Redis-side objects of one process, opened and closed together."""

    def __init__(self, settings: Settings, specs: dict[str, QueueSpec], *, subscribe: bool):
        url = settings.redis_url
        self.redis = connect(url, "general")
        self.pipeline = AutoPipeline(connect(url, "pipeline"))
        self.jobs = SaqJobQueue(specs, self.redis, self.pipeline)
        self.notifier = RedisNotifier(
            self.pipeline, (lambda: connect(url, "pubsub")) if subscribe else None
        )
        self.limiter = RedisRateLimiter(self.pipeline)
        self.settings = settings
        self.worker: Worker | None = None

    async def start(self, db: Database | None, llm: LLM | None, queues: list[str] | None) -> None:
        """Start the subscription and, with `queues`, a worker for them. Returns at once even
        when Redis is away: everything connects (again) by itself."""
        await self.notifier.start()
        await self.jobs.start()
        if queues:
            handler = AgentJobHandler(db, self.notifier, llm, self.jobs.specs)
            url = self.settings.redis_url
            self.worker = Worker(
                self.jobs,
                handler,
                queues,
                stalled_interval=self.settings.stalled_interval,
                blocking_client=lambda: connect(url, "blocking"),
            )
            await self.worker.start()

    async def drain(self, grace: float) -> None:
        if self.worker is not None:
            await self.worker.stop(grace)

    async def close(self) -> None:
        await self.drain(0.0)
        await self.jobs.close()
        await self.notifier.close()
        await self.limiter.close()
        await self.pipeline.close()
        await self.redis.aclose()


async def open_queue_backend(
    settings: Settings,
    specs: dict[str, QueueSpec],
    db: Database,
    llm: LLM,
    *,
    run_workers: bool,
) -> Backend:
    """The backend of `serve` in queue mode; `run_workers` also runs workers for every queue
    in this process (`serve --with-worker`)."""
    services = QueueServices(settings, specs, subscribe=True)
    await services.start(db, llm, list(specs) if run_workers else None)
    return Backend(
        services.jobs,
        services.notifier,
        services.limiter,
        drain=services.drain,
        close=services.close,
        queue_mode=True,
    )


async def run_worker_process(settings: Settings, queues: list[str]) -> int:
    """The `worker` command: run workers for `queues` until SIGTERM or SIGINT, then stop
    gracefully (SPEC §6). Returns the exit code."""
    db = Database(settings.database_url)
    await db.run(db.migrate)
    llm = build_llm(settings)
    await llm.start()
    services = QueueServices(settings, queue_specs(settings), subscribe=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await services.start(db, llm, queues)
        await stop.wait()
        log.info("worker: stopping (grace %.1f s)", settings.shutdown_grace_seconds)
        await services.drain(settings.shutdown_grace_seconds)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await services.close()
        await llm.close()
        db.close()
    return 0
