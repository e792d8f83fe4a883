"""The database: peewee models (SPEC §8) and an async gateway that runs queries off the event loop.

SQLite (the default) runs in WAL mode with a busy timeout so `serve` and `worker` processes can
share one file; all queries of a process go through one thread, SQLite's single writer.
PostgreSQL (any `DATABASE_URL` that playhouse.db_url takes) gets a few threads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import peewee as pw
from playhouse import db_url
from playhouse.sqlite_ext import JSONField as SqliteJSONField


class ThreadDatabase(pw.DatabaseProxy):
    """The models' database: the one of the `Database` whose thread runs the query. Each
    `Database` runs its queries on threads of its own, so two of them in one process (two apps
    in a test, say) never share a connection or see each other's tables."""

    _local = threading.local()

    @property
    def obj(self) -> pw.Database | None:
        return getattr(self._local, "database", None)

    @obj.setter
    def obj(self, database: pw.Database | None) -> None:
        self._local.database = database


database_proxy = ThreadDatabase()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_id() -> str:
    return str(uuid.uuid4())


class JSONField(SqliteJSONField):
    """JSON stored as text: works on SQLite and PostgreSQL alike."""

    field_type = "TEXT"


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class User(BaseModel):
    id = pw.CharField(primary_key=True, max_length=128)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "users"


class Conversation(BaseModel):
    id = pw.CharField(primary_key=True, max_length=36)
    user_id = pw.CharField(max_length=128, index=True)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "conversations"


class ConversationState(BaseModel):
    id = pw.CharField(primary_key=True, max_length=36)
    values = JSONField(default=dict)

    class Meta:
        table_name = "conversation_states"


class State(BaseModel):
    id = pw.CharField(primary_key=True, max_length=36)
    values = JSONField(default=dict)

    class Meta:
        table_name = "states"


class Message(BaseModel):
    PENDING = "PENDING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"  # by its owner or an admin; `content` keeps the text so far

    id = pw.CharField(primary_key=True, max_length=36)
    conversation_id = pw.CharField(max_length=36)
    user_id = pw.CharField(max_length=128, index=True)
    queue = pw.CharField(max_length=32, default="chat")
    question = pw.TextField()
    content = pw.TextField(null=True)
    status = pw.CharField(max_length=16, default=PENDING, index=True)
    error = pw.TextField(null=True)
    state_id = pw.CharField(max_length=36, null=True)
    response_time_ms = pw.IntegerField(null=True)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    # The model's token usage, summed over the message's attempts (SPEC §10); the database
    # default serves the hand-written INSERT in `store.accept_message`.
    prompt_tokens = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    completion_tokens = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])

    class Meta:
        table_name = "messages"
        indexes = ((("conversation_id", "created_at"), False),)


class RemovedJob(BaseModel):
    """A job an admin removed from the board: its owner cannot retry it (SPEC §12)."""

    id = pw.CharField(primary_key=True, max_length=36)  # the message id
    removed_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "removed_jobs"


MODELS = [User, Conversation, ConversationState, State, Message, RemovedJob]


def open_database(url: str) -> pw.Database:
    """Connect peewee to `url`; SQLite gets WAL, a busy timeout and its parent folder."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return pw.SqliteDatabase(
            path,
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": 10000,
                "synchronous": "normal",
                "foreign_keys": 1,
            },
            check_same_thread=False,
        )
    return db_url.connect(url)


# Columns added after their table was first created: (table, column, SQL definition), oldest
# first. Plain SQL both SQLite and PostgreSQL take, with a default so existing rows fit.
ADDED_COLUMNS = (
    ("messages", "prompt_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("messages", "completion_tokens", "INTEGER NOT NULL DEFAULT 0"),
)


def migrate(database: pw.Database) -> None:
    """Create the tables and indexes that are missing and add the columns a database made by
    an earlier version lacks (idempotent; safe when several processes start at once)."""
    with database.bind_ctx(MODELS):
        database.create_tables(MODELS, safe=True)
    for table, column, definition in ADDED_COLUMNS:
        _add_column(database, table, column, definition)


def _add_column(database: pw.Database, table: str, column: str, definition: str) -> None:
    def present() -> bool:
        return any(existing.name == column for existing in database.get_columns(table))

    if present():
        return
    try:
        with database.atomic():
            database.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    except (pw.OperationalError, pw.ProgrammingError):
        if not present():  # unless another process added it at the same moment
            raise


class Database:
    """The async gateway: `await db.run(fn, *args)` runs `fn` in the database thread(s).

    With SQLite, every call made during one event-loop turn goes to the database thread in one
    hand-off and runs there one after the other, each still its own transaction with its own
    result or error: a hand-off costs ~100 µs of wake-ups, four times what SQLite spends on a
    small write. PostgreSQL's calls run side by side on a few threads.
    """

    def __init__(self, url: str):
        self.url = url
        self.peewee = open_database(url)
        threads = 1 if isinstance(self.peewee, pw.SqliteDatabase) else 8
        self._executor = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="db",
            initializer=database_proxy.initialize,
            initargs=(self.peewee,),
        )
        self.statements = 0
        self._count_statements()
        self._batching = isinstance(self.peewee, pw.SqliteDatabase)
        self._queued: list[tuple] = []

    async def run(self, fn, *args, **kwargs):
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        loop = asyncio.get_running_loop()
        if not self._batching:
            return await loop.run_in_executor(self._executor, self._call, fn, args)
        future = loop.create_future()
        if not self._queued:
            loop.call_soon(self._hand_over)
        self._queued.append((fn, args, future))
        return await future

    def _hand_over(self) -> None:
        batch, self._queued = self._queued, []
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._run_batch, batch)
        done.add_done_callback(functools.partial(_settle, batch))

    def _run_batch(self, batch: list[tuple]) -> list[tuple[bool, object]]:
        outcomes = []
        for fn, args, _ in batch:
            try:
                outcomes.append((True, self._call(fn, args)))
            except Exception as error:
                outcomes.append((False, error))
        return outcomes

    def _call(self, fn, args):
        # Each database thread keeps its own connection open; a broken one is reopened once.
        try:
            return fn(*args)
        except (pw.InterfaceError, pw.OperationalError) as error:
            if "locked" in str(error) or self.peewee.in_transaction():
                raise
            if not self.peewee.is_closed():
                self.peewee.close()
            return fn(*args)

    def _count_statements(self) -> None:
        """Count every SQL statement sent, for benchmarks (`statements per job`)."""
        execute_sql = self.peewee.execute_sql

        def counted(sql, params=None, *args, **kwargs):
            self.statements += 1
            return execute_sql(sql, params, *args, **kwargs)

        self.peewee.execute_sql = counted

    def call(self, fn, *args):
        """Run `fn(*args)` in the database thread and wait for it, from code outside the event
        loop (the CLI, tests): models reach this database only from its own threads."""
        if database_proxy.obj is self.peewee:
            return fn(*args)
        return self._executor.submit(self._call, fn, args).result()

    def migrate(self) -> None:
        """Create or upgrade the tables (from any thread)."""
        self.call(migrate, self.peewee)

    async def ping(self) -> bool:
        def select_one():
            self.peewee.execute_sql("SELECT 1")
            return True

        try:
            return await self.run(select_one)
        except Exception:
            return False

    def close(self) -> None:
        """Close the database threads' connections, then the threads."""

        def close_connection() -> None:
            if not self.peewee.is_closed():
                self.peewee.close()

        for _ in range(self._executor._max_workers):
            self._executor.submit(close_connection)
        self._executor.shutdown(wait=True)


def _settle(batch: list[tuple], done: asyncio.Future) -> None:
    """Hand each caller of a batch its own result or error."""
    if done.cancelled() or done.exception() is not None:
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        outcomes = [(False, error)] * len(batch)
    else:
        outcomes = done.result()
    for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():  # its caller stopped waiting (a cancelled job)
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
