"""`migrate` upgrades a database made by an earlier version in place, idempotently (SPEC §1):
the token-usage columns are added to an existing messages table, its rows kept."""

from __future__ import annotations

import sqlite3

from bioagents import store
from bioagents.db import Database
from bioagents.usage import TokenUsage

# The messages table as the version before token usage created it.
OLD_MESSAGES = """
CREATE TABLE "messages" (
  "id" VARCHAR(36) NOT NULL PRIMARY KEY, "conversation_id" VARCHAR(36) NOT NULL,
  "user_id" VARCHAR(128) NOT NULL, "queue" VARCHAR(32) NOT NULL, "question" TEXT NOT NULL,
  "content" TEXT, "status" VARCHAR(16) NOT NULL, "error" TEXT, "state_id" VARCHAR(36),
  "response_time_ms" INTEGER, "created_at" DATETIME NOT NULL, "updated_at" DATETIME NOT NULL)
"""


def columns(path: str) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[1] for row in connection.execute("PRAGMA table_info(messages)")]


async def test_an_old_messages_table_gets_the_usage_columns_and_keeps_its_rows(tmp_path):
    path = f"{tmp_path}/old.db"
    with sqlite3.connect(path) as connection:
        connection.execute(OLD_MESSAGES)
        connection.execute(
            "INSERT INTO messages VALUES ('m1', 'c1', 'alice', 'chat', 'q', 'an answer', "
            "'COMPLETE', NULL, NULL, 12, '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
        )
    assert "prompt_tokens" not in columns(path)

    db = Database(f"sqlite:///{path}")
    try:
        db.migrate()
        db.migrate()  # idempotent
        assert {"prompt_tokens", "completion_tokens"} <= set(columns(path))
        old = await db.run(store.message_by_id, "m1")
        assert (old.content, old.prompt_tokens, old.completion_tokens) == ("an answer", 0, 0)

        accepted = await db.run(store.accept_message, "alice", None, "new", "chat", dedupe=False)
        usage = TokenUsage(11, 7)
        await db.run(store.complete_message, accepted.message.id, "text", 5, usage)
        await db.run(store.discard_answer, accepted.message.id, usage)  # no longer PENDING
        new = await db.run(store.message_by_id, accepted.message.id)
        assert (new.prompt_tokens, new.completion_tokens) == (11, 7)
    finally:
        db.close()
