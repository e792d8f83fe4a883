"""What the queues' jobs did: by the minute for the last 24 h (the board's charts) and in all
since the store began (the counters and histograms of `/metrics`), SPEC §7 and §11.

One interface, two stores. `MemoryHistory` serves in-process mode. `RedisHistory` serves queue
mode: every worker process on every machine writes into the same Redis keys, so any `serve`
copy reads the whole system. Recording is a dict update in both: the Redis store sends what
accumulated once a second as one EVALSHA, so its cost does not grow with the job rate.

Redis keys (`prefix` = `bioagents:history`):

- `<prefix>:totals`: hash of all-time counts under `TotalsField` names (`finished:chat:completed`,
  `sum:wait:chat`, …); no expiry.
- `<prefix>:<queue>:<minute>`: hash of one minute's outcomes (`completed`, `failed`, …) and
  wait and run time bucket counts (`w<i>`, `r<i>`); expires after 25 h.

`<minute>` is epoch seconds // 60 of the event; bucket `<i>` counts times <= `BOUNDS[i]` and
above the bound before it (`i == len(BOUNDS)`: above the last one).
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import collections
import dataclasses
import enum
import logging
import time
from collections.abc import Iterable, Mapping

from redis import asyncio as aioredis

from .flushing import REDIS_ERRORS, PeriodicFlush

log = logging.getLogger(__name__)

MINUTES = 24 * 60  # the board's window
KEEP_SECONDS = 25 * 3600  # a minute's hash outlives the window by an hour, for late readers
# Upper bounds (seconds) of the wait and run time buckets: a chat waits milliseconds and runs
# seconds; a deep research may wait minutes and run half an hour or more.
BOUNDS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
)  # fmt: skip
BUCKETS = len(BOUNDS) + 1  # the last one is above every bound (+Inf)


class HistoryUnavailable(Exception):
    """The store cannot be read (Redis unreachable); the caller answers 503."""


class Outcome(str, enum.Enum):
    COMPLETED = "completed"  # the job's last attempt succeeded
    FAILED = "failed"  # it failed for good (retries spent, or stalled twice)
    CANCELLED = "cancelled"  # stopped by its owner or an admin
    TIMED_OUT = "timed_out"  # its last attempt ran past the queue's timeout


OUTCOMES = tuple(Outcome)
TOKEN_KINDS = ("prompt", "completion")


def bucket_of(seconds: float) -> int:
    """The index of the bucket that counts `seconds` (the first bound >= it)."""
    return bisect.bisect_left(BOUNDS, seconds)


def quantile(counts: Iterable[int], q: float) -> float | None:
    """The `q` quantile (0..1) of the times counted in `counts` (one count per bucket), by
    linear interpolation inside its bucket as Prometheus' histogram_quantile does; None when
    nothing was counted. A quantile in the last bucket is reported as the last bound."""
    counts = list(counts)
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[i - 1] if i else 0.0
            return lower + (BOUNDS[i] - lower) * max(0.0, rank - seen) / count
        seen += count
    return BOUNDS[-1]


# --- field names, in one place ------------------------------------------------------------------


class TotalsField:
    """Names of the all-time counts. `sum:` fields hold seconds (floats); the rest whole counts."""

    @staticmethod
    def enqueued(queue: str) -> str:
        return f"enqueued:{queue}"

    @staticmethod
    def retries(queue: str) -> str:
        return f"retries:{queue}"

    @staticmethod
    def stalled(queue: str) -> str:
        return f"stalled:{queue}"

    @staticmethod
    def finished(queue: str, outcome: str) -> str:
        return f"finished:{queue}:{outcome}"

    @staticmethod
    def wait_bucket(queue: str, i: int) -> str:
        return f"wait:{queue}:{i}"

    @staticmethod
    def wait_sum(queue: str) -> str:
        return f"sum:wait:{queue}"

    @staticmethod
    def run_bucket(queue: str, outcome: str, i: int) -> str:
        return f"run:{queue}:{outcome}:{i}"

    @staticmethod
    def run_sum(queue: str, outcome: str) -> str:
        return f"sum:run:{queue}:{outcome}"

    @staticmethod
    def tokens(queue: str, kind: str) -> str:
        return f"tokens:{queue}:{kind}"


def wait_field(i: int) -> str:
    return f"w{i}"


def run_field(i: int) -> str:
    return f"r{i}"


# --- what a read returns ------------------------------------------------------------------------


@dataclasses.dataclass
class Totals:
    """All-time counts, summed over every process that recorded them."""

    fields: Mapping[str, float]

    def count(self, field: str) -> float:
        return self.fields.get(field, 0)

    def wait_buckets(self, queue: str) -> list[float]:
        return [self.count(TotalsField.wait_bucket(queue, i)) for i in range(BUCKETS)]

    def run_buckets(self, queue: str, outcome: str) -> list[float]:
        return [self.count(TotalsField.run_bucket(queue, outcome, i)) for i in range(BUCKETS)]


@dataclasses.dataclass
class QueueDay:
    """One queue's last 24 h: `minutes[k]` holds what happened in minute `first_minute + k`
    (epoch seconds // 60), oldest first; an empty mapping is a quiet minute."""

    queue: str
    first_minute: int
    minutes: list[Mapping[str, int]]

    def outcome_series(self, *outcomes: str) -> list[int]:
        return [sum(m.get(o, 0) for o in outcomes) for m in self.minutes]

    def buckets(self, kind: str, start: int = 0, stop: int | None = None) -> list[int]:
        """Summed bucket counts of `kind` ("w" wait, "r" run) over minutes[start:stop]."""
        sums = [0] * BUCKETS
        names = [f"{kind}{i}" for i in range(BUCKETS)]
        for minute in self.minutes[start:stop]:
            if minute:
                for i, name in enumerate(names):
                    sums[i] += minute.get(name, 0)
        return sums

    def total(self, *outcomes: str) -> int:
        return sum(self.outcome_series(*outcomes))


def epoch_minute(at: float) -> int:
    return int(at // 60)


# --- the interface ------------------------------------------------------------------------------


class History(abc.ABC):
    """Record what jobs do (cheap, never blocks, never raises) and read it back.

    Job runners call `enqueued` for every job put in a queue (a manual retry included, so every
    enqueue ends in one `finished`), `retried` when a failed attempt will be followed by
    another, `stalled` when a job's worker vanished, `finished` once when a job reaches its end,
    and `used_tokens` after each attempt that called the model."""

    def enqueued(self, queue: str) -> None:
        self._record(queue, {TotalsField.enqueued(queue): 1})

    def retried(self, queue: str) -> None:
        self._record(queue, {TotalsField.retries(queue): 1})

    def stalled(self, queue: str) -> None:
        self._record(queue, {TotalsField.stalled(queue): 1})

    def used_tokens(self, queue: str, prompt: int, completion: int) -> None:
        self._record(
            queue,
            {
                TotalsField.tokens(queue, "prompt"): prompt,
                TotalsField.tokens(queue, "completion"): completion,
            },
        )

    def finished(
        self,
        queue: str,
        outcome: Outcome | str,
        wait_seconds: float | None,
        run_seconds: float | None,
        at: float | None = None,
    ) -> None:
        """A job ended. `wait_seconds`: from queued to the start of its last attempt;
        `run_seconds`: that attempt's run (None when it never started)."""
        outcome = Outcome(outcome).value
        totals: dict[str, float] = {TotalsField.finished(queue, outcome): 1}
        minute: dict[str, int] = {outcome: 1}
        if wait_seconds is not None:
            i = bucket_of(wait_seconds)
            totals[TotalsField.wait_bucket(queue, i)] = 1
            totals[TotalsField.wait_sum(queue)] = float(wait_seconds)
            minute[wait_field(i)] = 1
        if run_seconds is not None:
            i = bucket_of(run_seconds)
            totals[TotalsField.run_bucket(queue, outcome, i)] = 1
            totals[TotalsField.run_sum(queue, outcome)] = float(run_seconds)
            minute[run_field(i)] = 1
        self._record(queue, totals, epoch_minute(time.time() if at is None else at), minute)

    @abc.abstractmethod
    def _record(
        self,
        queue: str,
        totals: Mapping[str, float],
        minute: int | None = None,
        minute_fields: Mapping[str, int] | None = None,
    ) -> None:
        """Add `totals` to the all-time counts and `minute_fields` to the queue's minute."""

    @abc.abstractmethod
    async def totals(self) -> Totals:
        """All-time counts. Raises HistoryUnavailable when the store cannot be read."""

    @abc.abstractmethod
    async def last_day(self, queue: str, now: float | None = None) -> QueueDay:
        """The queue's last MINUTES minutes, the current one included. Raises
        HistoryUnavailable when the store cannot be read."""

    async def start(self) -> None:
        """Start background work (the Redis store's flusher)."""

    async def close(self) -> None:
        """Stop it, writing what is still pending."""


class MemoryHistory(History):
    """In-process mode: this process runs every job, so its memory is the whole story."""

    def __init__(self) -> None:
        self._totals: collections.Counter[str] = collections.Counter()
        self._minutes: dict[str, dict[int, collections.Counter[str]]] = {}
        self._latest_minute = 0

    def _record(self, queue, totals, minute=None, minute_fields=None) -> None:
        self._totals.update(totals)
        if minute is None or not minute_fields:
            return
        if minute > self._latest_minute:
            self._latest_minute = minute
            self._forget_before(minute - MINUTES)
        by_minute = self._minutes.setdefault(queue, {})
        by_minute.setdefault(minute, collections.Counter()).update(minute_fields)

    def _forget_before(self, minute: int) -> None:
        for by_minute in self._minutes.values():
            for old in [m for m in by_minute if m < minute]:
                del by_minute[old]

    async def totals(self) -> Totals:
        return Totals(dict(self._totals))

    async def last_day(self, queue: str, now: float | None = None) -> QueueDay:
        first = epoch_minute(time.time() if now is None else now) - MINUTES + 1
        by_minute = self._minutes.get(queue, {})
        empty: Mapping[str, int] = {}
        return QueueDay(queue, first, [by_minute.get(first + k, empty) for k in range(MINUTES)])


# Adds increments to hashes. KEYS[1] is the totals hash (kept for ever), KEYS[2..] per-minute
# hashes (kept ARGV[1] seconds). After ARGV[1] come, key by key, a count n and n field/increment
# pairs; a field named `sum:…` holds seconds and is increased as a float.
FLUSH_SCRIPT = """
local keep = tonumber(ARGV[1])
local at = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, n do
    local field, by = ARGV[at], ARGV[at + 1]
    if string.sub(field, 1, 4) == 'sum:' then
      redis.call('HINCRBYFLOAT', KEYS[k], field, by)
    else
      redis.call('HINCRBY', KEYS[k], field, by)
    end
    at = at + 2
  end
  if k > 1 then
    redis.call('EXPIRE', KEYS[k], keep)
  end
end
return #KEYS
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _number(value: bytes | str) -> float:
    number = float(value)
    return int(number) if number.is_integer() else number


class RedisHistory(History):
    """Queue mode: increments accumulate in this process and are sent as one EVALSHA every
    `flush_interval` seconds (and before each read here), so every process on every machine
    adds into the same keys. Takes a plain `redis.asyncio.Redis` (bytes or decoded replies)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "bioagents:history",
        flush_interval: float = 1.0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.flush_interval = flush_interval
        self._script = redis.register_script(FLUSH_SCRIPT)
        self._totals: collections.Counter[str] = collections.Counter()
        self._minutes: dict[tuple[str, int], collections.Counter[str]] = {}
        self._periodic = PeriodicFlush(self.flush, flush_interval, "job history")
        self._flush_lock = asyncio.Lock()
        # Minutes that can no longer change (ended over a minute ago), read once.
        self._settled: dict[tuple[str, int], Mapping[str, int]] = {}

    @property
    def totals_key(self) -> str:
        return f"{self.prefix}:totals"

    def minute_key(self, queue: str, minute: int) -> str:
        return f"{self.prefix}:{queue}:{minute}"

    def _record(self, queue, totals, minute=None, minute_fields=None) -> None:
        self._totals.update(totals)
        if minute is not None and minute_fields:
            self._minutes.setdefault((queue, minute), collections.Counter()).update(minute_fields)

    async def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()

    async def flush(self) -> None:
        """Send what accumulated; on a Redis error it stays pending and the error is raised."""
        async with self._flush_lock:
            totals, minutes = self._totals, self._minutes
            if not totals and not minutes:
                return
            self._totals, self._minutes = collections.Counter(), {}
            keys = [self.totals_key]
            args: list[str | int | float] = [KEEP_SECONDS, len(totals)]
            for field, value in totals.items():
                args += [field, value]
            for (queue, minute), fields in minutes.items():
                keys.append(self.minute_key(queue, minute))
                args.append(len(fields))
                for field, value in fields.items():
                    args += [field, value]
            try:
                await self._script(keys=keys, args=args)
            except BaseException:
                self._totals.update(totals)
                for key, fields in minutes.items():
                    self._minutes.setdefault(key, collections.Counter()).update(fields)
                raise

    async def totals(self) -> Totals:
        try:
            return await self._read_totals()
        except REDIS_ERRORS as error:
            raise HistoryUnavailable(f"Redis cannot be reached: {error}") from error

    async def _read_totals(self) -> Totals:
        await self.flush()
        # redis-py annotates its sync and async clients alike (a reply or an awaitable).
        raw: dict = await self.redis.hgetall(self.totals_key)  # type: ignore[misc]
        return Totals({_text(k): _number(v) for k, v in raw.items()})

    async def last_day(self, queue: str, now: float | None = None) -> QueueDay:
        try:
            return await self._read_last_day(queue, now)
        except REDIS_ERRORS as error:
            raise HistoryUnavailable(f"Redis cannot be reached: {error}") from error

    async def _read_last_day(self, queue: str, now: float | None) -> QueueDay:
        await self.flush()
        current = epoch_minute(time.time() if now is None else now)
        first = current - MINUTES + 1
        for key in [key for key in self._settled if key[1] < first]:
            del self._settled[key]
        wanted = [m for m in range(first, current + 1) if (queue, m) not in self._settled]
        async with self.redis.pipeline(transaction=False) as pipe:
            for minute in wanted:
                pipe.hgetall(self.minute_key(queue, minute))
            replies = await pipe.execute() if wanted else []
        fresh = {}
        for minute, raw in zip(wanted, replies, strict=True):
            fields = {_text(k): int(v) for k, v in raw.items()}
            fresh[minute] = fields
            if minute < current - 1:
                self._settled[(queue, minute)] = fields
        minutes = [
            self._settled.get((queue, m)) or fresh.get(m) or {} for m in range(first, current + 1)
        ]
        return QueueDay(queue, first, minutes)


class NotRecorded(History):
    """For a queue whose runner records nothing yet: every read is empty. (Queue mode until its
    workers record into a RedisHistory; benchmarks that measure the cost of recording.)"""

    def _record(self, queue, totals, minute=None, minute_fields=None) -> None:
        pass

    async def totals(self) -> Totals:
        return Totals({})

    async def last_day(self, queue: str, now: float | None = None) -> QueueDay:
        first = epoch_minute(time.time() if now is None else now) - MINUTES + 1
        return QueueDay(queue, first, [{}] * MINUTES)
