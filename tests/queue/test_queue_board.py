"""The admin board works in queue mode too (SPEC §7): its JSON API shows the Redis queues of
every process and its actions reach every worker."""

from __future__ import annotations

import pytest

from tests.admin_support import basic_auth, csrf_token_of

from .conftest import post_chat, until_status, wait_until

pytestmark = pytest.mark.queue

AUTH = basic_auth("admin", "queue-board-password")


async def test_the_board_shows_and_drives_the_redis_queues(procs, http, open_services):
    api = await procs.serve(ADMIN_PASSWORD="queue-board-password")
    await procs.worker("chat")
    controller = await open_services()
    board = f"{api.base_url}/admin/queues"

    async with http.get(board, headers=AUTH) as response:
        headers = {**AUTH, "X-CSRF-Token": csrf_token_of(await response.text())}
        headers["Origin"] = api.base_url

    async with http.post(f"{board}/api/queues/chat/pause", headers=headers) as response:
        assert response.status == 200, await response.text()
    assert await controller.jobs.is_paused("chat")
    _, body = await post_chat(http, api)
    job_id = body["jobId"]

    async with http.get(f"{board}/api/queues?status=waiting&page=1", headers=AUTH) as response:
        overview = await response.json()
    chat = next(q for q in overview["queues"] if q["name"] == "chat")
    assert chat["isPaused"] is True
    assert chat["counts"]["waiting"] == 1
    assert chat["workers"] == 1
    assert [job["id"] for job in chat["jobs"]] == [job_id]

    async with http.post(f"{board}/api/queues/chat/resume", headers=headers) as response:
        assert response.status == 200
    await until_status(http, api, job_id)

    async def completed_on_board():
        async with http.get(f"{board}/api/queues/chat/{job_id}", headers=AUTH) as response:
            detail = await response.json()
        return detail if detail["status"] == "completed" else None

    detail = await wait_until(completed_on_board, what="the board shows the job completed")
    assert detail["job"]["id"] == job_id
    assert detail["job"]["attemptsMade"] == 1
