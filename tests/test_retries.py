"""Retries (SPEC §6, §9) against a real OpenAI-compatible HTTP endpoint that fails on demand:
exact backoff, one LLM request per attempt, attempts counted from 1, one `job:failed` on the
last attempt, manual retry, and deep research resuming after its last stored stage."""

from __future__ import annotations

import itertools

from bioagents.config import Settings
from bioagents.jobs.base import JobState
from bioagents.jobs.inprocess import InProcessJobQueue
from bioagents.jobs.spec import CHAT, queue_specs
from tests.api_support import chat_status_when, get_json, message_when, research_status_when
from tests.conftest import BASE_ENV, events_until, open_socket, post_chat, subscribe, wait_for

TOLERANCE = 0.5  # seconds, as the SPEC allows


async def watched_conversation(client) -> tuple[object, str]:
    _, first = await post_chat(client, "open the conversation")
    await chat_status_when(client, first["jobId"], "completed")
    ws = await open_socket(client)
    await subscribe(ws, first["conversationId"])
    return ws, first["conversationId"]


def gaps(records) -> list[float]:
    return [later.at - earlier.at for earlier, later in itertools.pairwise(records)]


async def test_failed_chat_is_retried_after_exact_backoff_and_answers(llm_client, fake_llm):
    question = "Which genes drive ageing in C. elegans?"
    fake_llm.fail_next(2, status=503)

    _, accepted = await post_chat(llm_client, question)
    delayed = await chat_status_when(llm_client, accepted["jobId"], "delayed")
    status = await chat_status_when(llm_client, accepted["jobId"], "completed", timeout=10)

    assert delayed["attemptsMade"] == 1
    assert "503" in delayed["error"]
    assert status["attemptsMade"] == 3
    # one HTTP request per attempt, each carrying the user's question
    assert len(fake_llm.requests) == 3
    assert [r.failed for r in fake_llm.requests] == [True, True, False]
    assert all(r.user_content == question for r in fake_llm.requests)
    first_wait, second_wait = gaps(fake_llm.requests)
    assert abs(first_wait - 1.0) <= TOLERANCE, first_wait
    assert abs(second_wait - 2.0) <= TOLERANCE, second_wait
    # the message carries the model's reply
    reply = fake_llm.requests[-1].reply
    assert status["result"]["text"] == reply
    message = await message_when(llm_client, accepted["messageId"], "COMPLETE")
    assert message["content"] == reply


async def test_chat_that_always_fails_ends_failed_once_then_manual_retry_succeeds(
    llm_client, fake_llm
):
    ws, conversation = await watched_conversation(llm_client)
    fake_llm.requests.clear()
    fake_llm.fail_next(4, status=500)

    _, accepted = await post_chat(llm_client, "doomed question", conversationId=conversation)
    job_id = accepted["jobId"]
    events = await events_until(ws, timeout=15)

    attempts = [r for r in fake_llm.requests if r.user_content == "doomed question"]
    assert len(attempts) == 4
    for wait, expected in zip(gaps(attempts), (1.0, 2.0, 4.0), strict=True):
        assert abs(wait - expected) <= TOLERANCE, (wait, expected)
    assert [e["attempt"] for e in events if e["type"] == "job:started"] == [1, 2, 3, 4]
    failed = [e for e in events if e["type"] == "job:failed"]
    assert len(failed) == 1
    assert events[-1] is failed[0]
    assert failed[0]["jobId"] == job_id
    assert failed[0]["attempt"] == 4
    assert failed[0]["queue"] == "chat"
    assert "500" in failed[0]["error"]
    assert "job:completed" not in {e["type"] for e in events}
    assert [e["type"] for e in events][-2:] == ["message:updated", "job:failed"]
    for event in events:
        assert event["queue"] == "chat"
        assert event["attempt"] in (1, 2, 3, 4)

    status = await chat_status_when(llm_client, job_id, "failed")
    assert status["attemptsMade"] == 4
    assert "500" in status["error"]
    message = await message_when(llm_client, job_id, "FAILED")
    assert "500" in message["error"]

    response = await llm_client.post(f"/api/chat/retry/{job_id}", headers={"X-User-Id": "alice"})
    assert response.status == 200
    assert await response.json() == {
        "ok": True,
        "jobId": job_id,
        "status": "retrying",
        "previousAttempts": 4,
    }
    after_retry = await events_until(ws, timeout=10)
    assert after_retry[0]["type"] == "job:started"
    assert after_retry[-1]["type"] == "job:completed"
    assert after_retry[-1]["attempt"] == 1
    status = await chat_status_when(llm_client, job_id, "completed")
    assert status["attemptsMade"] == 1
    message = await message_when(llm_client, job_id, "COMPLETE")
    assert message["content"] == fake_llm.requests[-1].reply
    assert message["error"] is None
    await ws.close()


async def test_retried_deep_research_resumes_after_the_last_stored_stage(llm_client, fake_llm):
    ws, conversation = await watched_conversation(llm_client)
    fake_llm.requests.clear()
    fake_llm.fail_next(1, status=502, after=2)  # planning and literature answer; analysis fails

    _, accepted = await post_chat(
        llm_client,
        "Do senolytics extend lifespan?",
        path="/api/deep-research/start",
        conversationId=conversation,
    )
    events = await events_until(ws, timeout=20)
    status = await research_status_when(llm_client, accepted["messageId"], "completed")

    instructions = [r.system_content for r in fake_llm.requests]
    assert len(fake_llm.requests) == 7  # 2 stored + 1 failed + the 4 stages left
    assert [r.failed for r in fake_llm.requests].count(True) == 1
    succeeded = [r.system_content for r in fake_llm.successes]
    assert len(succeeded) == len(set(succeeded)) == 6  # no finished stage paid for twice
    assert instructions[2] == instructions[3]  # the failed stage is the first one retried
    wait = fake_llm.requests[3].at - fake_llm.requests[2].at
    assert abs(wait - 5.0) <= TOLERANCE, wait

    started = [e["attempt"] for e in events if e["type"] == "job:started"]
    assert started == [1, 2]
    second_attempt = events[[e["type"] for e in events].index("job:started", 1) :]
    assert [e["progress"]["stage"] for e in second_attempt if e["type"] == "job:progress"] == [
        "planning",
        "literature",
        "analysis",
        "hypothesis",
        "reflection",
        "reply",
    ]
    assert status["result"]["text"] == fake_llm.requests[-1].reply
    assert status["result"]["papers"] == ["Paper A (2020)", "Paper B (2021)"]
    _, message = await get_json(llm_client, f"/api/messages/{accepted['messageId']}")
    assert message["state"]["planning"] == fake_llm.requests[0].reply
    await ws.close()


class _FailsWithAHugeError:
    """A handler whose every attempt fails with an error far longer than 4 KiB."""

    async def run(self, attempt):
        raise RuntimeError(f"attempt {attempt.attempt} failed: " + "é" * 5000 + " THE END")

    async def on_completed(self, attempt, result):
        raise AssertionError("never completes")

    async def on_failed(self, attempt, error, final):
        return None


async def test_in_process_jobs_keep_ten_attempts_errors_with_tracebacks_cut_to_4_kib():
    spec = queue_specs(Settings.from_env(BASE_ENV))[CHAT].with_(retries=2, backoff_base=0.0)
    jobs = InProcessJobQueue({CHAT: spec}, _FailsWithAHugeError())
    try:
        await jobs.enqueue(CHAT, "job-1", {})
        for round_number in range(4):  # four rounds of three attempts: 12 failures
            if round_number:
                await jobs.retry(CHAT, "job-1")

            async def failed():
                return (await jobs.get(CHAT, "job-1")).state is JobState.FAILED

            await wait_for(failed, timeout=5)
        errors = (await jobs.get(CHAT, "job-1")).errors
    finally:
        await jobs.close()

    assert [error.attempt for error in errors] == [3, 1, 2, 3, 1, 2, 3, 1, 2, 3]
    for error in errors:
        assert len(error.traceback.encode()) <= 4096
        assert error.traceback.startswith("… (cut)")
        assert error.traceback.rstrip().endswith("THE END")  # the end names the error
