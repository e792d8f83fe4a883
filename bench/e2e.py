"""End-to-end benchmark of the embedded default (issue 2), not a test.

A `serve` process in in-process mode with the zero-delay offline provider; a client POSTs N
chats into one conversation while a WebSocket subscriber records each `job:completed`.
Prints POST→`job:completed` latency (p50/p99) one request at a time, and sustained jobs/s
with many requests in flight. The baseline in the same run is the bare HTTP round trip to
`/api/openapi.json`, so the figures can be read against what aiohttp itself costs here.

    .venv/bin/python bench/e2e.py [--n 2000] [--inflight 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile, serve_process, subscribed_socket


async def run(base: str, n: int, inflight: int) -> dict:
    user = {"X-User-Id": "bench"}
    async with aiohttp.ClientSession(headers=user) as http:
        # Baseline: aiohttp's own round trip on this machine.
        baseline = []
        for _ in range(300):
            started = time.perf_counter()
            async with http.get(f"{base}/api/openapi.json") as response:
                await response.read()
            baseline.append((time.perf_counter() - started) * 1000)

        ws, conversation = await subscribed_socket(http, base)

        sent: dict[str, float] = {}
        done: dict[str, float] = {}
        waiters: dict[str, asyncio.Future] = {}

        async def reader():
            async for msg in ws:
                event = msg.json()
                if event.get("type") == "job:completed":
                    done[event["jobId"]] = time.perf_counter()
                    future = waiters.pop(event["jobId"], None)
                    if future is not None and not future.done():
                        future.set_result(None)

        reader_task = asyncio.create_task(reader())
        body = {"message": "What does p53 do?", "conversationId": conversation}

        async def one():
            started = time.perf_counter()
            async with http.post(f"{base}/api/chat", json=body) as response:
                job_id = (await response.json())["jobId"]
            sent[job_id] = started
            if job_id not in done:
                future = asyncio.get_running_loop().create_future()
                waiters[job_id] = future
                await future
            return (done[job_id] - started) * 1000

        # Latency: one request at a time.
        for _ in range(50):
            await one()
        latencies = [await one() for _ in range(n // 4)]

        # Throughput: `inflight` requests at a time.
        semaphore = asyncio.Semaphore(inflight)

        async def limited():
            async with semaphore:
                return await one()

        started = time.perf_counter()
        loaded = await asyncio.gather(*(limited() for _ in range(n)))
        elapsed = time.perf_counter() - started
        reader_task.cancel()
        await ws.close()
    return {
        "baseline_p50": statistics.median(baseline),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "jobs_per_s": n / elapsed,
        "loaded_p50": percentile(loaded, 50),
        "loaded_p99": percentile(loaded, 99),
        "n": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {
            "DATABASE_URL": f"sqlite:///{folder}/bench.db",
            "CHAT_RATE_LIMIT_PER_MINUTE": "0",
            "CHAT_QUEUE_CONCURRENCY": "64",
            "LOG_LEVEL": "WARNING",
        }
        with serve_process(env) as (base, _):
            figures = asyncio.run(run(base, args.n, args.inflight))
    print(f"in-process mode, offline provider (zero delay), {figures['n']} chats")
    print(f"  baseline: GET /api/openapi.json round trip p50 {figures['baseline_p50']:.2f} ms")
    print(
        f"  POST→job:completed, one at a time: p50 {figures['p50']:.2f} ms, "
        f"p99 {figures['p99']:.2f} ms   (targets ≤ 3 ms, ≤ 9 ms)"
    )
    print(
        f"  sustained, {args.inflight} in flight: {figures['jobs_per_s']:.0f} jobs/s "
        f"(target ≥ 1000), latency p50 {figures['loaded_p50']:.1f} ms, "
        f"p99 {figures['loaded_p99']:.1f} ms"
    )


if __name__ == "__main__":
    main()
