"""Notifications (SPEC §5, §6, §9): for one job, started → the queue's progress stages in order
(no extra 100% frame) → message/state updated → completed; every event carries queue and
attempt; a fetch made after a notification sees what it announces."""

from __future__ import annotations

import time

from tests.api_support import chat_status_when, get_json
from tests.conftest import open_socket, post_chat, subscribe

CHAT_PROGRESS = [
    {"stage": "planning", "percent": 10},
    {"stage": "literature", "percent": 30},
    {"stage": "hypothesis", "percent": 60},
    {"stage": "reply", "percent": 90},
]
RESEARCH_PROGRESS = [
    {"stage": "planning", "percent": 5},
    {"stage": "literature", "percent": 20},
    {"stage": "analysis", "percent": 50},
    {"stage": "hypothesis", "percent": 70},
    {"stage": "reflection", "percent": 85},
    {"stage": "reply", "percent": 95},
]


async def watched_conversation(client) -> tuple[object, str]:
    """A socket subscribed to a conversation of alice's that already exists."""
    _, first = await post_chat(client, "open the conversation")
    await chat_status_when(client, first["jobId"], "completed")
    ws = await open_socket(client)
    await subscribe(ws, first["conversationId"])
    return ws, first["conversationId"]


async def collect(ws, client, on_event, timeout=30.0) -> list[dict]:
    """Events until job:completed or job:failed; `on_event` runs (and may fetch) as each
    arrives, before the next is read."""
    events = []
    deadline = time.monotonic() + timeout
    while True:
        event = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
        events.append(event)
        await on_event(event)
        if event["type"] in ("job:completed", "job:failed"):
            return events


async def test_chat_notifications_arrive_in_order_and_announce_committed_data(client):
    ws, conversation = await watched_conversation(client)
    _, accepted = await post_chat(client, "Why do cells age?", conversationId=conversation)
    job_id = accepted["jobId"]
    fetched = {}

    async def fetch_after(event):
        if event["type"] == "message:updated":
            fetched["message"] = await get_json(client, f"/api/messages/{job_id}")
        if event["type"] == "job:completed":
            fetched["status"] = await get_json(client, f"/api/chat/status/{job_id}")

    events = await collect(ws, client, fetch_after)

    assert [e["type"] for e in events] == [
        "job:started",
        *["job:progress"] * 4,
        "message:updated",
        "job:completed",
    ]
    assert [e["progress"] for e in events if e["type"] == "job:progress"] == CHAT_PROGRESS
    for event in events:
        assert event["jobId"] == job_id
        assert event["conversationId"] == conversation
        assert event["messageId"] == job_id
        assert event["queue"] == "chat"
        assert event["attempt"] == 1

    code, message = fetched["message"]
    assert code == 200
    assert message["status"] == "COMPLETE"
    assert message["content"]
    code, status = fetched["status"]
    assert code == 200
    assert status["status"] == "completed"
    assert status["result"]["text"] == message["content"]
    await ws.close()


async def test_deep_research_notifications_arrive_in_order_with_state_updates(client):
    ws, conversation = await watched_conversation(client)
    _, accepted = await post_chat(
        client,
        "How do tumours evade T cells?",
        path="/api/deep-research/start",
        conversationId=conversation,
    )
    job_id = accepted["messageId"]
    last_stage = {}
    stored_when_announced = []
    fetched = {}

    async def fetch_after(event):
        if event["type"] == "job:progress":
            last_stage["name"] = event["progress"]["stage"]
        if event["type"] == "state:updated":
            _, message = await get_json(client, f"/api/messages/{job_id}")
            stored_when_announced.append((last_stage["name"], set(message["state"])))
        if event["type"] == "message:updated":
            fetched["message"] = await get_json(client, f"/api/messages/{job_id}")

    events = await collect(ws, client, fetch_after)
    types = [e["type"] for e in events]

    assert types[0] == "job:started"
    assert types[-1] == "job:completed"
    assert [e["progress"] for e in events if e["type"] == "job:progress"] == RESEARCH_PROGRESS
    last_progress = max(i for i, t in enumerate(types) if t == "job:progress")
    assert types.index("message:updated") > last_progress
    assert types.count("message:updated") == 1
    assert "state:updated" in types[last_progress:]  # the final stage's output is stored
    assert types.index("message:updated") < types.index("job:completed")

    state_id = events[0]["stateId"]
    for event in events:
        assert event["jobId"] == job_id
        assert event["conversationId"] == conversation
        assert event["queue"] == "deep-research"
        assert event["attempt"] == 1
        if event["type"] == "state:updated":
            assert event["stateId"] == state_id
        else:
            assert event["messageId"] == job_id
    # each state:updated follows the commit of the stage just reported
    for stage, stored in stored_when_announced:
        assert stage in stored

    code, message = fetched["message"]
    assert code == 200
    assert message["status"] == "COMPLETE"
    assert set(message["state"]) == {p["stage"] for p in RESEARCH_PROGRESS}
    await ws.close()
