"""Per-user sliding-window rate limits (SPEC §4, §9)."""

from __future__ import annotations

from bioagents.ratelimit import MemoryRateLimiter
from tests.api_support import app_settings, get_json, message_rows
from tests.conftest import post_chat

API_KEY = "test-api-key-0123456789abcdef0123456789"


async def post_as_user(client, message: str, user: str, path: str = "/api/chat"):
    """A request from a known user (an API-key caller names them), so it counts as theirs."""
    headers = {"X-API-Key": API_KEY, "X-User-Id": user}
    return await client.post(path, json={"message": message}, headers=headers)


async def test_chat_over_the_limit_is_429_with_headers_and_no_row(make_client):
    client = await make_client(CHAT_RATE_LIMIT_PER_MINUTE="2")

    first, _ = await post_chat(client, "one")
    second, _ = await post_chat(client, "two")
    third, body = await post_chat(client, "three")

    assert (first.status, second.status) == (202, 202)
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert second.headers["X-RateLimit-Remaining"] == "0"

    assert third.status == 429
    assert body["ok"] is False and body["error"]
    assert isinstance(body["retryAfter"], int) and 1 <= body["retryAfter"] <= 60
    assert third.headers["Retry-After"] == str(body["retryAfter"])
    assert third.headers["X-RateLimit-Limit"] == "2"
    assert third.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(third.headers["X-RateLimit-Reset"]) <= 60
    assert sorted(row["question"] for row in message_rows(app_settings(client))) == ["one", "two"]


async def test_limits_are_per_user_and_per_queue(make_client):
    client = await make_client(
        CHAT_RATE_LIMIT_PER_MINUTE="1",
        DEEP_RESEARCH_RATE_LIMIT_PER_5MIN="1",
        BIOAGENTS_API_KEY=API_KEY,
    )
    start = "/api/deep-research/start"

    assert (await post_as_user(client, "alice chat", "alice")).status == 202
    assert (await post_as_user(client, "alice again", "alice")).status == 429
    assert (await post_as_user(client, "bob chat", "bob")).status == 202
    assert (await post_as_user(client, "alice research", "alice", start)).status == 202
    limited = await post_as_user(client, "more research", "alice", start)
    assert limited.status == 429
    assert 1 <= (await limited.json())["retryAfter"] <= 300


async def test_status_and_message_reads_are_not_limited(make_client):
    client = await make_client(CHAT_RATE_LIMIT_PER_MINUTE="1")
    _, accepted = await post_chat(client, "the only one")
    assert (await post_chat(client, "limited"))[0].status == 429

    for _ in range(5):
        for path in (
            f"/api/chat/status/{accepted['jobId']}",
            f"/api/messages/{accepted['messageId']}",
            f"/api/conversations/{accepted['conversationId']}/messages",
        ):
            status, _ = await get_json(client, path)
            assert status == 200, path


async def test_zero_turns_the_limit_off(make_client):
    client = await make_client(CHAT_RATE_LIMIT_PER_MINUTE="0")

    for number in range(15):
        response, _ = await post_chat(client, f"question {number}")
        assert response.status == 202
        assert "X-RateLimit-Limit" not in response.headers


async def test_the_in_process_limiter_forgets_users_whose_window_has_emptied():
    now = [0.0]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    limiter.SWEEP_EVERY = 5
    for user in range(4):
        assert (await limiter.hit(f"chat:user{user}", 3, 60.0)).allowed
    assert limiter.tracked_keys == 4
    now[0] = 61.0  # every window has emptied
    await limiter.hit("chat:late", 3, 60.0)  # the fifth hit sweeps
    assert limiter.tracked_keys == 1
    decision = await limiter.hit("chat:late", 3, 60.0)
    assert decision.allowed and decision.remaining == 1
