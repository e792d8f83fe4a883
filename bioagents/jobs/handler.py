"""What a job does, the same in both modes: run the agent (streaming its answer), write the
message and state rows, and publish the notifications in the SPEC's order (started →
progress… → message/state updated → completed|failed|cancelled)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from .. import events, store
from ..agents import chat, research
from ..agents.llm import LLM
from ..db import Database
from ..notify import Notifier
from ..usage import TokenUsage
from .answer_stream import AnswerStream
from .base import Attempt
from .spec import RESEARCH_AGENT, QueueSpec


def job_data(message, accepted_at: float | None = None) -> dict:
    """The payload a job carries: ids and the question (Notify + Fetch: nothing else)."""
    data = {
        "messageId": message.id,
        "conversationId": message.conversation_id,
        "userId": message.user_id,
        "question": message.question,
        "acceptedAt": accepted_at if accepted_at is not None else time.time(),
    }
    if message.state_id:
        data["stateId"] = message.state_id
    return data


async def announce_cancelled(
    db: Database,
    notifier: Notifier,
    message_id: str,
    usage: TokenUsage,
    notification: Callable[..., dict],
) -> None:
    """The message ends CANCELLED with the text produced so far, then message:updated →
    job:cancelled. `notification(kind, **fields)` builds the frames (`events.of_attempt` or
    `events.of_job` with the job bound)."""
    if await db.run(store.cancel_message, message_id, usage):
        await notifier.publish(notification(events.MESSAGE_UPDATED, messageId=message_id))
    await notifier.publish(notification(events.JOB_CANCELLED, messageId=message_id))


class AgentJobHandler:
    def __init__(self, db: Database, notifier: Notifier, llm: LLM, specs: dict[str, QueueSpec]):
        self.db = db
        self.notifier = notifier
        self.llm = llm
        self.specs = specs

    async def run(self, attempt: Attempt) -> dict:
        data = attempt.data
        message_id = data["messageId"]
        publish = self.notifier.publish
        await publish(events.of_attempt(events.JOB_STARTED, attempt, **events.message_ids(data)))

        async def progress(stage: str, percent: int) -> None:
            value = {"stage": stage, "percent": percent}
            await attempt.set_progress(value)
            await publish(
                events.of_attempt(
                    events.JOB_PROGRESS, attempt, messageId=message_id, progress=value
                )
            )

        spec = self.specs[attempt.queue]
        reply = AnswerStream(attempt, self.db, self.notifier)
        papers = None
        try:
            if spec.agent == RESEARCH_AGENT:
                text, papers = await self._research(attempt, spec, progress, reply)
            else:
                text = await chat.answer(
                    data["question"], spec, self.llm, progress, reply, attempt.usage
                )
        finally:
            await reply.close()

        response_ms = max(0, int((time.time() - data.get("acceptedAt", time.time())) * 1000))
        answered = await self.db.run(
            store.complete_message, message_id, text, response_ms, attempt.usage
        )
        if answered:
            await publish(events.of_attempt(events.MESSAGE_UPDATED, attempt, messageId=message_id))
        else:
            # A duplicate run (after a stall or a partition): the first answer stands.
            message = await self.db.run(store.message_by_id, message_id)
            if message is not None and message.status == message.COMPLETE:
                text, response_ms = message.content, message.response_time_ms or response_ms
        result = {"text": text, "userId": data["userId"], "responseTime": response_ms}
        if papers is not None:
            result["papers"] = papers
        return result

    async def _research(self, attempt: Attempt, spec: QueueSpec, progress, reply: AnswerStream):
        state_id = attempt.data["stateId"]
        stored = await self.db.run(store.state_values, state_id)

        async def save_stage(stage: str, output: str) -> None:
            await self.db.run(store.save_state_value, state_id, stage, output)
            await self.notifier.publish(
                events.of_attempt(events.STATE_UPDATED, attempt, stateId=state_id)
            )

        return await research.run(
            attempt.data["question"],
            spec,
            self.llm,
            stored,
            progress,
            save_stage,
            reply,
            attempt.usage,
        )

    async def on_completed(self, attempt: Attempt, result: dict) -> None:
        await self.notifier.publish(
            events.of_attempt(events.JOB_COMPLETED, attempt, **events.message_ids(attempt.data))
        )

    async def on_failed(self, attempt: Attempt, error: str, final: bool) -> None:
        message_id = attempt.data["messageId"]
        if not final:
            # The next attempt answers from scratch; this one's tokens still count.
            await self.db.run(store.discard_answer, message_id, attempt.usage)
            return
        if await self.db.run(store.fail_message, message_id, error, attempt.usage):
            await self.notifier.publish(
                events.of_attempt(events.MESSAGE_UPDATED, attempt, messageId=message_id)
            )
        await self.notifier.publish(
            events.of_attempt(
                events.JOB_FAILED, attempt, **events.message_ids(attempt.data), error=error
            )
        )

    async def on_cancelled(self, attempt: Attempt) -> None:
        await announce_cancelled(
            self.db,
            self.notifier,
            attempt.data["messageId"],
            attempt.usage,
            functools.partial(events.of_attempt, attempt=attempt),
        )
