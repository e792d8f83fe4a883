"""The aiohttp application: wires settings, database, LLM client, job system, hub, API and
board together, each resource opened and closed by its own cleanup context."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from . import admin, api, metrics, security
from .agents.llm import build_llm
from .backends import job_system
from .config import Settings
from .db import Database
from .errors import json_errors
from .hub import Hub
from .keys import DB, HUB, LLM_CLIENT, NOTIFIER, RUN_WORKERS, RUNNER, SETTINGS
from .resources import resource_dir

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, run_workers: bool | None = None) -> web.Application:
    """The application. In queue mode `run_workers` (default: WORKERS_IN_API) also runs the
    SAQ workers in this process, as `serve --with-worker` does."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[metrics.count_requests, json_errors],
    )
    app[SETTINGS] = settings
    app[RUN_WORKERS] = settings.workers_in_api if run_workers is None else run_workers
    security.setup(app)
    app.cleanup_ctx.extend([_database, _llm, job_system, _hub, _ready])
    app.on_shutdown.append(_drain_jobs)  # listening has stopped; sockets stay open meanwhile
    app.on_shutdown.append(_close_sockets)
    api.setup_routes(app)
    hub = app[HUB] = Hub(settings)
    app.router.add_get("/api/ws", hub.handle)
    admin.setup(app)
    metrics.setup(app)
    app.router.add_static("/static", resource_dir("static"), name="static")
    app.router.add_get("/", _home)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    db = Database(app[SETTINGS].database_url)
    try:
        await db.run(db.migrate)
        app[DB] = db
        yield
    finally:
        db.close()


async def _llm(app: web.Application) -> AsyncIterator[None]:
    llm = build_llm(app[SETTINGS])
    await llm.start()
    try:
        app[LLM_CLIENT] = llm
        yield
    finally:
        await llm.close()


async def _hub(app: web.Application) -> AsyncIterator[None]:
    """The hub (made with the app, so its route exists) gets the database and the notifier."""
    app[HUB].attach(app[DB], app[NOTIFIER])
    yield


async def _ready(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    log.info(
        "bioagents ready: %s mode, database %s",
        "queue" if settings.use_job_queue else "in-process",
        settings.database_url.split("@")[-1],
    )
    yield


async def _drain_jobs(app: web.Application) -> None:
    """Graceful stop (SPEC §6): take no more jobs, give active ones the grace period; their
    notifications still reach the sockets, which close after."""
    if RUNNER in app:
        await app[RUNNER].drain(app[SETTINGS].shutdown_grace_seconds)


async def _close_sockets(app: web.Application) -> None:
    if HUB in app:
        await app[HUB].close()


async def _home(request: web.Request) -> web.Response:
    raise web.HTTPFound("/admin/queues")
