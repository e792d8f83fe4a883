"""Rate limits in Redis are one sliding window per user shared by every `serve` copy, with the
same arithmetic as in-process mode."""

from __future__ import annotations

import pytest

from bioagents.jobs.base import QueueUnavailable
from bioagents.ratelimit import MemoryRateLimiter

from .conftest import post_chat

pytestmark = pytest.mark.queue


async def test_two_serve_copies_share_one_window_per_user(procs, http):
    first = await procs.serve(CHAT_RATE_LIMIT_PER_MINUTE=3)
    second = await procs.serve(CHAT_RATE_LIMIT_PER_MINUTE=3)
    statuses = []
    for app in (first, second, first, second):
        status, _ = await post_chat(http, app)
        statuses.append(status)
    assert statuses == [202, 202, 202, 429]
    async with http.post(
        f"{first.base_url}/api/chat", json={"message": "hi"}, headers={"X-User-Id": "alice"}
    ) as response:
        assert response.status == 429
        body = await response.json()
        assert int(response.headers["Retry-After"]) == body["retryAfter"] >= 1
        assert response.headers["X-RateLimit-Remaining"] == "0"
    assert (await post_chat(http, second, user="bob"))[0] == 202  # per user


async def test_decisions_match_the_in_process_limiter(open_services):
    services = await open_services()
    redis_limiter, memory = services.limiter, MemoryRateLimiter()
    for _ in range(4):
        from_redis = await redis_limiter.hit("chat:carol", 3, 60.0)
        from_memory = await memory.hit("chat:carol", 3, 60.0)
        assert (from_redis.allowed, from_redis.remaining) == (
            from_memory.allowed,
            from_memory.remaining,
        )
        # Two clocks (Redis's and this process's) read at slightly different moments: the
        # whole seconds left may straddle a boundary, never more.
        assert abs(from_redis.reset_seconds - from_memory.reset_seconds) <= 1
        assert 1 <= from_redis.reset_seconds <= 60


async def test_a_hit_raises_queue_unavailable_while_redis_is_down(open_services, redis_server):
    services = await open_services()
    redis_server.stop()
    with pytest.raises(QueueUnavailable):
        await services.limiter.hit("chat:dave", 3, 60.0)
    redis_server.start()
    assert (await services.limiter.hit("chat:dave", 3, 60.0)).allowed
