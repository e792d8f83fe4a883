#!/usr/bin/env python3
"""Benchmark the admin board with 10,000 retained jobs (issue 4: p50 <= 50 ms each for the
overview fragment and a page of the failed list; issue 10: the same for a search and for the
history charts fragment), in both modes in one run (`--modes` picks).

- In-process mode: the in-process job queue is filled through the JobQueue interface with a
  handler that completes or fails at once (no retries, so failures are final), and the board is
  served in this process on 127.0.0.1.
- Queue mode: this script starts its own redis-server on a free loopback port, fills the same
  10,000 jobs through `SaqJobQueue` (enqueued, then run by a queue-mode `Worker` with the same
  instant handler), and serves the board with `python bioagents.py serve` and
  `USE_JOB_QUEUE=true` on that Redis. redis-server and serve are stopped by pid at the end.

Both serve the board with Basic auth on, as in production. Requests go over real HTTP with
keep-alive, one at a time.

    .venv/bin/python bench/board.py [--requests 300] [--modes in-process,queue]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where bench/queue.py would
# shadow the standard library's `queue`: put the project root there instead.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.common import serve_process  # noqa: E402
from bench.queue import redis_server  # noqa: E402
from bioagents import admin  # noqa: E402
from bioagents.config import Settings  # noqa: E402
from bioagents.errors import json_errors  # noqa: E402
from bioagents.jobs.base import Attempt, JobQueue  # noqa: E402
from bioagents.jobs.inprocess import InProcessJobQueue  # noqa: E402
from bioagents.jobs.spec import CHAT, DEEP_RESEARCH, queue_specs  # noqa: E402
from bioagents.keys import JOBS, SETTINGS  # noqa: E402

TARGET_MS = 50.0
PASSWORD = "bench"
# What is retained: chat keeps at most 1000 completed, deep-research 500; failed are unbounded.
FILL = {CHAT: {"completed": 1000, "failed": 8000}, DEEP_RESEARCH: {"completed": 500, "failed": 500}}
EXPECTED = sum(sum(plan.values()) for plan in FILL.values())
PROBES = {  # name: (path, gated by the target)
    "overview fragment": ("/admin/queues/fragments/overview", True),
    "failed list fragment, page 1": (
        "/admin/queues/fragments/queue/chat?status=failed&page=1",
        True,
    ),
    "failed list fragment, page 320 (oldest)": (
        "/admin/queues/fragments/queue/chat?status=failed&page=320",
        False,
    ),
    # Search reads every retained job of the state: 8,000 failed chats here.
    "search failed list by text (1 of 8,000 match)": (
        "/admin/queues/fragments/queue/chat?status=failed&page=1&q=question%204321",
        True,
    ),
    "search failed list by user (160 of 8,000 match)": (
        "/admin/queues/fragments/queue/chat?status=failed&page=1&user=user-7",
        True,
    ),
    "search JSON API ?status=failed&q=…": (
        "/admin/queues/api/queues?status=failed&q=failure%20of%20chat-04321",
        False,
    ),
    "history charts fragment (both queues, 24 h)": ("/admin/queues/fragments/history", True),
    "overview page (full HTML)": ("/admin/queues", False),
    "failed list page (full HTML)": ("/admin/queues/queue/chat?status=failed", False),
    "JSON API ?status=failed&page=1": ("/admin/queues/api/queues?status=failed&page=1", False),
}


class InstantHandler:
    """Completes or fails each attempt at once, as `data["fail"]` says."""

    async def run(self, attempt: Attempt) -> dict:
        if attempt.data["fail"]:
            raise RuntimeError(f"benchmark failure of {attempt.job_id}")
        return {"text": "done", "userId": attempt.data["userId"], "responseTime": 1}

    async def on_completed(self, attempt: Attempt, result: dict) -> None:
        pass

    async def on_failed(self, attempt: Attempt, error: str, final: bool) -> None:
        pass


def bench_specs(settings: Settings) -> dict:
    """The production specs (retention included) with no retries, so failures are final."""
    return {name: spec.with_(retries=0) for name, spec in queue_specs(settings).items()}


async def fill(jobs: JobQueue) -> None:
    """Enqueue FILL's jobs (oldest first) and wait until every one has completed or failed."""
    for queue, plan in FILL.items():
        outcomes = [False] * plan["completed"] + [True] * plan["failed"]
        for start in range(0, len(outcomes), 1000):
            await asyncio.gather(
                *(
                    jobs.enqueue(
                        queue,
                        f"{queue}-{n:05d}",
                        {
                            "userId": f"user-{n % 50}",
                            "question": f"benchmark question {n}",
                            "fail": fail,
                        },
                    )
                    for n, fail in enumerate(outcomes[start : start + 1000], start)
                )
            )
    while True:
        counts = [await jobs.counts(queue) for queue in FILL]
        if sum(c.completed + c.failed for c in counts) == EXPECTED:
            return
        await asyncio.sleep(0.05)


async def retained(jobs: JobQueue) -> dict[str, dict]:
    return {queue: (await jobs.counts(queue)).to_json() for queue in FILL}


# --- measuring ----------------------------------------------------------------------------------


async def measure(session, url: str, requests: int, headers: dict, expect: int) -> list[float]:
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            await response.read()
            assert response.status == expect, (url, response.status)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def probe(base: str, requests: int) -> dict[str, tuple[list[float], bool]]:
    """Every probe, then (fragments) the same URL answered 304 from its ETag."""
    auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
    results = {}
    async with aiohttp.ClientSession() as session:
        # What is measured is a real page: 25 failed jobs, each with its error.
        async with session.get(
            f"{base}{PROBES['JSON API ?status=failed&page=1'][0]}", headers=auth
        ) as response:
            chat = next(q for q in (await response.json())["queues"] if q["name"] == CHAT)
        assert len(chat["jobs"]) == 25, chat
        assert all("benchmark failure" in job["error"] for job in chat["jobs"]), chat["jobs"][0]
        # The searches find what they should: one job by text (in its question or its error),
        # a full page of one user's.
        for query, expected in (("q=question%204321", 1), ("user=user-7", 25)):
            async with session.get(
                f"{base}/admin/queues/api/queues?status=failed&{query}", headers=auth
            ) as response:
                found = next(q for q in (await response.json())["queues"] if q["name"] == CHAT)
            assert len(found["jobs"]) == expected, (query, len(found["jobs"]))
        for name, (path, gated) in PROBES.items():
            url = base + path
            await measure(session, url, 20, auth, 200)  # warm up
            results[name] = (await measure(session, url, requests, auth, 200), gated)
            if path.startswith("/admin/queues/fragments/"):
                async with session.get(url, headers=auth) as response:
                    etag = response.headers["ETag"]
                conditional = {**auth, "If-None-Match": etag}
                results[f"{name}, unchanged (304)"] = (
                    await measure(session, url, requests, conditional, 304),
                    False,
                )
    return results


# --- in-process mode ----------------------------------------------------------------------------


async def in_process_mode(requests: int) -> dict:
    # 8,500 jobs fail on purpose here: their log lines are not what is measured.
    logging.getLogger("bioagents").setLevel(logging.ERROR)
    settings = Settings.from_env({"ADMIN_PASSWORD": PASSWORD})
    jobs = InProcessJobQueue(bench_specs(settings), InstantHandler())
    started = time.perf_counter()
    await fill(jobs)
    fill_seconds = time.perf_counter() - started
    counts = await retained(jobs)

    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = settings
    app[JOBS] = jobs
    admin.setup(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        results = await probe(f"http://127.0.0.1:{port}", requests)
    finally:
        await runner.cleanup()
        await jobs.close()
    return {"counts": counts, "fill_seconds": fill_seconds, "results": results}


# --- queue mode ---------------------------------------------------------------------------------


async def fill_redis(env: dict[str, str]) -> tuple[dict, float]:
    """FILL through SaqJobQueue, run by queue mode's SAQ workers in this process."""
    from bioagents.queue_mode.services import open_queue_services

    settings = Settings.from_env(env)
    specs = bench_specs(settings)
    async with (
        open_queue_services(settings, specs, subscribe=False) as services,
        services.running_workers(InstantHandler(), list(FILL)) as workers,
    ):
        await workers.ready()
        started = time.perf_counter()
        await fill(services.jobs)
        fill_seconds = time.perf_counter() - started
        counts = await retained(services.jobs)
    return counts, fill_seconds  # the workers have stopped: serve alone answers the board


async def queue_mode(requests: int) -> dict:
    with tempfile.TemporaryDirectory() as folder, redis_server(folder) as url:
        env = {
            "USE_JOB_QUEUE": "true",
            "REDIS_URL": url,
            "DATABASE_URL": f"sqlite:///{folder}/bench.db",
            "ADMIN_PASSWORD": PASSWORD,
            "LOG_LEVEL": "WARNING",
        }
        counts, fill_seconds = await fill_redis(env)
        with serve_process(env) as (base, _):
            results = await probe(base, requests)
    return {"counts": counts, "fill_seconds": fill_seconds, "results": results}


# --- the report ---------------------------------------------------------------------------------


def stats(timings: list[float]) -> tuple[float, float]:
    return statistics.median(timings), statistics.quantiles(timings, n=20)[-1]


MODES = {"in-process": in_process_mode, "queue": queue_mode}


async def main(requests: int, chosen: list[str]) -> int:
    modes = {name: await MODES[name](requests) for name in chosen}

    for mode, run in modes.items():
        total = sum(sum(c.values()) for c in run["counts"].values())
        print(f"{mode}: retained jobs {total:,} (filled in {run['fill_seconds']:.1f} s)")
        for queue, queue_counts in run["counts"].items():
            print(f"  {queue}: {queue_counts}")
        if total != EXPECTED:
            print(f"  expected {EXPECTED:,} retained jobs")
            return 1

    print(f"\n{requests} sequential requests each over HTTP (keep-alive), Basic auth on, in ms:")
    print(f"  {'':58}" + "".join(f" {mode:>17}  " for mode in modes))
    print(f"  {'':58}" + f" {'p50':>8} {'p95':>8}  " * len(modes))
    ok = True
    for name in next(iter(modes.values()))["results"]:
        row = f"  {name:58}"
        passed = []
        for run in modes.values():
            timings, gated = run["results"][name]
            p50, p95 = stats(timings)
            row += f" {p50:8.2f} {p95:8.2f}  "
            if gated:
                passed.append(p50 <= TARGET_MS)
        if passed:
            ok &= all(passed)
            verdicts = " ".join("PASS" if p else "FAIL" for p in passed)
            row += f" {verdicts} (target p50 <= {TARGET_MS:.0f} ms)"
        print(row.rstrip())
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    parser.add_argument(
        "--modes", default="in-process,queue", help="comma-separated: in-process, queue"
    )
    args = parser.parse_args()
    chosen = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if unknown := [mode for mode in chosen if mode not in MODES]:
        parser.error(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    sys.exit(asyncio.run(main(args.requests, chosen)))
