"""Typed application state (aiohttp `web.AppKey`): what `app.py` and `backends.py` open and
handlers use."""

from __future__ import annotations

from aiohttp import web

from .agents.llm import LLM
from .config import Settings
from .db import Database
from .hub import Hub
from .jobs.base import JobQueue, JobRunner
from .notify import Notifier
from .ratelimit import RateLimiter

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", Database)
LLM_CLIENT = web.AppKey("llm", LLM)
JOBS = web.AppKey("jobs", JobQueue)
NOTIFIER = web.AppKey("notifier", Notifier)
LIMITER = web.AppKey("limiter", RateLimiter)
RUNNER = web.AppKey("job_runner", JobRunner)  # set when this process runs jobs
HUB = web.AppKey("hub", Hub)
RUN_WORKERS = web.AppKey("run_workers", bool)  # queue mode: also run SAQ workers here
