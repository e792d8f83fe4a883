"""The Redis-side objects of one process, and the SAQ workers it may run.

`open_queue_services` opens, over one Redis client and one AutoPipeline (one connection, so a
job's state writes and its notifications reach Redis in the order they were made): a
`BioagentsQueue` per queue and the JobQueue interface over them, the notifier and the rate
limiter. `running_workers` runs SAQ workers for some of those queues in this process (the
`worker` command, `serve --with-worker`); `run_worker_process` is the `worker` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import orjson

from ..agents.llm import LLM, build_llm
from ..config import Settings
from ..db import Database
from ..history import RedisHistory
from ..jobs.base import JobHandler
from ..jobs.handler import AgentJobHandler
from ..jobs.spec import QueueSpec, queue_specs
from ..notify import Retention
from .connect import connect
from .job_queue import SaqJobQueue
from .notify import RedisNotifier
from .pipeline import AutoPipeline
from .queue import BioagentsQueue
from .ratelimit import RedisRateLimiter
from .worker import Worker

log = logging.getLogger(__name__)


def dumps(value: object) -> str:
    return orjson.dumps(value).decode()


class QueueServices:
    def __init__(self, settings: Settings, specs: dict[str, QueueSpec], *, subscribe: bool):
        """`subscribe`: also receive notifications (a `serve` copy); a worker only publishes."""
        url = settings.redis_url
        self.settings = settings
        self.redis = connect(url, "general")
        self.pipeline = AutoPipeline(connect(url, "pipeline"))
        self.queues = {
            name: BioagentsQueue(
                self.redis,
                name=name,
                dump=dumps,
                load=orjson.loads,
                spec=spec,
                pipeline=self.pipeline,
            )
            for name, spec in specs.items()
        }
        self.history = RedisHistory(self.redis)
        self.jobs = SaqJobQueue(
            self.queues, self.pipeline, stalled_interval=settings.stalled_interval
        )
        self.jobs.history = self.history
        self.notifier = RedisNotifier(
            self.pipeline,
            (lambda: connect(url, "pubsub")) if subscribe else None,
            retention=Retention.from_settings(settings),
        )
        self.limiter = RedisRateLimiter(self.pipeline)

    async def close(self) -> None:
        await self.history.close()
        await self.notifier.close()
        await self.limiter.close()
        for queue in self.queues.values():
            with contextlib.suppress(Exception):
                await queue.disconnect()  # closes the shared client too
        await self.pipeline.close()

    @contextlib.asynccontextmanager
    async def running_workers(
        self, handler: JobHandler, queues: list[str]
    ) -> AsyncIterator[WorkerGroup]:
        """SAQ workers for `queues` in this process until the block ends (then stopped with no
        grace, unless drained before)."""
        group = WorkerGroup(
            [
                Worker(
                    self.queues[name],
                    handler,
                    self.history,
                    stalled_interval=self.settings.stalled_interval,
                    shutdown_grace=self.settings.shutdown_grace_seconds,
                )
                for name in queues
            ]
        )
        group.start()
        try:
            yield group
        finally:
            await group.drain(0.0)


@contextlib.asynccontextmanager
async def open_queue_services(
    settings: Settings, specs: dict[str, QueueSpec], *, subscribe: bool
) -> AsyncIterator[QueueServices]:
    """The services, open until the block ends. Returns at once even when Redis is away:
    everything connects (again) by itself."""
    services = QueueServices(settings, specs, subscribe=subscribe)
    try:
        await services.history.start()
        await services.notifier.start()
        yield services
    finally:
        await services.close()


class WorkerGroup:
    """The SAQ workers of one process (one per queue), started and stopped together."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(worker.start(), name=f"worker:{worker.queue.name}")
            for worker in self.workers
        ]

    async def ready(self) -> None:
        """Wait until every worker has stored its first heartbeat."""
        await asyncio.gather(*(worker.ready.wait() for worker in self.workers))

    async def drain(self, grace: float) -> None:
        """Graceful stop (SPEC §6): take no more jobs, give active ones `grace` seconds, put the
        rest back without spending an attempt."""
        for worker in self.workers:
            worker.grace = grace
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []


async def run_worker_process(settings: Settings, queues: list[str]) -> int:
    """The `worker` command: SAQ workers for `queues` until SIGTERM or SIGINT, then a graceful
    stop (SPEC §6). Returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    specs = queue_specs(settings)
    try:
        async with contextlib.AsyncExitStack() as stack:
            db = Database(settings.database_url)
            stack.callback(db.close)
            await db.run(db.migrate)
            llm: LLM = build_llm(settings)
            await llm.start()
            stack.push_async_callback(llm.close)
            services = await stack.enter_async_context(
                open_queue_services(settings, specs, subscribe=False)
            )
            handler = AgentJobHandler(db, services.notifier, llm, specs)
            workers = await stack.enter_async_context(services.running_workers(handler, queues))
            await stop.wait()
            log.info("worker: stopping (grace %.1f s)", settings.shutdown_grace_seconds)
            await workers.drain(settings.shutdown_grace_seconds)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0
