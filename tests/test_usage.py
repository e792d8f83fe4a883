"""Token usage (SPEC §10): what the streaming endpoint reports in its final usage chunk is
summed over a message's attempts in `GET /api/messages/{id}` and kept per attempt on the job,
which the board's job page shows."""

from __future__ import annotations

from tests.admin_support import board_post, job_in_state
from tests.api_support import message_when
from tests.conftest import post_chat
from tests.fake_openai import FakeOpenAI


def reported(record) -> tuple[int, int]:
    usage = FakeOpenAI.usage_for(record.body, record.reply)
    return usage["prompt_tokens"], usage["completion_tokens"]


async def test_chat_usage_is_the_endpoints_report_and_a_broken_attempt_counts_nothing(
    llm_client, fake_llm
):
    fake_llm.cut_next(1, after_pieces=2)  # attempt 1 breaks off before the usage chunk
    _, body = await post_chat(llm_client, "How many tokens is this?")
    message = await message_when(llm_client, body["messageId"], "COMPLETE")

    prompt, completion = reported(fake_llm.requests[-1])
    assert prompt > 0 and completion > 0
    assert message["usage"] == {"promptTokens": prompt, "completionTokens": completion}
    job = await job_in_state(llm_client, "chat", body["jobId"], "completed")
    assert job["usage"] == [
        {"attempt": 1, "promptTokens": 0, "completionTokens": 0},
        {"attempt": 2, "promptTokens": prompt, "completionTokens": completion},
    ]
    page = await (await llm_client.get(f"/admin/queues/queue/chat/{body['jobId']}")).text()
    assert 'data-usage-attempt="2"' in page
    assert f"<td>{prompt:,}</td><td>{completion:,}</td>" in page


async def test_deep_research_usage_is_summed_over_stages_and_attempts(llm_client, fake_llm):
    fake_llm.fail_next(1, status=500, after=2)  # planning and literature answer, analysis fails
    _, body = await post_chat(llm_client, "Is p53 druggable?", path="/api/deep-research/start")
    job_id = body["messageId"]
    await job_in_state(llm_client, "deep-research", job_id, "delayed")
    response = await board_post(
        llm_client, f"/admin/queues/api/queues/deep-research/{job_id}/promote"
    )
    assert response.status == 200  # no need to wait out the 5 s backoff
    message = await message_when(llm_client, job_id, "COMPLETE")

    answered = fake_llm.successes
    assert len(answered) == 6  # each stage paid for once: the retry resumed after literature
    first, second = answered[:2], answered[2:]
    per_attempt = [
        tuple(map(sum, zip(*(reported(r) for r in part), strict=True))) for part in (first, second)
    ]
    job = await job_in_state(llm_client, "deep-research", job_id, "completed")
    assert [(u["promptTokens"], u["completionTokens"]) for u in job["usage"]] == per_attempt
    total = tuple(map(sum, zip(*per_attempt, strict=True)))
    assert (message["usage"]["promptTokens"], message["usage"]["completionTokens"]) == total
