"""Queue-mode fixtures: a real `redis-server` (Debian's) on a free loopback port with its own
folder and `appendonly yes`, and `serve`/`worker` processes of the real program. Everything
started here is stopped by its pid at the end of the test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bioagents.config import Settings
from bioagents.jobs.spec import queue_specs
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process; `stop()` + `start()` restarts it on the same port and folder
    (with appendonly, the data comes back)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 (kept open by the child)
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError((self.folder / "redis.log").read_text()[-2000:])
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.port)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server):
    client = redis_server.client()
    yield client
    await client.aclose()


@pytest.fixture
def queue_env(redis_server, tmp_path) -> dict[str, str]:
    """The environment of every process of a test: queue mode on this Redis, one SQLite file."""
    return {
        "USE_JOB_QUEUE": "true",
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": f"sqlite:///{tmp_path}/bioagents.db",
        "BIOAGENTS_SECRET": "test-secret",
        "CHAT_RATE_LIMIT_PER_MINUTE": "0",
        "DEEP_RESEARCH_RATE_LIMIT_PER_5MIN": "0",
        "STALLED_INTERVAL": "2",
        "SHUTDOWN_GRACE_SECONDS": "5",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }


def settings_from(env: dict[str, str], **extra) -> Settings:
    return Settings.from_env({**env, **{key: str(value) for key, value in extra.items()}})


class AppProcess:
    """`python bioagents.py <args>` with `env`; its stderr goes to a file named after it."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], folder: Path):
        self.name = name
        self.args = args
        self.env = env
        self.log_path = folder / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AppProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bioagents.py"), *self.args],
            env={**os.environ, **self.env},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGCONT)  # in case a test left it stopped
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Processes:
    """Starts `serve` and `worker` processes for a test and stops them all at its end."""

    def __init__(self, env: dict[str, str], folder: Path, redis_server: RedisServer):
        self.env = env
        self.folder = folder
        self.redis_server = redis_server
        self.started: list[AppProcess] = []

    def _next_name(self, kind: str) -> str:
        return f"{kind}-{sum(p.name.startswith(kind) for p in self.started) + 1}"

    async def serve(self, *extra: str, **env) -> AppProcess:
        """A `serve` copy, returned once it answers HTTP."""
        app = AppProcess(self._next_name("serve"), [], {**self.env, **_text_env(env)}, self.folder)
        app.port = free_port()
        app.args = ["serve", "--port", str(app.port), *extra]
        self.started.append(app.start())
        deadline = time.monotonic() + 20
        while True:
            try:
                await asyncio.to_thread(
                    lambda: urllib.request.urlopen(
                        f"{app.base_url}/api/openapi.json", timeout=1
                    ).read()
                )
                return app
            except OSError:
                if app.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{app.name} did not start:\n{app.log()[-3000:]}") from None
                await asyncio.sleep(0.05)

    async def worker(self, *queues: str, wait: bool = True, **env) -> AppProcess:
        """A `worker` process, returned once its first heartbeat is in Redis."""
        args = ["worker"]
        for queue in queues:
            args += ["--queue", queue]
        app = AppProcess(
            self._next_name("worker"), args, {**self.env, **_text_env(env)}, self.folder
        )
        self.started.append(app.start())
        if wait:
            await wait_until(lambda: _logged_ready(app), timeout=20, what=f"{app.name} ready")
        return app

    def stop_all(self) -> None:
        for app in reversed(self.started):
            app.stop()


def _text_env(env: dict) -> dict[str, str]:
    return {key: str(value) for key, value in env.items()}


async def _logged_ready(app: AppProcess) -> bool:
    if app.process.poll() is not None:
        raise RuntimeError(f"{app.name} exited:\n{app.log()[-3000:]}")
    return "first heartbeat stored" in app.log()


@pytest.fixture
async def procs(queue_env, tmp_path, redis_server):
    processes = Processes(queue_env, tmp_path, redis_server)
    yield processes
    await asyncio.to_thread(processes.stop_all)


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = ""):
    """Poll an async predicate until it is truthy; returns its value."""
    return await wait_for(predicate, timeout, interval, what)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post_chat(http, app: AppProcess, message="What does p53 do?", user="alice", **body):
    async with http.post(
        f"{app.base_url}/api/chat",
        json={"message": message, **body},
        headers={"X-User-Id": user},
    ) as response:
        return response.status, await response.json()


async def get_json(http, app: AppProcess, path: str, user="alice"):
    async with http.get(f"{app.base_url}{path}", headers={"X-User-Id": user}) as response:
        return response.status, await response.json()


async def chat_status(http, app: AppProcess, job_id: str, user="alice") -> dict:
    return (await get_json(http, app, f"/api/chat/status/{job_id}", user))[1]


async def until_status(
    http, app, job_id, states=("completed", "failed"), timeout=20.0, user="alice"
):
    async def check():
        body = await chat_status(http, app, job_id, user)
        return body if body.get("status") in states else None

    return await wait_until(check, timeout=timeout, what=f"job {job_id} in {states}")


class ChannelRecorder:
    """Records every event published on Redis for one conversation (as any subscriber sees)."""

    def __init__(self, redis_server: RedisServer, conversation_id: str | None = None):
        self.client = redis_server.client()
        self.pattern = f"conversation:{conversation_id or '*'}"
        self.events: list[dict] = []
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> ChannelRecorder:
        import orjson

        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(self.pattern)

        async def read():
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message and message["type"] == "pmessage":
                    self.events.append(orjson.loads(message["data"]))

        self._task = asyncio.get_running_loop().create_task(read())
        self._pubsub = pubsub
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._pubsub.aclose()
        await self.client.aclose()

    def of(self, job_id: str, event_type: str | None = None) -> list[dict]:
        return [
            e
            for e in self.events
            if e.get("jobId") == job_id and (event_type is None or e["type"] == event_type)
        ]


async def saq_record(redis, job_id: str, queue: str = "chat") -> dict | None:
    """The job as SAQ stores it (`saq:job:<queue>:<id>`, Job.to_dict())."""
    import orjson

    raw = await redis.get(f"saq:job:{queue}:{job_id}")
    return orjson.loads(raw) if raw else None


async def owner_of(redis, job_id: str, queue: str = "chat") -> str | None:
    """The SAQ worker running the job now (its record's worker_id while active), or None."""
    record = await saq_record(redis, job_id, queue)
    if record is None or record.get("status") not in ("active", "aborting"):
        return None
    return record.get("worker_id")


def specs_for(env: dict[str, str]):
    return queue_specs(settings_from(env))


@pytest.fixture
async def open_services(queue_env):
    """`await open_services(specs=…, workers=[queues], **env)`: queue mode's services in this
    test's own event loop (job queue, notifier, rate limiter and, with `workers`, SAQ workers
    for those queues), over the test's Redis and database. Closed at the end of the test."""
    from bioagents.agents.llm import build_llm
    from bioagents.db import Database
    from bioagents.jobs.handler import AgentJobHandler
    from bioagents.queue_mode.services import open_queue_services

    stack = contextlib.AsyncExitStack()

    async def open_(specs=None, *, workers=None, **env):
        settings = settings_from(queue_env, **env)
        db = Database(settings.database_url)
        stack.callback(db.close)
        db.migrate()
        llm = build_llm(settings)
        await llm.start()
        stack.push_async_callback(llm.close)
        specs = specs or queue_specs(settings)
        services = await stack.enter_async_context(
            open_queue_services(settings, specs, subscribe=False)
        )
        services.db = db
        services.workers = None
        if workers:
            handler = AgentJobHandler(db, services.notifier, llm, specs)
            services.workers = await stack.enter_async_context(
                services.running_workers(handler, workers)
            )
            await asyncio.wait_for(services.workers.ready(), 10)
        return services

    yield open_
    await stack.aclose()


async def accept_chat(services, question="What does p53 do?", user="alice", queue="chat"):
    """A PENDING message and its job, as POST /api/chat makes them."""
    from bioagents import store
    from bioagents.jobs.handler import job_data

    accepted = await services.db.run(
        store.accept_message, user, None, question, queue, dedupe=False
    )
    message = accepted.message
    await services.jobs.enqueue(queue, message.id, job_data(message))
    return message.id
