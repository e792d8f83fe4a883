"""Cancel (SPEC §4, §7, §10), in-process: the owner's routes and the board's action; a waiting
or delayed job never runs; an active attempt stops, its message ends CANCELLED with the text so
far and `job:cancelled` follows `message:updated`; the job shows as failed ("cancelled"), is not
retried by itself, and a retry runs it again (deep research resumes after its stored stages)."""

from __future__ import annotations

import asyncio

from tests.admin_support import board_post, job_in_state, job_of
from tests.api_support import chat_status_when, get_json, message_when, research_status_when
from tests.conftest import open_socket, post_chat, subscribe
from tests.live_support import deltas, nothing_more, until_end, watched_conversation

API = "/admin/queues/api/queues"


async def cancel(client, job_id: str, queue_path: str = "chat", user: str = "alice"):
    response = await client.post(f"/api/{queue_path}/cancel/{job_id}", headers={"X-User-Id": user})
    return response.status, await response.json()


async def test_a_waiting_job_cancelled_never_runs(client):
    ws, conversation = await watched_conversation(client)
    await board_post(client, f"{API}/chat/pause")
    _, body = await post_chat(client, "never mind", conversationId=conversation)
    job_id = body["jobId"]

    assert await cancel(client, job_id) == (
        200,
        {"ok": True, "jobId": job_id, "status": "cancelled"},
    )
    message = await message_when(client, job_id, "CANCELLED")
    assert (message["error"], message["content"]) == ("cancelled", None)
    frames = await until_end(ws)
    assert [f["type"] for f in frames] == ["message:updated", "job:cancelled"]
    assert all(f["jobId"] == job_id and f["messageId"] == job_id for f in frames)

    await board_post(client, f"{API}/chat/resume")
    _, later = await post_chat(client, "a later question", conversationId=conversation)
    await chat_status_when(client, later["jobId"], "completed")  # the queue ran past it
    assert {f["jobId"] for f in await until_end(ws)} == {later["jobId"]}
    job = await job_of(client, "chat", job_id)
    assert (job["state"], job["error"], job["attemptsMade"]) == ("failed", "cancelled", 0)
    status = await chat_status_when(client, job_id, "failed")
    assert status["error"] == "cancelled"


async def test_a_delayed_job_cancelled_is_not_retried(llm_client, fake_llm):
    fake_llm.fail_next(1, status=503)
    _, body = await post_chat(llm_client, "fails once")
    job_id = body["jobId"]
    await chat_status_when(llm_client, job_id, "delayed")

    status, _ = await cancel(llm_client, job_id)
    assert status == 200
    await message_when(llm_client, job_id, "CANCELLED")
    await asyncio.sleep(1.5)  # past the 1 s backoff the retry would have waited
    assert len(fake_llm.requests) == 1
    job = await job_of(llm_client, "chat", job_id)
    assert (job["state"], job["error"], job["attemptsMade"]) == ("failed", "cancelled", 1)
    assert [e["error"] for e in job["errors"]] == [
        "the language model service failed (HTTP 503)",
        "cancelled",
    ]


async def test_an_active_attempt_is_stopped_and_keeps_its_text_so_far(llm_client, fake_llm):
    ws, conversation = await watched_conversation(llm_client, stream=True)
    fake_llm.hold(after_pieces=2)
    _, body = await post_chat(llm_client, "stop me midway", conversationId=conversation)
    job_id = body["jobId"]
    await fake_llm.until_holding()
    two_pieces = "".join(fake_llm.split(fake_llm.requests[-1].reply)[:2])
    frames = []
    while "".join(d["text"] for d in deltas(frames)) != two_pieces:
        frames.append(await ws.receive_json(timeout=10))

    status, _ = await cancel(llm_client, job_id)
    assert status == 200
    # In-process, the route answers once the stopped attempt is stored: no waiting needed.
    _, message = await get_json(llm_client, f"/api/messages/{job_id}")
    assert (message["status"], message["error"]) == ("CANCELLED", "cancelled")
    assert message["content"] == two_pieces
    frames += await until_end(ws)
    assert [f["type"] for f in frames[-2:]] == ["message:updated", "job:cancelled"]
    assert frames[-1]["attempt"] == 1
    job = await job_of(llm_client, "chat", job_id)
    assert (job["state"], job["error"], job["attemptsMade"]) == ("failed", "cancelled", 1)
    assert not fake_llm.requests[-1].finished

    fake_llm.release()
    await nothing_more(ws)  # a cancelled attempt is never retried by itself
    assert len(fake_llm.requests) == 2

    response = await llm_client.post(f"/api/chat/retry/{job_id}", headers={"X-User-Id": "alice"})
    assert response.status == 200
    final = await message_when(llm_client, job_id, "COMPLETE")
    assert final["content"] == fake_llm.requests[-1].reply and final["error"] is None


async def test_a_cancelled_deep_research_resumes_after_its_stored_stages(llm_client, fake_llm):
    fake_llm.hold(after_pieces=0, from_request=3)  # planning and literature answer; analysis hangs
    _, body = await post_chat(llm_client, "Is p53 druggable?", path="/api/deep-research/start")
    message_id = body["messageId"]
    await fake_llm.until_holding()

    status, answer = await cancel(llm_client, message_id, "deep-research")
    assert (status, answer["status"]) == (200, "cancelled")
    stopped = await research_status_when(llm_client, message_id, "failed")
    assert stopped["error"] == "cancelled"
    assert stopped["progress"]["completedSteps"] == ["planning", "literature"]

    fake_llm.release()
    response = await llm_client.post(
        f"/api/deep-research/retry/{message_id}", headers={"X-User-Id": "alice"}
    )
    assert response.status == 200
    done = await research_status_when(llm_client, message_id, "completed")
    assert done["progress"]["completedSteps"][-1] == "reply"
    systems = [r.system_content for r in fake_llm.requests]
    assert systems[3:] == [  # after the stopped request: only the stages not stored
        "Analyse the findings of the listed papers.",
        "Propose testable hypotheses from the analysis.",
        "Critique the hypotheses and note gaps.",
        "Write the final research report for the user.",
    ]


async def test_cancel_of_a_finished_job_is_409_and_of_someone_elses_404(client):
    _, body = await post_chat(client, "quick")
    job_id = body["jobId"]
    await chat_status_when(client, job_id, "completed")

    status, answer = await cancel(client, job_id)
    assert status == 409 and answer["ok"] is False and answer["error"]
    status, _ = await cancel(client, job_id, user="mallory")
    assert status == 404
    status, _ = await cancel(client, job_id, "deep-research")  # not a research job
    assert status == 404
    assert (await cancel(client, "0c9a2a7e-5a3b-4b6e-9d55-0e1f4f3c2b1a"))[0] == 404

    await board_post(client, f"{API}/chat/pause")
    _, waiting = await post_chat(client, "cancel me twice")
    assert (await cancel(client, waiting["jobId"]))[0] == 200
    assert (await cancel(client, waiting["jobId"]))[0] == 409  # already cancelled


async def test_the_board_cancels_an_active_job_and_shows_the_button(llm_client, fake_llm):
    fake_llm.hold(after_pieces=1)
    _, body = await post_chat(llm_client, "admin stops this")
    job_id = body["jobId"]
    await fake_llm.until_holding()
    await job_in_state(llm_client, "chat", job_id, "active")
    page = await (await llm_client.get(f"/admin/queues/queue/chat/{job_id}")).text()
    assert f"/api/queues/chat/{job_id}/cancel" in page

    response = await board_post(llm_client, f"{API}/chat/{job_id}/cancel")
    assert response.status == 200
    assert await response.json() == {
        "ok": True,
        "queue": "chat",
        "jobId": job_id,
        "status": "cancelled",
    }
    job = await job_in_state(llm_client, "chat", job_id, "failed")
    assert job["error"] == "cancelled"
    await message_when(llm_client, job_id, "CANCELLED")
    page = await (await llm_client.get(f"/admin/queues/queue/chat/{job_id}")).text()
    assert f"/api/queues/chat/{job_id}/cancel" not in page  # nothing left to cancel
    assert f"/api/queues/chat/{job_id}/retry" in page
    response = await board_post(llm_client, f"{API}/chat/{job_id}/cancel")
    assert response.status == 400


async def test_the_cancelled_message_reaches_every_subscriber_in_order(llm_client, fake_llm):
    watcher, conversation = await watched_conversation(llm_client)
    other = await open_socket(llm_client)
    await subscribe(other, conversation)
    fake_llm.hold(after_pieces=0)
    _, body = await post_chat(llm_client, "watched", conversationId=conversation)
    await fake_llm.until_holding()
    assert (await cancel(llm_client, body["jobId"]))[0] == 200
    frames = await until_end(watcher)
    assert frames == await until_end(other)
    assert [f["type"] for f in frames] == [
        "job:started",
        *["job:progress"] * 4,
        "message:updated",
        "job:cancelled",
    ]
    fake_llm.release()
