"""What a job does, the same in both modes: run the agent, write the message and state rows,
and publish the notifications in the SPEC's order (started → progress… → message/state updated
→ completed|failed)."""

from __future__ import annotations

import time

from .. import store
from ..agents import chat, research
from ..agents.llm import LLM
from ..db import Database
from ..notify import Notifier
from .base import Attempt
from .spec import CHAT, QueueSpec


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


class AgentJobHandler:
    def __init__(self, db: Database, notifier: Notifier, llm: LLM, specs: dict[str, QueueSpec]):
        self.db = db
        self.notifier = notifier
        self.llm = llm
        self.specs = specs

    async def _publish(self, attempt: Attempt, event_type: str, **fields) -> None:
        data = attempt.data
        event = {
            "type": event_type,
            "jobId": attempt.job_id,
            "conversationId": data["conversationId"],
            **fields,
            "queue": attempt.queue,
            "attempt": attempt.attempt,
        }
        await self.notifier.publish(data["conversationId"], event)

    def _ids(self, attempt: Attempt) -> dict:
        ids = {"messageId": attempt.data["messageId"]}
        if attempt.data.get("stateId"):
            ids["stateId"] = attempt.data["stateId"]
        return ids

    async def run(self, attempt: Attempt) -> dict:
        data = attempt.data
        await self._publish(attempt, "job:started", **self._ids(attempt))

        async def progress(stage: str, percent: int) -> None:
            value = {"stage": stage, "percent": percent}
            await attempt.set_progress(value)
            await self._publish(
                attempt, "job:progress", messageId=data["messageId"], progress=value
            )

        spec = self.specs[attempt.queue]
        papers = None
        if attempt.queue == CHAT:
            text = await chat.answer(data["question"], spec, self.llm, progress)
        else:
            text, papers = await self._research(attempt, spec, progress)

        response_ms = max(0, int((time.time() - data.get("acceptedAt", time.time())) * 1000))
        answered = await self.db.run(store.complete_message, data["messageId"], text, response_ms)
        if answered:
            await self._publish(attempt, "message:updated", messageId=data["messageId"])
        else:
            # A duplicate run (after a stall or a partition): the first answer stands.
            message = await self.db.run(store.message_by_id, data["messageId"])
            if message is not None and message.status == message.COMPLETE:
                text, response_ms = message.content, message.response_time_ms or response_ms
        result = {"text": text, "userId": data["userId"], "responseTime": response_ms}
        if papers is not None:
            result["papers"] = papers
        return result

    async def _research(self, attempt: Attempt, spec: QueueSpec, progress):
        state_id = attempt.data["stateId"]
        stored = await self.db.run(store.state_values, state_id)

        async def save_stage(stage: str, output: str) -> None:
            await self.db.run(store.save_state_value, state_id, stage, output)
            await self._publish(attempt, "state:updated", stateId=state_id)

        return await research.run(
            attempt.data["question"], spec, self.llm, stored, progress, save_stage
        )

    async def on_completed(self, attempt: Attempt, result: dict) -> None:
        await self._publish(attempt, "job:completed", **self._ids(attempt))

    async def on_failed(self, attempt: Attempt, error: str, final: bool) -> None:
        if not final:
            return
        message_id = attempt.data["messageId"]
        if await self.db.run(store.fail_message, message_id, error):
            await self._publish(attempt, "message:updated", messageId=message_id)
        await self._publish(attempt, "job:failed", **self._ids(attempt), error=error)
