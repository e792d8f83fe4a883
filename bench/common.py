"""Helpers shared by the benchmark scripts: free ports, a `serve` subprocess, percentiles."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def serve_process(
    env: dict[str, str], *args: str, log: Path | None = None, program: list[str] | None = None
):
    """`python bioagents.py serve` (or `program`, which takes the same arguments) on a free
    127.0.0.1 port, its stderr in `log` (a temporary file by default); yields (base URL,
    process); SIGTERM at the end."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "serve.log"
        command = program or [sys.executable, str(ROOT / "bioagents.py"), "serve"]
        process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stack.enter_context(open(log, "wb")),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{base}/api/openapi.json", timeout=1).read()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(log.read_text()[-3000:]) from None
                    time.sleep(0.1)
            yield base, process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


async def subscribed_socket(http, base: str, user: str = "bench"):
    """POST a first chat, open a WebSocket as `user` and subscribe to that chat's
    conversation; returns (socket, conversation id)."""
    async with http.post(f"{base}/api/chat", json={"message": "warm up"}) as response:
        conversation = (await response.json())["conversationId"]
    ws = await http.ws_connect(f"{base.replace('http', 'ws')}/api/ws")
    await ws.receive_json()
    await ws.send_json({"action": "auth", "userId": user})
    await ws.receive_json()
    await ws.send_json({"action": "subscribe", "conversationId": conversation})
    while (await ws.receive_json())["type"] != "subscribed":
        pass
    return ws, conversation
