"""`GET /metrics` (SPEC §11) in in-process mode, read with prometheus_client's own parser: the
counts equal what was run; labels are bounded; loopback only, or the METRICS_TOKEN for all."""

from __future__ import annotations

import re

import pytest
from aiohttp import web

from bioagents.app import create_app
from tests.admin_support import FAIL_MARK, board_post, fail_job, fake_llm_app, job_in_state, llm_env
from tests.conftest import events_until, open_socket, post_chat, subscribe, wait_for
from tests.metrics_support import parse, scrape, value

SPEC_NAMES = {
    "bioagents_queue_jobs": "gauge",
    "bioagents_queue_paused": "gauge",
    "bioagents_queue_oldest_waiting_seconds": "gauge",
    "bioagents_workers": "gauge",
    "bioagents_jobs_enqueued": "counter",
    "bioagents_jobs_finished": "counter",
    "bioagents_job_retries": "counter",
    "bioagents_jobs_stalled": "counter",
    "bioagents_job_wait_seconds": "histogram",
    "bioagents_job_run_seconds": "histogram",
    "bioagents_http_requests": "counter",
    "bioagents_rate_limited": "counter",
    "bioagents_websocket_connections": "gauge",
    "bioagents_notifications": "counter",
    "bioagents_llm_tokens": "counter",
}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
async def fake_llm(aiohttp_server):
    return await aiohttp_server(fake_llm_app())


@pytest.fixture
async def failing(fake_llm, make_client):
    """A client whose FAIL-ME questions fail every attempt."""
    return await make_client(**llm_env(str(fake_llm.make_url("")).rstrip("/")))


async def research(client, message: str, user: str = "alice") -> dict:
    response = await client.post(
        "/api/deep-research/start", json={"message": message}, headers={"X-User-Id": user}
    )
    assert response.status == 202
    return await response.json()


async def test_a_scrape_has_every_spec_name_with_its_type(client):
    response = await client.get("/metrics")
    assert response.status == 200
    _, types = parse(await response.text())
    assert {name: types.get(name) for name in SPEC_NAMES} == SPEC_NAMES


async def test_job_counts_equal_what_was_run(failing):
    completed = [(await post_chat(failing, f"question {n}"))[1]["jobId"] for n in range(3)]
    failed = [(await post_chat(failing, f"{FAIL_MARK} {n}"))[1]["jobId"] for n in range(2)]
    researched = (await research(failing, "How does CRISPR work?"))["jobId"]
    for job_id in completed:
        await job_in_state(failing, "chat", job_id, "completed")
    for job_id in failed:
        assert (await fail_job(failing, "chat", job_id))["attemptsMade"] == 4
    await job_in_state(failing, "deep-research", researched, "completed", timeout=30)

    samples = await scrape(failing)

    assert value(samples, "bioagents_jobs_enqueued_total", queue="chat") == 5
    assert value(samples, "bioagents_jobs_enqueued_total", queue="deep-research") == 1
    finished = "bioagents_jobs_finished_total"
    assert value(samples, finished, queue="chat", outcome="completed") == 3
    assert value(samples, finished, queue="chat", outcome="failed") == 2
    assert value(samples, finished, queue="chat", outcome="cancelled") == 0
    assert value(samples, finished, queue="chat", outcome="timed_out") == 0
    assert value(samples, finished, queue="deep-research", outcome="completed") == 1
    # Each failed job spent 4 attempts: 3 retries each.
    assert value(samples, "bioagents_job_retries_total", queue="chat") == 6
    assert value(samples, "bioagents_jobs_stalled_total", queue="chat") == 0
    # Histograms: one observation per finished job; the +Inf bucket equals the count.
    assert value(samples, "bioagents_job_wait_seconds_count", queue="chat") == 5
    assert value(samples, "bioagents_job_wait_seconds_bucket", queue="chat", le="+Inf") == 5
    run = "bioagents_job_run_seconds_count"
    assert value(samples, run, queue="chat", outcome="completed") == 3
    assert value(samples, run, queue="chat", outcome="failed") == 2
    assert value(samples, run, queue="deep-research", outcome="completed") == 1
    assert value(samples, "bioagents_job_run_seconds_sum", queue="chat", outcome="completed") > 0
    # Gauges, at scrape time.
    assert value(samples, "bioagents_queue_jobs", queue="chat", state="completed") == 3
    assert value(samples, "bioagents_queue_jobs", queue="chat", state="failed") == 2
    assert value(samples, "bioagents_queue_jobs", queue="chat", state="active") == 0
    assert value(samples, "bioagents_workers", queue="chat") == 1
    assert value(samples, "bioagents_queue_paused", queue="chat") == 0


async def test_histogram_buckets_are_cumulative(client):
    for n in range(4):
        _, body = await post_chat(client, f"question {n}")
        await job_in_state(client, "chat", body["jobId"], "completed")
    samples = await scrape(client)
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in samples.items()
        if name == "bioagents_job_run_seconds_bucket"
        and dict(labels)["queue"] == "chat"
        and dict(labels)["outcome"] == "completed"
    )
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and counts[-1] == 4
    assert buckets[-1][0] == float("inf")


async def test_paused_queue_and_its_oldest_waiting_job(client):
    assert (await board_post(client, "/admin/queues/api/queues/chat/pause")).status == 200
    await post_chat(client)
    samples = await scrape(client)
    assert value(samples, "bioagents_queue_paused", queue="chat") == 1
    assert value(samples, "bioagents_queue_paused", queue="deep-research") == 0
    assert value(samples, "bioagents_queue_jobs", queue="chat", state="waiting") == 1
    assert value(samples, "bioagents_queue_oldest_waiting_seconds", queue="chat") > 0
    assert value(samples, "bioagents_queue_oldest_waiting_seconds", queue="deep-research") == 0


async def test_http_requests_are_counted_by_route_template_never_by_raw_path(client):
    _, body = await post_chat(client)
    job_id = body["jobId"]
    before = await scrape(client)
    for _ in range(3):
        status = await client.get(f"/api/chat/status/{job_id}", headers={"X-User-Id": "alice"})
        assert status.status == 200
    assert (await client.get(f"/api/nothing/{job_id}")).status == 404
    after = await scrape(client)

    http = "bioagents_http_requests_total"
    template = "/api/chat/status/{jobId}"
    counted = value(after, http, method="GET", route=template, status="200")
    assert counted - value(before, http, method="GET", route=template, status="200") == 3
    unmatched = value(after, http, method="GET", route="unmatched", status="404")
    assert unmatched - value(before, http, method="GET", route="unmatched", status="404") == 1
    # The scrape before this one is counted too, under its own route.
    assert value(after, http, method="GET", route="/metrics", status="200") >= 1
    for _, labels in after:
        for _, label in labels:
            assert not UUID.search(label), f"an id in a label: {label}"


async def test_rate_limited_requests_are_counted_per_queue(make_client):
    client = await make_client(CHAT_RATE_LIMIT_PER_MINUTE="1")
    before = await scrape(client)
    assert (await post_chat(client, user="bob"))[0].status == 202
    assert (await post_chat(client, user="bob"))[0].status == 429
    assert (await post_chat(client, user="bob"))[0].status == 429
    after = await scrape(client)
    limited = "bioagents_rate_limited_total"
    assert value(after, limited, queue="chat") - value(before, limited, queue="chat") == 2
    assert value(after, limited, queue="deep-research") == value(
        before, limited, queue="deep-research"
    )


async def test_websocket_gauge_and_notifications_sent_to_sockets(client):
    _, first = await post_chat(client)
    conversation = first["conversationId"]
    await job_in_state(client, "chat", first["jobId"], "completed")
    before = await scrape(client)
    ws = await open_socket(client)
    await subscribe(ws, conversation)
    opened = await scrape(client)
    gauge = "bioagents_websocket_connections"
    assert value(opened, gauge) - value(before, gauge) == 1

    await post_chat(client, conversationId=conversation)
    events = await events_until(ws)
    after = await scrape(client)
    sent = "bioagents_notifications_total"
    for kind in {event["type"] for event in events}:
        delta = value(after, sent, type=kind) - value(before, sent, type=kind)
        assert delta == sum(1 for event in events if event["type"] == kind), kind

    await ws.close()

    async def closed():
        return value(await scrape(client), gauge) == value(before, gauge)

    await wait_for(closed, what="the gauge to drop when the socket closed")


# --- who may scrape ------------------------------------------------------------------------------


def _as_remote(address: str):
    @web.middleware
    async def pretend(request: web.Request, handler):
        return await handler(request.clone(remote=address))

    return pretend


@pytest.mark.parametrize("address", ["203.0.113.7", "10.0.0.2", "2001:db8::1"])
async def test_without_a_token_other_clients_get_403(aiohttp_client, settings_for, address):
    app = create_app(settings_for())
    app.middlewares.insert(0, _as_remote(address))
    client = await aiohttp_client(app)
    response = await client.get("/metrics")
    assert response.status == 403
    body = await response.json()
    assert body["ok"] is False and "loopback clients only" in body["error"]


async def test_without_a_token_loopback_is_served_but_not_through_a_proxy(client):
    assert (await client.get("/metrics")).status == 200
    proxied = await client.get("/metrics", headers={"X-Forwarded-For": "198.51.100.4"})
    assert proxied.status == 403


async def test_without_a_token_a_rebinding_host_name_is_refused(client):
    """DNS rebinding: a page on an attacker's name that resolves to 127.0.0.1 would read the
    metrics of a loopback-only endpoint; the Host rule answers it 421 (SPEC §12)."""
    rebound = await client.get("/metrics", headers={"Host": "rebind.attacker.example:3000"})
    assert rebound.status == 421
    assert (await rebound.json())["ok"] is False
    named = await client.get("/metrics", headers={"Host": "localhost:3000"})
    assert named.status == 200


async def test_with_a_token_every_caller_needs_it_loopback_included(make_client):
    token = "metrics-token-0123456789abcdef"
    client = await make_client(METRICS_TOKEN=token)
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": "Bearer t\u00e9st"},
    ):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["ok"] is False
    await scrape(client, {"Authorization": f"Bearer {token}"})


async def test_with_a_token_remote_clients_are_served(aiohttp_client, settings_for):
    token = "metrics-token-0123456789abcdef"
    app = create_app(settings_for(METRICS_TOKEN=token))
    app.middlewares.insert(0, _as_remote("203.0.113.7"))
    client = await aiohttp_client(app)
    await scrape(client, {"Authorization": f"Bearer {token}"})
