"""The admin board at /admin/queues and its JSON API (SPEC §7).

Handlers translate HTTP to calls of the job-queue interface (and `job_actions` for the
buttons that must also touch the message rows) and back: pages and the fragments htmx polls
are rendered by `board_templates`; who may call them is `board_auth`'s business.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web

from . import board_auth, board_charts, board_templates, forms, job_actions
from .board_templates import fragment_response, live, page_response
from .errors import ApiError
from .jobs.base import STATES, JobFilter, JobInfo, JobQueue, JobState, QueueCounts
from .keys import DB, JOBS, NOTIFIER, SETTINGS
from .responses import json_response

BASE = "/admin/queues"
API = f"{BASE}/api/queues"
PAGE_SIZE = 25
MAX_PAGE = 1_000_000
DEFAULT_STATE = JobState.ACTIVE
MAX_JOB_ID = 200
MAX_SEARCH = 200  # characters kept of `user` and `q`
CLEAN_CHOICES = (  # the board's "older than" menu, in seconds
    (0, "any age"),
    (3600, "older than 1 hour"),
    (86400, "older than 1 day"),
    (7 * 86400, "older than 7 days"),
)


# --- URLs ------------------------------------------------------------------------------------


def _q(value: str) -> str:
    return quote(value, safe="")


def _search_query(match: JobFilter | None) -> list[tuple[str, str]]:
    if not match:
        return []
    return [(k, v) for k, v in (("user", match.user), ("q", match.text)) if v]


def queue_url(
    queue: str, state: str | None = None, page: int | None = None, match: JobFilter | None = None
) -> str:
    query = [(k, v) for k, v in (("status", state), ("page", page)) if v not in (None, 1)]
    query += _search_query(match)
    return f"{BASE}/queue/{_q(queue)}" + (f"?{urlencode(query)}" if query else "")


def job_url(queue: str, job_id: str) -> str:
    return f"{BASE}/queue/{_q(queue)}/{_q(job_id)}"


def action_url(queue: str, *parts: str) -> str:
    return "/".join((API, _q(queue), *(_q(part) for part in parts)))


# --- reading the interface ---------------------------------------------------------------------


@dataclasses.dataclass
class QueueSummary:
    name: str
    counts: QueueCounts
    is_paused: bool
    workers: int
    oldest_waiting_age: float | None
    max_attempts: int
    concurrency: int

    @property
    def no_worker_warning(self) -> bool:
        """Jobs wait and nobody will run them (a paused queue is waiting on purpose)."""
        return self.counts.waiting > 0 and self.workers == 0

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "counts": self.counts.to_json(),
            "isPaused": self.is_paused,
            "workers": self.workers,
        }


async def _summary(jobs: JobQueue, name: str) -> QueueSummary:
    spec = jobs.spec(name)
    counts, paused, workers, oldest = await asyncio.gather(
        jobs.counts(name), jobs.is_paused(name), jobs.workers(name), jobs.oldest_waiting_age(name)
    )
    return QueueSummary(name, counts, paused, workers, oldest, spec.max_attempts, spec.concurrency)


async def _summaries(jobs: JobQueue) -> list[QueueSummary]:
    return list(await asyncio.gather(*(_summary(jobs, name) for name in jobs.specs)))


@dataclasses.dataclass
class JobPage:
    state: JobState
    page: int
    jobs: list[JobInfo]
    total: int  # jobs in the state, or those matching `match`
    match: JobFilter = dataclasses.field(default_factory=JobFilter)

    @property
    def page_count(self) -> int:
        return max(1, math.ceil(self.total / PAGE_SIZE))

    @property
    def first_row(self) -> int:
        return (self.page - 1) * PAGE_SIZE + 1

    def pagination(self) -> dict:
        return {
            "page": self.page,
            "pageSize": PAGE_SIZE,
            "pageCount": self.page_count,
            "total": self.total,
        }


async def _job_page(
    jobs: JobQueue, summary: QueueSummary, state: JobState, page: int, match: JobFilter
) -> JobPage:
    offset = (page - 1) * PAGE_SIZE
    if match:
        found = await jobs.search(summary.name, state, match, offset, PAGE_SIZE)
        return JobPage(state, page, found.jobs, found.total, match)
    listed = await jobs.list(summary.name, state, offset, PAGE_SIZE)
    return JobPage(state, page, listed, getattr(summary.counts, state.value), match)


def job_json(job: JobInfo) -> dict:
    return {**job.to_json(), "waitSeconds": job.wait_seconds, "runSeconds": job.run_seconds}


# --- request parsing ---------------------------------------------------------------------------


def _queue_name(request: web.Request) -> str:
    name = request.match_info["queue"]
    jobs = request.app[JOBS]
    if name not in jobs.specs:
        raise ApiError(
            404, f"there is no queue named {name[:60]!r}; the queues are {', '.join(jobs.specs)}"
        )
    return name


def _state(raw: str | None, field: str = "status") -> JobState:
    try:
        return JobState(raw)
    except ValueError:
        names = ", ".join(state.value for state in STATES)
        raise ApiError(400, f"{field} must be one of {names}, got {str(raw)[:40]!r}") from None


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1") or "1"
    try:
        page = int(raw)
    except ValueError:
        raise ApiError(400, f"page must be a whole number, got {raw[:40]!r}") from None
    if not 1 <= page <= MAX_PAGE:
        raise ApiError(400, f"page must be between 1 and {MAX_PAGE}")
    return page


def _search(request: web.Request) -> JobFilter:
    """`?user=` (a user id, exactly) and `?q=` (text in the question; failed: or the error)."""
    user = request.query.get("user", "").strip()[:MAX_SEARCH]
    text = request.query.get("q", "").strip()[:MAX_SEARCH]
    return JobFilter(user=user or None, text=text or None)


async def _job_or_404(jobs: JobQueue, queue: str, job_id: str) -> JobInfo:
    job = await jobs.get(queue, job_id)
    if job is None:
        raise ApiError(
            404,
            f"job {job_id[:MAX_JOB_ID]!r} is not in queue {queue} "
            "(it may have been removed, cleaned or passed retention)",
        )
    return job


# --- pages and fragments ---------------------------------------------------------------------


def _common(request: web.Request, **context) -> dict:
    return {
        "csrf_token": request[board_auth.CSRF_TOKEN],
        "read_only": request.app[SETTINGS].admin_read_only,
        "now": time.time(),
        "states": [state.value for state in STATES],
        **context,
    }


OVERVIEW_FRAGMENT = f"{BASE}/fragments/overview"


async def overview_page(request: web.Request) -> web.Response:
    jobs = request.app[JOBS]
    context = _common(request, queues=await _summaries(jobs))
    cards = live(request, "_cards.html", "overview-live", OVERVIEW_FRAGMENT, **context)
    history = await _live_history(request, list(jobs.specs))
    return page_response(
        request, "overview.html", live_cards=cards, live_history=history, **context
    )


async def overview_fragment(request: web.Request) -> web.Response:
    context = _common(request, queues=await _summaries(request.app[JOBS]))
    return fragment_response(request, "_cards.html", "overview-live", OVERVIEW_FRAGMENT, **context)


async def _list_context(request: web.Request) -> dict:
    queue = _queue_name(request)
    state = _state(request.query.get("status", DEFAULT_STATE.value))
    page = _page(request)
    match = _search(request)
    jobs = request.app[JOBS]
    summary = await _summary(jobs, queue)
    listing = await _job_page(jobs, summary, state, page, match)
    return _common(request, queue=summary, listing=listing, clean_choices=CLEAN_CHOICES)


def _list_fragment_url(queue: str, listing: JobPage) -> str:
    query = [("status", listing.state.value), ("page", str(listing.page))]
    query += _search_query(listing.match)
    return f"{BASE}/fragments/queue/{_q(queue)}?{urlencode(query)}"


async def queue_page(request: web.Request) -> web.Response:
    context = await _list_context(request)
    queue = context["queue"].name
    url = _list_fragment_url(queue, context["listing"])
    jobs = live(request, "_jobs.html", "jobs-live", url, **context)
    history = await _live_history(request, [queue])
    return page_response(request, "queue.html", live_jobs=jobs, live_history=history, **context)


async def queue_fragment(request: web.Request) -> web.Response:
    context = await _list_context(request)
    url = _list_fragment_url(context["queue"].name, context["listing"])
    return fragment_response(request, "_jobs.html", "jobs-live", url, **context)


# History charts: the overview shows every queue's, a queue's page its own.
HISTORY_FRAGMENT = f"{BASE}/fragments/history"


def _history_url(queues: list[str], jobs: JobQueue) -> str:
    if queues == list(jobs.specs):
        return HISTORY_FRAGMENT
    return f"{HISTORY_FRAGMENT}?{urlencode([('queue', name) for name in queues])}"


async def _history_context(request: web.Request, queues: list[str]) -> dict:
    history = request.app[JOBS].history
    days = await asyncio.gather(*(history.last_day(name) for name in queues))
    return _common(request, histories=[board_charts.queue_charts(day) for day in days])


async def _live_history(request: web.Request, queues: list[str]):
    context = await _history_context(request, queues)
    url = _history_url(queues, request.app[JOBS])
    return live(request, "_history.html", "history-live", url, **context)


async def history_fragment(request: web.Request) -> web.Response:
    jobs = request.app[JOBS]
    asked = request.query.getall("queue", [])
    for name in asked:
        if name not in jobs.specs:
            raise ApiError(404, f"there is no queue named {name[:60]!r}")
    queues = [name for name in jobs.specs if name in asked] if asked else list(jobs.specs)
    context = await _history_context(request, queues)
    url = _history_url(queues, jobs)
    return fragment_response(request, "_history.html", "history-live", url, **context)


def _job_fragment_url(queue: str, job_id: str) -> str:
    return f"{BASE}/fragments/queue/{_q(queue)}/{_q(job_id)}"


async def job_page(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    jobs = request.app[JOBS]
    job = await _job_or_404(jobs, queue, request.match_info["jobId"])
    context = _common(request, queue=await _summary(jobs, queue), job=job)
    url = _job_fragment_url(queue, job.id)
    detail = live(request, "_job.html", "job-live", url, **context)
    return page_response(request, "job.html", live_job=detail, **context)


async def job_fragment(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    jobs = request.app[JOBS]
    job = await jobs.get(queue, request.match_info["jobId"])
    # A job that vanished while its page was open (removed, cleaned, retention) is shown as
    # gone; the fragment then stops polling.
    context = _common(request, queue=await _summary(jobs, queue), job=job, polling=job is not None)
    url = _job_fragment_url(queue, request.match_info["jobId"])
    return fragment_response(request, "_job.html", "job-live", url, **context)


async def jump(request: web.Request) -> web.Response:
    """Find a job by id in any queue and open its page."""
    job_id = request.query.get("id", "").strip()[:MAX_JOB_ID]
    jobs = request.app[JOBS]
    if job_id:
        for queue in jobs.specs:
            if await jobs.get(queue, job_id) is not None:
                raise web.HTTPSeeOther(job_url(queue, job_id))
    # Not an error page: a search that found nothing.
    context = _common(request, jump_id=job_id, queues=list(jobs.specs))
    return page_response(request, "jump.html", **context)


async def trailing_slash(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently(BASE)


# --- JSON API ----------------------------------------------------------------------------------


async def api_queues(request: web.Request) -> web.Response:
    jobs = request.app[JOBS]
    status = request.query.get("status")
    for name in ("page", "user", "q"):
        if status is None and name in request.query:
            raise ApiError(400, f"{name} needs status: ?status=<state>&{name}=…")
    summaries = await _summaries(jobs)
    queues = [summary.to_json() for summary in summaries]
    if status is not None:
        state, page, match = _state(status), _page(request), _search(request)
        pages = await asyncio.gather(*(_job_page(jobs, s, state, page, match) for s in summaries))
        for body, listing in zip(queues, pages, strict=True):
            body["jobs"] = [job_json(job) for job in listing.jobs]
            body["pagination"] = listing.pagination()
    return json_response({"queues": queues})


async def api_job(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    job = await _job_or_404(request.app[JOBS], queue, request.match_info["jobId"])
    return json_response({"job": job_json(job), "status": job.state.value})


def _done(request: web.Request, body: dict, notice: str, redirect: str | None = None):
    """An action's JSON answer. For htmx it also names the events that refresh the board's
    live fragments and show `notice`, and, when asked, the page to go to next."""
    headers = {}
    if request.headers.get("HX-Request") == "true":
        trigger = {board_templates.REFRESH_EVENT: "", "board-notice": notice}
        headers["HX-Trigger"] = orjson.dumps(trigger).decode()
        if redirect:
            headers["HX-Redirect"] = redirect
    return json_response({"ok": True, **body}, headers=headers)


async def pause(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    await request.app[JOBS].pause(queue)
    return _done(request, {"queue": queue, "isPaused": True}, f"Paused {queue}")


async def resume(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    await request.app[JOBS].resume(queue)
    return _done(request, {"queue": queue, "isPaused": False}, f"Resumed {queue}")


async def retry_job(request: web.Request) -> web.Response:
    queue, job_id = _queue_name(request), request.match_info["jobId"]
    retried = await job_actions.retry(request.app[JOBS], request.app[DB], queue, job_id)
    body = {
        "queue": queue,
        "jobId": job_id,
        "status": "retrying",
        "previousAttempts": retried.previous_attempts,
    }
    return _done(request, body, f"Retrying job {job_id[:8]}")


async def retry_failed(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    count = await job_actions.retry_failed(request.app[JOBS], request.app[DB], queue)
    noun = "job" if count == 1 else "jobs"
    return _done(request, {"queue": queue, "retried": count}, f"Retried {count} failed {noun}")


async def _form_value(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None and forms.is_form(request):
        value = (await forms.read_form(request)).get(name)
    return value


async def remove_job(request: web.Request) -> web.Response:
    queue, job_id = _queue_name(request), request.match_info["jobId"]
    app = request.app
    job = await job_actions.remove(app[JOBS], app[DB], app[NOTIFIER], queue, job_id)
    # The job page's Remove button asks to land on the list the job was in.
    then = await _form_value(request, "then")
    redirect = queue_url(queue, job.state.value) if then == "list" else None
    body = {"queue": queue, "jobId": job_id, "removed": True}
    return _done(request, body, f"Removed job {job_id[:8]}", redirect)


async def cancel_job(request: web.Request) -> web.Response:
    queue, job_id = _queue_name(request), request.match_info["jobId"]
    app = request.app
    await job_actions.cancel(app[JOBS], app[DB], app[NOTIFIER], queue, job_id)
    body = {"queue": queue, "jobId": job_id, "status": "cancelled"}
    return _done(request, body, f"Cancelled job {job_id[:8]}")


async def promote_job(request: web.Request) -> web.Response:
    queue, job_id = _queue_name(request), request.match_info["jobId"]
    await request.app[JOBS].promote(queue, job_id)
    body = {"queue": queue, "jobId": job_id, "status": JobState.WAITING.value}
    return _done(request, body, f"Promoted job {job_id[:8]}")


async def clean_state(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    state = _state(request.match_info["state"], "state")
    raw = await _form_value(request, "olderThan")
    try:
        older_than = float(raw) if raw else 0.0
    except ValueError:
        older_than = -1.0
    if not (0 <= older_than < math.inf):
        raise ApiError(400, f"olderThan must be a number of seconds >= 0, got {str(raw)[:40]!r}")
    jobs, db = request.app[JOBS], request.app[DB]
    notifier = request.app[NOTIFIER]
    removed = await job_actions.clean(jobs, db, notifier, queue, state, older_than)
    body = {"queue": queue, "state": state.value, "olderThan": older_than, "removed": removed}
    noun = "job" if removed == 1 else "jobs"
    return _done(request, body, f"Cleaned {removed} {state.value} {noun}")


# --- wiring ------------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    board_auth.setup(app)
    env = board_templates.build_environment()
    env.globals.update(
        queue_url=queue_url,
        job_url=job_url,
        action_url=action_url,
        base_url=BASE,
        page_size=PAGE_SIZE,
    )
    app[board_templates.ENVIRONMENT] = env

    router = app.router
    router.add_get(BASE, overview_page)
    router.add_get(f"{BASE}/", trailing_slash)
    router.add_get(f"{BASE}/jump", jump)
    router.add_get(f"{BASE}/queue/{{queue}}", queue_page)
    router.add_get(f"{BASE}/queue/{{queue}}/{{jobId}}", job_page)
    router.add_get(OVERVIEW_FRAGMENT, overview_fragment)
    router.add_get(f"{BASE}/fragments/queue/{{queue}}", queue_fragment)
    router.add_get(f"{BASE}/fragments/queue/{{queue}}/{{jobId}}", job_fragment)
    router.add_get(HISTORY_FRAGMENT, history_fragment)

    router.add_get(API, api_queues)
    router.add_get(f"{API}/{{queue}}/{{jobId}}", api_job)
    # Fixed paths first: `/{queue}/retry/failed` must not be read as job "retry".
    router.add_post(f"{API}/{{queue}}/pause", pause)
    router.add_post(f"{API}/{{queue}}/resume", resume)
    router.add_post(f"{API}/{{queue}}/retry/failed", retry_failed)
    router.add_post(f"{API}/{{queue}}/clean/{{state}}", clean_state)
    router.add_post(f"{API}/{{queue}}/{{jobId}}/retry", retry_job)
    router.add_post(f"{API}/{{queue}}/{{jobId}}/remove", remove_job)
    router.add_post(f"{API}/{{queue}}/{{jobId}}/promote", promote_job)
    router.add_post(f"{API}/{{queue}}/{{jobId}}/cancel", cancel_job)
