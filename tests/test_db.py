"""The database gateway batches SQLite work: calls made in one event-loop turn share
one hand-off to the database thread, yet each keeps its own result, error and transaction."""

from __future__ import annotations

import asyncio

import pytest

from bioagents import store
from bioagents.db import Database, Message


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path}/batch.db")
    database.migrate()
    yield database
    database.close()


def _fail():
    raise ValueError("this call fails alone")


async def test_calls_of_one_turn_keep_their_own_results_errors_and_transactions(db):
    accepted = await db.run(store.accept_message, "alice", None, "q", "chat", dedupe=False)
    message_id = accepted.message.id

    answered, failed, again = await asyncio.gather(
        db.run(store.complete_message, message_id, "the answer", 5),
        db.run(_fail),
        db.run(store.complete_message, message_id, "a second answer", 6),
        return_exceptions=True,
    )
    assert answered is True
    assert isinstance(failed, ValueError)
    assert again is False  # at most one answer, as with one call at a time
    message = await db.run(store.message_by_id, message_id)
    assert (message.status, message.content) == (Message.COMPLETE, "the answer")


async def test_a_caller_that_stops_waiting_does_not_disturb_the_others(db):
    accepted = await db.run(store.accept_message, "bob", None, "q", "chat", dedupe=False)
    abandoned = asyncio.ensure_future(db.run(store.state_values, "no-such-state"))
    kept = asyncio.ensure_future(db.run(store.message_by_id, accepted.message.id))
    await asyncio.sleep(0)
    abandoned.cancel()
    assert (await kept).id == accepted.message.id
    assert abandoned.cancelled()
