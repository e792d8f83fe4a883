"""LLM providers: `offline` (deterministic, no network) and `openai` (any OpenAI-compatible
`/chat/completions` endpoint). A provider makes exactly one request per call and never retries:
the job's retries and backoff are the only retry policy (SPEC §9)."""

from __future__ import annotations

import abc
import asyncio
import hashlib

import aiohttp

from ..config import Settings


class LLMError(RuntimeError):
    """The provider answered with an error or nothing usable; the attempt fails and retries."""


class LLM(abc.ABC):
    async def start(self) -> None:
        """Open HTTP sessions."""

    async def close(self) -> None:
        """Close them."""

    @abc.abstractmethod
    async def complete(self, system: str, prompt: str) -> str:
        """One completion: the reply text."""


class OfflineLLM(LLM):
    """Answers from the text of the prompt alone, so tests and demos need no network."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    async def complete(self, system: str, prompt: str) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        digest = hashlib.sha256(f"{system}\n{prompt}".encode()).hexdigest()[:8]
        topic = prompt.strip().splitlines()[0][:200] if prompt.strip() else ""
        return (
            f"[offline provider {digest}] This answer comes from the offline LLM provider, not a "
            f"model: set LLM_PROVIDER=openai for real answers. Task: {system} Topic: {topic}"
        )


class OpenAICompatibleLLM(LLM):
    def __init__(self, base_url: str, api_key: str, model: str, timeout: float):
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.api_key = api_key
        self.model = model
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def complete(self, system: str, prompt: str) -> str:
        await self.start()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
        }
        try:
            async with self._session.post(self.url, json=body, headers=headers) as response:
                if response.status >= 400:
                    detail = (await response.text())[:300]
                    raise LLMError(f"LLM endpoint answered HTTP {response.status}: {detail}")
                payload = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise LLMError(f"LLM request failed: {error.__class__.__name__}: {error}") from error
        try:
            text = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError("LLM endpoint answered without choices[0].message.content") from None
        if not isinstance(text, str) or not text.strip():
            raise LLMError("LLM endpoint answered with an empty message")
        return text


def build_llm(settings: Settings) -> LLM:
    if settings.llm_provider == "openai":
        return OpenAICompatibleLLM(
            settings.openai_base_url,
            settings.openai_api_key,
            settings.llm_model,
            settings.llm_timeout,
        )
    return OfflineLLM(delay=settings.offline_delay)
