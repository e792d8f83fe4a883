"""Timeouts (SPEC §10), in-process: an attempt running longer than its queue's timeout is
stopped and fails with "job timed out after N s", then is retried like any failure, after the
exact backoff. Defaults: 300 s for chat, none for deep research."""

from __future__ import annotations

from bioagents.config import Settings
from bioagents.jobs.spec import CHAT, DEEP_RESEARCH, queue_specs
from tests.admin_support import job_in_state
from tests.api_support import chat_status_when, message_when
from tests.conftest import post_chat
from tests.fake_openai import FakeOpenAI
from tests.live_support import until_end, watched_conversation


def test_the_default_timeouts_are_300_s_for_chat_and_none_for_deep_research():
    specs = queue_specs(Settings.from_env({}))
    assert (specs[CHAT].timeout, specs[DEEP_RESEARCH].timeout) == (300.0, 0.0)
    specs = queue_specs(
        Settings.from_env(
            {"CHAT_JOB_TIMEOUT_SECONDS": "12", "DEEP_RESEARCH_JOB_TIMEOUT_SECONDS": "3600"}
        )
    )
    assert (specs[CHAT].timeout, specs[DEEP_RESEARCH].timeout) == (12.0, 3600.0)


async def test_an_attempt_past_the_timeout_fails_and_is_retried_after_the_exact_backoff(
    make_client,
):
    async with FakeOpenAI() as fake:
        client = await make_client(
            LLM_PROVIDER="openai", OPENAI_BASE_URL=fake.base_url, CHAT_JOB_TIMEOUT_SECONDS="0.5"
        )
        ws, conversation = await watched_conversation(client)
        fake.hold(after_pieces=1, from_request=2)  # the next answer stalls midway
        _, body = await post_chat(client, "a stalling answer", conversationId=conversation)
        job_id = body["jobId"]

        delayed = await job_in_state(client, "chat", job_id, "delayed")
        status = await chat_status_when(client, job_id, "delayed")
        assert status["error"] == "job timed out after 0.5 s"
        failure = delayed["errors"][0]
        assert failure["error"] == "job timed out after 0.5 s"
        assert "Traceback" in failure["traceback"]  # where the attempt was when stopped
        assert failure["at"] - delayed["startedAt"] >= 0.5
        assert abs(delayed["runAt"] - failure["at"] - 1.0) < 0.01  # exactly the 1 s backoff
        fake.release()

        done = await chat_status_when(client, job_id, "completed")
        assert done["attemptsMade"] == 2
        frames = await until_end(ws)
        assert [f["attempt"] for f in frames if f["type"] == "job:started"] == [1, 2]
        assert "job:failed" not in [f["type"] for f in frames]  # it was retried
        job = await job_in_state(client, "chat", job_id, "completed")
        assert job["startedAt"] >= failure["at"] + 1.0  # not before the backoff ended
        stalled, answered = fake.requests[-2:]
        assert answered.at - stalled.at >= 1.5  # 0.5 s timeout + 1 s backoff
        message = await message_when(client, job_id, "COMPLETE")
        assert message["content"] == answered.reply
