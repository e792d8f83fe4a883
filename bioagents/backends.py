"""The one place that picks the implementations of a mode (SPEC §1): the job queue, the
notifier, the rate limiter, the metrics counters and what runs jobs in this process.
Everything else talks to the interfaces, found under the app's typed keys."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from . import metrics
from .jobs.handler import AgentJobHandler
from .jobs.inprocess import InProcessJobQueue
from .jobs.spec import queue_specs
from .keys import DB, HUB, JOBS, LIMITER, LLM_CLIENT, NOTIFIER, RUN_WORKERS, RUNNER, SETTINGS
from .notify import LocalNotifier, Retention
from .ratelimit import MemoryRateLimiter
from .recovery import requeue_pending


async def job_system(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the mode's job queue, notifier, rate limiter and job runner. Whatever it
    opened is closed again if a later step fails. At start, PENDING messages are reconciled
    with the queue (`recovery.py`)."""
    settings, db, llm = app[SETTINGS], app[DB], app[LLM_CLIENT]
    specs = queue_specs(settings)
    async with contextlib.AsyncExitStack() as stack:
        if settings.use_job_queue:
            from .queue_mode.services import open_queue_services

            services = await stack.enter_async_context(
                open_queue_services(settings, specs, subscribe=True)
            )
            app[JOBS], app[NOTIFIER], app[LIMITER] = (
                services.jobs,
                services.notifier,
                services.limiter,
            )
            if app[RUN_WORKERS]:
                handler = AgentJobHandler(db, services.notifier, llm, specs)
                app[RUNNER] = await stack.enter_async_context(
                    services.running_workers(handler, list(specs))
                )
        else:
            notifier = LocalNotifier(Retention.from_settings(settings))
            jobs = InProcessJobQueue(specs, AgentJobHandler(db, notifier, llm, specs))
            await jobs.start()
            stack.push_async_callback(jobs.close)
            app[JOBS], app[NOTIFIER], app[LIMITER], app[RUNNER] = (
                jobs,
                notifier,
                MemoryRateLimiter(),
                jobs,
            )
        websockets = lambda: app[HUB].client_count if HUB in app else 0  # noqa: E731
        counters = (
            metrics.RedisCounters(services.redis, websockets)
            if settings.use_job_queue
            else metrics.LocalCounters(websockets)
        )
        await counters.start()
        stack.push_async_callback(counters.close)
        app[metrics.COUNTERS] = counters
        await requeue_pending(db, app[JOBS])
        yield
