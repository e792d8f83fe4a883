#!/usr/bin/env python3
"""Benchmark the admin board with 10,000 retained jobs (issue 4: p50 <= 50 ms each for the
overview fragment and a page of the failed list).

The in-process job queue is filled through the JobQueue interface with a handler that completes
or fails at once (no retries, so failures are final), and the board is served on 127.0.0.1 with
Basic auth on, as in production. Requests go over real HTTP with keep-alive, one at a time.

    .venv/bin/python bench/board.py [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bioagents import admin
from bioagents.config import Settings
from bioagents.errors import json_errors
from bioagents.jobs.base import Attempt
from bioagents.jobs.inprocess import InProcessJobQueue
from bioagents.jobs.spec import CHAT, DEEP_RESEARCH, queue_specs
from bioagents.keys import JOBS, SETTINGS

TARGET_MS = 50.0
# What is retained: chat keeps at most 1000 completed, deep-research 500; failed are unbounded.
FILL = {CHAT: {"completed": 1000, "failed": 8000}, DEEP_RESEARCH: {"completed": 500, "failed": 500}}


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


async def filled_queue(settings: Settings) -> InProcessJobQueue:
    specs = {name: spec.with_(retries=0) for name, spec in queue_specs(settings).items()}
    jobs = InProcessJobQueue(specs, InstantHandler())
    for queue, plan in FILL.items():
        outcomes = [False] * plan["completed"] + [True] * plan["failed"]
        for n, fail in enumerate(outcomes):
            data = {"userId": f"user-{n % 50}", "question": f"benchmark question {n}", "fail": fail}
            await jobs.enqueue(queue, f"{queue}-{n:05d}", data)
    expected = sum(sum(plan.values()) for plan in FILL.values())
    while True:
        counts = [await jobs.counts(queue) for queue in FILL]
        if sum(c.completed + c.failed for c in counts) == expected:
            return jobs
        await asyncio.sleep(0.05)


async def measure(session, url: str, requests: int, headers: dict, expect: int) -> list[float]:
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            await response.read()
            assert response.status == expect, (url, response.status)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def main(requests: int) -> int:
    settings = Settings.from_env({"ADMIN_PASSWORD": "bench"})
    started = time.perf_counter()
    jobs = await filled_queue(settings)
    fill_seconds = time.perf_counter() - started

    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = settings
    app[JOBS] = jobs
    admin.setup(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:bench").decode()}

    counts = {queue: (await jobs.counts(queue)).to_json() for queue in FILL}
    retained = sum(sum(c.values()) for c in counts.values())
    print(f"retained jobs: {retained:,} (filled in {fill_seconds:.1f} s)")
    for queue, queue_counts in counts.items():
        print(f"  {queue}: {queue_counts}")

    probes = {
        "overview fragment": ("/admin/queues/fragments/overview", True),
        "failed list fragment, page 1": (
            "/admin/queues/fragments/queue/chat?status=failed&page=1",
            True,
        ),
        "failed list fragment, page 320 (oldest)": (
            "/admin/queues/fragments/queue/chat?status=failed&page=320",
            False,
        ),
        "overview page (full HTML)": ("/admin/queues", False),
        "failed list page (full HTML)": ("/admin/queues/queue/chat?status=failed", False),
        "JSON API ?status=failed&page=1": ("/admin/queues/api/queues?status=failed&page=1", False),
    }
    results = {}
    async with aiohttp.ClientSession() as session:
        for name, (path, gated) in probes.items():
            url = base + path
            await measure(session, url, 20, auth, 200)  # warm up
            timings = await measure(session, url, requests, auth, 200)
            results[name] = (timings, gated)
            if path.startswith("/admin/queues/fragments/"):
                async with session.get(url, headers=auth) as response:
                    etag = response.headers["ETag"]
                conditional = {**auth, "If-None-Match": etag}
                results[f"{name}, unchanged (304)"] = (
                    await measure(session, url, requests, conditional, 304),
                    False,
                )
    await runner.cleanup()
    await jobs.close()

    print(f"\n{requests} sequential requests each over HTTP (keep-alive), Basic auth on:")
    print(f"  {'':58} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    ok = True
    for name, (timings, gated) in results.items():
        p50 = statistics.median(timings)
        p95 = statistics.quantiles(timings, n=20)[-1]
        verdict = ""
        if gated:
            passed = p50 <= TARGET_MS
            ok &= passed
            verdict = f"  {'PASS' if passed else 'FAIL'} (target p50 <= {TARGET_MS:.0f} ms)"
        print(f"  {name:58} {p50:8.2f} {p95:8.2f} {max(timings):8.2f}{verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.requests)))
