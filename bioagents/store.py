"""What the app reads and writes in the database. Plain functions, run in the database thread
through `Database.run`; each write is one short transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt

import peewee as pw

from .db import Conversation, Message, RemovedJob, State, new_id, utcnow
from .jobs.base import CANCELLED
from .usage import TokenUsage


class NotOwned(Exception):
    """The conversation belongs to someone else (answered as 404, like a missing one)."""


@dataclasses.dataclass
class Accepted:
    message: Message
    deduplicated: bool = False
    new_conversation: bool = False  # created for this message (withdrawn with it)
    new_user: bool = False


def _write_transaction():
    """A transaction that takes SQLite's write lock at once, so two processes that read then
    write wait on the busy timeout instead of failing with a lock upgrade."""
    database = Message._meta.database.obj
    if isinstance(database, pw.SqliteDatabase):
        return database.atomic(lock_type="IMMEDIATE")
    return database.atomic()


def _execute(sql: str, params: tuple):
    """Run hand-written SQL on the hot paths (peewee's query building costs more than SQLite's
    work there). `sql` uses `?`; PostgreSQL drivers get their own placeholder."""
    database = Message._meta.database.obj
    if database.param != "?":
        sql = sql.replace("?", database.param)
    return database.execute_sql(sql, params)


def accept_message(
    user_id: str,
    conversation_id: str | None,
    question: str,
    queue: str,
    *,
    dedupe: bool,
    keeps_state: bool | None = None,
) -> Accepted:
    """Create the PENDING message (and its user, conversation and, with `keeps_state`, state
    row: research by default). With `dedupe`, an active message of this queue in the
    conversation is returned instead."""
    if keeps_state is None:
        keeps_state = queue != "chat"
    now = utcnow()
    stamp = Message.created_at.db_value(now)
    with _write_transaction():
        inserted = _execute(
            "INSERT INTO users (id, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (user_id, stamp),
        )
        new_user = inserted.rowcount == 1
        if conversation_id is None:
            conversation_id = new_id()
            owner = None
        else:
            row = _execute(
                "SELECT user_id FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            owner = row[0] if row else None
        if owner is None:
            _execute(
                "INSERT INTO conversations (id, user_id, created_at) VALUES (?, ?, ?)",
                (conversation_id, user_id, stamp),
            )
        elif owner != user_id:
            raise NotOwned("conversation not found")
        elif dedupe:
            active = (
                Message.select()
                .where(
                    (Message.conversation_id == conversation_id)
                    & (Message.queue == queue)
                    & (Message.status == Message.PENDING)
                )
                .order_by(Message.created_at.desc())
                .first()
            )
            if active is not None:
                return Accepted(active, deduplicated=True)
        state_id = None
        if keeps_state:
            state_id = new_id()
            _execute('INSERT INTO states (id, "values") VALUES (?, ?)', (state_id, "{}"))
        message = Message(
            id=new_id(),
            conversation_id=conversation_id,
            user_id=user_id,
            queue=queue,
            question=question,
            status=Message.PENDING,
            state_id=state_id,
            created_at=now,
            updated_at=now,
        )
        _execute(
            "INSERT INTO messages (id, conversation_id, user_id, queue, question, status, "
            "state_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.id,
                conversation_id,
                user_id,
                queue,
                question,
                Message.PENDING,
                state_id,
                stamp,
                stamp,
            ),
        )
        return Accepted(message, new_conversation=owner is None, new_user=new_user)


def withdraw(accepted: Accepted) -> None:
    """Undo `accept_message` for a request answered with an error: the message, its state, and
    the conversation and user it created, unless another request has used them meanwhile."""
    message = accepted.message
    with _write_transaction():
        _execute("DELETE FROM messages WHERE id = ?", (message.id,))
        if message.state_id:
            _execute("DELETE FROM states WHERE id = ?", (message.state_id,))
        if accepted.new_conversation:
            _execute(
                "DELETE FROM conversations WHERE id = ? AND NOT EXISTS "
                "(SELECT 1 FROM messages WHERE conversation_id = ?)",
                (message.conversation_id, message.conversation_id),
            )
        if accepted.new_user:
            _execute(
                "DELETE FROM users WHERE id = ? AND NOT EXISTS "
                "(SELECT 1 FROM conversations WHERE user_id = ?)",
                (message.user_id, message.user_id),
            )


def message_for_user(message_id: str, user_id: str) -> Message | None:
    return Message.get_or_none((Message.id == message_id) & (Message.user_id == user_id))


def message_by_id(message_id: str) -> Message | None:
    return Message.get_or_none(Message.id == message_id)


def owns_conversation(conversation_id: str, user_id: str) -> bool:
    return (
        Conversation.select()
        .where((Conversation.id == conversation_id) & (Conversation.user_id == user_id))
        .exists()
    )


def conversation_messages(
    conversation_id: str, user_id: str, limit: int, before: dt.datetime | None
) -> list[Message] | None:
    """Oldest first; None when the conversation is not the user's."""
    if not owns_conversation(conversation_id, user_id):
        return None
    query = Message.select().where(Message.conversation_id == conversation_id)
    if before is not None:
        query = query.where(Message.created_at < before)
    newest = list(query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit))
    return newest[::-1]


def _storable(text: str | None) -> str | None:
    """Text a job produced, without the NUL characters PostgreSQL cannot store."""
    return None if text is None else text.replace("\x00", "")


def complete_message(
    message_id: str, content: str, response_time_ms: int, usage: TokenUsage | None = None
) -> bool:
    """PENDING → COMPLETE with the answer and the attempt's token usage, at most once; False
    (and nothing written) when another run already answered."""
    usage = usage or TokenUsage()
    cursor = _execute(
        "UPDATE messages SET status = ?, content = ?, error = NULL, response_time_ms = ?, "
        "prompt_tokens = prompt_tokens + ?, completion_tokens = completion_tokens + ?, "
        "updated_at = ? WHERE id = ? AND status = ?",
        (
            Message.COMPLETE,
            _storable(content),
            response_time_ms,
            usage.prompt_tokens,
            usage.completion_tokens,
            Message.updated_at.db_value(utcnow()),
            message_id,
            Message.PENDING,
        ),
    )
    return cursor.rowcount == 1


def fail_message(message_id: str, error: str, usage: TokenUsage | None = None) -> bool:
    """PENDING → FAILED (no answer, so no partial text either); never over COMPLETE."""
    usage = usage or TokenUsage()
    updated = (
        Message.update(
            status=Message.FAILED,
            error=_storable(error),
            content=None,
            prompt_tokens=Message.prompt_tokens + usage.prompt_tokens,
            completion_tokens=Message.completion_tokens + usage.completion_tokens,
            updated_at=utcnow(),
        )
        .where((Message.id == message_id) & (Message.status == Message.PENDING))
        .execute()
    )
    return updated == 1


def cancel_message(message_id: str, usage: TokenUsage | None = None) -> bool:
    """PENDING → CANCELLED, keeping the text produced so far (SPEC §10)."""
    usage = usage or TokenUsage()
    updated = (
        Message.update(
            status=Message.CANCELLED,
            error=CANCELLED,
            prompt_tokens=Message.prompt_tokens + usage.prompt_tokens,
            completion_tokens=Message.completion_tokens + usage.completion_tokens,
            updated_at=utcnow(),
        )
        .where((Message.id == message_id) & (Message.status == Message.PENDING))
        .execute()
    )
    return updated == 1


def discard_answer(message_id: str, usage: TokenUsage) -> None:
    """A failed attempt that will be retried: its partial text goes, its tokens count."""
    Message.update(
        content=None,
        prompt_tokens=Message.prompt_tokens + usage.prompt_tokens,
        completion_tokens=Message.completion_tokens + usage.completion_tokens,
        updated_at=utcnow(),
    ).where((Message.id == message_id) & (Message.status == Message.PENDING)).execute()


def restart_answer(message_id: str) -> None:
    """An attempt starts its answer: no text yet."""
    _execute(
        "UPDATE messages SET content = NULL WHERE id = ? AND status = ? AND content IS NOT NULL",
        (message_id, Message.PENDING),
    )


def save_answer_so_far(message_id: str, content: str) -> None:
    """The text of an answer still being generated (what a client arriving mid-answer reads)."""
    _execute(
        "UPDATE messages SET content = ?, updated_at = ? WHERE id = ? AND status = ?",
        (_storable(content), Message.updated_at.db_value(utcnow()), message_id, Message.PENDING),
    )


def reopen_message(message_id: str) -> bool:
    """FAILED or CANCELLED → PENDING, for a manual retry (which answers from scratch)."""
    updated = (
        Message.update(status=Message.PENDING, error=None, content=None, updated_at=utcnow())
        .where(
            (Message.id == message_id) & (Message.status.in_((Message.FAILED, Message.CANCELLED)))
        )
        .execute()
    )
    return updated == 1


def mark_removed(message_ids: list[str]) -> None:
    """Remember jobs an admin removed, so their owners' retries cannot bring them back."""
    if not message_ids:
        return
    now = utcnow()
    rows = [{"id": message_id, "removed_at": now} for message_id in message_ids]
    with _write_transaction():
        RemovedJob.insert_many(rows).on_conflict_ignore().execute()


def was_removed(message_id: str) -> bool:
    return RemovedJob.select().where(RemovedJob.id == message_id).exists()


def pending_messages(queue: str | None = None) -> list[Message]:
    query = Message.select().where(Message.status == Message.PENDING)
    if queue is not None:
        query = query.where(Message.queue == queue)
    return list(query.order_by(Message.created_at))


def state_values(state_id: str) -> dict:
    values = State.select(State.values).where(State.id == state_id).scalar()
    return dict(values or {})


def states_of(state_ids: list[str]) -> dict[str, dict]:
    """Many states' values in one query: state id → values."""
    if not state_ids:
        return {}
    query = State.select(State.id, State.values).where(State.id.in_(state_ids))
    return {state.id: dict(state.values or {}) for state in query}


def save_state_value(state_id: str, key: str, value) -> None:
    """Merge one key into the state's values (read-modify-write in one transaction)."""
    with _write_transaction():
        values = state_values(state_id)
        values[key] = value
        State.update(values=values).where(State.id == state_id).execute()
