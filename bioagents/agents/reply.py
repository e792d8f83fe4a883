"""Where an answer's text goes while the model writes it (SPEC §10): the agents hand each piece
to a `Reply`, which the job handler turns into `message:delta` frames and the message's
text so far."""

from __future__ import annotations

from typing import Protocol

from ..usage import TokenUsage
from .llm import LLM


class Reply(Protocol):
    async def begin(self) -> None:
        """The answer starts (again, for a new attempt) from nothing."""

    def write(self, text: str) -> None:
        """The next piece of the answer."""

    async def end(self) -> None:
        """The answer is whole: everything written has been sent on."""


async def stream_reply(llm: LLM, system: str, prompt: str, usage: TokenUsage, reply: Reply) -> str:
    """Ask the LLM once, passing its answer to `reply` piece by piece; returns the whole text."""
    await reply.begin()
    pieces = []
    async for piece in llm.stream(system, prompt, usage):
        pieces.append(piece)
        reply.write(piece)
    await reply.end()
    return "".join(pieces)
