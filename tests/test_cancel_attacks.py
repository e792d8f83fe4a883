"""The cancel routes (SPEC §10) against what an attacker sends (SPEC §12): a rebinding Host, a
cross-site form, another user's id, the board's action without its CSRF token. Each answer is
the SPEC's, and the waiting job is still waiting afterwards."""

from __future__ import annotations

from tests.admin_support import board_post, job_of, origin_of
from tests.conftest import post_chat

API = "/admin/queues/api/queues"


async def waiting_job(client) -> str:
    await board_post(client, f"{API}/chat/pause")
    _, body = await post_chat(client, "keep me waiting")
    return body["jobId"]


async def still_waiting(client, job_id: str) -> bool:
    return (await job_of(client, "chat", job_id))["state"] == "waiting"


async def test_a_rebinding_host_cannot_cancel(client):
    job_id = await waiting_job(client)
    response = await client.post(
        f"/api/chat/cancel/{job_id}",
        headers={"X-User-Id": "alice", "Host": "rebind.attacker.example:3000"},
    )
    assert response.status == 421
    assert (await response.json())["ok"] is False
    board = await client.post(
        f"{API}/chat/{job_id}/cancel", headers={"Host": "rebind.attacker.example:3000"}
    )
    assert board.status == 421
    assert await still_waiting(client, job_id)


async def test_a_cross_site_form_cannot_cancel(client):
    job_id = await waiting_job(client)
    for headers in (
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        response = await client.post(
            f"/api/chat/cancel/{job_id}",
            data={"userId": "alice"},
            headers={"X-User-Id": "alice", **headers},
        )
        assert response.status == 403, headers
    assert await still_waiting(client, job_id)


async def test_another_users_job_is_not_found(client):
    job_id = await waiting_job(client)
    response = await client.post(f"/api/chat/cancel/{job_id}", headers={"X-User-Id": "mallory"})
    assert response.status == 404
    assert await still_waiting(client, job_id)


async def test_the_boards_cancel_needs_its_csrf_token_and_origin(client):
    job_id = await waiting_job(client)
    no_token = await client.post(
        f"{API}/chat/{job_id}/cancel", headers={"Origin": origin_of(client)}
    )
    assert no_token.status == 403
    other_site = await board_post(
        client, f"{API}/chat/{job_id}/cancel", headers={"Origin": "https://evil.example"}
    )
    assert other_site.status == 403
    assert await still_waiting(client, job_id)
    done = await board_post(client, f"{API}/chat/{job_id}/cancel")
    assert done.status == 200
    assert (await job_of(client, "chat", job_id))["error"] == "cancelled"
