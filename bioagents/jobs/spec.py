"""Each queue's settings as one table of data (SPEC §6)."""

from __future__ import annotations

import dataclasses

from ..config import Settings

HOUR = 3600
DAY = 24 * HOUR


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    percent: int


@dataclasses.dataclass(frozen=True)
class QueueSpec:
    name: str
    concurrency: int
    retries: int  # retries after the first failure
    backoff_base: float  # seconds; retry n waits base * 2**(n-1), with no jitter
    keep_completed_seconds: float
    keep_completed_count: int
    keep_failed_seconds: float
    keep_failed_count: int | None  # None: no count limit
    stages: tuple[Stage, ...]
    timeout: float = 0.0  # seconds an attempt may run before it is stopped and fails; 0 = none

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def backoff(self, attempts_made: int) -> float:
        """Seconds to wait before the next attempt, after `attempts_made` failed attempts."""
        return self.backoff_base * 2 ** (attempts_made - 1)

    def with_(self, **changes) -> QueueSpec:
        return dataclasses.replace(self, **changes)


CHAT = "chat"
DEEP_RESEARCH = "deep-research"
QUEUE_NAMES = (CHAT, DEEP_RESEARCH)

_DEFAULTS = {
    CHAT: QueueSpec(
        name=CHAT,
        concurrency=5,
        retries=3,
        backoff_base=1.0,
        keep_completed_seconds=HOUR,
        keep_completed_count=1000,
        keep_failed_seconds=DAY,
        keep_failed_count=None,
        stages=(
            Stage("planning", 10),
            Stage("literature", 30),
            Stage("hypothesis", 60),
            Stage("reply", 90),
        ),
    ),
    DEEP_RESEARCH: QueueSpec(
        name=DEEP_RESEARCH,
        concurrency=3,
        retries=2,
        backoff_base=5.0,
        keep_completed_seconds=DAY,
        keep_completed_count=500,
        keep_failed_seconds=7 * DAY,
        keep_failed_count=None,
        stages=(
            Stage("planning", 5),
            Stage("literature", 20),
            Stage("analysis", 50),
            Stage("hypothesis", 70),
            Stage("reflection", 85),
            Stage("reply", 95),
        ),
    ),
}


def queue_specs(settings: Settings) -> dict[str, QueueSpec]:
    """The specs with concurrency and timeout taken from the settings."""
    return {
        CHAT: _DEFAULTS[CHAT].with_(
            concurrency=settings.chat_concurrency, timeout=settings.chat_job_timeout
        ),
        DEEP_RESEARCH: _DEFAULTS[DEEP_RESEARCH].with_(
            concurrency=settings.deep_research_concurrency,
            timeout=settings.deep_research_job_timeout,
        ),
    }
