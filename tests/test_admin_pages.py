"""The board's pages and the fragments htmx polls (SPEC §7), through the real app over HTTP."""

from __future__ import annotations

import datetime as dt
import html
import re

from markupsafe import escape

from bioagents.board_auth import CONTENT_SECURITY_POLICY
from bioagents.keys import JOBS
from tests.admin_support import (
    ERROR_BODY,
    board_post,
    csrf_token_of,
    fail_job,
    fake_llm_app,
    job_in_state,
    job_of,
    llm_env,
)
from tests.conftest import post_chat


async def _completed_chat(client, message="What does p53 do?") -> str:
    _, body = await post_chat(client, message)
    await job_in_state(client, "chat", body["jobId"], "completed")
    return body["jobId"]


async def _failing_client(aiohttp_server, make_client, **env):
    llm = await aiohttp_server(fake_llm_app())
    return await make_client(**llm_env(str(llm.make_url("")).rstrip("/")), **env)


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr data-job-id="([^"]+)">', page)


async def test_overview_shows_a_card_per_queue_with_counts_paused_workers_and_age(client):
    job_id = await _completed_chat(client)
    response = await client.get("/admin/queues")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    for queue in ("chat", "deep-research"):
        card = page.split(f'data-queue="{queue}"')[1].split("</section>")[0]
        for state in ("waiting", "active", "delayed", "completed", "failed"):
            assert f'data-count="{state}"' in card
        assert 'data-paused="false"' in card
        assert '<dd data-fact="workers">1</dd>' in card
        assert '<dd data-fact="oldest-waiting"><span class="muted">—</span></dd>' in card
    chat_card = page.split('data-queue="chat"')[1].split("</section>")[0]
    assert '<span class="count-n" data-count="completed">1</span>' in chat_card
    assert job_id not in page  # counts only; lists live on the queue pages


async def test_every_page_carries_the_csrf_meta_and_loads_only_own_assets(client):
    job_id = await _completed_chat(client)
    for path in (
        "/admin/queues",
        "/admin/queues/queue/chat?status=completed",
        f"/admin/queues/queue/chat/{job_id}",
        "/admin/queues/jump?id=nothing",
    ):
        response = await client.get(path)
        page = await response.text()
        assert response.status == 200, path
        assert csrf_token_of(page)
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "/static/vendor/htmx.org-2.0.11/htmx.min.js" in page
        # Nothing the CSP would block: no inline script or style, no foreign origin.
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), path
        assert "<style" not in page and "style=" not in page
        assert not re.search(r"\son[a-z]+=", page), path
        assert "http://" not in page and "https://" not in page
        assert '"includeIndicatorStyles":false' in html.unescape(page)


async def test_the_vendored_htmx_is_served_from_static(client):
    response = await client.get("/static/vendor/htmx.org-2.0.11/htmx.min.js")
    assert response.status == 200
    assert 'version:"2.0.11"' in (await response.text()).replace(" ", "")


async def test_overview_fragment_answers_304_while_unchanged_and_200_after_a_change(client):
    first = await client.get("/admin/queues/fragments/overview")
    assert first.status == 200
    etag = first.headers["ETag"]
    fragment = await first.text()
    assert fragment.startswith('<div id="overview-live" class="live"')
    assert "<html" not in fragment
    assert "If-None-Match" in fragment and etag[1:-1] in fragment

    unchanged = await client.get(
        "/admin/queues/fragments/overview", headers={"If-None-Match": etag}
    )
    assert unchanged.status == 304
    assert await unchanged.read() == b""

    assert (await board_post(client, "/admin/queues/api/queues/chat/pause")).status == 200
    changed = await client.get("/admin/queues/fragments/overview", headers={"If-None-Match": etag})
    assert changed.status == 200
    assert changed.headers["ETag"] != etag
    assert 'data-paused="true"' in await changed.text()


async def test_the_overview_page_embeds_the_same_fragment_the_poll_returns(client):
    page = await (await client.get("/admin/queues")).text()
    fragment = await client.get("/admin/queues/fragments/overview")
    etag = fragment.headers["ETag"][1:-1]
    assert etag in page  # the first poll after loading is a 304
    assert 'hx-trigger="every 2s, board-refresh from:body"' in page


async def test_queue_list_is_newest_first_paged_with_lean_rows(client):
    ids = [await _completed_chat(client, f"question number {n}") for n in range(27)]
    first = await (await client.get("/admin/queues/queue/chat?status=completed")).text()
    assert _rows(first) == ids[::-1][:25]
    assert "1\N{EN DASH}25 of 27 completed, newest first" in first
    assert "page 1 of 2" in first
    row = first.split(f'data-job-id="{ids[-1]}"')[1].split("</tr>")[0]
    assert ids[-1][:8] in row and "question number 26" in row
    assert "alice" in row and "1/4" in row and "done" in row

    second = await (await client.get("/admin/queues/queue/chat?status=completed&page=2")).text()
    assert _rows(second) == ids[::-1][25:]
    assert "26\N{EN DASH}27 of 27 completed" in second

    beyond = await client.get("/admin/queues/queue/chat?status=completed&page=9")
    assert beyond.status == 200
    assert "No completed jobs on page 9" in await beyond.text()


async def test_queue_list_fragment_is_polled_with_its_own_etag(client):
    await _completed_chat(client)
    path = "/admin/queues/fragments/queue/chat?status=completed&page=1"
    page = await (await client.get("/admin/queues/queue/chat?status=completed")).text()
    assert f'hx-get="{path.replace("&", "&amp;")}"' in page
    fragment = await client.get(path)
    assert fragment.status == 200
    assert fragment.headers["ETag"][1:-1] in page
    again = await client.get(path, headers={"If-None-Match": fragment.headers["ETag"]})
    assert again.status == 304


async def test_bad_queue_state_or_page_is_a_clear_json_4xx(client):
    cases = {
        "/admin/queues/queue/nope": (404, "there is no queue named 'nope'"),
        "/admin/queues/queue/chat?status=finished": (400, "status must be one of"),
        "/admin/queues/queue/chat?status=failed&page=0": (400, "page must be between"),
        "/admin/queues/queue/chat?status=failed&page=two": (400, "page must be a whole number"),
        "/admin/queues/fragments/queue/nope": (404, "no queue named"),
        "/admin/queues/queue/chat/not-a-job": (404, "is not in queue chat"),
    }
    for path, (status, words) in cases.items():
        response = await client.get(path)
        assert response.status == status, path
        body = await response.json()
        assert body["ok"] is False and words in body["error"], (path, body)


async def test_job_page_shows_data_progress_attempts_timeline_and_result(client):
    job_id = await _completed_chat(client, "What does p53 do?")
    response = await client.get(f"/admin/queues/queue/chat/{job_id}")
    page = await response.text()
    assert response.status == 200
    assert '<span class="badge state-completed">completed</span>' in page
    assert "What does p53 do?" in page  # data
    assert '<progress class="bar done" max="100" value="100"' in page
    assert 'data-attempts="1">1 <span class="muted">of 4</span>' in page
    for label in ("Queued", "Started", "Finished", "Wait", "Run"):
        assert f"<dt>{label}</dt>" in page
    assert re.search(r'data-time="run">\d+ ms<', page)
    assert "offline provider" in page  # the result text
    assert f'hx-get="/admin/queues/fragments/queue/chat/{job_id}"' in page
    # No Retry or Promote for a completed job; Remove is offered.
    assert f"/api/queues/chat/{job_id}/retry" not in page
    assert f"/api/queues/chat/{job_id}/promote" not in page
    assert f"/api/queues/chat/{job_id}/remove" in page


async def test_long_data_is_truncated_with_an_expander(client):
    _, body = await post_chat(client, "gene " * 600)
    await job_in_state(client, "chat", body["jobId"], "completed")
    page = await (await client.get(f"/admin/queues/queue/chat/{body['jobId']}")).text()
    data = page.split('id="data-title"')[1]
    assert "…</pre>" in data
    assert re.search(r"<summary>Show all [\d,]+ characters</summary>", data)


async def test_failed_job_page_shows_error_and_traceback_of_every_attempt_escaped(
    aiohttp_server, make_client
):
    client = await _failing_client(aiohttp_server, make_client)
    _, body = await post_chat(client, "FAIL-ME <script>alert('q')</script>")
    job = await fail_job(client, "chat", body["jobId"])
    assert job["attemptsMade"] == 4 and len(job["errors"]) == 4

    page = await (await client.get(f"/admin/queues/queue/chat/{body['jobId']}")).text()
    assert '<span class="badge state-failed">failed</span>' in page
    assert 'data-attempts="4">4 <span class="muted">of 4</span>' in page
    for attempt in range(1, 5):
        assert f'<span class="attempt-n">Attempt {attempt}</span>' in page
    assert page.count("Traceback (most recent call last)") == 4
    # Each attempt's summary and traceback name the failure in the words users get; the
    # provider's own answer is in the traceback only (SPEC §12).
    assert page.count("the language model service failed (HTTP 500)") >= 8
    assert page.count("answered HTTP 500") == 4
    # The question and the endpoint's HTML error body are shown, escaped, never as markup.
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#39;q&#39;)&lt;/script&gt;" in page
    assert ERROR_BODY not in page and str(escape(ERROR_BODY)) in page
    assert f"/api/queues/chat/{body['jobId']}/retry" in page


async def test_failed_list_rows_show_the_last_error(aiohttp_server, make_client):
    client = await _failing_client(aiohttp_server, make_client)
    _, body = await post_chat(client, "FAIL-ME please")
    await fail_job(client, "chat", body["jobId"])
    page = await (await client.get("/admin/queues/queue/chat?status=failed")).text()
    assert _rows(page) == [body["jobId"]]
    assert '<th scope="col">Error</th>' in page
    assert "the language model service failed (HTTP 500)" in page
    assert "Retry all 1" in page and "Retry all 1 failed job of chat?" in page


async def test_job_fragment_of_a_removed_job_says_it_is_gone_and_stops_polling(client):
    job_id = await _completed_chat(client)
    path = f"/admin/queues/fragments/queue/chat/{job_id}"
    removed = await board_post(client, f"/admin/queues/api/queues/chat/{job_id}/remove")
    assert removed.status == 200
    response = await client.get(path)
    fragment = await response.text()
    assert response.status == 200
    assert 'data-gone="true"' in fragment and "no longer in the chat queue" in fragment
    assert "hx-get" not in fragment


async def test_jump_to_a_job_by_id_opens_its_page(client):
    job_id = await _completed_chat(client)
    response = await client.get(f"/admin/queues/jump?id=%20{job_id}%20", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == f"/admin/queues/queue/chat/{job_id}"


async def test_jump_to_an_unknown_id_says_so_on_the_page(client):
    response = await client.get("/admin/queues/jump?id=<b>nope</b>")
    page = await response.text()
    assert response.status == 200
    assert 'data-not-found="true"' in page
    assert "<code>&lt;b&gt;nope&lt;/b&gt;</code>" in page


async def test_waiting_jobs_without_a_live_worker_raise_a_warning(client, monkeypatch):
    """In-process mode always has its worker; the interface reporting none (as in a queue-mode
    deployment with no `worker` process) makes the card warn."""
    await board_post(client, "/admin/queues/api/queues/chat/pause")
    _, body = await post_chat(client, "held while paused")
    paused = await (await client.get("/admin/queues")).text()
    assert "waiting job starts when the queue is resumed" in paused
    assert 'data-warning="no-worker"' not in paused
    # The oldest waiting job's age is counted (client-side) from when it was queued.
    queued_at = (await job_of(client, "chat", body["jobId"]))["queuedAt"]
    oldest = re.search(r'data-fact="oldest-waiting"><time datetime="([^"]+)" data-age', paused)
    waited_since = dt.datetime.fromisoformat(oldest.group(1)).timestamp()
    assert abs(waited_since - queued_at) <= 1

    async def no_workers(queue: str) -> int:
        return 0

    monkeypatch.setattr(client.app[JOBS], "workers", no_workers)
    page = await (await client.get("/admin/queues")).text()
    card = page.split('data-queue="chat"')[1].split("</section>")[0]
    assert '<dd data-fact="workers">0</dd>' in card
    assert 'data-warning="no-worker"' in card and "1 job waits and no worker is live" in card


async def test_trailing_slash_redirects_to_the_overview(client):
    response = await client.get("/admin/queues/", allow_redirects=False)
    assert response.status == 301 and response.headers["Location"] == "/admin/queues"


async def test_board_get_routes_refuse_post(client):
    response = await board_post(client, "/admin/queues")
    assert response.status == 405
    assert (await response.json())["ok"] is False


async def test_a_fragment_polls_its_canonical_url_whatever_the_request_added(client):
    response = await client.get("/admin/queues/fragments/queue/chat?page=1&status=failed&x=<b>")
    fragment = await response.text()
    assert response.status == 200
    assert 'hx-get="/admin/queues/fragments/queue/chat?status=failed&amp;page=1"' in fragment
    assert "<b>" not in fragment and "x=" not in fragment
