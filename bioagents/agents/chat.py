"""The chat agent: four stages, one LLM request (the reply, streamed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..jobs.spec import QueueSpec
from ..usage import TokenUsage
from .llm import LLM
from .reply import Reply, stream_reply

Progress = Callable[[str, int], Awaitable[None]]

SYSTEM = "You are a biomedical research assistant. Answer the user's question concisely."


async def answer(
    question: str,
    spec: QueueSpec,
    llm: LLM,
    progress: Progress,
    reply: Reply,
    usage: TokenUsage,
) -> str:
    """Report each stage of the chat queue, then ask the LLM once during `reply`, streaming
    its answer into `reply`."""
    text = ""
    for stage in spec.stages:
        await progress(stage.name, stage.percent)
        if stage.name == "reply":
            text = await stream_reply(llm, SYSTEM, question, usage, reply)
    return text
