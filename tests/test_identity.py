"""Identity (SPEC §3): JWT → API key → anonymous, and every user sees only their own things."""

from __future__ import annotations

import time
import uuid

import jwt

from bioagents.auth import issue_token
from tests.api_support import (
    app_settings,
    chat_status_when,
    get_json,
    message_rows,
    research_status_when,
)
from tests.conftest import bearer, post_chat

SECRET = "test-secret-0123456789abcdef0123456789"  # BASE_ENV's BIOAGENTS_SECRET
API_KEY = "test-api-key-0123456789abcdef0123456789"


async def post_as(client, headers: dict, **body):
    response = await client.post("/api/chat", json={"message": "hello", **body}, headers=headers)
    return response.status, await response.json()


async def test_a_valid_jwt_names_the_user(make_client, settings_for):
    settings = settings_for(AUTH_MODE="jwt")
    client = await make_client(settings)

    status, body = await post_as(client, bearer(settings, "alice"))

    assert status == 202
    assert body["userId"] == "alice"


async def test_a_jwt_caller_cannot_choose_another_user_id(make_client, settings_for):
    settings = settings_for()
    client = await make_client(settings)

    status, body = await post_as(
        client, {**bearer(settings, "alice"), "X-User-Id": "mallory"}, userId="mallory"
    )

    assert status == 202
    assert body["userId"] == "alice"
    # ignored, so not judged either: a malformed chosen id does not fail a JWT caller
    status, body = await post_as(
        client, {**bearer(settings, "alice"), "X-User-Id": "m" * 500}, userId=["not", "an id"]
    )
    assert status == 202
    assert body["userId"] == "alice"


async def test_the_api_key_honours_the_chosen_user_id(make_client):
    client = await make_client(AUTH_MODE="jwt", BIOAGENTS_API_KEY=API_KEY)

    status, by_header = await post_as(client, {"X-API-Key": API_KEY, "X-User-Id": "bob"})
    assert status == 202
    assert by_header["userId"] == "bob"

    status, by_body = await post_as(client, {"X-API-Key": API_KEY}, userId="carol")
    assert status == 202
    assert by_body["userId"] == "carol"

    status, header_wins = await post_as(
        client, {"X-API-Key": API_KEY, "X-User-Id": "bob"}, userId="carol"
    )
    assert header_wins["userId"] == "bob"


async def test_anonymous_callers_get_a_fresh_uuid_or_their_chosen_id(client):
    status, first = await post_as(client, {})
    _, second = await post_as(client, {})

    assert status == 202
    assert uuid.UUID(first["userId"]) and uuid.UUID(second["userId"])
    assert first["userId"] != second["userId"]
    # the assigned id is the caller's from then on
    code, message = await get_json(client, f"/api/messages/{first['messageId']}", first["userId"])
    assert code == 200
    assert message["userId"] == first["userId"]

    _, chosen = await post_as(client, {"X-User-Id": "dora"})
    assert chosen["userId"] == "dora"


async def test_jwt_mode_without_credentials_is_401_on_every_private_route(make_client):
    client = await make_client(AUTH_MODE="jwt")
    some_id = str(uuid.uuid4())
    routes = [
        ("POST", "/api/chat"),
        ("POST", "/api/deep-research/start"),
        ("GET", f"/api/chat/status/{some_id}"),
        ("GET", f"/api/deep-research/status/{some_id}"),
        ("POST", f"/api/chat/retry/{some_id}"),
        ("POST", f"/api/deep-research/retry/{some_id}"),
        ("GET", f"/api/messages/{some_id}"),
        ("GET", f"/api/conversations/{some_id}/messages"),
    ]
    for method, path in routes:
        response = await client.request(
            method, path, json={"message": "hi"}, headers={"X-User-Id": "alice"}
        )
        assert response.status == 401, (method, path)
        body = await response.json()
        assert body["ok"] is False and body["error"]
    assert message_rows(app_settings(client)) == []

    for path in ("/api/health", "/api/openapi.json"):
        assert (await client.get(path)).status == 200, path


async def test_bad_credentials_are_401(make_client, settings_for):
    settings = settings_for(AUTH_MODE="jwt", MAX_JWT_EXPIRATION="3600")
    client = await make_client(settings)
    now = int(time.time())
    tokens = {
        "expired": jwt.encode({"sub": "alice", "exp": now - 10}, SECRET, "HS256"),
        "exp too far ahead": jwt.encode({"sub": "alice", "exp": now + 7200}, SECRET, "HS256"),
        "no exp": jwt.encode({"sub": "alice"}, SECRET, "HS256"),
        "no sub": jwt.encode({"exp": now + 60}, SECRET, "HS256"),
        "wrong secret": jwt.encode({"sub": "alice", "exp": now + 60}, "other-secret", "HS256"),
        "HS512": jwt.encode({"sub": "alice", "exp": now + 60}, SECRET, "HS512"),
        "alg none": jwt.encode({"sub": "alice", "exp": now + 60}, None, "none"),
        "garbage": "not.a.jwt",
        "exp a string": jwt.encode({"sub": "alice", "exp": str(now + 60)}, SECRET, "HS256"),
        "exp of 400 digits": jwt.encode({"sub": "alice", "exp": int("9" * 400)}, SECRET, "HS256"),
        "exp infinite": jwt.encode({"sub": "alice", "exp": 1e999}, SECRET, "HS256"),
        "sub a number": jwt.encode({"sub": 7, "exp": now + 60}, SECRET, "HS256"),
        "sub with control characters": jwt.encode(
            {"sub": "ali\x1bce", "exp": now + 60}, SECRET, "HS256"
        ),
        "sub empty": jwt.encode({"sub": "", "exp": now + 60}, SECRET, "HS256"),
    }
    for name, token in tokens.items():
        status, body = await post_as(client, {"Authorization": f"Bearer {token}"})
        assert status == 401, name
        assert body["ok"] is False and body["error"], name

    for headers in (
        {"Authorization": "Basic YWxpY2U6eA=="},
        {"X-API-Key": "wrong-key"},
        {"X-API-Key": SECRET},  # the JWT secret is no API key
    ):
        status, _ = await post_as(client, headers)
        assert status == 401, headers
    assert message_rows(settings) == []


async def test_a_token_within_max_jwt_expiration_is_accepted(make_client, settings_for):
    settings = settings_for(AUTH_MODE="jwt", MAX_JWT_EXPIRATION="3600")
    client = await make_client(settings)
    token = issue_token(settings, "alice", ttl=3500)

    status, body = await post_as(client, {"Authorization": f"Bearer {token}"})

    assert status == 202
    assert body["userId"] == "alice"


async def test_other_users_things_are_404(client):
    _, chat = await post_chat(client, "alice's chat", user="alice")
    _, research = await post_chat(
        client, "alice's research", user="alice", path="/api/deep-research/start"
    )
    await chat_status_when(client, chat["jobId"], "completed")
    await research_status_when(client, research["messageId"], "completed")

    for path in (
        f"/api/messages/{chat['messageId']}",
        f"/api/conversations/{chat['conversationId']}/messages",
        f"/api/chat/status/{chat['jobId']}",
        f"/api/deep-research/status/{research['messageId']}",
    ):
        status, body = await get_json(client, path, user="bob")
        assert status == 404, path
        assert body["ok"] is False
        assert "alice" not in str(body)
    for path in (
        f"/api/chat/retry/{chat['jobId']}",
        f"/api/deep-research/retry/{research['jobId']}",
    ):
        response = await client.post(path, headers={"X-User-Id": "bob"})
        assert response.status == 404, path

    rows_before = len(message_rows(app_settings(client)))
    response, body = await post_chat(
        client, "bob joins in", user="bob", conversationId=chat["conversationId"]
    )
    assert response.status == 404
    assert body["ok"] is False
    assert len(message_rows(app_settings(client))) == rows_before
