#!/usr/bin/env python3
"""Watch a conversation's notifications over the WebSocket hub, one JSON frame a line.

.venv/bin/python scripts/ws_watch.py CONVERSATION_ID --user alice
.venv/bin/python scripts/ws_watch.py CONVERSATION_ID --token "$(python bioagents.py token alice)"
.venv/bin/python scripts/ws_watch.py CONVERSATION_ID --stream          # also message:delta
.venv/bin/python scripts/ws_watch.py CONVERSATION_ID --since LAST_ID   # replay what you missed
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp

ENDINGS = ("job:completed", "job:failed", "job:cancelled")


async def watch(url: str, conversation_id: str, args: argparse.Namespace) -> None:
    if args.token:
        url = f"{url}?token={args.token}"
    subscribe: dict = {"action": "subscribe", "conversationId": conversation_id}
    if args.stream:
        subscribe["stream"] = True
    if args.since:
        subscribe["since"] = args.since
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        if not args.token:
            await ws.send_json({"action": "auth", "userId": args.user})
        await ws.send_json(subscribe)
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            print(json.dumps(frame), flush=True)
            if args.until_done and frame.get("type") in ENDINGS:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conversation_id")
    parser.add_argument("--url", default="ws://127.0.0.1:3000/api/ws")
    parser.add_argument("--user", default="alice", help="user id (AUTH_MODE=none)")
    parser.add_argument("--token", help="a JWT instead of --user")
    parser.add_argument("--stream", action="store_true", help="also the answer as it is written")
    parser.add_argument("--since", help="replay the notifications after this id first")
    parser.add_argument(
        "--until-done", action="store_true", help="exit after a job completes, fails or stops"
    )
    args = parser.parse_args()
    try:
        asyncio.run(watch(args.url, args.conversation_id, args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
