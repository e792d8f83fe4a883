"""Rendering the admin board: the jinja2 environment (autoescape on), its filters, and the
live fragments htmx polls, each answered with an ETag so an unchanged one costs a 304."""

from __future__ import annotations

import datetime as dt
import hashlib

import jinja2
import orjson
from aiohttp import web
from markupsafe import Markup

from .jobs.base import JobInfo, JobState
from .resources import resource_dir

TEMPLATES = resource_dir("templates")
STATIC = resource_dir("static")
POLL_SECONDS = 2  # live fragments refresh at least this often (SPEC §7: within 5 s)
REFRESH_EVENT = "board-refresh"  # fired by actions (HX-Trigger) and when the tab is shown again

# htmx never evaluates code (CSP without 'unsafe-eval'), injects no <style> (CSP without
# 'unsafe-inline'), and keeps the old fragment on 304 instead of swapping in an empty body.
HTMX_CONFIG = {
    "allowEval": False,
    "allowScriptTags": False,
    "includeIndicatorStyles": False,
    "selfRequestsOnly": True,
    "responseHandling": [
        {"code": "204", "swap": False},
        {"code": "304", "swap": False},
        {"code": "[23]..", "swap": True},
        {"code": "[45]..", "swap": False, "error": True},
    ],
}


def duration(seconds: float | None) -> str:
    """A precise duration: 850 ms, 12.3 s, 4 min 5 s, 2 h 3 min."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{int(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def clock(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def pretty_json(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def omit(mapping: dict, *keys: str) -> dict:
    return {key: value for key, value in mapping.items() if key not in keys}


def short_id(job_id: str) -> str:
    return job_id[:8] if len(job_id) > 12 else job_id


def state_since(job: JobInfo) -> float:
    """When the job entered its current state (what a list's age column counts from)."""
    if job.state in (JobState.COMPLETED, JobState.FAILED) and job.finished_at:
        return job.finished_at
    if job.state is JobState.ACTIVE and job.started_at:
        return job.started_at
    if job.state is JobState.DELAYED and job.errors:
        return job.errors[-1].at
    return job.queued_at


def _asset_versions() -> dict[str, str]:
    """A content hash per static file, appended to its URL so browsers never run stale code."""
    versions = {}
    for path in STATIC.rglob("*"):
        if path.is_file():
            digest = hashlib.blake2b(path.read_bytes(), digest_size=6).hexdigest()
            versions[path.relative_to(STATIC).as_posix()] = digest
    return versions


def build_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    versions = _asset_versions()

    def static(name: str) -> str:
        version = versions.get(name)
        return f"/static/{name}?v={version}" if version else f"/static/{name}"

    env.filters.update(
        duration=duration,
        clock=clock,
        iso=iso,
        short_id=short_id,
        pretty=pretty_json,
        omit=omit,
    )
    env.globals.update(
        static=static,
        state_since=state_since,
        htmx_config=orjson.dumps(HTMX_CONFIG).decode(),
        poll_seconds=POLL_SECONDS,
        refresh_event=REFRESH_EVENT,
    )
    return env


ENVIRONMENT = web.AppKey("board_templates", jinja2.Environment)


def render(request: web.Request, template: str, **context) -> str:
    return request.app[ENVIRONMENT].get_template(template).render(**context)


def _wrapped(request: web.Request, template: str, element_id: str, url: str, context: dict):
    inner = render(request, template, **context)
    polling = context.get("polling", True)
    etag = hashlib.blake2b(f"{url}\x00{inner}".encode(), digest_size=12).hexdigest()
    etag = f'"{etag}"'
    wrapper = request.app[ENVIRONMENT].get_template("_live.html")
    html = wrapper.render(
        element_id=element_id, url=url, etag=etag, inner=Markup(inner), polling=polling
    )
    return etag, html


def live(request: web.Request, template: str, element_id: str, url: str, **context) -> Markup:
    """A polled fragment for a page: the rendered partial wrapped in an element that htmx
    refreshes from `url` every POLL_SECONDS (and on REFRESH_EVENT), sending the partial's ETag
    so that an unchanged one is answered 304."""
    return Markup(_wrapped(request, template, element_id, url, context)[1])


def fragment_response(
    request: web.Request, template: str, element_id: str, url: str, **context
) -> web.Response:
    """Answer a poll of `live` from `url` (canonical, as the page embedded it): 304 while the
    client's ETag matches, else the new fragment."""
    etag, html = _wrapped(request, template, element_id, url, context)
    headers = {"ETag": etag, "Cache-Control": "no-cache, private"}
    sent = request.headers.get("If-None-Match", "")
    if etag in (tag.strip() for tag in sent.split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(text=html, content_type="text/html", headers=headers)


def page_response(request: web.Request, template: str, **context) -> web.Response:
    body = render(request, template, **context)
    return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})
