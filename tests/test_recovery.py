"""Nothing lost across restarts (SPEC §1, §6): a message left PENDING in the database is run
when the app starts, and a FAILED message whose job the queue no longer holds can be retried."""

from __future__ import annotations

from bioagents import store
from bioagents.config import Settings
from bioagents.db import Database
from bioagents.jobs.base import INTERNAL_FAILURE, JobState
from bioagents.jobs.inprocess import InProcessJobQueue
from bioagents.jobs.spec import CHAT, queue_specs
from bioagents.recovery import requeue_pending
from tests.api_support import message_when, research_status_when
from tests.conftest import BASE_ENV, wait_for


def write_rows(settings, *steps):
    """Run store functions on the app's database file before the app starts."""
    db = Database(settings.database_url)
    try:
        db.migrate()
        return [db.call(step) for step in steps]
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


class _DiesBeforeWritingTheFailure:
    """A handler whose process 'dies' between the queue storing the final failure and the
    message being written: it fails every attempt and never writes the message."""

    async def run(self, attempt):
        raise RuntimeError("the LLM is down")

    async def on_completed(self, attempt, result):
        raise AssertionError("never completes")

    async def on_failed(self, attempt, error, final):
        return None


async def test_a_pending_message_whose_job_already_failed_is_failed_with_its_error(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/recovery.db")
    db.migrate()
    specs = {CHAT: queue_specs(Settings.from_env(BASE_ENV))[CHAT].with_(retries=0)}
    jobs = InProcessJobQueue(specs, _DiesBeforeWritingTheFailure())
    try:
        accepted = await db.run(store.accept_message, "alice", None, "q", CHAT, dedupe=False)
        message_id = accepted.message.id
        await jobs.enqueue(CHAT, message_id, {"conversationId": "c", "messageId": message_id})

        async def job_failed():
            job = await jobs.get(CHAT, message_id)
            return job.state is JobState.FAILED

        await wait_for(job_failed, timeout=5)
        assert (await db.run(store.message_by_id, message_id)).status == "PENDING"

        assert await requeue_pending(db, jobs) == 0  # nothing to enqueue again
        message = await db.run(store.message_by_id, message_id)
        assert message.status == "FAILED"
        # What users read is one generic sentence; the exception's own text is the board's.
        assert message.error == INTERNAL_FAILURE
    finally:
        await jobs.close()
        db.close()
