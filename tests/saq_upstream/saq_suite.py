"""A pytest plugin that runs SAQ's own Redis tests — the unmodified `tests/` folder of the
pinned saq release's source distribution — with our queue class in place of SAQ's RedisQueue.

SAQ's test files import `tests.helpers`, which the source distribution does not ship. This
plugin provides it, building `BioagentsQueue` exactly as SAQ's helpers build `RedisQueue`
(`from_url(url, **kwargs)`, then `connect()`), against a redis-server of its own on a free
loopback port. Only the Redis classes run (Postgres and the HTTP proxy are other backends);
each exception is listed in EXCEPTIONS with the reason it cannot hold.

Run by scripts/test.sh:  cd <saq sdist> && pytest -p saq_suite tests/test_queue.py …
(with this folder on PYTHONPATH).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
import typing as t

import pytest
from saq.queue import Queue
from saq.queue.redis import RedisQueue

from bioagents.queue_mode.queue import BioagentsQueue

REDIS_CLASSES = {"TestQueueError", "TestRedisQueue", "TestJobRedisQueue", "TestWorkerRedisQueue"}
EXCEPTIONS = {
    "test_job.py::TestJobRedisQueue::test_pandas": (
        "serialises a pandas DataFrame with Job.to_dict(), no queue involved; pandas is not a "
        "dependency of ours"
    ),
}

_server: dict[str, t.Any] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis() -> str:
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="saq-suite-redis-")
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)
    _server.update(process=process, folder=folder, url=f"redis://127.0.0.1:{port}")
    return _server["url"]


# --- what SAQ's `tests/helpers.py` provides, with our class --------------------------------


async def create_redis_queue(url: str | None = None, **kwargs: t.Any) -> RedisQueue:
    url = url or _server["url"]
    if not url.startswith("redis"):
        return t.cast(RedisQueue, Queue.from_url(url, **kwargs))  # SAQ's own URL error
    queue = BioagentsQueue.from_url(url, **kwargs)
    await queue.connect()
    await queue.redis.flushdb()
    return queue


async def create_postgres_queue(**kwargs: t.Any) -> Queue:
    pytest.skip("PostgreSQL queue: not the backend under test")


async def cleanup_queue(queue: Queue) -> None:
    if isinstance(queue, RedisQueue):
        await queue.redis.flushdb()
    await queue.disconnect()


async def setup_postgres() -> None:
    pytest.skip("PostgreSQL queue: not the backend under test")


async def teardown_postgres() -> None:
    return None


# --- pytest hooks ---------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    _start_redis()
    helpers = types.ModuleType("tests.helpers")
    for name in (
        "create_redis_queue",
        "create_postgres_queue",
        "cleanup_queue",
        "setup_postgres",
        "teardown_postgres",
    ):
        setattr(helpers, name, globals()[name])
    package = sys.modules.get("tests") or types.ModuleType("tests")
    package.__path__ = getattr(package, "__path__", [])  # a package, so `tests.helpers` resolves
    package.helpers = helpers  # type: ignore[attr-defined]
    sys.modules.setdefault("tests", package)
    sys.modules["tests.helpers"] = helpers


def pytest_unconfigure(config: pytest.Config) -> None:
    process = _server.get("process")
    if process is not None:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(_server["folder"], ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        cls = item.cls.__name__ if item.cls else ""
        (kept if cls in REDIS_CLASSES else dropped).append(item)
        reason = EXCEPTIONS.get(f"{item.path.name}::{cls}::{item.name}")
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"listed exception: {reason}"))
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def pytest_report_header(config: pytest.Config) -> str:
    import saq

    return f"SAQ {saq.__version__}'s own Redis tests on {BioagentsQueue.__module__}.BioagentsQueue"
