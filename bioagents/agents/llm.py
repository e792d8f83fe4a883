"""LLM providers: `offline` (deterministic, no network) and `openai` (any OpenAI-compatible
`/chat/completions` endpoint, streamed as server-sent events). A provider makes exactly one
request per call and never retries: the job's retries and backoff are the only retry policy
(SPEC §9). Replies arrive in pieces as the model writes them (§10), with the token usage the
provider reports.

What users see of a provider's failure is one generic sentence per kind (§12); what the
provider actually said, its host and the traceback go into the error's cause, which only the
board and the log show.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import re
from collections.abc import AsyncIterator

import aiohttp
import orjson

from ..config import Settings
from ..jobs.base import AttemptFailure
from ..usage import TokenUsage

UNREACHABLE = "the language model service could not be reached"
TIMED_OUT = "the language model service timed out"
BROKE_OFF = "the language model service stopped in the middle of its answer"
UNREADABLE = "the language model service sent an answer that could not be read"
EMPTY = "the language model service sent an empty answer"
REPORTED_ERROR = "the language model service reported an error"


def failed_with_status(status: int) -> str:
    return f"the language model service failed (HTTP {status})"


class LLMError(AttemptFailure):
    """The provider failed; the attempt fails and is retried. `str()` is for users; the cause
    (a ProviderError) says what happened."""


class ProviderError(Exception):
    """What the provider answered or what went wrong on the way: for the board and the log."""


class LLM(abc.ABC):
    async def start(self) -> None:
        """Open HTTP sessions."""

    async def close(self) -> None:
        """Close them."""

    @abc.abstractmethod
    def stream(self, system: str, prompt: str, usage: TokenUsage) -> AsyncIterator[str]:
        """One request: the reply's text in pieces as the provider produces them. Adds the
        tokens the provider reports to `usage`. Raises LLMError."""

    async def complete(self, system: str, prompt: str, usage: TokenUsage) -> str:
        """One request: the whole reply text."""
        return "".join([piece async for piece in self.stream(system, prompt, usage)])


class OfflineLLM(LLM):
    """Answers from the text of the prompt alone, so tests and demos need no network. It yields
    its answer a few words at a time, spreading `delay` seconds over the pieces, and counts
    words as tokens."""

    WORDS_PER_PIECE = 3

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    @staticmethod
    def answer(system: str, prompt: str) -> str:
        digest = hashlib.sha256(f"{system}\n{prompt}".encode()).hexdigest()[:8]
        topic = prompt.strip().splitlines()[0][:200] if prompt.strip() else ""
        return (
            f"[offline provider {digest}] This answer comes from the offline LLM provider, not a "
            f"model: set LLM_PROVIDER=openai for real answers. Task: {system} Topic: {topic}"
        )

    async def stream(self, system: str, prompt: str, usage: TokenUsage) -> AsyncIterator[str]:
        text = self.answer(system, prompt)
        words = re.split(r"(?<=\s)(?=\S)", text)
        pieces = [
            "".join(words[i : i + self.WORDS_PER_PIECE])
            for i in range(0, len(words), self.WORDS_PER_PIECE)
        ]
        usage.add(len(f"{system} {prompt}".split()), 0)
        for piece in pieces:
            if self.delay:
                await asyncio.sleep(self.delay / len(pieces))
            usage.add(0, len(piece.split()))
            yield piece


class OpenAICompatibleLLM(LLM):
    def __init__(self, base_url: str, api_key: str, model: str, timeout: float):
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.api_key = api_key
        self.model = model
        # A streamed answer may take minutes: bound the silence between its pieces (and the
        # connect), not the whole; the job's own timeout bounds the whole attempt.
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stream(self, system: str, prompt: str, usage: TokenUsage) -> AsyncIterator[str]:
        await self.start()
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        produced = False
        try:
            async with self._session.post(self.url, json=body, headers=headers) as response:
                if response.status >= 400:
                    detail = (await response.text(errors="replace"))[:300]
                    raise LLMError(failed_with_status(response.status)) from ProviderError(
                        f"{self.url} answered HTTP {response.status}: {detail}"
                    )
                async for data in _server_sent_data(response.content):
                    if data == "[DONE]":
                        break
                    for piece in self._pieces(data, usage):
                        produced = True
                        yield piece
        except TimeoutError as error:
            raise LLMError(TIMED_OUT) from ProviderError(f"{self.url}: {_describe(error)}")
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as error:
            raise LLMError(BROKE_OFF) from ProviderError(f"{self.url}: {_describe(error)}")
        except aiohttp.ClientError as error:
            raise LLMError(UNREACHABLE) from ProviderError(f"{self.url}: {_describe(error)}")
        if not produced:
            raise LLMError(EMPTY) from ProviderError(f"{self.url} streamed no content")

    def _pieces(self, data: str, usage: TokenUsage) -> list[str]:
        """The text pieces of one streamed chunk; adds the usage it reports (the final chunk
        when `stream_options.include_usage` is honoured)."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise LLMError(UNREADABLE) from ProviderError(
                f"{self.url} streamed a chunk that is not JSON: {data[:300]}"
            )
        if not isinstance(chunk, dict):
            raise LLMError(UNREADABLE) from ProviderError(f"{self.url} streamed {data[:300]}")
        if chunk.get("error"):
            raise LLMError(REPORTED_ERROR) from ProviderError(
                f"{self.url} streamed an error: {data[:300]}"
            )
        reported = chunk.get("usage")
        if isinstance(reported, dict):
            usage.add(
                _whole(reported.get("prompt_tokens")), _whole(reported.get("completion_tokens"))
            )
        pieces = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                pieces.append(text)
        return pieces


async def _server_sent_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The `data` of each server-sent event (lines joined), per the EventSource format."""
    data: list[str] = []
    async for raw in content:
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise LLMError(UNREADABLE) from ProviderError("a streamed line is not UTF-8")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


def _whole(value) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


def build_llm(settings: Settings) -> LLM:
    if settings.llm_provider == "openai":
        return OpenAICompatibleLLM(
            settings.openai_base_url,
            settings.openai_api_key,
            settings.llm_model,
            settings.llm_timeout,
        )
    return OfflineLLM(delay=settings.offline_delay)
