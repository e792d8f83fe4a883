"""The WebSocket hub `/api/ws` (SPEC §5): authentication, subscriptions checked against the
database, malformed and oversized frames, ping/pong."""

from __future__ import annotations

import asyncio
import uuid

import orjson
from aiohttp import WSMsgType

from bioagents import hub
from bioagents.auth import issue_token
from bioagents.keys import HUB
from tests.api_support import chat_status_when
from tests.conftest import bearer, events_until, open_socket, post_chat, subscribe, wait_for


async def expect_rejected(ws) -> dict:
    """An error frame, then the close 4001; returns the error frame."""
    error = await ws.receive_json(timeout=5)
    assert error["type"] == "error" and error["message"], error
    closing = await ws.receive(timeout=5)
    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), closing
    assert ws.close_code == 4001
    return error


async def assert_usable(ws) -> None:
    await ws.send_json({"action": "ping"})
    assert await ws.receive_json(timeout=5) == {"type": "pong"}


async def new_conversation(client, user="alice") -> str:
    _, accepted = await post_chat(client, "start a conversation", user=user)
    await chat_status_when(client, accepted["jobId"], "completed", user=user)
    return accepted["conversationId"]


async def test_token_on_the_url_authenticates_as_the_socket_opens(make_client, settings_for):
    settings = settings_for(AUTH_MODE="jwt")
    client = await make_client(settings)
    response = await client.post(
        "/api/chat", json={"message": "mine"}, headers=bearer(settings, "alice")
    )
    conversation = (await response.json())["conversationId"]

    ws = await client.ws_connect(f"/api/ws?token={issue_token(settings, 'alice')}")
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    assert await ws.receive_json(timeout=5) == {"type": "authenticated", "userId": "alice"}
    await subscribe(ws, conversation)  # at once, no auth frame
    await ws.close()


async def test_first_frame_token_authenticates(make_client, settings_for):
    settings = settings_for(AUTH_MODE="jwt")
    client = await make_client(settings)

    ws = await client.ws_connect("/api/ws")
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    await ws.send_json({"action": "auth", "token": issue_token(settings, "alice")})
    assert await ws.receive_json(timeout=5) == {"type": "authenticated", "userId": "alice"}
    await assert_usable(ws)
    await ws.close()


async def test_a_bad_token_on_the_url_is_closed_with_4001(make_client):
    client = await make_client(AUTH_MODE="jwt")

    ws = await client.ws_connect("/api/ws?token=not-a-jwt")
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    await expect_rejected(ws)


async def test_a_bad_token_in_the_first_frame_is_closed_with_4001(make_client):
    client = await make_client(AUTH_MODE="jwt")

    ws = await client.ws_connect("/api/ws")
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    await ws.send_json({"action": "auth", "token": "forged.token.value"})
    await expect_rejected(ws)


async def test_a_user_id_frame_is_refused_in_jwt_mode(make_client):
    client = await make_client(AUTH_MODE="jwt")

    ws = await client.ws_connect("/api/ws")
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    await ws.send_json({"action": "auth", "userId": "alice"})
    await expect_rejected(ws)


async def test_no_auth_frame_in_time_is_closed_with_4001(client, monkeypatch):
    monkeypatch.setattr(hub, "AUTH_TIMEOUT", 0.3)

    ws = await client.ws_connect("/api/ws")
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    error = await expect_rejected(ws)
    assert "timed out" in error["message"]


async def test_subscribing_before_auth_is_an_error_and_the_socket_waits(client):
    ws = await client.ws_connect("/api/ws")
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    await ws.send_json({"action": "subscribe", "conversationId": str(uuid.uuid4())})
    assert (await ws.receive_json(timeout=5))["type"] == "error"
    await ws.send_json({"action": "auth", "userId": "alice"})
    assert await ws.receive_json(timeout=5) == {"type": "authenticated", "userId": "alice"}
    await ws.close()


async def test_users_cannot_subscribe_to_each_others_conversations(client):
    alice_conversation = await new_conversation(client, "alice")
    bob_conversation = await new_conversation(client, "bob")
    alice = await open_socket(client, "alice")
    bob = await open_socket(client, "bob")
    await subscribe(alice, alice_conversation)
    await subscribe(bob, bob_conversation)

    await bob.send_json({"action": "subscribe", "conversationId": alice_conversation})
    refused = await bob.receive_json(timeout=5)
    assert refused["type"] == "error"

    _, accepted = await post_chat(client, "alice only", conversationId=alice_conversation)
    alice_events = await events_until(alice)
    assert alice_events[-1]["type"] == "job:completed"
    assert {e["jobId"] for e in alice_events} == {accepted["jobId"]}
    # Every event for alice was queued for her socket before job:completed reached it; any
    # leak to bob's socket would be queued by then too, so it would arrive before this pong.
    await assert_usable(bob)
    await alice.close()
    await bob.close()


async def test_a_missing_conversation_is_answered_like_one_not_owned(client):
    alice_conversation = await new_conversation(client, "alice")
    bob = await open_socket(client, "bob")

    await bob.send_json({"action": "subscribe", "conversationId": alice_conversation})
    not_owned = await bob.receive_json(timeout=5)
    missing_id = str(uuid.uuid4())
    await bob.send_json({"action": "subscribe", "conversationId": missing_id})
    missing = await bob.receive_json(timeout=5)

    assert not_owned["type"] == missing["type"] == "error"
    assert not_owned["message"] == missing["message"]
    assert not_owned.get("conversationId") == alice_conversation
    assert missing.get("conversationId") == missing_id
    await bob.close()


async def test_unsubscribe_stops_the_events(client):
    conversation = await new_conversation(client)
    ws = await open_socket(client)
    await subscribe(ws, conversation)

    await ws.send_json({"action": "unsubscribe", "conversationId": conversation})
    assert await ws.receive_json(timeout=5) == {
        "type": "unsubscribed",
        "conversationId": conversation,
    }
    _, accepted = await post_chat(client, "unheard", conversationId=conversation)
    await chat_status_when(client, accepted["jobId"], "completed")
    await assert_usable(ws)  # the pong comes first: no job event was queued
    await ws.close()


async def test_malformed_frames_get_error_frames_and_the_socket_stays_usable(client):
    ws = await open_socket(client)
    malformed = [
        lambda: ws.send_str("this is not json"),
        lambda: ws.send_bytes(b'{"action":"ping"}'),
        lambda: ws.send_json(["a", "list"]),
        lambda: ws.send_json({"no": "action"}),
        lambda: ws.send_json({"action": 42}),
        lambda: ws.send_json({"action": "dance"}),
        lambda: ws.send_json({"action": "subscribe"}),
        lambda: ws.send_json({"action": "subscribe", "conversationId": "not-a-uuid"}),
        lambda: ws.send_json({"action": "unsubscribe", "conversationId": str(uuid.uuid4())}),
    ]
    for send in malformed:
        await send()
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "error" and frame["message"], frame
        await assert_usable(ws)
    await ws.close()


async def test_an_oversized_frame_gets_an_error_frame_or_close_1009(make_client):
    client = await make_client(MAX_WS_FRAME_BYTES="1024")
    ws = await open_socket(client)

    await ws.send_str('{"action":"ping","padding":"' + "x" * 4096 + '"}')
    msg = await ws.receive(timeout=5)

    if msg.type == WSMsgType.TEXT:
        assert msg.json()["type"] == "error"
        await assert_usable(ws)
    else:
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
        assert ws.close_code == 1009
    # the hub itself lives on: a new socket works
    fresh = await open_socket(client)
    await assert_usable(fresh)
    await fresh.close()


async def test_ping_is_answered_with_pong_before_and_after_auth(client):
    ws = await client.ws_connect("/api/ws")
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    await assert_usable(ws)
    await ws.send_json({"action": "auth", "userId": "alice"})
    assert (await ws.receive_json(timeout=5))["type"] == "authenticated"
    await assert_usable(ws)
    await ws.close()


async def test_a_socket_that_stops_answering_pings_is_dropped(make_client, monkeypatch):
    monkeypatch.setattr(hub, "HEARTBEAT_SECONDS", 0.3)
    client = await make_client()
    the_hub = client.server.app[HUB]
    ws = await client.ws_connect("/api/ws", autoping=False)  # a client that never pongs
    assert await ws.receive_json(timeout=5) == {"type": "ready"}
    await ws.send_json({"action": "auth", "userId": "alice"})
    assert (await ws.receive_json(timeout=5))["type"] == "authenticated"
    assert the_hub.client_count == 1

    ping = await ws.receive(timeout=5)
    assert ping.type == WSMsgType.PING  # the server's heartbeat

    async def dropped():
        return the_hub.client_count == 0

    await wait_for(dropped, timeout=5)
    await ws.close()


async def test_a_socket_too_far_behind_is_closed_and_the_hub_lives_on(client, monkeypatch):
    monkeypatch.setattr(hub, "MAX_BACKLOG_BYTES", 256 * 1024)
    _, body = await post_chat(client)
    conversation = body["conversationId"]
    await chat_status_when(client, body["jobId"], "completed")  # its events are over
    slow = await open_socket(client)
    await subscribe(slow, conversation)

    # 18 MB published, one frame per event-loop turn, to a socket that reads nothing
    # meanwhile: more than the kernel's socket buffers hold, so the hub's own backlog passes
    # its limit.
    padding = "x" * 60_000
    for number in range(300):
        payload = orjson.dumps({"type": "test", "n": number, "padding": padding})
        client.app[HUB].deliver(conversation, f"1-{number}", payload)
        await asyncio.sleep(0)

    numbers = []
    while (msg := await slow.receive(timeout=10)).type == WSMsgType.TEXT:
        numbers.append(msg.json()["n"])
    assert msg.type == WSMsgType.CLOSE and msg.data == hub.CLOSE_POLICY
    assert 0 < len(numbers) < 300
    assert numbers == list(range(len(numbers)))  # in order, then cut off

    fresh = await open_socket(client)
    await fresh.send_json({"action": "ping"})
    assert await fresh.receive_json(timeout=5) == {"type": "pong"}
