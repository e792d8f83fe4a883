"""Queue mode across processes: `serve` copies enqueue, `worker` processes (or
`serve --with-worker`) run the jobs, notifications cross processes through Redis pub/sub."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import get_json, post_chat, saq_record, until_status, wait_until

pytestmark = pytest.mark.queue


async def test_two_worker_processes_and_a_serve_share_the_jobs(procs, http, redis):
    api = await procs.serve()
    slow = {"CHAT_QUEUE_CONCURRENCY": 2, "OFFLINE_LLM_DELAY": 0.6}
    await procs.worker("chat", **slow)
    await procs.worker("chat", **slow)

    ids = [(await post_chat(http, api, f"question {n}"))[1]["jobId"] for n in range(8)]
    owners = set()

    async def all_done():
        owners.update([(await saq_record(redis, i) or {}).get("worker_id") for i in ids])
        statuses = [(await get_json(http, api, f"/api/chat/status/{i}"))[1] for i in ids]
        return all(s["status"] == "completed" for s in statuses)

    await wait_until(all_done, timeout=20, interval=0.05, what="8 jobs completed")
    assert len(owners - {None}) == 2  # both worker processes ran some of them
    for job_id in ids:
        _, message = await get_json(http, api, f"/api/messages/{job_id}")
        assert message["status"] == "COMPLETE"
    _, health = await get_json(http, api, "/api/health")
    assert health["status"] == "ok"
    assert health["jobQueue"]["redis"] == "connected"
    assert health["jobQueue"]["workersByQueue"] == {"chat": 2, "deep-research": 0}


async def test_serve_with_worker_alone_completes_jobs(procs, http):
    app = await procs.serve("--with-worker")
    status, chat = await post_chat(http, app)
    assert status == 202
    async with http.post(
        f"{app.base_url}/api/deep-research/start",
        json={"message": "Is p53 druggable?"},
        headers={"X-User-Id": "alice"},
    ) as response:
        assert response.status == 202
        research = await response.json()

    done = await until_status(http, app, chat["jobId"])
    assert done["status"] == "completed"
    assert done["attemptsMade"] == 1

    async def research_done():
        _, body = await get_json(http, app, f"/api/deep-research/status/{research['messageId']}")
        return body if body["status"] == "completed" else None

    body = await wait_until(research_done, timeout=20, what="research completed")
    assert body["progress"]["completedSteps"] == [
        "planning",
        "literature",
        "analysis",
        "hypothesis",
        "reflection",
        "reply",
    ]
    _, health = await get_json(http, app, "/api/health")
    assert health["status"] == "ok"
    assert health["jobQueue"]["workers"] == 1


async def test_notifications_reach_a_socket_on_another_serve_copy(procs, http):
    accepting = await procs.serve()
    watching = await procs.serve()
    await procs.worker()
    status, first = await post_chat(http, accepting, "open the conversation")
    conversation = first["conversationId"]
    await until_status(http, accepting, first["jobId"])

    ws = await http.ws_connect(f"{watching.base_url.replace('http', 'ws')}/api/ws")
    assert (await ws.receive_json())["type"] == "ready"
    await ws.send_json({"action": "auth", "userId": "alice"})
    assert (await ws.receive_json())["type"] == "authenticated"
    await ws.send_json({"action": "subscribe", "conversationId": conversation})
    assert (await ws.receive_json())["type"] == "subscribed"

    status, second = await post_chat(http, accepting, "and again", conversationId=conversation)
    assert status == 202
    events = []
    while not events or events[-1]["type"] != "job:completed":
        events.append(await ws.receive_json(timeout=10))
    await ws.close()

    assert [e["type"] for e in events] == [
        "job:started",
        "job:progress",
        "job:progress",
        "job:progress",
        "job:progress",
        "message:updated",
        "job:completed",
    ]
    assert [e["progress"]["percent"] for e in events if e["type"] == "job:progress"] == [
        10,
        30,
        60,
        90,
    ]
    assert all(e["jobId"] == second["jobId"] and e["queue"] == "chat" for e in events)
    assert all(e["attempt"] == 1 and e["conversationId"] == conversation for e in events)
    # Notify + Fetch: what job:completed announces is there to fetch from the other copy.
    _, message = await get_json(http, watching, f"/api/messages/{second['jobId']}")
    assert message["status"] == "COMPLETE"


async def test_pause_in_one_process_holds_every_worker_until_resume(procs, http, open_services):
    api = await procs.serve()
    await procs.worker("chat")
    await procs.worker("chat")
    controller = await open_services()  # a third process's view of the same queues
    await controller.jobs.pause("chat")

    _, body = await post_chat(http, api)
    assert body["status"] == "queued"  # a paused queue keeps accepting jobs
    await asyncio.sleep(1.0)
    assert (await get_json(http, api, f"/api/chat/status/{body['jobId']}"))[1]["status"] == (
        "waiting"
    )
    assert await controller.jobs.is_paused("chat")

    await controller.jobs.resume("chat")
    done = await until_status(http, api, body["jobId"], timeout=10)
    assert done["status"] == "completed"
