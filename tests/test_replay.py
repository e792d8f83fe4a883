"""Notification ids and replay (SPEC §5), in-process: every notification carries an id that
increases within its conversation; `subscribe {since}` replays what was kept after it, then goes
live with no gap and no duplicate; a cursor older than what is kept, or unknown, gets `resync`.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import open_socket, post_chat, subscribe
from tests.fake_openai import FakeOpenAI
from tests.live_support import nothing_more, order, until_end, watched_conversation


async def test_every_notification_has_an_id_increasing_within_its_conversation(client):
    ws, conversation = await watched_conversation(client)
    for question in ("one", "two"):
        await post_chat(client, question, conversationId=conversation)
    frames = await until_end(ws)
    frames += await until_end(ws)

    ids = [frame["id"] for frame in frames]
    assert all(isinstance(i, str) and i for i in ids)
    assert [order(i) for i in ids] == sorted({order(i) for i in ids})  # increasing, unique

    fresh = await open_socket(client)
    subscribed = await subscribe(fresh, conversation)
    assert subscribed["lastId"] == ids[-1]  # the newest kept id
    await nothing_more(fresh)  # without `since`, nothing is replayed


async def test_a_socket_back_with_since_gets_what_it_missed_then_live_frames(client):
    watcher, conversation = await watched_conversation(client)
    leaving = await open_socket(client)
    await subscribe(leaving, conversation)
    _, first = await post_chat(client, "before the drop", conversationId=conversation)
    cursor = (await until_end(leaving))[-1]["id"]
    await leaving.close()

    _, missed = await post_chat(client, "while away", conversationId=conversation)
    reference = await until_end(watcher, first["jobId"])
    reference += await until_end(watcher, missed["jobId"])
    after_cursor = [f for f in reference if order(f["id"]) > order(cursor)]
    assert {f["jobId"] for f in after_cursor} == {missed["jobId"]}

    back = await open_socket(client)
    subscribed = await subscribe(back, conversation, since=cursor)
    assert subscribed["lastId"] == reference[-1]["id"]
    assert await until_end(back) == after_cursor  # same frames, same ids, in order

    await post_chat(client, "after the return", conversationId=conversation)
    assert await until_end(back) == await until_end(watcher)


@pytest.fixture
async def held_llm():
    async with FakeOpenAI() as fake:
        yield fake


async def test_replay_while_a_job_runs_joins_the_live_frames_without_gap_or_duplicate(
    make_client, held_llm
):
    client = await make_client(LLM_PROVIDER="openai", OPENAI_BASE_URL=held_llm.base_url)
    watcher, conversation = await watched_conversation(client)
    held_llm.hold(after_pieces=0)  # the job stops in its reply stage, mid-job
    _, body = await post_chat(client, "slow one", conversationId=conversation)
    await held_llm.until_holding()
    so_far = [await watcher.receive_json(timeout=10) for _ in range(5)]  # started, 4 progress
    assert [f["type"] for f in so_far] == ["job:started", *["job:progress"] * 4]

    late = await open_socket(client)
    await subscribe(late, conversation, since=so_far[1]["id"])
    held_llm.release()
    reference = await until_end(watcher, body["jobId"])
    assert await until_end(late, body["jobId"]) == so_far[2:] + reference


async def test_a_cursor_older_than_what_is_kept_gets_resync_then_live_frames(make_client):
    client = await make_client(NOTIFY_REPLAY_MAX="3")
    watcher, conversation = await watched_conversation(client)
    await post_chat(client, "seven notifications", conversationId=conversation)
    frames = await until_end(watcher)
    assert len(frames) == 7

    back = await open_socket(client)
    subscribed = await subscribe(back, conversation, since=frames[0]["id"])  # trimmed
    assert subscribed["lastId"] == frames[-1]["id"]
    assert await back.receive_json(timeout=5) == {"type": "resync", "conversationId": conversation}
    await nothing_more(back)

    kept = await open_socket(client)
    await subscribe(kept, conversation, since=frames[-3]["id"])  # the oldest of the 3 kept
    assert [f["id"] for f in await until_end(kept)] == [f["id"] for f in frames[-2:]]

    _, live = await post_chat(client, "and now", conversationId=conversation)
    assert (await until_end(back))[0]["jobId"] == live["jobId"]


async def test_unknown_or_malformed_cursors_get_resync(client):
    _, conversation = await watched_conversation(client)
    ws = await open_socket(client)
    for since in ("1-0", "99999999999999-7", "not-an-id", ""):
        await subscribe(ws, conversation, since=since)
        assert await ws.receive_json(timeout=5) == {
            "type": "resync",
            "conversationId": conversation,
        }
    await ws.send_json({"action": "subscribe", "conversationId": conversation, "since": 42})
    assert (await ws.receive_json(timeout=5))["type"] == "error"


async def test_a_cursor_past_the_replay_seconds_gets_resync(make_client):
    client = await make_client(NOTIFY_REPLAY_SECONDS="1")
    watcher, conversation = await watched_conversation(client)
    await post_chat(client, "soon forgotten", conversationId=conversation)
    frames = await until_end(watcher)
    fresh = await open_socket(client)
    await subscribe(fresh, conversation, since=frames[0]["id"])
    assert [f["id"] for f in await until_end(fresh)] == [f["id"] for f in frames[1:]]

    await asyncio.sleep(1.2)  # past NOTIFY_REPLAY_SECONDS
    late = await open_socket(client)
    subscribed = await subscribe(late, conversation, since=frames[0]["id"])
    assert subscribed["lastId"] is None  # nothing is kept any more
    assert await late.receive_json(timeout=5) == {"type": "resync", "conversationId": conversation}


async def test_since_the_newest_id_replays_nothing_and_goes_live(client):
    watcher, conversation = await watched_conversation(client)
    await post_chat(client, "one", conversationId=conversation)
    newest = (await until_end(watcher))[-1]["id"]

    back = await open_socket(client)
    assert (await subscribe(back, conversation, since=newest))["lastId"] == newest
    await nothing_more(back)
    await post_chat(client, "two", conversationId=conversation)
    assert await until_end(back) == await until_end(watcher)
