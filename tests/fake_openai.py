"""A fake OpenAI-compatible `/v1/chat/completions` endpoint on 127.0.0.1, for tests that need
a real HTTP LLM: it records every request (time and JSON body) and can be told to fail the next
N requests with a status."""

from __future__ import annotations

import dataclasses
import time

from aiohttp import web


@dataclasses.dataclass
class Recorded:
    at: float  # time.monotonic() when the request arrived
    body: dict
    failed: bool = False  # answered with the error status
    reply: str | None = None  # the assistant text answered, when it did not fail

    @property
    def user_content(self) -> str:
        return next(m["content"] for m in self.body["messages"] if m["role"] == "user")

    @property
    def system_content(self) -> str:
        return next(m["content"] for m in self.body["messages"] if m["role"] == "system")


class FakeOpenAI:
    """`async with FakeOpenAI() as fake:` then point OPENAI_BASE_URL at `fake.base_url`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._fail_next = 0
        self._fail_after = 0
        self._fail_status = 500
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def fail_next(self, count: int, status: int = 500, *, after: int = 0) -> None:
        """Answer the next `count` requests with HTTP `status` (and an OpenAI-style error),
        once `after` more requests have been answered normally."""
        self._fail_next = count
        self._fail_after = after
        self._fail_status = status

    @staticmethod
    def reply_for(body: dict, number: int) -> str:
        """The reply text for the `number`-th request (1-based): names it and echoes the
        prompt's first line, and lists papers so deep research has some to report."""
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        first_line = user.splitlines()[0][:120] if user else ""
        return f"fake reply {number} about: {first_line}\n- Paper A (2020)\n- Paper B (2021)"

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        record = Recorded(time.monotonic(), body)
        self.requests.append(record)
        if self._fail_after > 0:
            self._fail_after -= 1
        elif self._fail_next > 0:
            self._fail_next -= 1
            record.failed = True
            return web.json_response(
                {"error": {"message": "fake outage", "type": "server_error"}},
                status=self._fail_status,
            )
        text = record.reply = self.reply_for(body, len(self.requests))
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    @property
    def successes(self) -> list[Recorded]:
        return [r for r in self.requests if not r.failed]

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
