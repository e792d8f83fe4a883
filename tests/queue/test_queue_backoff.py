"""Retries wait exactly the SPEC's backoff (chat: 1 s, 2 s, 4 s; no jitter, ±0.5 s), measured
as the gaps between the LLM requests of successive attempts at a fake OpenAI endpoint."""

from __future__ import annotations

import itertools

import pytest

from tests.fake_openai import FakeOpenAI

from .conftest import ChannelRecorder, post_chat, until_status

pytestmark = pytest.mark.queue


async def test_a_failing_chat_is_retried_after_exactly_1_2_and_4_seconds(procs, http, redis_server):
    async with FakeOpenAI() as fake, ChannelRecorder(redis_server) as channel:
        fake.fail_next(3)
        app = await procs.serve(
            "--with-worker", LLM_PROVIDER="openai", OPENAI_BASE_URL=fake.base_url
        )
        _, body = await post_chat(http, app, "Why does p53 matter?")
        done = await until_status(http, app, body["jobId"], timeout=20)

        assert done["status"] == "completed"
        assert done["attemptsMade"] == 4
        assert done["result"]["text"].startswith("fake reply 4")
        arrivals = [request.at for request in fake.requests]
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert len(gaps) == 3
        for gap, expected in zip(gaps, (1.0, 2.0, 4.0), strict=True):
            assert abs(gap - expected) <= 0.5, gaps
        assert all("Why does p53 matter?" in r.user_content for r in fake.requests)
        started = channel.of(body["jobId"], "job:started")
        assert [e["attempt"] for e in started] == [1, 2, 3, 4]
        assert not channel.of(body["jobId"], "job:failed")
