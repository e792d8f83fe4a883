"""Typed application state (aiohttp `web.AppKey`): what `app.py` and `backends.py` open and
handlers use. The types are for the type checker; importing them here at run time would tie
every module that reads a key to the hub, the database and the job system."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .agents.llm import LLM
    from .config import Settings
    from .db import Database
    from .hub import Hub
    from .jobs.base import JobQueue, JobRunner
    from .notify import Notifier
    from .ratelimit import RateLimiter

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DB: web.AppKey[Database] = web.AppKey("db")
LLM_CLIENT: web.AppKey[LLM] = web.AppKey("llm")
JOBS: web.AppKey[JobQueue] = web.AppKey("jobs")
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
RUNNER: web.AppKey[JobRunner] = web.AppKey("job_runner")  # set when this process runs jobs
HUB: web.AppKey[Hub] = web.AppKey("hub")
RUN_WORKERS: web.AppKey[bool] = web.AppKey("run_workers")  # queue mode: also run SAQ workers
