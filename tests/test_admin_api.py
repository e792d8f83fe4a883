"""The board's JSON API reads (SPEC §7): `GET /admin/queues/api/queues` and one job."""

from __future__ import annotations

from tests.admin_support import job_in_state
from tests.conftest import post_chat

STATES = {"waiting", "active", "delayed", "completed", "failed"}


async def test_queues_lists_each_queue_with_the_spec_shape(client):
    _, body = await post_chat(client)
    await job_in_state(client, "chat", body["jobId"], "completed")
    response = await client.get("/admin/queues/api/queues")
    assert response.status == 200
    assert response.content_type == "application/json"
    payload = await response.json()
    assert set(payload) == {"queues"}
    assert [queue["name"] for queue in payload["queues"]] == ["chat", "deep-research"]
    for queue in payload["queues"]:
        assert set(queue) == {"name", "counts", "isPaused", "workers"}
        assert set(queue["counts"]) == STATES
        assert queue["isPaused"] is False
        assert queue["workers"] == 1
    chat = payload["queues"][0]
    assert chat["counts"] == {"waiting": 0, "active": 0, "delayed": 0, "completed": 1, "failed": 0}


async def test_status_and_page_add_the_jobs_of_that_state_newest_first(client):
    ids = []
    for n in range(27):
        _, body = await post_chat(client, f"question {n}")
        await job_in_state(client, "chat", body["jobId"], "completed")
        ids.append(body["jobId"])

    first = await (await client.get("/admin/queues/api/queues?status=completed")).json()
    chat, research = first["queues"]
    assert [job["id"] for job in chat["jobs"]] == ids[::-1][:25]
    assert chat["pagination"] == {"page": 1, "pageSize": 25, "pageCount": 2, "total": 27}
    assert research["jobs"] == []
    job = chat["jobs"][0]
    assert job["state"] == "completed"
    assert job["data"]["question"] == "question 26"
    assert job["attemptsMade"] == 1 and job["maxAttempts"] == 4
    assert job["result"]["text"]

    second = await (await client.get("/admin/queues/api/queues?status=completed&page=2")).json()
    assert [job["id"] for job in second["queues"][0]["jobs"]] == ids[::-1][25:]


async def test_bad_status_or_page_is_a_clear_400(client):
    cases = {
        "/admin/queues/api/queues?status=done": "status must be one of",
        "/admin/queues/api/queues?status=failed&page=0": "page must be between",
        "/admin/queues/api/queues?status=failed&page=x": "page must be a whole number",
        "/admin/queues/api/queues?page=2": "page needs status",
    }
    for path, words in cases.items():
        response = await client.get(path)
        assert response.status == 400, path
        body = await response.json()
        assert body["ok"] is False and words in body["error"]


async def test_one_job_with_timeline_and_attempts(client):
    _, body = await post_chat(client, "What is BRCA1?")
    await job_in_state(client, "chat", body["jobId"], "completed")
    response = await client.get(f"/admin/queues/api/queues/chat/{body['jobId']}")
    assert response.status == 200
    payload = await response.json()
    assert payload["status"] == "completed"
    job = payload["job"]
    assert job["id"] == body["jobId"] and job["queue"] == "chat"
    assert job["data"]["question"] == "What is BRCA1?"
    assert job["queuedAt"] <= job["startedAt"] <= job["finishedAt"]
    assert job["waitSeconds"] >= 0 and job["runSeconds"] >= 0
    assert job["progress"] == {"stage": "reply", "percent": 90}
    assert job["errors"] == []


async def test_unknown_queue_or_job_is_a_json_404(client):
    unknown_queue = await client.get("/admin/queues/api/queues/nope/123")
    assert unknown_queue.status == 404
    assert "no queue named 'nope'" in (await unknown_queue.json())["error"]

    unknown_job = await client.get("/admin/queues/api/queues/chat/123")
    assert unknown_job.status == 404
    body = await unknown_job.json()
    assert body["ok"] is False and "'123' is not in queue chat" in body["error"]

    wrong_queue = await post_chat(client)
    await job_in_state(client, "chat", wrong_queue[1]["jobId"], "completed")
    response = await client.get(f"/admin/queues/api/queues/deep-research/{wrong_queue[1]['jobId']}")
    assert response.status == 404
