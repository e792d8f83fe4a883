"""The board's actions (SPEC §7), POSTed as the board does: retry one, retry all failed, remove,
promote, clean, pause/resume. Jobs fail for real: the app's LLM client talks to a fake
OpenAI-compatible server that answers 500 until it is healed."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from tests.admin_support import (
    board_post,
    fail_job,
    fake_llm_app,
    job_in_state,
    job_of,
    llm_env,
)
from tests.conftest import events_until, open_socket, post_chat, subscribe

API = "/admin/queues/api/queues"


@pytest.fixture
async def fake_llm(aiohttp_server):
    return await aiohttp_server(fake_llm_app())


@pytest.fixture
async def failing(fake_llm, make_client):
    """A client whose FAIL-ME questions fail until `heal(fake_llm)`."""
    return await make_client(**llm_env(str(fake_llm.make_url("")).rstrip("/")))


async def heal(fake_llm) -> None:
    """From now on the fake LLM answers every question."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(fake_llm.make_url("/heal")) as response,
    ):
        assert response.status == 200


async def message_of(client, message_id: str, user="alice") -> dict:
    response = await client.get(f"/api/messages/{message_id}", headers={"X-User-Id": user})
    assert response.status == 200
    return await response.json()


async def test_pause_holds_new_jobs_waiting_and_resume_runs_them(client):
    response = await board_post(client, f"{API}/chat/pause")
    assert response.status == 200
    assert await response.json() == {"ok": True, "queue": "chat", "isPaused": True}
    queues = (await (await client.get(API)).json())["queues"]
    assert queues[0]["isPaused"] is True and queues[1]["isPaused"] is False

    _, body = await post_chat(client)
    # In-process enqueue starts a job at once when it can; a paused queue leaves it waiting.
    assert (await job_of(client, "chat", body["jobId"]))["state"] == "waiting"
    counts = (await (await client.get(API)).json())["queues"][0]["counts"]
    assert counts["waiting"] == 1

    response = await board_post(client, f"{API}/chat/resume")
    assert await response.json() == {"ok": True, "queue": "chat", "isPaused": False}
    await job_in_state(client, "chat", body["jobId"], "completed")


async def test_retry_one_failed_job_reopens_its_message_and_runs_it_again(failing, fake_llm):
    _, body = await post_chat(failing, "FAIL-ME what is p53?")
    job_id = body["jobId"]
    await fail_job(failing, "chat", job_id)
    message = await message_of(failing, job_id)
    assert message["status"] == "FAILED" and "HTTP 500" in message["error"]

    await heal(fake_llm)
    response = await board_post(failing, f"{API}/chat/{job_id}/retry")
    assert response.status == 200
    assert await response.json() == {
        "ok": True,
        "queue": "chat",
        "jobId": job_id,
        "status": "retrying",
        "previousAttempts": 4,
    }
    job = await job_in_state(failing, "chat", job_id, "completed")
    assert job["attemptsMade"] == 1
    message = await message_of(failing, job_id)
    assert message["status"] == "COMPLETE"
    assert message["content"] == "fake answer to: FAIL-ME what is p53?"


async def test_retry_of_a_job_that_has_not_failed_is_refused(client):
    _, body = await post_chat(client)
    await job_in_state(client, "chat", body["jobId"], "completed")
    response = await board_post(client, f"{API}/chat/{body['jobId']}/retry")
    assert response.status == 400
    assert (
        "only failed jobs can be retried; this one is completed" in (await response.json())["error"]
    )
    assert (await message_of(client, body["jobId"]))["status"] == "COMPLETE"

    missing = await board_post(client, f"{API}/chat/no-such-job/retry")
    assert missing.status == 404


async def test_retry_all_failed_retries_each_and_says_how_many(failing, fake_llm):
    ids = []
    for n in range(2):
        _, body = await post_chat(failing, f"FAIL-ME question {n}")
        ids.append(body["jobId"])
    for job_id in ids:
        await fail_job(failing, "chat", job_id)

    await heal(fake_llm)
    response = await board_post(failing, f"{API}/chat/retry/failed")
    assert response.status == 200
    assert await response.json() == {"ok": True, "queue": "chat", "retried": 2}
    for job_id in ids:
        await job_in_state(failing, "chat", job_id, "completed")
        assert (await message_of(failing, job_id))["status"] == "COMPLETE"

    again = await board_post(failing, f"{API}/chat/retry/failed")
    assert (await again.json())["retried"] == 0


async def test_remove_deletes_a_waiting_job_and_fails_its_message_with_the_reason(client):
    await board_post(client, f"{API}/chat/pause")
    _, body = await post_chat(client)
    response = await board_post(client, f"{API}/chat/{body['jobId']}/remove")
    assert response.status == 200
    assert await response.json() == {
        "ok": True,
        "queue": "chat",
        "jobId": body["jobId"],
        "removed": True,
    }
    assert await job_of(client, "chat", body["jobId"]) is None
    message = await message_of(client, body["jobId"])
    assert message["status"] == "FAILED"
    assert message["error"] == "removed from the chat queue by an admin"

    again = await board_post(client, f"{API}/chat/{body['jobId']}/remove")
    assert again.status == 404


async def test_removing_a_waiting_job_tells_its_subscribers_it_failed(client):
    await board_post(client, f"{API}/chat/pause")
    _, body = await post_chat(client)
    ws = await open_socket(client)
    await subscribe(ws, body["conversationId"])
    response = await board_post(client, f"{API}/chat/{body['jobId']}/remove")
    assert response.status == 200
    events = await events_until(ws, timeout=5)
    assert [event["type"] for event in events] == ["message:updated", "job:failed"]
    assert events[-1]["error"] == "removed from the chat queue by an admin"
    assert events[-1]["jobId"] == body["jobId"] and events[-1]["queue"] == "chat"
    await ws.close()


async def test_remove_keeps_a_finished_jobs_message(client):
    _, body = await post_chat(client)
    await job_in_state(client, "chat", body["jobId"], "completed")
    assert (await board_post(client, f"{API}/chat/{body['jobId']}/remove")).status == 200
    assert (await message_of(client, body["jobId"]))["status"] == "COMPLETE"


async def test_an_active_job_cannot_be_removed(make_client):
    client = await make_client(OFFLINE_LLM_DELAY="30")
    _, body = await post_chat(client)
    await job_in_state(client, "chat", body["jobId"], "active")
    response = await board_post(client, f"{API}/chat/{body['jobId']}/remove")
    assert response.status == 400
    assert "active" in (await response.json())["error"]
    assert (await job_of(client, "chat", body["jobId"]))["state"] == "active"


async def test_promote_runs_a_delayed_job_now(failing):
    _, body = await post_chat(failing, "FAIL-ME promote me")
    job = await job_in_state(failing, "chat", body["jobId"], "delayed")
    assert job["attemptsMade"] == 1 and job["runAt"] is not None

    response = await board_post(failing, f"{API}/chat/{body['jobId']}/promote")
    assert response.status == 200
    assert await response.json() == {
        "ok": True,
        "queue": "chat",
        "jobId": body["jobId"],
        "status": "waiting",
    }
    # The second attempt ran without waiting out the backoff, and failed like the first.
    job = await job_in_state(failing, "chat", body["jobId"], "delayed")
    assert job["attemptsMade"] == 2 and len(job["errors"]) == 2


async def test_promote_of_a_job_that_is_not_delayed_is_refused(client):
    _, body = await post_chat(client)
    await job_in_state(client, "chat", body["jobId"], "completed")
    response = await board_post(client, f"{API}/chat/{body['jobId']}/promote")
    assert response.status == 400
    assert "not delayed" in (await response.json())["error"]


async def test_clean_removes_jobs_of_a_state_older_than_the_given_age(client):
    for n in range(3):
        _, body = await post_chat(client, f"question {n}")
        await job_in_state(client, "chat", body["jobId"], "completed")

    kept = await board_post(client, f"{API}/chat/clean/completed?olderThan=3600")
    assert await kept.json() == {
        "ok": True,
        "queue": "chat",
        "state": "completed",
        "olderThan": 3600.0,
        "removed": 0,
    }
    cleaned = await board_post(client, f"{API}/chat/clean/completed", data={"olderThan": "0"})
    assert (await cleaned.json())["removed"] == 3
    counts = (await (await client.get(API)).json())["queues"][0]["counts"]
    assert counts["completed"] == 0


async def test_cleaning_waiting_jobs_fails_their_messages(client):
    await board_post(client, f"{API}/chat/pause")
    _, body = await post_chat(client)
    response = await board_post(client, f"{API}/chat/clean/waiting?olderThan=0")
    assert (await response.json())["removed"] == 1
    message = await message_of(client, body["jobId"])
    assert message["status"] == "FAILED"
    assert message["error"] == "cleaned from the chat queue by an admin"


async def test_clean_refuses_active_unknown_states_and_bad_ages(client):
    cases = {
        f"{API}/chat/clean/active": "active jobs cannot be cleaned",
        f"{API}/chat/clean/finished": "state must be one of",
        f"{API}/chat/clean/failed?olderThan=-5": "olderThan must be a number of seconds",
        f"{API}/chat/clean/failed?olderThan=soon": "olderThan must be a number of seconds",
    }
    for path, words in cases.items():
        response = await board_post(client, path)
        assert response.status == 400, path
        assert words in (await response.json())["error"], path


async def test_actions_on_an_unknown_queue_are_404(client):
    for path in ("nope/pause", "nope/resume", "nope/retry/failed", "nope/x/retry"):
        response = await board_post(client, f"{API}/{path}")
        assert response.status == 404, path
        assert "no queue named 'nope'" in (await response.json())["error"]


async def test_htmx_actions_name_the_refresh_and_notice_events(client):
    response = await board_post(client, f"{API}/chat/pause", headers={"HX-Request": "true"})
    assert response.status == 200
    assert orjson.loads(response.headers["HX-Trigger"]) == {
        "board-refresh": "",
        "board-notice": "Paused chat",
    }
    plain = await board_post(client, f"{API}/chat/resume")
    assert "HX-Trigger" not in plain.headers


async def test_remove_from_the_job_page_sends_htmx_to_the_list(client):
    _, body = await post_chat(client)
    await job_in_state(client, "chat", body["jobId"], "completed")
    response = await board_post(
        client,
        f"{API}/chat/{body['jobId']}/remove",
        headers={"HX-Request": "true"},
        data={"then": "list"},
    )
    assert response.status == 200
    assert response.headers["HX-Redirect"] == "/admin/queues/queue/chat?status=completed"
