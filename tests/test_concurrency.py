"""Per-queue concurrency (SPEC §2, §6): a queue runs at most its concurrency of jobs at once;
the rest wait their turn and all finish."""

from __future__ import annotations

from tests.api_support import chat_status_when, get_json, research_status_when
from tests.conftest import post_chat


async def test_chat_runs_at_most_its_concurrency_at_once(make_client):
    client = await make_client(CHAT_QUEUE_CONCURRENCY="2", OFFLINE_LLM_DELAY="0.5")
    jobs = [(await post_chat(client, f"question {n}"))[1]["jobId"] for n in range(4)]

    states = [(await get_json(client, f"/api/chat/status/{job}"))[1]["status"] for job in jobs]

    assert states == ["active", "active", "waiting", "waiting"]
    for job in jobs:
        await chat_status_when(client, job, "completed")


async def test_deep_research_runs_at_most_its_concurrency_at_once(make_client):
    client = await make_client(
        DEEP_RESEARCH_QUEUE_CONCURRENCY="1", CHAT_QUEUE_CONCURRENCY="1", OFFLINE_LLM_DELAY="0.1"
    )
    start = "/api/deep-research/start"
    first = (await post_chat(client, "first run", path=start))[1]
    second = (await post_chat(client, "second run", path=start))[1]
    chat = (await post_chat(client, "a chat meanwhile"))[1]

    second_status = (await get_json(client, f"/api/deep-research/status/{second['messageId']}"))[1]
    assert second_status["status"] == "processing"
    assert second_status["progress"]["completedSteps"] == []  # not started: the slot is taken
    # the queues are independent: the chat does not wait for research
    await chat_status_when(client, chat["jobId"], "completed")
    first_status = (await get_json(client, f"/api/deep-research/status/{first['messageId']}"))[1]
    assert first_status["status"] == "processing"
    await research_status_when(client, first["messageId"], "completed")
    await research_status_when(client, second["messageId"], "completed")
