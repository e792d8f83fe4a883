"""Streaming answers (SPEC §10): `stream: true` sockets also get `message:delta` frames whose
texts concatenate to exactly the final content; the message holds the text so far while it
streams, so a client arriving mid-answer loses nothing; a new attempt starts again at offset 0;
sockets that did not ask see nothing new. The `openai` provider streams server-sent events."""

from __future__ import annotations

from tests.api_support import get_json, message_when
from tests.conftest import open_socket, post_chat, subscribe, wait_for
from tests.fake_openai import FakeOpenAI
from tests.live_support import (
    apply_deltas,
    deltas,
    kept,
    nothing_more,
    until_end,
    watched_conversation,
)


def assert_contiguous(frames: list[dict]) -> str:
    """Each delta starts where the previous one ended; returns their concatenation."""
    text = ""
    for delta in frames:
        assert delta["offset"] == len(text), (delta, len(text))
        assert delta["text"]
        text += delta["text"]
    return text


async def test_chat_deltas_concatenate_to_exactly_the_final_content(llm_client, fake_llm):
    ws, conversation = await watched_conversation(llm_client, stream=True)
    _, body = await post_chat(
        llm_client, "Which kinases phosphorylate p53? é✓", conversationId=conversation
    )
    frames = await until_end(ws)

    streamed = deltas(frames)
    assert streamed, "no delta arrived"
    text = assert_contiguous(streamed)
    message = await message_when(llm_client, body["messageId"], "COMPLETE")
    assert text == message["content"] == fake_llm.requests[-1].reply
    for delta in streamed:
        assert set(delta) == {
            "type",
            "jobId",
            "conversationId",
            "messageId",
            "queue",
            "attempt",
            "offset",
            "text",
        }  # no id: deltas are not kept
        assert (delta["jobId"], delta["messageId"]) == (body["jobId"], body["messageId"])
        assert (delta["queue"], delta["attempt"]) == ("chat", 1)
    types = [f["type"] for f in frames]
    last_delta = max(i for i, t in enumerate(types) if t == "message:delta")
    first_delta = types.index("message:delta")
    assert (
        types[first_delta - 1] == "job:progress"
        and frames[first_delta - 1]["progress"]["stage"] == "reply"
    )
    assert types[last_delta + 1 :] == ["message:updated", "job:completed"]
    # The provider was asked to stream, with usage, in one request.
    assert len(fake_llm.requests) == 2  # the conversation's first chat and this one
    request = fake_llm.requests[-1].body
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}


async def test_offline_answers_stream_a_few_words_at_a_time(make_client):
    client = await make_client(OFFLINE_LLM_DELAY="0.3")
    ws, conversation = await watched_conversation(client, stream=True)
    _, body = await post_chat(client, "What does BRCA2 do?", conversationId=conversation)
    streamed = deltas(await until_end(ws))
    message = await message_when(client, body["messageId"], "COMPLETE")
    assert assert_contiguous(streamed) == message["content"]
    assert len(streamed) > 1  # spread over 0.3 s, the words come in several deltas
    assert all(len(d["text"].split()) < len(message["content"].split()) for d in streamed)


async def test_deep_research_streams_its_reply_stage_only(llm_client, fake_llm):
    ws, conversation = await watched_conversation(llm_client, stream=True)
    _, body = await post_chat(
        llm_client,
        "Is p53 druggable?",
        path="/api/deep-research/start",
        conversationId=conversation,
    )
    frames = await until_end(ws)
    streamed = deltas(frames)
    message = await message_when(llm_client, body["messageId"], "COMPLETE")
    assert assert_contiguous(streamed) == message["content"] == message["state"]["reply"]
    stages = [f["progress"]["stage"] for f in frames if f["type"] == "job:progress"]
    assert stages[-1] == "reply"
    first_delta = next(i for i, f in enumerate(frames) if f["type"] == "message:delta")
    assert all(f["type"] != "job:progress" for f in frames[first_delta:])
    assert all(d["queue"] == "deep-research" for d in streamed)


async def test_a_socket_without_stream_sees_no_deltas_and_the_same_notifications(
    llm_client, fake_llm
):
    streaming, conversation = await watched_conversation(llm_client, stream=True)
    plain = await open_socket(llm_client)
    await subscribe(plain, conversation)
    await post_chat(llm_client, "compare", conversationId=conversation)
    streamed_frames = await until_end(streaming)
    plain_frames = await until_end(plain)
    assert deltas(streamed_frames)
    assert plain_frames == kept(streamed_frames)  # the same notifications, and only them


async def test_deltas_are_coalesced(make_client):
    async with FakeOpenAI(pieces=40) as fake:  # 40 pieces written back to back
        client = await make_client(LLM_PROVIDER="openai", OPENAI_BASE_URL=fake.base_url)
        ws, conversation = await watched_conversation(client, stream=True)
        await post_chat(client, "many small pieces", conversationId=conversation)
        streamed = deltas(await until_end(ws))
    pieces = fake.split(fake.requests[-1].reply)
    assert len(pieces) > 30
    assert 1 <= len(streamed) < len(pieces)
    assert assert_contiguous(streamed) == fake.requests[-1].reply


async def test_a_client_arriving_mid_answer_reads_the_text_so_far_then_the_rest_as_deltas(
    llm_client, fake_llm
):
    _, first = await post_chat(llm_client, "open the conversation")
    conversation = first["conversationId"]
    await message_when(llm_client, first["messageId"], "COMPLETE")
    fake_llm.hold(after_pieces=3)
    _, body = await post_chat(llm_client, "a long answer", conversationId=conversation)
    await fake_llm.until_holding()

    async def some_text():
        _, message = await get_json(llm_client, f"/api/messages/{body['messageId']}")
        return message["content"]

    await wait_for(some_text, what="the text so far in the message")
    # The client arrives: it subscribes first, then fetches the text so far.
    late = await open_socket(llm_client)
    await subscribe(late, conversation, stream=True)
    _, arrived = await get_json(llm_client, f"/api/messages/{body['messageId']}")
    assert arrived["status"] == "PENDING" and arrived["content"]
    fake_llm.release()

    frames = await until_end(late)
    final = await message_when(llm_client, body["messageId"], "COMPLETE")
    assert arrived["content"] != final["content"]  # it did arrive mid-answer
    assert final["content"].startswith(arrived["content"])
    assert apply_deltas(arrived["content"], deltas(frames)) == final["content"]


async def test_a_new_attempt_streams_again_from_offset_zero_with_a_higher_attempt(
    llm_client, fake_llm
):
    ws, conversation = await watched_conversation(llm_client, stream=True)
    fake_llm.hold(after_pieces=2)
    _, body = await post_chat(llm_client, "try twice", conversationId=conversation)
    await fake_llm.until_holding()
    two_pieces = "".join(fake_llm.split(fake_llm.requests[-1].reply)[:2])
    frames = []
    while "".join(d["text"] for d in deltas(frames)) != two_pieces:
        frames.append(await ws.receive_json(timeout=10))
    fake_llm.release(breaking=True)  # the first attempt's stream breaks off midway
    frames += await until_end(ws)

    first = [d for d in deltas(frames) if d["attempt"] == 1]
    second = [d for d in deltas(frames) if d["attempt"] == 2]
    assert assert_contiguous(first) == two_pieces
    assert second[0]["offset"] == 0
    assert frames.index(first[-1]) < frames.index(second[0])
    message = await message_when(llm_client, body["messageId"], "COMPLETE")
    assert assert_contiguous(second) == message["content"] == fake_llm.requests[-1].reply
    _, status = await get_json(llm_client, f"/api/chat/status/{body['jobId']}")
    assert status["attemptsMade"] == 2
    await nothing_more(ws)
