"""Typed application state (aiohttp `web.AppKey`): what `app.py` opens and handlers use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    pass

SETTINGS = web.AppKey("settings", "Settings")
DB = web.AppKey("db", "Database")
BACKEND = web.AppKey("backend", "Backend")
JOBS = web.AppKey("jobs", "JobQueue")
HUB = web.AppKey("hub", "Hub")
LLM_CLIENT = web.AppKey("llm", "LLM")
