"""The history store's arithmetic (history.py), in memory: minutes of the last 24 h, all-time
totals, and quantiles from the fixed buckets. The Redis store is held to the same answers in
tests/queue/test_history_redis.py."""

from __future__ import annotations

import pytest

from bioagents.history import (
    BOUNDS,
    BUCKETS,
    MINUTES,
    MemoryHistory,
    Outcome,
    TotalsField,
    bucket_of,
    quantile,
)

NOW = 1_700_000_000.0  # a fixed clock: minute 28333333 starts at 1_699_999_980


def test_a_time_lands_in_the_first_bucket_whose_bound_is_not_below_it():
    assert bucket_of(0.0) == 0
    assert bucket_of(BOUNDS[0]) == 0
    assert bucket_of(BOUNDS[0] + 1e-9) == 1
    assert bucket_of(1.0) == BOUNDS.index(1.0)
    assert bucket_of(BOUNDS[-1] * 10) == BUCKETS - 1


def test_quantiles_interpolate_inside_the_bucket_like_prometheus():
    counts = [0] * BUCKETS
    counts[bucket_of(0.75)] = 10  # ten times in (0.5, 1.0]
    assert quantile(counts, 0.5) == pytest.approx(0.75)
    assert quantile(counts, 0.95) == pytest.approx(0.975)
    counts[bucket_of(20.0)] = 10  # and ten in (10, 30]
    assert quantile(counts, 0.5) == pytest.approx(1.0)
    assert quantile(counts, 0.95) == pytest.approx(10 + 20 * 0.9)
    assert quantile([0] * BUCKETS, 0.5) is None
    beyond = [0] * BUCKETS
    beyond[-1] = 3
    assert quantile(beyond, 0.5) == BOUNDS[-1]


async def test_finished_jobs_are_counted_in_their_minute_and_in_the_totals():
    history = MemoryHistory()
    history.finished("chat", Outcome.COMPLETED, 0.02, 1.5, at=NOW - 120)
    history.finished("chat", Outcome.COMPLETED, 0.03, 2.5, at=NOW - 110)
    history.finished("chat", Outcome.FAILED, 0.02, 0.4, at=NOW)
    history.finished("chat", Outcome.CANCELLED, None, None, at=NOW)
    history.finished("deep-research", Outcome.TIMED_OUT, 4.0, 300.0, at=NOW)

    day = await history.last_day("chat", now=NOW)
    assert len(day.minutes) == MINUTES
    assert day.first_minute + MINUTES - 1 == int(NOW // 60)
    assert day.outcome_series("completed")[-3:] == [2, 0, 0]
    assert day.outcome_series("failed", "cancelled")[-1] == 2
    assert day.total("completed") == 2
    assert sum(day.buckets("w")) == 3  # the cancelled job never started: no wait recorded
    # Run times 0.4 in (0.25, 0.5] and 1.5, 2.5 in (1.0, 2.5]: the median, rank 1.5 of 3, lies
    # a quarter of the way into the second bucket.
    assert quantile(day.buckets("r"), 0.5) == pytest.approx(1.0 + 1.5 * 0.25)

    totals = await history.totals()
    assert totals.count(TotalsField.finished("chat", "completed")) == 2
    assert totals.count(TotalsField.finished("chat", "cancelled")) == 1
    assert totals.count(TotalsField.finished("deep-research", "timed_out")) == 1
    assert totals.count(TotalsField.wait_sum("chat")) == pytest.approx(0.07)
    assert totals.count(TotalsField.run_sum("chat", "completed")) == pytest.approx(4.0)
    assert sum(totals.run_buckets("deep-research", "timed_out")) == 1


async def test_minutes_older_than_24_hours_leave_the_window_but_not_the_totals():
    history = MemoryHistory()
    history.finished("chat", Outcome.COMPLETED, 0.01, 1.0, at=NOW - MINUTES * 60)
    history.finished("chat", Outcome.COMPLETED, 0.01, 1.0, at=NOW - (MINUTES - 1) * 60)
    history.finished("chat", Outcome.COMPLETED, 0.01, 1.0, at=NOW)
    day = await history.last_day("chat", now=NOW)
    assert day.total("completed") == 2
    assert day.outcome_series("completed")[0] == 1
    totals = await history.totals()
    assert totals.count(TotalsField.finished("chat", "completed")) == 3


async def test_enqueues_retries_stalls_and_tokens_are_totals_only():
    history = MemoryHistory()
    history.enqueued("chat")
    history.enqueued("chat")
    history.retried("chat")
    history.stalled("deep-research")
    history.used_tokens("chat", 120, 45)
    history.used_tokens("chat", 30, 5)
    totals = await history.totals()
    assert totals.count(TotalsField.enqueued("chat")) == 2
    assert totals.count(TotalsField.retries("chat")) == 1
    assert totals.count(TotalsField.stalled("deep-research")) == 1
    assert totals.count(TotalsField.tokens("chat", "prompt")) == 150
    assert totals.count(TotalsField.tokens("chat", "completion")) == 50
    assert (await history.last_day("chat", now=NOW)).total("completed", "failed") == 0
