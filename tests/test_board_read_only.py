"""`ADMIN_READ_ONLY=true` (SPEC §7): the board shows everything, offers no action, and every
board POST answers 403 JSON, even one with a valid CSRF token and Origin."""

from __future__ import annotations

import pytest

from bioagents.config import ConfigError, Settings
from tests.admin_support import (
    FAIL_MARK,
    board_post,
    fail_job,
    fake_llm_app,
    job_in_state,
    job_of,
    llm_env,
)
from tests.conftest import post_chat

API = "/admin/queues/api/queues"


@pytest.fixture
async def read_only(aiohttp_server, make_client):
    """A read-only board over one completed chat and one that failed an attempt (delayed:
    a writable board offers Promote and Remove for it); returns (client, ids)."""
    llm = await aiohttp_server(fake_llm_app())
    client = await make_client(ADMIN_READ_ONLY="true", **llm_env(str(llm.make_url("")).rstrip("/")))
    _, done = await post_chat(client, "answered")
    _, failing = await post_chat(client, f"{FAIL_MARK} broken")
    await job_in_state(client, "chat", done["jobId"], "completed")
    await job_in_state(client, "chat", failing["jobId"], "delayed")
    return client, {"completed": done["jobId"], "failing": failing["jobId"]}


async def test_pages_show_everything_and_no_action(read_only):
    client, ids = read_only
    pages = {
        "/admin/queues": ["data-read-only", 'data-count="completed">1<'],
        "/admin/queues/queue/chat?status=completed": [ids["completed"], "data-read-only"],
        f"/admin/queues/queue/chat/{ids['failing']}": ["Attempt 1", "model overloaded"],
    }
    for path, shown in pages.items():
        response = await client.get(path)
        assert response.status == 200, path
        page = await response.text()
        for text in shown:
            assert text in page, (path, text)
        assert "hx-post" not in page and 'method="post"' not in page, path
        assert 'class="action"' not in page and 'class="clean"' not in page, path


async def test_every_board_post_is_refused_with_403_json(read_only):
    client, ids = read_only
    failed = ids["failing"]
    for action in (
        "chat/pause",
        "chat/resume",
        "chat/retry/failed",
        "chat/clean/completed",
        f"chat/{failed}/retry",
        f"chat/{failed}/remove",
        f"chat/{failed}/promote",
        f"chat/{failed}/cancel",
    ):
        response = await board_post(client, f"{API}/{action}")
        assert response.status == 403, action
        body = await response.json()
        assert body == {"ok": False, "error": body["error"]}
        assert "read-only" in body["error"]
    # Nothing changed: not paused, not removed, not cleaned.
    assert await job_of(client, "chat", failed) is not None
    queues = (await (await client.get(API)).json())["queues"]
    assert [q["isPaused"] for q in queues] == [False, False]
    assert queues[0]["counts"]["completed"] == 1


async def test_a_writable_board_still_offers_its_actions(aiohttp_server, make_client):
    llm = await aiohttp_server(fake_llm_app())
    client = await make_client(**llm_env(str(llm.make_url("")).rstrip("/")))
    _, failed = await post_chat(client, f"{FAIL_MARK} broken")
    await fail_job(client, "chat", failed["jobId"])
    page = await (await client.get("/admin/queues/queue/chat?status=failed")).text()
    assert "hx-post" in page and "data-read-only" not in page


def test_a_misspelt_read_only_flag_stops_the_program():
    with pytest.raises(ConfigError, match="ADMIN_READ_ONLY"):
        Settings.from_env({"ADMIN_READ_ONLY": "ture"})
    assert Settings.from_env({"ADMIN_READ_ONLY": "yes"}).admin_read_only is True
    assert Settings.from_env({"ADMIN_READ_ONLY": "0"}).admin_read_only is False
