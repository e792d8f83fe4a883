"""Queue-mode benchmark (issue 3), not a test. Starts its own redis-server and, in one run:

1. raw SAQ: one worker process (SAQ's own Worker, concurrency 10, uvloop) drains N no-op
   jobs enqueued beforehand;
2. our worker layer: one worker process (QueueServices + Worker, as `bioagents.py worker`
   runs them, chat concurrency 10) drains N no-op chats: offline provider with no delay, each
   with its database write (the answer) and all seven notifications;
3. POST→`job:completed` latency in queue mode (a `serve` copy and a `worker` process, one
   request at a time, the WebSocket listening on the `serve` copy);
4. HTTP enqueue rate (`POST /api/chat`, many in flight, no worker running);
5. Redis bytes per retained completed job, Redis commands per job (INFO commandstats) and
   database statements per job (`Database.statements`).

    .venv/bin/python bench/queue.py [--n 20000] [--latency-n 400] [--http-n 6000]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and this file's name would
# shadow the standard library's `queue`: put the project root there instead.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402

from bench.common import (  # noqa: E402
    free_port,
    percentile,
    serve_process,
    subscribed_socket,
)

CONCURRENCY = 10
POLL = 0.005  # seconds between two looks at the queue while it drains


# --- the helper processes -------------------------------------------------------------------------


async def _noop(ctx):
    return None


async def raw_saq_worker(url: str) -> None:
    """SAQ as it comes: its RedisQueue and Worker, concurrency 10, until SIGTERM."""
    from redis import asyncio as aioredis
    from saq import Worker
    from saq.queue.redis import RedisQueue

    queue = RedisQueue(aioredis.from_url(url), name="raw")
    worker = Worker(queue, [("noop", _noop)], concurrency=CONCURRENCY)
    await queue.connect()
    try:
        await worker.start()
    finally:
        await queue.disconnect()


async def our_worker(queues: list[str]) -> None:
    """What `bioagents.py worker` runs (`queue_mode.run_worker_process`), plus a report of
    the database statements it sent."""
    from bioagents.agents.llm import build_llm
    from bioagents.config import Settings
    from bioagents.db import Database
    from bioagents.jobs.spec import queue_specs
    from bioagents.queue_mode import QueueServices

    settings = Settings.from_env()
    db = Database(settings.database_url)
    db.migrate()
    llm = build_llm(settings)
    await llm.start()
    services = QueueServices(settings, queue_specs(settings), subscribe=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await services.start(db, llm, queues)
    profiler = None
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    await stop.wait()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.environ["BENCH_PROFILE"])
    await services.drain(5.0)
    pipeline = services.pipeline
    report = {
        "statements": db.statements,
        "round_trips": pipeline.round_trips,
        "pipelined_commands": pipeline.commands,
    }
    await services.close()
    await llm.close()
    db.close()
    print(json.dumps(report), flush=True)


def _uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --- Redis ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(folder: str):
    port = free_port()
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", folder),
            *("--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            != "PONG"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


class CommandStats:
    """INFO commandstats between two snapshots, minus the commands this script sent itself."""

    def __init__(self, redis):
        self.redis = redis
        self.own: dict[str, int] = {}
        self.before: dict[str, int] = {}

    async def _read(self) -> dict[str, int]:
        stats = await self.redis.info("commandstats")
        self._note("info")
        return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}

    def _note(self, command: str, times: int = 1) -> None:
        self.own[command] = self.own.get(command, 0) + times

    async def _cpu(self) -> float:
        cpu = await self.redis.info("cpu")
        self._note("info")
        return cpu["used_cpu_user"] + cpu["used_cpu_sys"]

    async def start(self) -> None:
        self.own.clear()
        self.before = await self._read()
        self.cpu_before = await self._cpu()

    async def stop(self) -> dict[str, int]:
        self.cpu_seconds = await self._cpu() - self.cpu_before
        after = await self._read()
        delta = {}
        for name, calls in after.items():
            calls -= self.before.get(name, 0) + self.own.get(name, 0)
            if calls > 0:
                delta[name] = calls
        return delta


async def drain_time(redis, stats: CommandStats, lists: list[str], hashes: list[str], n: int):
    """Seconds from the first job taken (a list shorter than n) to nothing waiting or running."""
    started = None
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for key in lists:
                pipe.llen(key)
            for key in hashes:
                pipe.hlen(key)
            sizes = await pipe.execute()
        stats._note("llen", len(lists))
        stats._note("hlen", len(hashes))
        now = time.perf_counter()
        if started is None and sizes[0] < n:
            started = now
        if started is not None and not any(sizes):
            return now - started
        await asyncio.sleep(POLL)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(log, "wb"),  # kept open by the child
        text=True,
    )


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    return out


# --- 1. raw SAQ -----------------------------------------------------------------------------------


async def bench_raw_saq(url: str, n: int, folder: Path) -> dict:
    from redis import asyncio as aioredis
    from saq.queue.redis import RedisQueue

    redis = aioredis.from_url(url)
    queue = RedisQueue(redis, name="raw")
    await queue.connect()
    enqueue_stats = CommandStats(redis)
    await enqueue_stats.start()
    for start in range(0, n, 1000):
        await asyncio.gather(*(queue.enqueue("noop") for _ in range(min(1000, n - start))))
    enqueue_commands = await enqueue_stats.stop()
    stats = CommandStats(redis)
    await stats.start()
    worker = spawn(
        [str(Path(__file__)), "--raw-saq-worker", url], {}, folder / "raw-saq-worker.log"
    )
    seconds = await drain_time(redis, stats, [queue._queued, queue._active], [], n)
    commands = await stats.stop()
    stop(worker)
    await redis.aclose()
    return {
        "rate": n / seconds,
        "commands": commands,
        "redis_cpu_us": stats.cpu_seconds / n * 1e6,
        "enqueue_commands": enqueue_commands,
        "enqueue_cpu_us": enqueue_stats.cpu_seconds / n * 1e6,
    }


# --- 2. our worker layer --------------------------------------------------------------------------


def queue_env(url: str, folder: Path, **extra) -> dict[str, str]:
    return {
        "USE_JOB_QUEUE": "true",
        "REDIS_URL": url,
        "DATABASE_URL": f"sqlite:///{folder}/bench.db",
        "CHAT_QUEUE_CONCURRENCY": str(CONCURRENCY),
        "CHAT_RATE_LIMIT_PER_MINUTE": "0",
        "LOG_LEVEL": "WARNING",
        **{key: str(value) for key, value in extra.items()},
    }


async def bench_our_worker(url: str, n: int, folder: Path, profile: str | None) -> dict:
    from redis import asyncio as aioredis

    from bioagents import store
    from bioagents.config import Settings
    from bioagents.db import Database
    from bioagents.jobs.base import JobState
    from bioagents.jobs.handler import job_data
    from bioagents.jobs.spec import queue_specs
    from bioagents.queue_mode import QueueServices

    env = queue_env(url, folder)
    settings = Settings.from_env(env)
    db = Database(settings.database_url)
    db.migrate()
    services = QueueServices(settings, queue_specs(settings), subscribe=False)
    await services.start(None, None, None)
    jobs = services.jobs
    redis = aioredis.from_url(url)
    await jobs.pause("chat")

    # The N chats as POST /api/chat accepts them: the PENDING row, then the job.
    statements_before = db.statements
    messages = []
    for i in range(n):
        accepted = await db.run(
            store.accept_message, f"user-{i % 50}", None, f"question {i}", "chat", dedupe=False
        )
        messages.append(accepted.message)
    accept_statements = (db.statements - statements_before) / n
    stats = CommandStats(redis)
    await stats.start()
    started = time.perf_counter()
    for start in range(0, n, 1000):
        await asyncio.gather(
            *(jobs.enqueue("chat", m.id, job_data(m)) for m in messages[start : start + 1000])
        )
    enqueue_seconds = time.perf_counter() - started
    enqueue_commands = await stats.stop()
    enqueue_cpu_us = stats.cpu_seconds / n * 1e6

    worker_env = dict(env)
    if profile:
        worker_env["BENCH_PROFILE"] = profile
    worker = spawn(
        [str(Path(__file__)), "--our-worker", "chat"], worker_env, folder / "our-worker.log"
    )
    deadline = time.monotonic() + 30
    while not await redis.zcard("saq:chat:workers"):
        if time.monotonic() > deadline or worker.poll() is not None:
            raise RuntimeError((folder / "our-worker.log").read_text()[-3000:])
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    await stats.start()
    await jobs.resume("chat")
    stats._note("del")
    stats._note("zadd")
    seconds = await drain_time(redis, stats, ["saq:chat:waiting"], ["saq:chat:running"], n)
    commands = await stats.stop()
    redis_cpu_us = stats.cpu_seconds / n * 1e6
    report = json.loads(stop(worker).strip().splitlines()[-1])

    # Bytes per retained job: Redis's memory with the retained jobs, less after cleaning them.
    retained = await redis.llen("saq:chat:completed")
    memory_after = (await redis.info("memory"))["used_memory"]
    sample_ids = [i.decode() for i in await redis.lrange("saq:chat:completed", 0, 49)]
    payloads = []
    for job_id in sample_ids:
        record = json.loads(await redis.get(f"saq:job:chat:{job_id}"))
        payloads.append(len(json.dumps(record["kwargs"])) + len(json.dumps(record["result"])))
    key_usage = await redis.memory_usage(f"saq:job:chat:{sample_ids[0]}")
    await jobs.clean("chat", JobState.COMPLETED, 0)
    memory_clean = (await redis.info("memory"))["used_memory"]
    completed_count = await db.run(
        lambda: db.peewee.execute_sql(
            "SELECT COUNT(*) FROM messages WHERE status = 'COMPLETE'"
        ).fetchone()[0]
    )
    await redis.aclose()
    await services.close()
    db.close()
    return {
        "rate": n / seconds,
        "redis_cpu_us": redis_cpu_us,
        "completed_rows": completed_count,
        "commands": commands,
        "enqueue_commands": enqueue_commands,
        "enqueue_rate": n / enqueue_seconds,
        "enqueue_cpu_us": enqueue_cpu_us,
        "accept_statements": accept_statements,
        "worker_statements": report["statements"] / n,
        "round_trips": report["round_trips"],
        "pipelined_commands": report["pipelined_commands"],
        "retained": retained,
        "bytes_per_retained": (memory_after - memory_clean) / max(1, retained),
        "payload_bytes": sum(payloads) / max(1, len(payloads)),
        "key_usage": key_usage,
    }


# --- 3 and 4. over HTTP ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_http(url: str, folder: Path, latency_n: int, http_n: int, inflight: int) -> dict:
    env = queue_env(url, folder / "http")
    (folder / "http").mkdir()
    with serve_process(env, log=folder / "serve.log") as (base, server):
        serve_pid = server.pid
        worker = spawn(
            [str(ROOT / "bioagents.py"), "worker", "--queue", "chat"], env, folder / "w.log"
        )
        async with aiohttp.ClientSession(headers={"X-User-Id": "bench"}) as http:
            ws, conversation = await subscribed_socket(http, base)
            body = {"message": "What does p53 do?", "conversationId": conversation}

            async def one() -> float:
                started = time.perf_counter()
                async with http.post(f"{base}/api/chat", json=body) as response:
                    job_id = (await response.json())["jobId"]
                while True:
                    event = await ws.receive_json(timeout=10)
                    if event["type"] == "job:completed" and event["jobId"] == job_id:
                        return (time.perf_counter() - started) * 1000

            for _ in range(50):
                await one()
            latencies = [await one() for _ in range(latency_n)]
            await ws.close()
            stop(worker)

            semaphore = asyncio.Semaphore(inflight)
            statuses: dict[int, int] = {}

            async def post() -> None:
                async with semaphore, http.post(f"{base}/api/chat", json=body) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

            serve_cpu = cpu_seconds(serve_pid)
            started = time.perf_counter()
            await asyncio.gather(*(post() for _ in range(http_n)))
            elapsed = time.perf_counter() - started
            serve_cpu = cpu_seconds(serve_pid) - serve_cpu
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "enqueue_per_s": http_n / elapsed,
        "serve_cpu_share": serve_cpu / elapsed,
        "serve_cpu_us": serve_cpu / http_n * 1e6,
        "statuses": statuses,
    }


# --- the report -----------------------------------------------------------------------------------


def per_job(commands: dict[str, int], n: int) -> str:
    top = sorted(commands.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {calls / n:.2f}" for name, calls in top if calls / n >= 0.01)


async def run(args) -> None:
    with tempfile.TemporaryDirectory() as folder_name, redis_server(folder_name) as url:
        folder = Path(folder_name)
        raw = await bench_raw_saq(url, args.n, folder)
        ours = await bench_our_worker(url, args.n, folder, args.profile)
        over_http = await bench_http(url, folder, args.latency_n, args.http_n, args.inflight)

    n = args.n
    raw_commands = sum(raw["commands"].values()) / n
    our_commands = sum(ours["commands"].values()) / n
    enqueue_commands = sum(ours["enqueue_commands"].values()) / n
    print(f"queue mode benchmark: one redis-server, {os.cpu_count()} CPU(s), N = {n}")
    print(f"  raw SAQ, 1 worker process, c={CONCURRENCY}, no-op jobs:")
    print(
        f"    {raw['rate']:8.0f} jobs/s   ({raw_commands:.1f} Redis commands/job in the drain, "
        f"Redis CPU {raw['redis_cpu_us']:.0f} µs/job)"
    )
    print(f"  our worker layer, 1 process, c={CONCURRENCY}, no-op chats (DB write, 7 events):")
    print(
        f"    {ours['rate']:8.0f} jobs/s   ratio {ours['rate'] / raw['rate']:.2f} "
        f"(target ≥ 2.0); {ours['completed_rows']} messages COMPLETE"
    )
    print(
        f"    Redis commands/job: {our_commands:.1f} in the worker + {enqueue_commands:.1f} to "
        f"enqueue = {our_commands + enqueue_commands:.1f}"
    )
    print(
        f"      Redis CPU {ours['redis_cpu_us']:.0f} µs/job in the drain; worker: "
        f"{per_job(ours['commands'], n)}"
    )
    print(
        f"      Redis CPU {ours['enqueue_cpu_us']:.0f} µs/job to enqueue: "
        f"{per_job(ours['enqueue_commands'], n)}"
    )
    print(f"      raw SAQ drain: {per_job(raw['commands'], n)}")
    print(
        f"      raw SAQ enqueue: Redis CPU {raw['enqueue_cpu_us']:.0f} µs/job, "
        f"{per_job(raw['enqueue_commands'], n)}"
    )
    print(
        f"    pipelining: {ours['pipelined_commands'] / max(1, ours['round_trips']):.1f} "
        f"commands per round trip ({ours['round_trips'] / n:.2f} round trips/job)"
    )
    print(
        f"    database statements/job: {ours['worker_statements']:.2f} in the worker, "
        f"{ours['accept_statements']:.2f} to accept the POST"
    )
    print(
        f"    Redis bytes per retained completed job: {ours['bytes_per_retained']:.0f} "
        f"({ours['retained']} retained), of which payload (data + result JSON) "
        f"{ours['payload_bytes']:.0f}: {ours['bytes_per_retained'] - ours['payload_bytes']:.0f} "
        f"beyond it (target ≤ 450); MEMORY USAGE of one job key: {ours['key_usage']}"
    )
    print(f"    enqueue through SaqJobQueue (pipelined, in-process): {ours['enqueue_rate']:.0f}/s")
    print("  over HTTP (serve + worker processes, WebSocket on serve):")
    print(
        f"    POST→job:completed p50 {over_http['p50']:.2f} ms, p99 {over_http['p99']:.2f} ms "
        f"(target p50 ≤ 5 ms)"
    )
    print(
        f"    POST /api/chat: {over_http['enqueue_per_s']:.0f} req/s with {args.inflight} in "
        f"flight (target ≥ 2000); statuses {over_http['statuses']}"
    )
    print(
        f"      the serve process used {over_http['serve_cpu_share']:.0%} of one CPU, "
        f"{over_http['serve_cpu_us']:.0f} µs per request (the load generator shares the CPUs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--latency-n", type=int, default=400)
    parser.add_argument("--http-n", type=int, default=6000)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--profile", help="write a cProfile of our worker's drain here")
    parser.add_argument("--raw-saq-worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--our-worker", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _uvloop()
    if args.raw_saq_worker:
        asyncio.run(raw_saq_worker(args.raw_saq_worker))
    elif args.our_worker:
        asyncio.run(our_worker([args.our_worker]))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
