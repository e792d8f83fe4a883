"""The Redis-backed history and counters against a real redis-server: two writers (two
clients, as two worker or serve processes would have) add up in the same keys, a flush is one
EVALSHA however many jobs it carries, and counts survive a Redis outage without loss or
double counting. The Redis history answers exactly as the in-memory one does."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from bioagents.history import (
    KEEP_SECONDS,
    HistoryUnavailable,
    MemoryHistory,
    Outcome,
    RedisHistory,
    TotalsField,
)
from bioagents.metrics import ProcessCounters, RedisCounters

pytestmark = pytest.mark.queue

NOW = time.time()


def events(history, queue: str, shift: int) -> None:
    """A known mix of jobs over the last hour (`shift` varies it per writer)."""
    for n in range(10 + shift):
        history.enqueued(queue)
        outcome = Outcome.FAILED if n % 5 == 0 else Outcome.COMPLETED
        history.finished(queue, outcome, 0.01 * (n + 1), 0.5 * (n + 1), at=NOW - 60 * (n % 7))
        if outcome is Outcome.FAILED:
            history.retried(queue)
    history.finished(queue, Outcome.TIMED_OUT, 1.0, 300.0, at=NOW - 1800)
    history.finished(queue, Outcome.CANCELLED, 2.0, None, at=NOW)
    history.stalled(queue)
    history.used_tokens(queue, 100 + shift, 20)


@pytest.fixture
async def clients(redis_server):
    """Three clients: bytes replies, decoded replies (both kinds a caller may hand over), and
    one for reading."""
    opened = [
        redis_server.client(),
        aioredis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True),
        redis_server.client(),
    ]
    yield opened
    for client in opened:
        await client.aclose()


async def test_two_writers_add_up_to_what_one_memory_store_would_hold(clients):
    first, second, reader_client = clients
    writers = [RedisHistory(first), RedisHistory(second)]
    expected = MemoryHistory()
    for shift, writer in enumerate(writers):
        for queue in ("chat", "deep-research"):
            events(writer, queue, shift)
            events(expected, queue, shift)
    for writer in writers:
        await writer.close()  # writes what is pending

    reader = RedisHistory(reader_client)
    totals = await reader.totals()
    assert totals.fields == pytest.approx((await expected.totals()).fields)
    assert totals.count(TotalsField.finished("chat", "completed")) == 8 + 8
    assert totals.count(TotalsField.stalled("deep-research")) == 2
    assert totals.count(TotalsField.tokens("chat", "prompt")) == 201
    for queue in ("chat", "deep-research"):
        day = await reader.last_day(queue, now=NOW)
        same = await expected.last_day(queue, now=NOW)
        assert day.first_minute == same.first_minute
        assert [dict(m) for m in day.minutes] == [dict(m) for m in same.minutes]
        assert day.total("completed") == 16 and day.total("timed_out") == 2


async def test_a_flush_is_one_evalsha_however_many_jobs_it_carries(clients, redis):
    history = RedisHistory(clients[0])
    history.finished("chat", Outcome.COMPLETED, 0.1, 1.0)
    await history.flush()  # the first one also loads the script

    async def evalsha_calls() -> int:
        stats = await redis.info("commandstats")
        return stats.get("cmdstat_evalsha", {}).get("calls", 0)

    before = await evalsha_calls()
    for n in range(500):
        history.enqueued("chat")
        history.finished("chat", Outcome.COMPLETED, 0.001 * n, 0.01 * n)
    await history.flush()
    assert await evalsha_calls() - before == 1
    assert (await history.totals()).count(TotalsField.enqueued("chat")) == 500


async def test_minute_hashes_expire_the_totals_stay(clients, redis):
    history = RedisHistory(clients[0])
    history.finished("chat", Outcome.COMPLETED, 0.1, 1.0, at=NOW)
    await history.flush()
    minute_key = history.minute_key("chat", int(NOW // 60))
    assert KEEP_SECONDS - 5 <= await redis.ttl(minute_key) <= KEEP_SECONDS
    assert await redis.ttl(history.totals_key) == -1


async def test_counts_wait_out_a_redis_outage_and_arrive_once(redis_server):
    client = redis_server.client()
    history = RedisHistory(client)
    try:
        history.finished("chat", Outcome.COMPLETED, 0.1, 1.0)
        await history.flush()
        redis_server.stop()
        history.finished("chat", Outcome.FAILED, 0.1, 1.0)
        with pytest.raises(HistoryUnavailable):
            await history.totals()  # a read flushes first: that fails and keeps the counts
        history.finished("chat", Outcome.FAILED, 0.1, 1.0)
        redis_server.start()
        totals = await history.totals()  # flushes first
        assert totals.count(TotalsField.finished("chat", "completed")) == 1
        assert totals.count(TotalsField.finished("chat", "failed")) == 2
        await history.flush()
        again = await history.totals()
        assert again.count(TotalsField.finished("chat", "failed")) == 2
    finally:
        await history.close()
        await client.aclose()


async def test_the_background_flusher_writes_without_being_asked(clients):
    writer = RedisHistory(clients[0], flush_interval=0.05)
    await writer.start()
    try:
        writer.finished("chat", Outcome.COMPLETED, 0.1, 1.0)
        reader_client = clients[2]
        field = TotalsField.finished("chat", "completed")
        deadline = time.monotonic() + 5
        while not await reader_client.hget(writer.totals_key, field):
            assert time.monotonic() < deadline, "the flusher never wrote"
            await asyncio.sleep(0.02)
    finally:
        await writer.close()


# --- per-process counters of several serve copies ----------------------------------------------


async def test_two_copies_counters_add_up_and_their_sockets_too(clients):
    counters = [ProcessCounters(), ProcessCounters()]
    sources = [
        RedisCounters(clients[0], lambda: 3, counters=counters[0]),
        RedisCounters(clients[1], lambda: 4, counters=counters[1]),
    ]
    counters[0].http[("GET", "/api/chat/status/{jobId}", "200")] += 5
    counters[1].http[("GET", "/api/chat/status/{jobId}", "200")] += 2
    counters[1].rate_limited["chat"] += 1
    counters[0].notifications["job:completed"] += 4
    await sources[1].flush()
    counts = await sources[0].read()  # flushes its own first
    assert counts.fields["http|GET|/api/chat/status/{jobId}|200"] == 7
    assert counts.fields["rate_limited|chat"] == 1
    assert counts.fields["notifications|job:completed"] == 4
    assert counts.websockets == 7

    # Only what was added since the last flush is sent again.
    counters[0].http[("GET", "/api/chat/status/{jobId}", "200")] += 1
    await sources[0].flush()
    await sources[1].flush()
    counts = await sources[0].read()
    assert counts.fields["http|GET|/api/chat/status/{jobId}|200"] == 8

    await sources[1].close()  # a copy that stops takes its sockets with it, not its counts
    counts = await sources[0].read()
    assert counts.websockets == 3
    assert counts.fields["rate_limited|chat"] == 1


async def test_a_copy_that_died_stops_counting_sockets(clients):
    alive = RedisCounters(clients[0], lambda: 2, counters=ProcessCounters(), forget_after=1)
    dead = RedisCounters(clients[1], lambda: 5, counters=ProcessCounters(), forget_after=1)
    await dead.flush()  # then never again, as after SIGKILL
    assert (await alive.read()).websockets == 7
    await asyncio.sleep(2.2)
    assert (await alive.read()).websockets == 2
