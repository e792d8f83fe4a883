"""Rate limits in Redis are one sliding window per user shared by every `serve` copy, with the
same arithmetic as in-process mode."""

from __future__ import annotations

import pytest

from bioagents.jobs.base import QueueUnavailable
from bioagents.ratelimit import MemoryRateLimiter

from .conftest import post_chat

pytestmark = pytest.mark.queue


API_KEY = "queue-test-api-key-0123456789abcdef0123"


async def post_as(http, app, user: str) -> tuple[int, dict, dict]:
    """A chat from a known user: an API-key caller names them, so it counts as theirs."""
    headers = {"X-API-Key": API_KEY, "X-User-Id": user}
    async with http.post(f"{app.base_url}/api/chat", json={"message": "hi"}, headers=headers) as r:
        return r.status, dict(r.headers), await r.json()


async def test_two_serve_copies_share_one_window_per_user(procs, http):
    first = await procs.serve(CHAT_RATE_LIMIT_PER_MINUTE=3, BIOAGENTS_API_KEY=API_KEY)
    second = await procs.serve(CHAT_RATE_LIMIT_PER_MINUTE=3, BIOAGENTS_API_KEY=API_KEY)
    statuses = []
    for app in (first, second, first, second):
        status, _, _ = await post_as(http, app, "alice")
        statuses.append(status)
    assert statuses == [202, 202, 202, 429]
    status, headers, body = await post_as(http, first, "alice")
    assert status == 429
    assert int(headers["Retry-After"]) == body["retryAfter"] >= 1
    assert headers["X-RateLimit-Remaining"] == "0"
    assert (await post_as(http, second, "bob"))[0] == 202  # per user
    # Anonymous callers are counted by address: alice's chosen id is no way around it.
    assert (await post_chat(http, second, user="carol"))[0] == 202
    assert (await post_chat(http, first, user="dave"))[0] == 202
    assert (await post_chat(http, second, user="erin"))[0] == 202
    assert (await post_chat(http, first, user="frank"))[0] == 429


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
