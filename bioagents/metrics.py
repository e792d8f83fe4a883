"""`GET /metrics` (SPEC §11): the Prometheus text format, built by `prometheus_client` from one
snapshot taken at scrape time.

Three sources make the snapshot:
- the job-queue interface: counts by state, paused, workers, oldest waiting age (gauges);
- the queues' history (`history.py`): jobs enqueued, finished, retried, stalled, wait and run
  time histograms, model tokens, summed over every process that ran jobs;
- this process's counters (`PROCESS`): HTTP requests, 429s, notifications sent to sockets. The
  hooks cost a dict increment. A `CounterSource` reads them: `LocalCounters` in a single
  process, `RedisCounters` where several `serve` copies must add up (it flushes this
  process's increments to Redis every couple of seconds and reads the sums).

Labels are bounded: queue names, states and outcomes come from fixed sets, `route` is the
route's template (`/api/chat/status/{jobId}`), never a raw path.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import dataclasses
import hmac
import logging
import uuid
from collections.abc import Callable, Iterator

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from redis import asyncio as aioredis

from .board_auth import PROXY_HEADERS, is_loopback
from .errors import ApiError
from .flushing import REDIS_ERRORS, PeriodicFlush
from .history import BOUNDS, OUTCOMES, TOKEN_KINDS, HistoryUnavailable, Totals, TotalsField
from .jobs.base import STATES, JobQueue, QueueUnavailable
from .keys import JOBS, SETTINGS

log = logging.getLogger(__name__)

PATH = "/metrics"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route matched (a 404)
NOTIFICATION_TYPES = frozenset(
    {
        "job:started",
        "job:progress",
        "message:updated",
        "state:updated",
        "job:completed",
        "job:failed",
        "job:cancelled",
        "message:delta",
    }
)


# --- this process's counters and their hooks ------------------------------------------------------


class ProcessCounters:
    """What this process counts itself. One per process, like prometheus_client's default
    registry: the hooks are called from places that hold no app (the hub's fan-out)."""

    def __init__(self) -> None:
        self.http: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.rate_limited: collections.Counter[str] = collections.Counter()
        self.notifications: collections.Counter[str] = collections.Counter()

    def fields(self) -> dict[str, int]:
        """Every count under its Redis field name (`kind|label|…`)."""
        fields = {f"http|{m}|{r}|{s}": n for (m, r, s), n in self.http.items()}
        fields.update({f"rate_limited|{q}": n for q, n in self.rate_limited.items()})
        fields.update({f"notifications|{t}": n for t, n in self.notifications.items()})
        return fields


PROCESS = ProcessCounters()


def request_served(request: web.Request, status: int) -> None:
    method = request.method if request.method in METHODS else "OTHER"
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else UNMATCHED
    PROCESS.http[(method, route, str(status))] += 1


def rate_limited(queue: str) -> None:
    """A request was answered 429 by the queue's rate limit."""
    PROCESS.rate_limited[queue] += 1


def notifications_delivered(text: str | bytes, sockets: int) -> None:
    """The hub queued notification `text` (its JSON) for `sockets` WebSockets."""
    if sockets:
        kind = orjson.loads(text).get("type")
        PROCESS.notifications[kind if kind in NOTIFICATION_TYPES else "other"] += sockets


@web.middleware
async def count_requests(request: web.Request, handler):
    """Outermost middleware: counts each answered request by method, route and status."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        request_served(request, error.status)
        raise
    request_served(request, response.status)
    return response


# --- reading the counters -------------------------------------------------------------------------


@dataclasses.dataclass
class Counts:
    """Counters (by `ProcessCounters.fields` name) and open WebSockets, summed over processes."""

    fields: dict[str, int]
    websockets: int


class CounterSource(abc.ABC):
    @abc.abstractmethod
    async def read(self) -> Counts: ...

    async def start(self) -> None:
        """Start background work."""

    async def close(self) -> None:
        """Stop it."""


class LocalCounters(CounterSource):
    """One process is the whole system (in-process mode)."""

    def __init__(self, websockets: Callable[[], int], counters: ProcessCounters | None = None):
        self.websockets = websockets
        self.counters = PROCESS if counters is None else counters

    async def read(self) -> Counts:
        return Counts(self.counters.fields(), self.websockets())


# Adds one process's increments and records its open sockets. KEYS: the counters hash, the
# per-process sockets hash, the liveness sorted set. ARGV: process id, its open sockets, seconds
# after which a silent process is forgotten, then field/increment pairs. Redis' own clock
# judges liveness, so machines' clocks need not agree.
FLUSH_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[1])
local horizon = now - tonumber(ARGV[3])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', horizon)) do
  redis.call('HDEL', KEYS[2], gone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', horizon)
return 1
"""


class RedisCounters(CounterSource):
    """Several `serve` copies (queue mode): each flushes what it counted since its last flush
    every `flush_interval` seconds (and before each read), so a scrape of any copy sums all.

    Keys (`prefix` = `bioagents:metrics`): `<prefix>:counters` hash of summed counters (no
    expiry); `<prefix>:websockets` hash process id → its open sockets; `<prefix>:alive` sorted
    set process id → last flush (Redis time). A copy silent for `forget_after` seconds no longer
    counts towards `bioagents_websocket_connections`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        websockets: Callable[[], int],
        *,
        counters: ProcessCounters | None = None,
        prefix: str = "bioagents:metrics",
        flush_interval: float = 2.0,
        forget_after: float = 15.0,
    ):
        self.redis = redis
        self.websockets = websockets
        self.counters = PROCESS if counters is None else counters
        self.prefix = prefix
        self.flush_interval = flush_interval
        self.forget_after = forget_after
        self.process_id = uuid.uuid4().hex
        self._script = redis.register_script(FLUSH_SCRIPT)
        self._sent: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._periodic = PeriodicFlush(self.flush, flush_interval, "metrics")

    @property
    def keys(self) -> list[str]:
        return [f"{self.prefix}:counters", f"{self.prefix}:websockets", f"{self.prefix}:alive"]

    async def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()
        with contextlib.suppress(*REDIS_ERRORS):
            _, sockets, alive = self.keys
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(sockets, self.process_id)
                pipe.zrem(alive, self.process_id)
                await pipe.execute()

    async def flush(self) -> None:
        """Send the increments since the last flush; raises redis-py's errors."""
        async with self._lock:
            current = self.counters.fields()
            args: list[str | int | float] = [
                self.process_id,
                self.websockets(),
                self.forget_after,
            ]
            for field, value in current.items():
                delta = value - self._sent.get(field, 0)
                if delta:
                    args += [field, delta]
            await self._script(keys=self.keys, args=args)
            self._sent = current

    async def read(self) -> Counts:
        await self.flush()
        counters, sockets, _ = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(counters)
            pipe.hgetall(sockets)
            summed, per_process = await pipe.execute()
        fields = {_text(k): int(v) for k, v in summed.items()}
        return Counts(fields, sum(int(v) for v in per_process.values()))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the snapshot and its collector ---------------------------------------------------------------


@dataclasses.dataclass
class QueueGauges:
    name: str
    counts: dict[str, int]
    paused: bool
    workers: int
    oldest_waiting_seconds: float


@dataclasses.dataclass
class Snapshot:
    queues: list[QueueGauges]
    totals: Totals
    counts: Counts


async def _queue_gauges(jobs: JobQueue, name: str) -> QueueGauges:
    counts, paused, workers, oldest = await asyncio.gather(
        jobs.counts(name), jobs.is_paused(name), jobs.workers(name), jobs.oldest_waiting_age(name)
    )
    return QueueGauges(name, counts.to_json(), paused, workers, oldest or 0.0)


async def take_snapshot(jobs: JobQueue, counters: CounterSource) -> Snapshot:
    queues = await asyncio.gather(*(_queue_gauges(jobs, name) for name in jobs.specs))
    totals, counts = await asyncio.gather(jobs.history.totals(), counters.read())
    return Snapshot(list(queues), totals, counts)


def _histogram_buckets(counts: list[float]) -> list[tuple[str, float]]:
    cumulative, running = [], 0.0
    for bound, count in zip([*BOUNDS, float("inf")], counts, strict=True):
        running += count
        cumulative.append((floatToGoString(bound), running))
    return cumulative


class SnapshotCollector:
    """A prometheus_client collector over one snapshot (a fresh registry per scrape)."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._queue_gauges()
        yield from self._job_counters()
        yield from self._process_counters()

    def _queue_gauges(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "bioagents_queue_jobs", "Jobs in the queue, by state.", labels=["queue", "state"]
        )
        paused = GaugeMetricFamily(
            "bioagents_queue_paused", "1 while the queue is paused.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "bioagents_queue_oldest_waiting_seconds",
            "How long the oldest waiting job has waited (0: none waits).",
            labels=["queue"],
        )
        workers = GaugeMetricFamily(
            "bioagents_workers", "Live worker processes serving the queue.", labels=["queue"]
        )
        for q in self.snapshot.queues:
            for state in STATES:
                jobs.add_metric([q.name, state.value], q.counts[state.value])
            paused.add_metric([q.name], 1 if q.paused else 0)
            oldest.add_metric([q.name], q.oldest_waiting_seconds)
            workers.add_metric([q.name], q.workers)
        yield from (jobs, paused, oldest, workers)

    def _job_counters(self) -> Iterator[Metric]:
        totals = self.snapshot.totals
        enqueued = CounterMetricFamily(
            "bioagents_jobs_enqueued",
            "Jobs put in the queue (a manual retry included).",
            labels=["queue"],
        )
        finished = CounterMetricFamily(
            "bioagents_jobs_finished", "Jobs that reached their end, by outcome.",
            labels=["queue", "outcome"],
        )  # fmt: skip
        retries = CounterMetricFamily(
            "bioagents_job_retries",
            "Failed attempts followed by another attempt.",
            labels=["queue"],
        )
        stalled = CounterMetricFamily(
            "bioagents_jobs_stalled",
            "Jobs found active with no live worker (started again or failed).",
            labels=["queue"],
        )
        wait = HistogramMetricFamily(
            "bioagents_job_wait_seconds",
            "From queued to the start of a finished job's last attempt.",
            labels=["queue"],
        )
        run = HistogramMetricFamily(
            "bioagents_job_run_seconds",
            "How long a finished job's last attempt ran, by outcome.",
            labels=["queue", "outcome"],
        )
        tokens = CounterMetricFamily(
            "bioagents_llm_tokens", "Language-model tokens used by jobs.", labels=["queue", "kind"]
        )
        for q in (queue.name for queue in self.snapshot.queues):
            enqueued.add_metric([q], totals.count(TotalsField.enqueued(q)))
            retries.add_metric([q], totals.count(TotalsField.retries(q)))
            stalled.add_metric([q], totals.count(TotalsField.stalled(q)))
            wait.add_metric(
                [q],
                _histogram_buckets(totals.wait_buckets(q)),
                sum_value=totals.count(TotalsField.wait_sum(q)),
            )
            for outcome in (o.value for o in OUTCOMES):
                finished.add_metric([q, outcome], totals.count(TotalsField.finished(q, outcome)))
                run.add_metric(
                    [q, outcome],
                    _histogram_buckets(totals.run_buckets(q, outcome)),
                    sum_value=totals.count(TotalsField.run_sum(q, outcome)),
                )
            for kind in TOKEN_KINDS:
                tokens.add_metric([q, kind], totals.count(TotalsField.tokens(q, kind)))
        yield from (enqueued, finished, retries, stalled, wait, run, tokens)

    def _process_counters(self) -> Iterator[Metric]:
        counts = self.snapshot.counts
        http = CounterMetricFamily(
            "bioagents_http_requests",
            "HTTP requests answered, by method, route template and status.",
            labels=["method", "route", "status"],
        )
        limited = CounterMetricFamily(
            "bioagents_rate_limited", "Requests refused by a rate limit (429).", labels=["queue"]
        )
        notifications = CounterMetricFamily(
            "bioagents_notifications",
            "Notification frames queued for WebSocket clients, by type.",
            labels=["type"],
        )
        limited_by_queue = {queue.name: 0 for queue in self.snapshot.queues}  # every queue
        for field, value in sorted(counts.fields.items()):
            kind, _, rest = field.partition("|")
            if kind == "http":
                method, _, route_status = rest.partition("|")
                route, _, status = route_status.rpartition("|")
                http.add_metric([method, route, status], value)
            elif kind == "rate_limited":
                limited_by_queue[rest] = value
            elif kind == "notifications":
                notifications.add_metric([rest], value)
        for queue, value in limited_by_queue.items():
            limited.add_metric([queue], value)
        sockets = GaugeMetricFamily(
            "bioagents_websocket_connections", "Open WebSocket connections."
        )
        sockets.add_metric([], counts.websockets)
        yield from (http, limited, notifications, sockets)


def exposition(snapshot: Snapshot, accept: str = "") -> tuple[bytes, str]:
    """The body and its content type, in the format the scraper's Accept header asks for
    (Prometheus text 0.0.4 by default, OpenMetrics when asked)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


# --- the route --------------------------------------------------------------------------------

COUNTERS = web.AppKey("metrics_counters", CounterSource)


def check_access(request: web.Request) -> None:
    """With METRICS_TOKEN: `Authorization: Bearer <it>` from everyone (401 otherwise). Without:
    loopback clients only, not through a proxy (403 otherwise)."""
    expected = request.app[SETTINGS].metrics_token
    if expected:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
        # Always compared, so timing does not tell a missing token from a wrong one.
        matches = hmac.compare_digest(given_bytes, expected.encode())
        if scheme.lower() != "bearer" or not matches:
            raise ApiError(
                401,
                "/metrics needs the metrics token: send Authorization: Bearer <METRICS_TOKEN>",
                {"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return
    proxied = next((h for h in PROXY_HEADERS if h in request.headers), None)
    if proxied is not None or not is_loopback(request.remote):
        raise ApiError(
            403,
            "/metrics is served to loopback clients only while METRICS_TOKEN is unset; set "
            "METRICS_TOKEN and scrape with Authorization: Bearer <METRICS_TOKEN>",
        )


async def metrics_page(request: web.Request) -> web.Response:
    check_access(request)
    try:
        snapshot = await take_snapshot(request.app[JOBS], request.app[COUNTERS])
    except (QueueUnavailable, HistoryUnavailable) as error:
        raise ApiError(503, f"the job queue is unavailable: {error}") from None
    except REDIS_ERRORS:
        raise ApiError(503, "the job queue is unavailable: Redis cannot be reached") from None
    body, content_type = exposition(snapshot, request.headers.get("Accept", ""))
    return web.Response(
        body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"}
    )


def setup(app: web.Application) -> None:
    app.router.add_get(PATH, metrics_page)
