#!/usr/bin/env python3
"""Watch a conversation's notifications over the WebSocket hub, one JSON frame a line.

.venv/bin/python scripts/ws_watch.py CONVERSATION_ID --user alice
.venv/bin/python scripts/ws_watch.py CONVERSATION_ID --token "$(python bioagents.py token alice)"
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp


async def watch(
    url: str, conversation_id: str, user: str | None, token: str | None, until_done: bool
) -> None:
    if token:
        url = f"{url}?token={token}"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        if not token:
            await ws.send_json({"action": "auth", "userId": user})
        await ws.send_json({"action": "subscribe", "conversationId": conversation_id})
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            print(json.dumps(frame), flush=True)
            if until_done and frame.get("type") in ("job:completed", "job:failed"):
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conversation_id")
    parser.add_argument("--url", default="ws://127.0.0.1:3000/api/ws")
    parser.add_argument("--user", default="alice", help="user id (AUTH_MODE=none)")
    parser.add_argument("--token", help="a JWT instead of --user")
    parser.add_argument(
        "--until-done", action="store_true", help="exit after the first job:completed or job:failed"
    )
    args = parser.parse_args()
    try:
        asyncio.run(watch(args.url, args.conversation_id, args.user, args.token, args.until_done))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
