"""The aiohttp application: wires settings, database, backend, hub, API and board together."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from . import admin, api
from .agents.llm import build_llm
from .backends import open_backend
from .config import Settings
from .db import Database
from .errors import json_errors
from .hub import Hub
from .jobs.spec import queue_specs
from .keys import BACKEND, DB, HUB, JOBS, LLM_CLIENT, SETTINGS
from .notify import Retention
from .recovery import requeue_pending

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
RUN_WORKERS = web.AppKey("run_workers", bool)


def create_app(settings: Settings, *, run_workers: bool | None = None) -> web.Application:
    """The application. In queue mode `run_workers` (default: WORKERS_IN_API) also runs the
    SAQ workers in this process, as `serve --with-worker` does."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[json_errors])
    app[SETTINGS] = settings
    app[RUN_WORKERS] = settings.workers_in_api if run_workers is None else run_workers
    app.cleanup_ctx.append(_services)
    app.on_shutdown.append(_drain_jobs)  # listening has stopped; sockets stay open meanwhile
    app.on_shutdown.append(_close_sockets)
    api.setup_routes(app)
    hub = app[HUB] = Hub(settings)
    app.router.add_get("/api/ws", hub.handle)
    admin.setup(app)
    app.router.add_static("/static", ROOT / "static", name="static")
    app.router.add_get("/", _home)
    return app


async def _services(app: web.Application):
    settings = app[SETTINGS]
    db = Database(settings.database_url)
    await db.run(db.migrate)
    llm = build_llm(settings)
    await llm.start()
    backend = await open_backend(
        settings, queue_specs(settings), db, llm, run_workers=app[RUN_WORKERS]
    )
    # The backend builds its notifier without the replay settings (queue mode's rewrite will
    # hand them over at construction); this process's notifier keeps what they say.
    backend.notifier.retention = Retention.from_settings(settings)
    app[HUB].attach(db, backend.notifier)
    app[DB], app[LLM_CLIENT], app[BACKEND], app[JOBS] = db, llm, backend, backend.jobs
    await requeue_pending(db, backend.jobs)
    log.info(
        "bioagents ready: %s mode, database %s",
        "queue" if settings.use_job_queue else "in-process",
        settings.database_url.split("@")[-1],
    )
    yield
    await backend.close()
    await llm.close()
    db.close()


async def _drain_jobs(app: web.Application) -> None:
    """Graceful stop (SPEC §6): take no more jobs, give active ones the grace period; their
    notifications still reach the sockets, which close after."""
    if BACKEND in app:
        await app[BACKEND].drain(app[SETTINGS].shutdown_grace_seconds)


async def _close_sockets(app: web.Application) -> None:
    if HUB in app:
        await app[HUB].close()


async def _home(request: web.Request) -> web.Response:
    raise web.HTTPFound("/admin/queues")
