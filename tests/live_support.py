"""Helpers for the live-answer tests (replay, streaming, cancel): reading frames off a socket
and rebuilding an answer from its deltas the way a client does."""

from __future__ import annotations

import time

from tests.api_support import chat_status_when
from tests.conftest import open_socket, post_chat, subscribe

ENDS = ("job:completed", "job:failed", "job:cancelled")


def order(notification_id: str) -> tuple[int, int]:
    ms, _, n = notification_id.partition("-")
    return int(ms), int(n)


async def frames_until(ws, done, timeout: float = 30.0) -> list[dict]:
    """Frames received until `done(frame)` is true for one (included)."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
        frames.append(frame)
        if done(frame):
            return frames


async def until_end(ws, job_id: str | None = None, timeout: float = 30.0) -> list[dict]:
    """Frames until a job (this one, if named) completes, fails or is cancelled."""
    return await frames_until(
        ws,
        lambda f: f.get("type") in ENDS and (job_id is None or f.get("jobId") == job_id),
        timeout,
    )


async def next_frames(ws, count: int, timeout: float = 15.0) -> list[dict]:
    return [await ws.receive_json(timeout=timeout) for _ in range(count)]


async def nothing_more(ws) -> None:
    """No frame is waiting: the hub writes in order, so a pong answered now comes first."""
    await ws.send_json({"action": "ping"})
    assert await ws.receive_json(timeout=5) == {"type": "pong"}


def kept(frames: list[dict]) -> list[dict]:
    """The kept notifications among frames (not deltas, not control frames)."""
    return [f for f in frames if "id" in f]


def deltas(frames: list[dict], job_id: str | None = None) -> list[dict]:
    return [
        f
        for f in frames
        if f.get("type") == "message:delta" and (job_id is None or f["jobId"] == job_id)
    ]


def apply_deltas(text: str, frames: list[dict]) -> str:
    """What a client arriving mid-answer shows: the text it fetched, extended by the deltas
    whose offset follows it (a delta overlapping the fetched text adds only its new end)."""
    for delta in frames:
        end = delta["offset"] + len(delta["text"])
        if delta["offset"] <= len(text) < end:
            text += delta["text"][len(text) - delta["offset"] :]
    return text


async def watched_conversation(client, user: str = "alice", **subscribe_options):
    """A socket subscribed to a conversation of `user`'s that already exists and is quiet."""
    _, first = await post_chat(client, "open the conversation", user=user)
    await chat_status_when(client, first["jobId"], "completed", user=user)
    ws = await open_socket(client, user)
    await subscribe(ws, first["conversationId"], **subscribe_options)
    return ws, first["conversationId"]
