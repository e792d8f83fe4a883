"""WebSocket hub benchmark (issue 9), not a test. One run, four parts, each printed next to a
baseline measured in the same run:

1. fan-out: one `serve` (in-process, offline provider without delay), 1,000 sockets subscribed
   to one conversation; one chat at a time; POST's 202 → `job:completed` on every socket
   (baseline: the same with one socket);
2. memory: 10,000 idle, JWT-authenticated, subscribed sockets (200 users, one conversation
   each): `serve` RSS per socket (baseline: a bare aiohttp WebSocket endpoint, same sockets);
3. queue mode: 2 `serve` copies + 1 worker on one Redis, the sockets' conversations split
   between the copies: frames each copy reads from Redis, per second (baseline: every frame
   published, which each copy used to read when it pattern-subscribed to everything);
4. streaming: 100 concurrent streamed answers from a paced SSE endpoint (one piece every
   20 ms, each stamped with the time it was written): delta frames/s delivered and the lag from
   a piece leaving the endpoint to its delta reaching the socket (baseline: the 50 ms
   coalescing window, which is part of that lag by design).

The sockets are driven by a lean asyncio client (RFC 6455 framing in a Protocol, no task per
frame), so the figures measure the server rather than the client; client and server share
this machine's CPUs.

    .venv/bin/python bench/hub.py [--sockets 1000] [--jobs 100] [--idle 10000] [--streams 100]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # run as a script: the project root, not bench/, comes first

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.common import free_port, percentile, serve_process  # noqa: E402
from bench.queue import cpu_seconds, redis_server, spawn, stop  # noqa: E402
from bioagents.auth import issue_token  # noqa: E402
from bioagents.config import Settings  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789"
BASE_ENV = {
    "AUTH_MODE": "jwt",
    "BIOAGENTS_SECRET": SECRET,
    "CHAT_RATE_LIMIT_PER_MINUTE": "0",
    "MAX_SOCKETS_PER_USER": "100000",  # one user's conversation watched by 1,000 sockets
    "LOG_LEVEL": "WARNING",
}
CONNECTING = 100  # handshakes in flight at once
STAMP = re.compile(rb"\[t=([0-9.]+)\]")
COMPLETED = b'{"type":"job:completed"'


def token(user: str) -> str:
    return issue_token(Settings.from_env(BASE_ENV), user, ttl=3600)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- a lean WebSocket client ------------------------------------------------------------------


class LeanSocket(asyncio.Protocol):
    """One client socket: upgrade, RFC 6455 frames in and (masked) out, pings answered.
    Text frames go to `on_text(socket, payload)`, only those that start with `watch` when it
    is set (the rest are skipped unread); until `on_text` is set, they are queued."""

    def __init__(self, host: str, path: str):
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buffer = bytearray()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.arrived = asyncio.Event()
        self.on_text = None
        self.watch: tuple[bytes, ...] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.buffer or not self.upgraded:
            self.buffer += data
            if not self.upgraded:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                if not self.buffer.startswith(b"HTTP/1.1 101"):
                    raise RuntimeError(bytes(self.buffer[:200]).decode(errors="replace"))
                self.upgraded = True
                del self.buffer[: end + 4]
            data, self.buffer = bytes(self.buffer), bytearray()
        # Frames are parsed in place; an incomplete one waits in the buffer for the rest.
        position, size = 0, len(data)
        while size - position >= 2:
            length, start = data[position + 1] & 0x7F, position + 2
            if length == 126:
                if size - position < 4:
                    break
                length, start = int.from_bytes(data[position + 2 : position + 4]), position + 4
            elif length == 127:
                if size - position < 10:
                    break
                length, start = int.from_bytes(data[position + 2 : position + 10]), position + 10
            if size < start + length:
                break
            opcode = data[position] & 0x0F
            position = start + length
            if opcode == 1:
                if self.on_text is None:
                    self.inbox.append(data[start:position])
                    self.arrived.set()
                elif self.watch is None or any(data.startswith(w, start) for w in self.watch):
                    self.on_text(self, data[start:position])
            elif opcode == 9:
                self._send(0xA, data[start:position])
        if position < size:
            self.buffer += data[position:]

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        length = len(payload)
        if length < 126:
            header = bytes((0x80 | opcode, 0x80 | length))
        else:
            header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2)
        assert self.transport is not None
        self.transport.write(header + mask + masked)

    def send_json(self, frame: dict) -> None:
        self._send(0x1, orjson.dumps(frame))

    async def expect(self, kind: str, timeout: float = 60.0) -> dict:
        """The next queued frame of `kind` (frames before it are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.inbox:
                frame = orjson.loads(self.inbox.popleft())
                if frame.get("type") == kind:
                    return frame
                if frame.get("type") == "error":
                    raise RuntimeError(frame)
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(base: str, path: str) -> LeanSocket:
    host, port = base.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    _, sock = await loop.create_connection(
        lambda: LeanSocket(f"{host}:{port}", path), host, int(port)
    )
    return sock


async def subscribed_socket(
    base: str, user: str, conversation: str, limit: asyncio.Semaphore, **options
) -> LeanSocket:
    async with limit:
        sock = await connect(base, f"/api/ws?token={token(user)}")
        await sock.expect("authenticated")
        sock.send_json({"action": "subscribe", "conversationId": conversation, **options})
        await sock.expect("subscribed")
        return sock


async def open_conversation(http, base: str, user: str) -> str:
    headers = {"Authorization": f"Bearer {token(user)}"}
    async with http.post(f"{base}/api/chat", json={"message": "warm up"}, headers=headers) as r:
        assert r.status == 202, await r.text()
        return (await r.json())["conversationId"]


# --- 1. fan-out latency -----------------------------------------------------------------------


async def fan_out(base: str, pid: int, sockets: int, jobs: int) -> dict:
    async with aiohttp.ClientSession() as http:
        conversation = await open_conversation(http, base, "bench")
        await asyncio.sleep(0.5)  # its own notifications are over
        limit = asyncio.Semaphore(CONNECTING)
        arrivals: dict[str, list[float]] = collections.defaultdict(list)
        everyone: dict[str, asyncio.Future] = {}
        group: list[LeanSocket] = []

        def on_text(sock: LeanSocket, payload: bytes) -> None:
            if payload.startswith(b'{"type":"job:completed"'):
                job_id = orjson.loads(payload)["jobId"]
                seen = arrivals[job_id]
                seen.append(time.perf_counter())
                if len(seen) == len(group) and job_id in everyone:
                    everyone[job_id].set_result(None)

        async def run_jobs(count: int) -> tuple[list[float], list[float]]:
            per_socket, per_job = [], []
            headers = {"Authorization": f"Bearer {token('bench')}"}
            body = {"message": "What does p53 do?", "conversationId": conversation}
            for _ in range(count):
                async with http.post(f"{base}/api/chat", json=body, headers=headers) as r:
                    job_id = (await r.json())["jobId"]
                    accepted = time.perf_counter()
                if len(arrivals[job_id]) < len(group):
                    everyone[job_id] = asyncio.get_running_loop().create_future()
                    await asyncio.wait_for(everyone[job_id], 30)
                latencies = [max(0.0, t - accepted) * 1000 for t in arrivals.pop(job_id)]
                per_socket += latencies
                per_job.append(max(latencies))
            return per_socket, per_job

        one = await subscribed_socket(base, "bench", conversation, limit)
        group.append(one)
        one.watch = (COMPLETED,)
        one.on_text = on_text
        await run_jobs(10)  # warm up
        _, base_job = await run_jobs(jobs)

        more = await asyncio.gather(
            *(subscribed_socket(base, "bench", conversation, limit) for _ in range(sockets - 1))
        )
        for sock in more:
            sock.watch = (COMPLETED,)
            sock.on_text = on_text
        group.extend(more)
        await run_jobs(10)
        serve_before, client_before = cpu_seconds(pid), time.process_time()
        many_socket, many_job = await run_jobs(jobs)
        serve_cpu = (cpu_seconds(pid) - serve_before) / jobs * 1000
        client_cpu = (time.process_time() - client_before) / jobs * 1000
        for sock in group:
            sock.close()
    return {
        "base_p50": percentile(base_job, 50),
        "base_p99": percentile(base_job, 99),
        "socket_p50": percentile(many_socket, 50),
        "socket_p99": percentile(many_socket, 99),
        "every_p50": percentile(many_job, 50),
        "every_p99": percentile(many_job, 99),
        "serve_cpu": serve_cpu,
        "client_cpu": client_cpu,
    }


# --- 2. memory ----------------------------------------------------------------------------------

BARE_SERVER = """
import asyncio, sys
from aiohttp import web
async def ws(request):
    sock = web.WebSocketResponse(heartbeat=30, compress=False)
    await sock.prepare(request)
    async for _ in sock:
        pass
    return sock
app = web.Application()
app.router.add_get("/api/ws", ws)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, backlog=1024)
"""


async def idle_memory(base: str, pid: int, count: int, users: int) -> float:
    """KiB of `serve` RSS per idle, authenticated, subscribed socket."""
    async with aiohttp.ClientSession() as http:
        conversations = [await open_conversation(http, base, f"user-{n}") for n in range(users)]
    await asyncio.sleep(1.0)
    limit = asyncio.Semaphore(CONNECTING)
    warm = await asyncio.gather(
        *(subscribed_socket(base, f"user-{n}", conversations[n], limit) for n in range(users))
    )
    await asyncio.sleep(1.0)
    before = rss_kib(pid)
    held = await asyncio.gather(
        *(
            subscribed_socket(base, f"user-{n % users}", conversations[n % users], limit)
            for n in range(count)
        )
    )
    await asyncio.sleep(2.0)
    after = rss_kib(pid)
    for sock in [*warm, *held]:
        sock.close()
    return (after - before) / count


async def bare_memory(count: int) -> float:
    """KiB of RSS per idle socket of a bare aiohttp WebSocket endpoint."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                probe = await connect(base, "/api/ws")
                await asyncio.sleep(0.1)
                probe.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        limit = asyncio.Semaphore(CONNECTING)

        async def one() -> LeanSocket:
            async with limit:
                return await connect(base, "/api/ws")

        warm = await asyncio.gather(*(one() for _ in range(200)))
        await asyncio.sleep(1.0)
        before = rss_kib(process.pid)
        held = await asyncio.gather(*(one() for _ in range(count)))
        await asyncio.sleep(2.0)
        after = rss_kib(process.pid)
        for sock in [*warm, *held]:
            sock.close()
        return (after - before) / count
    finally:
        process.kill()  # its open sockets would hold a graceful stop for a minute
        process.wait(timeout=10)


# --- 3. queue mode: what each copy reads --------------------------------------------------------


async def queue_fan_out(folder: Path, conversations: int, per_conversation: int, jobs: int):
    with redis_server(str(folder)) as url:
        env = {
            **BASE_ENV,
            "USE_JOB_QUEUE": "true",
            "REDIS_URL": url,
            "DATABASE_URL": f"sqlite:///{folder}/queue.db",
            "CHAT_QUEUE_CONCURRENCY": "16",
            "LOG_LEVEL": "INFO",  # the copies log how much they read from Redis as they stop
        }
        worker = spawn(["bioagents.py", "worker", "--queue", "chat"], env, folder / "worker.log")
        logs = [folder / "serve-a.log", folder / "serve-b.log"]
        try:
            with (
                serve_process(env, log=logs[0]) as (first, first_process),
                serve_process(env, log=logs[1]) as (second, second_process),
            ):
                copies = [first, second]
                figures = await _drive_copies(url, copies, conversations, per_conversation, jobs)
                cpu = [cpu_seconds(p.pid) for p in (first_process, second_process)]
        finally:
            stop(worker)
        received = [
            int(re.search(r"notifications: (\d+) messages received", log.read_text()).group(1))
            for log in logs
        ]
    return {**figures, "received": received, "cpu": cpu}


async def _drive_copies(url, copies, conversations, per_conversation, jobs) -> dict:
    from redis import asyncio as aioredis

    redis = aioredis.Redis.from_url(url)
    everything = redis.pubsub(ignore_subscribe_messages=True)
    await everything.psubscribe("conversation:*")  # the old way: every copy read all of this
    published = 0

    async def count_all() -> None:
        nonlocal published
        while True:
            if await everything.get_message(timeout=1.0) is not None:
                published += 1

    counter = asyncio.get_running_loop().create_task(count_all())
    async with aiohttp.ClientSession() as http:
        ids = [await open_conversation(http, copies[0], "bench") for _ in range(conversations)]
        await asyncio.sleep(2.0)
        limit = asyncio.Semaphore(CONNECTING)
        completed: collections.Counter[str] = collections.Counter()
        done = asyncio.Event()
        expected = conversations * jobs * per_conversation

        def on_text(sock: LeanSocket, payload: bytes) -> None:
            if payload.startswith(b'{"type":"job:completed"'):
                completed["all"] += 1
                if completed["all"] == expected:
                    done.set()

        sockets = await asyncio.gather(
            *(
                subscribed_socket(copies[n * 2 // conversations], "bench", ids[n], limit)
                for n in range(conversations)
                for _ in range(per_conversation)
            )
        )
        for sock in sockets:
            sock.on_text = on_text
        published = 0
        headers = {"Authorization": f"Bearer {token('bench')}"}
        started = time.perf_counter()
        inflight = asyncio.Semaphore(32)

        async def post(conversation: str, copy: str) -> None:
            async with inflight:
                body = {"message": "fan out", "conversationId": conversation}
                async with http.post(f"{copy}/api/chat", json=body, headers=headers) as r:
                    assert r.status == 202

        await asyncio.gather(
            *(post(ids[n], copies[n % 2]) for _ in range(jobs) for n in range(conversations))
        )
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1.0)
        for sock in sockets:
            sock.close()
    counter.cancel()
    await everything.aclose()
    await redis.aclose()
    return {"published": published, "elapsed": elapsed}


# --- 4. streaming -------------------------------------------------------------------------------


def paced_llm(pieces: int, interval: float) -> web.Application:
    """An OpenAI-compatible SSE endpoint: each piece carries the time it was written."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        question = body["messages"][-1]["content"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        count = 1 if question == "warm up" else pieces
        for n in range(count):
            if n:
                await asyncio.sleep(interval)
            chunk = {"choices": [{"delta": {"content": f"[t={time.time():.6f}] word "}}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        usage = {"prompt_tokens": 10, "completion_tokens": 2 * count}
        await response.write(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def streaming(folder: Path, streams: int, pieces: int, interval: float) -> dict:
    runner = web.AppRunner(paced_llm(pieces, interval), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    env = {
        **BASE_ENV,
        "DATABASE_URL": f"sqlite:///{folder}/stream.db",
        "LLM_PROVIDER": "openai",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "CHAT_QUEUE_CONCURRENCY": str(streams),
    }
    try:
        with serve_process(env) as (base, _):
            return await _stream_answers(base, streams)
    finally:
        await runner.cleanup()


async def _stream_answers(base: str, streams: int) -> dict:
    async with aiohttp.ClientSession() as http:
        ids = [await open_conversation(http, base, "bench") for _ in range(streams)]
        await asyncio.sleep(1.0)
        limit = asyncio.Semaphore(CONNECTING)
        sockets = await asyncio.gather(
            *(subscribed_socket(base, "bench", ids[n], limit, stream=True) for n in range(streams))
        )
        lags: list[float] = []
        delivered = 0
        finished = 0
        done = asyncio.Event()

        def on_text(sock: LeanSocket, payload: bytes) -> None:
            nonlocal delivered, finished
            if payload.startswith(b'{"type":"message:delta"'):
                now = time.time()
                delivered += 1
                lags.extend((now - float(stamp)) * 1000 for stamp in STAMP.findall(payload))
            elif payload.startswith(b'{"type":"job:completed"'):
                finished += 1
                if finished == streams:
                    done.set()

        for sock in sockets:
            sock.on_text = on_text
        headers = {"Authorization": f"Bearer {token('bench')}"}
        started = time.perf_counter()

        async def post(conversation: str) -> None:
            body = {"message": "stream a long answer", "conversationId": conversation}
            async with http.post(f"{base}/api/chat", json=body, headers=headers) as r:
                assert r.status == 202

        await asyncio.gather(*(post(c) for c in ids))
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - started
        for sock in sockets:
            sock.close()
    return {
        "deltas": delivered,
        "elapsed": elapsed,
        "per_s": delivered / elapsed,
        "lag_p50": percentile(lags, 50),
        "lag_p99": percentile(lags, 99),
        "pieces": len(lags),
    }


# --- the run ------------------------------------------------------------------------------------


async def run(args) -> None:
    print(f"hub benchmark: {os.cpu_count()} CPU(s); client and server on this machine")
    with tempfile.TemporaryDirectory() as raw:
        folder = Path(raw)
        if "1" in args.parts:
            await part_fan_out(folder, args)
        if "2" in args.parts:
            await part_memory(folder, args)
        if "3" in args.parts:
            await part_queue(folder)
        if "4" in args.parts:
            await part_streaming(folder, args)


async def part_fan_out(folder: Path, args) -> None:
    env = {**BASE_ENV, "DATABASE_URL": f"sqlite:///{folder}/fan.db"}
    with serve_process(env) as (base, process):
        fan = await fan_out(base, process.pid, args.sockets, args.jobs)
    print(f"\n1. fan-out, in-process serve, one chat at a time ({args.jobs} chats)")
    print(
        f"   baseline, 1 socket:         202 → job:completed p50 {fan['base_p50']:.1f} ms, "
        f"p99 {fan['base_p99']:.1f} ms"
    )
    print(
        f"   {args.sockets} sockets, every socket: p50 {fan['every_p50']:.1f} ms, "
        f"p99 {fan['every_p99']:.1f} ms   (target p99 ≤ 50 ms)"
    )
    print(
        f"   {args.sockets} sockets, each socket:  p50 {fan['socket_p50']:.1f} ms, "
        f"p99 {fan['socket_p99']:.1f} ms"
    )
    print(
        f"   where the time goes, per chat with {args.sockets} sockets: serve CPU "
        f"{fan['serve_cpu']:.1f} ms, this client's CPU {fan['client_cpu']:.1f} ms "
        "(both processes share the CPUs)"
    )


async def part_memory(folder: Path, args) -> None:
    env = {**BASE_ENV, "DATABASE_URL": f"sqlite:///{folder}/idle.db"}
    with serve_process(env) as (base, process):
        ours = await idle_memory(base, process.pid, args.idle, users=200)
    bare = await bare_memory(args.idle)
    print(f"\n2. memory, {args.idle:,} idle sockets")
    print(f"   baseline, bare aiohttp WebSocket endpoint: {bare:.1f} KiB per socket")
    print(
        f"   serve, JWT-authenticated and subscribed:  {ours:.1f} KiB per socket   (target ≤ 16 KB)"
    )


async def part_queue(folder: Path) -> None:
    queue = await queue_fan_out(folder, conversations=40, per_conversation=5, jobs=10)
    elapsed = queue["elapsed"]
    print(
        "\n3. queue mode: 2 serve copies + 1 worker, 40 conversations x 5 sockets, the "
        "conversations split between the copies, 400 chats"
    )
    print(
        f"   baseline: frames published, which every copy read before: "
        f"{queue['published']:,} ({queue['published'] / elapsed:,.0f}/s)"
    )
    for name, received, cpu in zip("AB", queue["received"], queue["cpu"], strict=True):
        print(
            f"   copy {name} read {received:,} frames from Redis ({received / elapsed:,.0f}/s, "
            f"{received / max(queue['published'], 1):.0%} of all), {cpu:.1f} CPU s in total"
        )


async def part_streaming(folder: Path, args) -> None:
    stream = await streaming(folder, args.streams, pieces=100, interval=0.02)
    print(f"\n4. streaming: {args.streams} concurrent answers, 100 pieces each, one every 20 ms")
    print(
        f"   {stream['deltas']:,} delta frames in {stream['elapsed']:.1f} s: "
        f"{stream['per_s']:,.0f}/s delivered"
    )
    print(
        f"   lag, piece written → its delta on the socket ({stream['pieces']:,} pieces): "
        f"p50 {stream['lag_p50']:.1f} ms, p99 {stream['lag_p99']:.1f} ms   "
        "(baseline: deltas are coalesced over 50 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 13")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
