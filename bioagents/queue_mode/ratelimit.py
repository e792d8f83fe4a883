"""Per-user sliding-window rate limits in Redis (SPEC §4), shared by every `serve` copy.

One script per hit: drop the stamps that left the window, count the rest, add this hit if it
fits, all by the Redis clock. The arithmetic of the answer is `ratelimit.decide`, the same as
in-process mode.
"""

from __future__ import annotations

import uuid

from ..ratelimit import RateDecision, RateLimiter, decide
from .connect import unavailable_as_queue_error
from .pipeline import AutoPipeline, Script

KEY_PREFIX = "bioagents:ratelimit:"

# KEYS: the user's window. ARGV: limit, window seconds, a unique member for this hit.
# Returns {allowed, stamps in the window before this hit, oldest stamp, now} (times as text).
HIT = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now - window))
local count = redis.call('ZCARD', KEYS[1])
local oldest = now
if count > 0 then oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) end
local allowed = 0
if count < limit then
  redis.call('ZADD', KEYS[1], string.format('%.6f', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
  allowed = 1
end
return {allowed, count, string.format('%.6f', oldest), string.format('%.6f', now)}
"""
)


class RedisRateLimiter(RateLimiter):
    def __init__(self, pipeline: AutoPipeline):
        self._pipeline = pipeline

    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        """Raises QueueUnavailable when Redis cannot be reached."""
        with unavailable_as_queue_error():
            allowed, count, oldest, now = await self._pipeline.script(
                HIT, [KEY_PREFIX + key], [limit, window, uuid.uuid4().hex]
            )
        # `decide` reads the window's length and its oldest stamp, which is all Redis returns.
        window_stamps = [float(oldest)] * count
        _, remaining, reset = decide(window_stamps, limit, window, float(now))
        return RateDecision(bool(allowed), limit, remaining if allowed else 0, reset)
