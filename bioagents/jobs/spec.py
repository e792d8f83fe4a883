"""Each queue's facts as one table of data (SPEC §4, §6): adding a queue is adding a row."""

from __future__ import annotations

import dataclasses

from ..config import Settings

HOUR = 3600
DAY = 24 * HOUR


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    percent: int


CHAT_AGENT = "chat"  # one reply, one model request
RESEARCH_AGENT = "research"  # resumable stages, each output kept in the message's state row


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
    # What an attempt does (`jobs/handler.py`), whether the message keeps a state row, and
    # which status body its status route answers (SPEC §4).
    agent: str = CHAT_AGENT
    accept_path: str = "/api/chat"  # POST a question here
    path: str = "/api/chat"  # the owner's <path>/retry/{jobId} and <path>/cancel/{jobId}
    status_path: str = "/api/chat/status/{jobId}"
    rate_limit: int = 0  # accepted requests per user (or client address) per window; 0: none
    rate_window: float = 60.0  # seconds
    dedupe: bool = False  # a run still active in the conversation answers instead of a new one

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    @property
    def keeps_state(self) -> bool:
        return self.agent == RESEARCH_AGENT

    def poll_url(self, job_id: str) -> str:
        """Where a client polls the job (the `pollUrl` of a 202)."""
        return self.status_path.format(jobId=job_id, messageId=job_id)

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
        agent=RESEARCH_AGENT,
        accept_path="/api/deep-research/start",
        path="/api/deep-research",
        status_path="/api/deep-research/status/{messageId}",
        rate_window=300.0,
        dedupe=True,
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
    """The specs with concurrency, timeout and rate limit taken from the settings."""
    return {
        CHAT: _DEFAULTS[CHAT].with_(
            concurrency=settings.chat_concurrency,
            timeout=settings.chat_job_timeout,
            rate_limit=settings.chat_rate_limit_per_minute,
        ),
        DEEP_RESEARCH: _DEFAULTS[DEEP_RESEARCH].with_(
            concurrency=settings.deep_research_concurrency,
            timeout=settings.deep_research_job_timeout,
            rate_limit=settings.deep_research_rate_limit_per_5min,
        ),
    }
