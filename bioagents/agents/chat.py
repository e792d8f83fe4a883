"""The chat agent: four stages, one LLM request (the reply)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..jobs.spec import QueueSpec
from .llm import LLM

Progress = Callable[[str, int], Awaitable[None]]

SYSTEM = "You are a biomedical research assistant. Answer the user's question concisely."


async def answer(question: str, spec: QueueSpec, llm: LLM, progress: Progress) -> str:
    """Report each stage of the chat queue, then ask the LLM once during `reply`."""
    text = ""
    for stage in spec.stages:
        await progress(stage.name, stage.percent)
        if stage.name == "reply":
            text = await llm.complete(SYSTEM, question)
    return text
