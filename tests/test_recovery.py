"""Nothing lost across restarts (SPEC §1, §6): a message left PENDING in the database is run
when the app starts, and a FAILED message whose job the queue no longer holds can be retried."""

from __future__ import annotations

from bioagents import store
from bioagents.db import Database
from tests.api_support import message_when, research_status_when


def write_rows(settings, *steps):
    """Run store functions on the app's database file before the app starts."""
    db = Database(settings.database_url)
    try:
        db.migrate()
        return [step() for step in steps]
    finally:
        db.close()


async def test_a_pending_message_at_start_is_completed(make_client, settings_for):
    settings = settings_for()
    chat, research = write_rows(
        settings,
        lambda: store.accept_message("alice", None, "left behind", "chat", dedupe=False),
        lambda: store.accept_message(
            "alice", None, "research left behind", "deep-research", dedupe=True
        ),
    )

    client = await make_client(settings)

    message = await message_when(client, chat.message.id, "COMPLETE")
    assert message["question"] == "left behind"
    assert message["content"]
    status = await research_status_when(client, research.message.id, "completed")
    assert status["result"]["text"]


async def test_a_failed_research_run_no_longer_queued_is_retried_and_resumes(
    make_client, settings_for
):
    settings = settings_for()
    accepted, *_ = write_rows(
        settings,
        lambda: store.accept_message("alice", None, "interrupted", "deep-research", dedupe=True),
    )
    message = accepted.message
    write_rows(
        settings,
        lambda: store.save_state_value(message.state_id, "planning", "stored plan"),
        lambda: store.save_state_value(message.state_id, "literature", "- Stored Paper (1999)"),
        lambda: store.fail_message(message.id, "worker lost"),
    )
    client = await make_client(settings)

    response = await client.post(
        f"/api/deep-research/retry/{message.id}", headers={"X-User-Id": "alice"}
    )

    assert response.status == 200
    body = await response.json()
    assert body["ok"] is True
    assert body["jobId"] == message.id
    assert body["status"] == "retrying"
    assert isinstance(body["previousAttempts"], int)
    status = await research_status_when(client, message.id, "completed")
    assert status["result"]["papers"] == ["Stored Paper (1999)"]
    final = await message_when(client, message.id, "COMPLETE")
    assert final["error"] is None
    assert final["state"]["planning"] == "stored plan"  # resumed, not redone
    assert final["state"]["literature"] == "- Stored Paper (1999)"
