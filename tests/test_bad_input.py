"""Bad input of every kind is answered with JSON 4xx and leaves no message row (SPEC §4, §9)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.api_support import app_settings, message_rows
from tests.conftest import post_chat

JSON = {"Content-Type": "application/json", "X-User-Id": "alice"}
ROUTES = ["/api/chat", "/api/deep-research/start"]

BAD_BODIES = {
    "malformed JSON": (dict(data=b'{"message": "unclosed', headers=JSON), 400),
    "JSON array": (dict(data=b'["message"]', headers=JSON), 400),
    "JSON string": (dict(data=b'"message"', headers=JSON), 400),
    "JSON null": (dict(data=b"null", headers=JSON), 400),
    "empty body": (dict(data=b"", headers=JSON), 400),
    "missing message": (dict(json={"conversationId": None}), 400),
    "empty message": (dict(json={"message": ""}), 400),
    "blank message": (dict(json={"message": "   \n "}), 400),
    "message not a string": (dict(json={"message": 42}), 400),
    "message too long": (dict(json={"message": "x" * 20001}), 400),
    "non-UUID conversationId": (dict(json={"message": "hi", "conversationId": "abc"}), 400),
    "numeric conversationId": (dict(json={"message": "hi", "conversationId": 7}), 400),
    "userId too long": (dict(json={"message": "hi", "userId": "u" * 500}, headers={}), 400),
    "form without message": (dict(data={"conversationId": "x"}), 400),
    "text/plain": (
        dict(data=b"message=hi", headers={"Content-Type": "text/plain", "X-User-Id": "a"}),
        415,
    ),
    "no content type": (dict(data=b'{"message": "hi"}'), 415),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_bad_body_is_json_4xx_and_leaves_no_row(client, route, case):
    kwargs, expected = BAD_BODIES[case]
    kwargs = dict(kwargs)
    kwargs.setdefault("headers", {"X-User-Id": "alice"})

    response = await client.post(route, **kwargs)

    assert response.status == expected, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["ok"] is False
    assert isinstance(body["error"], str) and body["error"]
    assert message_rows(app_settings(client)) == []


async def test_message_of_exactly_the_maximum_length_is_accepted(client):
    response, _ = await post_chat(client, "x" * 20000)
    assert response.status == 202


@pytest.mark.parametrize("route", ROUTES)
async def test_body_over_max_body_bytes_is_413(make_client, route):
    client = await make_client(MAX_BODY_BYTES="2000")
    big = json.dumps({"message": "x" * 5000}).encode()

    async def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    for data in (big, chunks()):
        response = await client.post(route, data=data, headers=JSON)
        assert response.status == 413
        assert response.content_type == "application/json"
        body = await response.json()
        assert body["ok"] is False and body["error"]
    form = aiohttp.FormData({"message": "y" * 5000})
    response = await client.post(route, data=form, headers={"X-User-Id": "alice"})
    assert response.status == 413
    assert (await response.json())["ok"] is False
    assert message_rows(app_settings(client)) == []


@pytest.mark.parametrize("route", ROUTES)
async def test_someone_elses_conversation_is_404_and_leaves_no_new_row(client, route):
    _, alices = await post_chat(client, "alice's", user="alice")
    rows = len(message_rows(app_settings(client)))

    response, body = await post_chat(
        client, "bob's", user="bob", path=route, conversationId=alices["conversationId"]
    )

    assert response.status == 404
    assert body["ok"] is False and body["error"]
    assert len(message_rows(app_settings(client))) == rows
    assert all(row["user_id"] == "alice" for row in message_rows(app_settings(client)))
