"""The hub's sessions and limits (SPEC §12, §5): a JWT socket is closed with 4001 when its
token expires; at most MAX_SOCKETS_PER_USER open sockets per user (error frame, then 1008);
`subscribe` takes conversation ids in any form HTTP takes (an upper-case UUID works)."""

from __future__ import annotations

from aiohttp import WSMsgType

from bioagents.auth import issue_token
from tests.api_support import chat_status_when
from tests.conftest import open_socket, post_chat, subscribe
from tests.live_support import nothing_more, until_end


async def closed_with(ws, code: int) -> dict:
    """An error frame, then the close `code`; returns the error frame."""
    error = await ws.receive_json(timeout=10)
    assert error["type"] == "error" and error["message"], error
    closing = await ws.receive(timeout=10)
    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), closing
    assert ws.close_code == code
    return error


async def test_a_jwt_socket_is_closed_with_4001_when_its_token_expires(make_client, settings_for):
    settings = settings_for(AUTH_MODE="jwt")
    client = await make_client(settings)
    lasting = await client.ws_connect(f"/api/ws?token={issue_token(settings, 'alice')}")
    short = await client.ws_connect(f"/api/ws?token={issue_token(settings, 'alice', ttl=1)}")
    for ws in (lasting, short):
        assert await ws.receive_json(timeout=5) == {"type": "ready"}
        assert await ws.receive_json(timeout=5) == {"type": "authenticated", "userId": "alice"}

    error = await closed_with(short, 4001)
    assert "expired" in error["message"]
    await nothing_more(lasting)  # a token that is still valid keeps its socket
    await lasting.close()


async def test_a_token_sent_in_the_first_frame_expires_too(make_client, settings_for):
    settings = settings_for(AUTH_MODE="jwt")
    client = await make_client(settings)
    ws = await client.ws_connect("/api/ws")
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    await ws.send_json({"action": "auth", "token": issue_token(settings, "alice", ttl=1)})
    assert (await ws.receive_json(timeout=5))["type"] == "authenticated"
    await closed_with(ws, 4001)


async def test_a_user_gets_at_most_max_sockets_per_user(make_client):
    client = await make_client(MAX_SOCKETS_PER_USER="2")
    first = await open_socket(client, "alice")
    second = await open_socket(client, "alice")
    third = await client.ws_connect("/api/ws")
    assert await third.receive_json(timeout=5) == {"type": "ready"}
    await third.send_json({"action": "auth", "userId": "alice"})
    error = await closed_with(third, 1008)
    assert "at most 2" in error["message"]

    other_user = await open_socket(client, "bob")  # the limit is per user
    await nothing_more(other_user)
    await first.close()
    replacement = await open_socket(client, "alice")  # a closed socket frees its place
    await nothing_more(replacement)
    await nothing_more(second)


async def test_subscribe_takes_an_upper_case_conversation_id(client):
    _, first = await post_chat(client, "open it")
    await chat_status_when(client, first["jobId"], "completed")
    conversation = first["conversationId"]
    ws = await open_socket(client)
    await ws.send_json({"action": "subscribe", "conversationId": conversation.upper()})
    frame = await ws.receive_json(timeout=5)
    assert frame["type"] == "subscribed" and frame["conversationId"] == conversation

    await post_chat(client, "and again", conversationId=conversation.upper())
    frames = await until_end(ws)
    assert frames[-1]["type"] == "job:completed" and frames[-1]["conversationId"] == conversation
    await ws.send_json({"action": "unsubscribe", "conversationId": conversation.upper()})
    assert await ws.receive_json(timeout=5) == {
        "type": "unsubscribed",
        "conversationId": conversation,
    }
    await subscribe(ws, conversation)
