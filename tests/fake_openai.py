"""A fake OpenAI-compatible `/v1/chat/completions` endpoint on 127.0.0.1, for tests that need
a real HTTP LLM. It records every request (time and JSON body), answers `stream: true` requests
with server-sent events (the reply in pieces, then a final usage chunk when
`stream_options.include_usage` asks for it, then `[DONE]`) and others with one JSON body, can
be told to fail the next N requests with a status, and can hold its streams part-way until the
test releases them (for mid-answer and cancel tests, without timing)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import orjson
from aiohttp import web


@dataclasses.dataclass
class Recorded:
    at: float  # time.monotonic() when the request arrived
    body: dict
    failed: bool = False  # answered with the error status
    reply: str | None = None  # the assistant text answered, when it did not fail
    number: int = 0  # 1-based, in arrival order
    pieces_sent: int = 0  # streamed pieces written so far
    finished: bool = False  # the whole answer (and [DONE]) was written

    @property
    def user_content(self) -> str:
        return next(m["content"] for m in self.body["messages"] if m["role"] == "user")

    @property
    def system_content(self) -> str:
        return next(m["content"] for m in self.body["messages"] if m["role"] == "system")

    @property
    def streamed(self) -> bool:
        return self.body.get("stream") is True


class FakeOpenAI:
    """`async with FakeOpenAI() as fake:` then point OPENAI_BASE_URL at `fake.base_url`."""

    def __init__(self, pieces: int = 6, piece_delay: float = 0.0) -> None:
        self.requests: list[Recorded] = []
        self.pieces = pieces  # a streamed reply is sent in this many pieces
        self.piece_delay = piece_delay  # seconds between pieces
        self._fail_next = 0
        self._fail_after = 0
        self._fail_status = 500
        self._hold_after: int | None = None
        self._hold_from = 1  # the first request (1-based) that is held
        self._gate = asyncio.Event()
        self._cut_next = 0
        self._cut_after = 0
        self._break_held = False
        self.holding = 0  # streams waiting at the gate now
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def fail_next(self, count: int, status: int = 500, *, after: int = 0) -> None:
        """Answer the next `count` requests with HTTP `status` (and an OpenAI-style error),
        once `after` more requests have been answered normally."""
        self._fail_next = count
        self._fail_after = after
        self._fail_status = status

    def hold(self, after_pieces: int, *, from_request: int = 1) -> None:
        """Streams of request `from_request` (1-based, counting every request so far) and later
        send `after_pieces` pieces, then wait until `release()`."""
        self._hold_after = after_pieces
        self._hold_from = from_request
        self._break_held = False
        self._gate = asyncio.Event()

    def cut_next(self, count: int, after_pieces: int) -> None:
        """The next `count` streams break off (the connection drops) after `after_pieces`
        pieces, without finishing their answer."""
        self._cut_next = count
        self._cut_after = after_pieces

    def release(self, *, breaking: bool = False) -> None:
        """Let held streams go on; with `breaking`, they break off (the connection drops)."""
        self._hold_after = None
        self._break_held = breaking
        self._gate.set()

    async def until_holding(self, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until `count` streams wait at the gate."""
        deadline = time.monotonic() + timeout
        while self.holding < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.holding} stream(s) held, expected {count}")
            await asyncio.sleep(0.01)

    @staticmethod
    def reply_for(body: dict, number: int) -> str:
        """The reply text for the `number`-th request (1-based): names it and echoes the
        prompt's first line, and lists papers so deep research has some to report."""
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        first_line = user.splitlines()[0][:120] if user else ""
        return f"fake reply {number} about: {first_line}\n- Paper A (2020)\n- Paper B (2021)"

    @staticmethod
    def usage_for(body: dict, reply: str) -> dict:
        """The token counts reported for a reply: words in, words out."""
        prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        return {
            "prompt_tokens": prompt,
            "completion_tokens": len(reply.split()),
            "total_tokens": prompt + len(reply.split()),
        }

    def split(self, reply: str) -> list[str]:
        size = max(1, -(-len(reply) // self.pieces))
        return [reply[i : i + size] for i in range(0, len(reply), size)]

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record = Recorded(time.monotonic(), body, number=len(self.requests) + 1)
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
        text = record.reply = self.reply_for(body, record.number)
        usage = self.usage_for(body, text)
        if not record.streamed:
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
                    "usage": usage,
                }
            )
        return await self._stream(request, record, text, usage)

    async def _stream(
        self, request: web.Request, record: Recorded, text: str, usage: dict
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": f"chatcmpl-{record.number}", "object": "chat.completion.chunk"}

        async def event(chunk: dict | str) -> None:
            data = chunk if isinstance(chunk, str) else orjson.dumps(chunk).decode()
            await response.write(f"data: {data}\n\n".encode())

        await event({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        cut_after = None
        if self._cut_next > 0:
            self._cut_next -= 1
            cut_after = self._cut_after
        for piece in self.split(text):
            if cut_after is not None and record.pieces_sent >= cut_after:
                assert request.transport is not None
                request.transport.close()  # mid-answer: no finish, no usage, no [DONE]
                return response
            if (
                self._hold_after is not None
                and record.number >= self._hold_from
                and record.pieces_sent >= self._hold_after
            ):
                self.holding += 1
                try:
                    await self._gate.wait()
                finally:
                    self.holding -= 1
                if self._break_held:
                    assert request.transport is not None
                    request.transport.close()
                    return response
            elif self.piece_delay and record.pieces_sent:
                await asyncio.sleep(self.piece_delay)
            await event({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
            record.pieces_sent += 1
        await event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body_options := record.body.get("stream_options")) and body_options.get(
            "include_usage"
        ):
            await event({**base, "choices": [], "usage": usage})
        await event("[DONE]")
        record.finished = True
        await response.write_eof()
        return response

    @property
    def successes(self) -> list[Recorded]:
        return [r for r in self.requests if not r.failed]

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()  # a stream still held must not keep the server from stopping
        if self._runner is not None:
            await self._runner.cleanup()
