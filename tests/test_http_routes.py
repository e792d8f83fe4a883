"""Every route of SPEC §4 answers its success shape, and its errors as JSON."""

from __future__ import annotations

import uuid

import aiohttp

from tests.api_support import (
    chat_status_when,
    get_json,
    message_when,
    research_status_when,
)
from tests.conftest import post_chat

CHAT_STAGES = [("planning", 10), ("literature", 30), ("hypothesis", 60), ("reply", 90)]
RESEARCH_STAGES = ["planning", "literature", "analysis", "hypothesis", "reflection", "reply"]


def assert_error(body: dict) -> None:
    assert body["ok"] is False
    assert isinstance(body["error"], str) and body["error"]


async def test_chat_is_accepted_with_202_and_the_ids_to_poll(client):
    response, body = await post_chat(client, "What does p53 do?")

    assert response.status == 202
    assert set(body) == {"jobId", "messageId", "conversationId", "userId", "status", "pollUrl"}
    assert body["jobId"] == body["messageId"]
    uuid.UUID(body["conversationId"])
    assert body["userId"] == "alice"
    assert body["status"] == "queued"
    assert body["pollUrl"] == f"/api/chat/status/{body['jobId']}"


async def test_chat_status_reports_the_completed_result(client):
    _, accepted = await post_chat(client, "What does p53 do?")

    status = await chat_status_when(client, accepted["jobId"], "completed")

    assert status["attemptsMade"] == 1
    assert status["progress"] == {"stage": "reply", "percent": 90}
    assert set(status["result"]) == {"text", "userId", "responseTime"}
    assert "offline" in status["result"]["text"]
    assert status["result"]["userId"] == "alice"
    assert isinstance(status["result"]["responseTime"], int)
    assert "error" not in status


async def test_chat_accepts_a_urlencoded_form(client):
    response = await client.post(
        "/api/chat", data={"message": "form question", "userId": "formuser"}
    )
    body = await response.json()

    assert response.status == 202
    assert body["userId"] == "formuser"
    message = await message_when(client, body["messageId"], "COMPLETE", user="formuser")
    assert message["question"] == "form question"


async def test_chat_accepts_a_multipart_form(client):
    form = aiohttp.FormData()
    form.add_field("message", "multipart question")
    form.add_field("userId", "alice")
    response = await client.post("/api/chat", data=form())
    body = await response.json()

    assert response.status == 202
    message = await message_when(client, body["messageId"], "COMPLETE")
    assert message["question"] == "multipart question"


async def test_chat_continues_the_conversation_it_is_given(client):
    _, first = await post_chat(client, "first")
    _, second = await post_chat(client, "second", conversationId=first["conversationId"])

    assert second["conversationId"] == first["conversationId"]
    assert second["messageId"] != first["messageId"]


async def test_message_route_returns_the_whole_row(client):
    _, accepted = await post_chat(client, "What does BRCA1 do?")

    message = await message_when(client, accepted["messageId"], "COMPLETE")

    assert set(message) == {
        "id",
        "conversationId",
        "userId",
        "question",
        "content",
        "status",
        "error",
        "responseTime",
        "createdAt",
        "updatedAt",
        "state",
        "usage",
    }
    assert message["id"] == accepted["messageId"]
    assert message["conversationId"] == accepted["conversationId"]
    assert message["userId"] == "alice"
    assert message["question"] == "What does BRCA1 do?"
    assert "offline" in message["content"]
    assert message["error"] is None
    assert isinstance(message["responseTime"], int)
    assert message["createdAt"] <= message["updatedAt"]
    assert message["state"] is None  # chat keeps no state row
    assert message["usage"]["promptTokens"] > 0 and message["usage"]["completionTokens"] > 0


async def test_unknown_message_is_404_json(client):
    for message_id in (str(uuid.uuid4()), "not-a-uuid"):
        status, body = await get_json(client, f"/api/messages/{message_id}")
        assert status == 404
        assert_error(body)


async def test_deep_research_is_accepted_and_completes_with_report_and_papers(client):
    response, accepted = await post_chat(client, "How do tumours evade T cells?", path=START)

    assert response.status == 202
    assert set(accepted) == {"jobId", "messageId", "conversationId", "userId", "status", "pollUrl"}
    assert accepted["jobId"] == accepted["messageId"]
    assert accepted["status"] == "queued"
    assert accepted["pollUrl"] == f"/api/deep-research/status/{accepted['messageId']}"

    status = await research_status_when(client, accepted["messageId"], "completed")
    assert status["messageId"] == accepted["messageId"]
    assert status["conversationId"] == accepted["conversationId"]
    assert status["progress"]["completedSteps"] == RESEARCH_STAGES
    assert status["progress"]["percent"] == 100
    assert "offline" in status["result"]["text"]
    assert isinstance(status["result"]["papers"], list)

    message = await message_when(client, accepted["messageId"], "COMPLETE")
    assert message["content"] == status["result"]["text"]
    assert list(message["state"]) == RESEARCH_STAGES


START = "/api/deep-research/start"


async def test_deep_research_reports_processing_while_it_runs(make_client):
    client = await make_client(OFFLINE_LLM_DELAY="0.3")
    _, accepted = await post_chat(client, "slow research", path=START)

    status, body = await get_json(client, f"/api/deep-research/status/{accepted['messageId']}")

    assert status == 200
    assert body["status"] == "processing"
    assert body["messageId"] == accepted["messageId"]
    assert set(body["progress"]) == {"stage", "percent", "completedSteps"}
    assert "result" not in body


async def test_deep_research_in_an_active_conversation_is_deduplicated(make_client):
    client = await make_client(OFFLINE_LLM_DELAY="0.2")
    _, first = await post_chat(client, "first run", path=START)
    conversation = first["conversationId"]

    response, again = await post_chat(client, "second run", path=START, conversationId=conversation)

    assert response.status == 202
    assert again["deduplicated"] is True
    assert again["jobId"] == first["jobId"]
    assert again["messageId"] == first["messageId"]
    assert again["conversationId"] == conversation
    assert again["pollUrl"] == first["pollUrl"]

    await research_status_when(client, first["messageId"], "completed")
    _, after = await post_chat(client, "third run", path=START, conversationId=conversation)
    assert "deduplicated" not in after
    assert after["messageId"] != first["messageId"]


async def test_chat_is_never_deduplicated(make_client):
    client = await make_client(OFFLINE_LLM_DELAY="0.2")
    _, first = await post_chat(client, "one")
    _, second = await post_chat(client, "two", conversationId=first["conversationId"])

    assert "deduplicated" not in second
    assert second["messageId"] != first["messageId"]


async def test_unknown_jobs_are_404_not_found_on_both_status_routes(client):
    _, research = await post_chat(client, "research", path=START)
    _, chat = await post_chat(client, "chat")
    unknown = str(uuid.uuid4())
    for path in (
        f"/api/chat/status/{unknown}",
        "/api/chat/status/not-a-uuid",
        f"/api/chat/status/{research['jobId']}",  # a job of the other queue
        f"/api/deep-research/status/{unknown}",
        f"/api/deep-research/status/{chat['messageId']}",
    ):
        status, body = await get_json(client, path)
        assert status == 404, path
        assert body["ok"] is False
        assert body["status"] == "not_found"
        assert body["error"]


async def test_retrying_a_job_that_has_not_failed_is_400(client):
    _, chat = await post_chat(client, "chat")
    _, research = await post_chat(client, "research", path=START)
    await chat_status_when(client, chat["jobId"], "completed")
    await research_status_when(client, research["messageId"], "completed")

    for path in (
        f"/api/chat/retry/{chat['jobId']}",
        f"/api/deep-research/retry/{research['jobId']}",
    ):
        response = await client.post(path, headers={"X-User-Id": "alice"})
        assert response.status == 400, path
        assert_error(await response.json())


async def test_retrying_an_unknown_job_is_404(client):
    for path in (f"/api/chat/retry/{uuid.uuid4()}", f"/api/deep-research/retry/{uuid.uuid4()}"):
        response = await client.post(path, headers={"X-User-Id": "alice"})
        assert response.status == 404
        assert_error(await response.json())


async def test_conversation_lists_messages_oldest_first_with_limit_and_before(client):
    _, first = await post_chat(client, "q1")
    conversation = first["conversationId"]
    ids = [first["messageId"]]
    for question in ("q2", "q3", "q4"):
        _, accepted = await post_chat(client, question, conversationId=conversation)
        ids.append(accepted["messageId"])
    path = f"/api/conversations/{conversation}/messages"

    status, body = await get_json(client, path)
    assert status == 200
    assert [m["id"] for m in body["messages"]] == ids
    assert [m["question"] for m in body["messages"]] == ["q1", "q2", "q3", "q4"]

    _, latest_two = await get_json(client, f"{path}?limit=2")
    assert [m["id"] for m in latest_two["messages"]] == ids[2:]

    _, before_third = await get_json(client, f"{path}?before={ids[2]}")
    assert [m["id"] for m in before_third["messages"]] == ids[:2]

    _, page = await get_json(client, f"{path}?before={ids[3]}&limit=1")
    assert [m["id"] for m in page["messages"]] == [ids[2]]

    created = body["messages"][2]["createdAt"]
    response = await client.get(path, params={"before": created}, headers={"X-User-Id": "alice"})
    by_time = await response.json()
    assert [m["id"] for m in by_time["messages"]] == ids[:2]


async def test_conversation_listing_carries_each_research_runs_state(client):
    _, chat = await post_chat(client, "a chat first")
    conversation = chat["conversationId"]
    _, research = await post_chat(
        client, "then research", path="/api/deep-research/start", conversationId=conversation
    )
    await message_when(client, research["messageId"], "COMPLETE")
    status, body = await get_json(client, f"/api/conversations/{conversation}/messages")
    assert status == 200
    chat_row, research_row = body["messages"]
    assert chat_row["state"] is None
    assert list(research_row["state"]) == [
        "planning",
        "literature",
        "analysis",
        "hypothesis",
        "reflection",
        "reply",
    ]
    assert research_row["state"]["reply"] == research_row["content"]


async def test_conversation_listing_rejects_bad_queries_and_unknown_conversations(client):
    _, first = await post_chat(client, "q1")
    path = f"/api/conversations/{first['conversationId']}/messages"
    for query in ("?limit=0", "?limit=abc", "?limit=100000", "?before=yesterday"):
        status, body = await get_json(client, path + query)
        assert status == 400, query
        assert_error(body)

    status, body = await get_json(client, f"/api/conversations/{uuid.uuid4()}/messages")
    assert status == 404
    assert_error(body)


async def test_health_reports_ok_database_and_job_queue(client):
    response = await client.get("/api/health")
    body = await response.json()

    assert response.status == 200
    assert body["status"] == "ok"
    assert body["database"] == "connected"
    assert isinstance(body["timestamp"], str)
    assert body["jobQueue"]["enabled"] is False
    assert body["jobQueue"]["workers"] >= 1
    assert body["jobQueue"]["redis"] == "disabled"  # in-process mode uses no Redis


async def test_openapi_is_a_3_1_document_listing_every_route(client):
    response = await client.get("/api/openapi.json")
    doc = await response.json()

    assert response.status == 200
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in client.server.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.resource.canonical != "/api/ws"
        and route.method != "HEAD"
    }
    described = {
        (method, path) for path, operations in doc["paths"].items() for method in operations
    }
    assert served == described
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            assert operation["responses"], path
    _assert_refs_resolve(doc, doc)


def _assert_refs_resolve(doc: dict, node) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            target = doc
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
        for value in node.values():
            _assert_refs_resolve(doc, value)
    elif isinstance(node, list):
        for value in node:
            _assert_refs_resolve(doc, value)


async def test_unknown_api_path_is_404_json(client):
    for method, path in (("GET", "/api/nothing"), ("POST", "/api/chat/extra/parts")):
        response = await client.request(method, path)
        assert response.status == 404
        assert response.content_type == "application/json"
        assert_error(await response.json())


async def test_wrong_method_is_answered_with_json(client):
    for method, path in (("GET", "/api/chat"), ("DELETE", "/api/health"), ("PUT", START)):
        response = await client.request(method, path)
        assert response.status == 405, (method, path)
        assert response.content_type == "application/json"
        assert_error(await response.json())
        assert "Allow" in response.headers
