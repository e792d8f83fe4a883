"""Live notifications in queue mode, across real `serve` and `worker` processes on one Redis
(SPEC §5, §10): replay from the log Redis keeps, shared by every copy; an open socket misses
nothing across a Redis restart; each copy receives only the conversations its sockets follow;
deltas cross processes."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal

import orjson
import pytest

from tests.live_support import deltas, nothing_more, order, until_end

from .conftest import ChannelRecorder, get_json, post_chat, until_status, wait_until

pytestmark = pytest.mark.queue


async def socket_on(http, app, user: str = "alice"):
    ws = await http.ws_connect(f"{app.base_url.replace('http', 'ws')}/api/ws")
    assert (await ws.receive_json(timeout=5))["type"] == "ready"
    await ws.send_json({"action": "auth", "userId": user})
    assert (await ws.receive_json(timeout=5))["type"] == "authenticated"
    return ws


async def subscribed(ws, conversation: str, **options) -> dict:
    await ws.send_json({"action": "subscribe", "conversationId": conversation, **options})
    frame = await ws.receive_json(timeout=10)
    assert frame["type"] == "subscribed" and frame["conversationId"] == conversation, frame
    return frame


async def new_conversation(http, app) -> str:
    _, body = await post_chat(http, app, "open the conversation")
    await until_status(http, app, body["jobId"])
    return body["conversationId"]


async def test_a_socket_back_on_another_copy_replays_what_it_missed(procs, http):
    first_copy = await procs.serve()
    second_copy = await procs.serve()
    await procs.worker()
    conversation = await new_conversation(http, first_copy)
    watcher = await socket_on(http, first_copy)
    await subscribed(watcher, conversation)
    leaving = await socket_on(http, first_copy)
    await subscribed(leaving, conversation)

    _, before = await post_chat(http, first_copy, "before the drop", conversationId=conversation)
    cursor = (await until_end(leaving))[-1]["id"]
    await leaving.close()
    _, missed = await post_chat(http, first_copy, "while away", conversationId=conversation)
    reference = await until_end(watcher, before["jobId"])
    reference += await until_end(watcher, missed["jobId"])

    back = await socket_on(http, second_copy)
    frame = await subscribed(back, conversation, since=cursor)
    assert frame["lastId"] == reference[-1]["id"]
    assert await until_end(back) == [f for f in reference if order(f["id"]) > order(cursor)]

    await post_chat(http, second_copy, "after the return", conversationId=conversation)
    assert await until_end(back) == await until_end(watcher)


async def test_a_cursor_older_than_what_redis_keeps_gets_resync(procs, http):
    retention = {"NOTIFY_REPLAY_MAX": "3"}
    app = await procs.serve(**retention)
    await procs.worker(**retention)
    conversation = await new_conversation(http, app)
    watcher = await socket_on(http, app)
    await subscribed(watcher, conversation)
    await post_chat(http, app, "seven notifications", conversationId=conversation)
    frames = await until_end(watcher)

    back = await socket_on(http, app)
    await subscribed(back, conversation, since=frames[0]["id"])
    assert await back.receive_json(timeout=5) == {"type": "resync", "conversationId": conversation}
    kept = await socket_on(http, app)
    await subscribed(kept, conversation, since=frames[-3]["id"])
    assert await until_end(kept) == frames[-2:]


async def test_an_open_socket_misses_nothing_across_a_redis_restart(procs, http, redis_server):
    app = await procs.serve()
    await procs.worker(
        "chat", CHAT_QUEUE_CONCURRENCY=10, OFFLINE_LLM_DELAY=2.5, STALLED_INTERVAL=30
    )
    conversation = await new_conversation(http, app)
    ws = await socket_on(http, app)
    await subscribed(ws, conversation)
    jobs = set()
    for number in range(10):
        _, body = await post_chat(http, app, f"question {number}", conversationId=conversation)
        jobs.add(body["jobId"])
    frames = []
    while {f["jobId"] for f in frames if f["type"] == "job:started"} != jobs:
        frames.append(await ws.receive_json(timeout=15))

    await asyncio.to_thread(redis_server.stop)  # the jobs finish on the worker meanwhile
    await asyncio.sleep(3.0)
    await asyncio.to_thread(redis_server.start)

    while {f["jobId"] for f in frames if f["type"] == "job:completed"} != jobs:
        frames.append(await ws.receive_json(timeout=30))
    ids = [f["id"] for f in frames]
    assert [order(i) for i in ids] == sorted({order(i) for i in ids})  # no duplicate, in order
    for job_id in jobs:
        types = [f["type"] for f in frames if f["jobId"] == job_id]
        assert types == ["job:started", *["job:progress"] * 4, "message:updated", "job:completed"]
    assert "notifications: subscribed again" in app.log()


async def test_notifications_published_while_a_copy_was_away_come_from_the_log(
    procs, http, redis, redis_server
):
    """The drill with the gap forced open: the copy is frozen while Redis restarts and every
    job completes, so each frame it delivers afterwards must come from the log."""
    app = await procs.serve()
    await procs.worker("chat", CHAT_QUEUE_CONCURRENCY=5, OFFLINE_LLM_DELAY=1.0, STALLED_INTERVAL=30)
    conversation = await new_conversation(http, app)
    ws = await socket_on(http, app)
    await subscribed(ws, conversation)
    jobs = set()
    for number in range(5):
        _, body = await post_chat(http, app, f"question {number}", conversationId=conversation)
        jobs.add(body["jobId"])
    frames = []
    while {f["jobId"] for f in frames if f["type"] == "job:started"} != jobs:
        frames.append(await ws.receive_json(timeout=15))

    app.signal(signal.SIGSTOP)
    try:
        await asyncio.to_thread(redis_server.stop)
        await asyncio.to_thread(redis_server.start)

        async def all_completed_in_the_log():
            entries = await redis.xrange(f"notifications:{conversation}")
            events = [orjson.loads(fields[b"e"]) for _, fields in entries]
            return {e["jobId"] for e in events if e["type"] == "job:completed"} >= jobs

        await wait_until(all_completed_in_the_log, timeout=30, what="every job completed")
    finally:
        app.signal(signal.SIGCONT)

    while {f["jobId"] for f in frames if f["type"] == "job:completed"} != jobs:
        frames.append(await ws.receive_json(timeout=30))
    ids = [f["id"] for f in frames]
    assert [order(i) for i in ids] == sorted({order(i) for i in ids})
    for job_id in jobs:
        types = [f["type"] for f in frames if f["jobId"] == job_id]
        assert types == ["job:started", *["job:progress"] * 4, "message:updated", "job:completed"]
    assert re.search(r"caught up on \d+ missed from the log", app.log())


async def test_a_socket_is_told_to_resync_when_redis_lost_what_it_missed(procs, http, redis_server):
    app = await procs.serve()
    await procs.worker()
    conversation = await new_conversation(http, app)
    ws = await socket_on(http, app)
    await subscribed(ws, conversation)
    await post_chat(http, app, "kept, then lost", conversationId=conversation)
    await until_end(ws)

    await asyncio.to_thread(redis_server.stop)
    shutil.rmtree(redis_server.folder / "appendonlydir")  # Redis comes back empty
    await asyncio.to_thread(redis_server.start)
    assert await ws.receive_json(timeout=30) == {"type": "resync", "conversationId": conversation}

    async def worker_back():
        _, health = await get_json(http, app, "/api/health")
        return health["status"] == "ok"

    await wait_until(worker_back, timeout=20, what="the worker heart-beating again")
    _, body = await post_chat(http, app, "live again", conversationId=conversation)
    assert (await until_end(ws))[-1]["jobId"] == body["jobId"]


async def test_each_copy_receives_only_the_conversations_its_sockets_follow(
    procs, http, redis, redis_server
):
    first_copy = await procs.serve()
    second_copy = await procs.serve()
    await procs.worker()
    mine, theirs = (
        await new_conversation(http, first_copy),
        await new_conversation(http, first_copy),
    )
    first_socket = await socket_on(http, first_copy)
    await subscribed(first_socket, mine)
    second_socket = await socket_on(http, second_copy)
    await subscribed(second_socket, theirs)

    channels = [f"conversation:{mine}", f"conversation:{theirs}"]
    assert await redis.pubsub_numpat() == 0  # nobody listens to everything
    assert dict(await redis.pubsub_numsub(*channels)) == {c.encode(): 1 for c in channels}

    async with (
        ChannelRecorder(redis_server, mine) as on_mine,
        ChannelRecorder(redis_server, theirs) as on_theirs,
    ):
        for _ in range(3):
            await post_chat(http, first_copy, "mine", conversationId=mine)
            await post_chat(http, second_copy, "theirs", conversationId=theirs)
        for ws in (first_socket, second_socket):
            for _ in range(3):
                await until_end(ws)
        await nothing_more(first_socket)
        await nothing_more(second_socket)
        published = {mine: len(on_mine.events), theirs: len(on_theirs.events)}

    await first_socket.send_json({"action": "unsubscribe", "conversationId": mine})
    assert (await first_socket.receive_json(timeout=5))["type"] == "unsubscribed"

    async def mine_unsubscribed():
        return dict(await redis.pubsub_numsub(channels[0]))[channels[0].encode()] == 0

    await wait_until(mine_unsubscribed, what="the copy dropping its subscription")
    await first_socket.close()
    await second_socket.close()
    for copy in (first_copy, second_copy):
        await asyncio.to_thread(copy.stop)
    received = [
        int(re.search(r"notifications: (\d+) messages received", copy.log()).group(1))
        for copy in (first_copy, second_copy)
    ]
    assert received == [published[mine], published[theirs]]


async def test_deltas_cross_processes_and_concatenate_to_the_content(procs, http):
    app = await procs.serve()
    await procs.worker(OFFLINE_LLM_DELAY=0.4)
    conversation = await new_conversation(http, app)
    ws = await socket_on(http, app)
    await subscribed(ws, conversation, stream=True)
    _, body = await post_chat(http, app, "stream it across", conversationId=conversation)
    frames = await until_end(ws)
    streamed = deltas(frames)
    assert len(streamed) > 1
    text = ""
    for delta in streamed:
        assert delta["offset"] == len(text)
        text += delta["text"]
    _, message = await get_json(http, app, f"/api/messages/{body['messageId']}")
    assert message["status"] == "COMPLETE" and message["content"] == text
    assert message["usage"]["completionTokens"] > 0
