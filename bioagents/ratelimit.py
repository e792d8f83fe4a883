"""Per-user sliding-window rate limits (SPEC §4), behind one interface, and whose window a
request counts in: a known user's own, an anonymous caller's client address's (SPEC §12).

`MemoryRateLimiter` serves in-process mode; `redis_ratelimit.RedisRateLimiter` is shared by every
`serve` copy in queue mode.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import ipaddress
import math
import time

IPV6_CLIENT_PREFIX = 64  # one IPv6 client (a home, a VM) usually holds a whole /64


@dataclasses.dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # seconds until the window frees a slot

    @property
    def retry_after(self) -> int:
        return max(1, self.reset_seconds)

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }


class RateLimiter(abc.ABC):
    @abc.abstractmethod
    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        """Count one request for `key` if it fits `limit` per `window` seconds."""

    async def close(self) -> None:
        """Release connections."""


def decide(stamps: list[float] | collections.deque, limit: int, window: float, now: float):
    """The shared arithmetic: given the stamps still in the window (oldest first)."""
    oldest = stamps[0] if stamps else now  # with this hit counted, the oldest in the window
    if len(stamps) < limit:
        return True, limit - len(stamps) - 1, max(1, math.ceil(oldest + window - now))
    return False, 0, max(1, math.ceil(oldest + window - now))


class MemoryRateLimiter(RateLimiter):
    SWEEP_EVERY = 10_000  # hits between sweeps of users whose windows have emptied

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._stamps: dict[str, collections.deque[float]] = {}
        self._windows: dict[str, float] = {}
        self._hits = 0

    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        now = self._clock()
        self._hits += 1
        if self._hits % self.SWEEP_EVERY == 0:
            self._sweep(now)
        stamps = self._stamps.setdefault(key, collections.deque())
        self._windows[key] = window
        while stamps and stamps[0] <= now - window:
            stamps.popleft()
        allowed, remaining, reset = decide(stamps, limit, window, now)
        if allowed:
            stamps.append(now)
        return RateDecision(allowed, limit, remaining, reset)

    def _sweep(self, now: float) -> None:
        """Forget users with nothing left in their window, so memory follows active users."""
        for key in [k for k, s in self._stamps.items() if not s or s[-1] <= now - self._windows[k]]:
            del self._stamps[key]
            del self._windows[key]

    @property
    def tracked_keys(self) -> int:
        return len(self._stamps)


def client_address(remote: str | None) -> str:
    """The address a client is counted by: its IPv4 address, or its IPv6 /64 network."""
    try:
        address = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return remote or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)


def subject_key(queue: str, user_id: str, *, anonymous: bool, remote: str | None) -> str:
    """The window a request counts in. Anonymous callers choose their own ids (or get a fresh
    one each time), so their address is what is counted."""
    if anonymous:
        return f"{queue}:address:{client_address(remote)}"
    return f"{queue}:user:{user_id}"
