"""Search in every board list (SPEC §7): server-side and paged, by user id (`?user=`) and by
text (`?q=`: in the question, and for failed jobs also in the error), on the pages, the
fragments htmx polls and the JSON API, through the real app over HTTP."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.admin_support import FAIL_MARK, fail_job, fake_llm_app, job_in_state, llm_env
from tests.conftest import post_chat

API = "/admin/queues/api/queues"


def rows(page: str) -> list[str]:
    return re.findall(r'<tr data-job-id="([^"]+)">', page)


async def chat_as(client, user: str, message: str, state: str = "completed") -> str:
    _, body = await post_chat(client, message, user=user)
    await job_in_state(client, "chat", body["jobId"], state)
    return body["jobId"]


async def page_of(client, path: str) -> str:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.text()


async def api_chat(client, query: str) -> dict:
    response = await client.get(f"{API}?{query}")
    assert response.status == 200, await response.text()
    return next(q for q in (await response.json())["queues"] if q["name"] == "chat")


@pytest.fixture
async def failing(aiohttp_server, make_client):
    llm = await aiohttp_server(fake_llm_app())
    return await make_client(**llm_env(str(llm.make_url("")).rstrip("/")))


async def test_user_filter_lists_only_that_users_jobs_on_page_fragment_and_api(client):
    alice = [await chat_as(client, "alice", f"alice asks {n}") for n in range(3)]
    bob = [await chat_as(client, "bob", f"bob asks {n}") for n in range(2)]

    for path in (
        "/admin/queues/queue/chat?status=completed&user=bob",
        "/admin/queues/fragments/queue/chat?status=completed&page=1&user=bob",
    ):
        page = await page_of(client, path)
        assert rows(page) == bob[::-1]
        assert 'data-matching="2"' in page
    assert rows(await page_of(client, "/admin/queues/queue/chat?status=completed")) == (
        bob[::-1] + alice[::-1]
    )
    chat = await api_chat(client, "status=completed&user=alice")
    assert [job["id"] for job in chat["jobs"]] == alice[::-1]
    assert chat["pagination"]["total"] == 3
    assert (await api_chat(client, "status=completed&user=ali"))["jobs"] == []  # exact id


async def test_text_search_finds_the_question_in_any_case(client):
    p53 = await chat_as(client, "alice", "What does p53 do in apoptosis?")
    await chat_as(client, "alice", "How is BRCA1 repaired?")
    for query in ("q=P53", "q=apoptosis", "q=%20p53%20do%20"):
        page = await page_of(client, f"/admin/queues/queue/chat?status=completed&{query}")
        assert rows(page) == [p53], query
    assert (await api_chat(client, "status=completed&q=brca1&user=bob"))["jobs"] == []


async def test_failed_jobs_are_also_found_by_text_in_their_error(failing):
    failed = await chat_as(failing, "alice", f"{FAIL_MARK} one", state="delayed")
    await fail_job(failing, "chat", failed)
    done = await chat_as(failing, "alice", "answered fine")

    page = await page_of(failing, "/admin/queues/queue/chat?status=failed&q=http%20500")
    assert rows(page) == [failed]
    # On other lists the error is not searched: only the question.
    assert (await api_chat(failing, "status=completed&q=http%20500"))["jobs"] == []
    assert [j["id"] for j in (await api_chat(failing, "status=completed&q=fine"))["jobs"]] == [done]


async def test_a_filtered_list_pages_and_its_links_keep_the_filter(client):
    carol = [await chat_as(client, "carol", f"carol asks {n}") for n in range(30)]
    await chat_as(client, "dave", "dave asks")

    page = await page_of(client, "/admin/queues/queue/chat?status=completed&user=carol&page=2")
    assert rows(page) == carol[::-1][25:]
    assert "26\u201330 of 30 completed matching the search" in html.unescape(page)
    pager = page.split('<nav class="pager"')[1].split("</nav>")[0]
    tabs = page.split('<nav class="tabs"')[1].split("</nav>")[0]
    links = [html.unescape(link) for link in re.findall(r'href="([^"]*)"', pager + tabs)]
    assert len(links) == 2 + 5, links  # newest and newer; a tab per state
    for link in links:
        assert parse_qs(urlsplit(link).query)["user"] == ["carol"], link
    # The poll of the live list asks for the same filtered page.
    assert "/admin/queues/fragments/queue/chat?status=completed&amp;page=2&amp;user=carol" in page

    chat = await api_chat(client, "status=completed&page=2&user=carol")
    assert [job["id"] for job in chat["jobs"]] == carol[::-1][25:]
    assert chat["pagination"] == {"page": 2, "pageSize": 25, "pageCount": 2, "total": 30}


async def test_a_search_that_finds_nothing_says_so_and_text_is_taken_literally(client):
    await chat_as(client, "alice", "100% sure about <b>TP53</b>?")
    page = await page_of(client, "/admin/queues/queue/chat?status=completed&q=%3Cb%3ETP53")
    assert len(rows(page)) == 1
    assert "<b>TP53" not in page  # shown escaped, in the search box and the row
    empty = await page_of(client, "/admin/queues/queue/chat?status=completed&q=no%20such%20thing")
    assert rows(empty) == [] and 'data-empty="true"' in empty
    assert "No completed jobs match" in empty
    assert rows(await page_of(client, "/admin/queues/queue/chat?status=completed&q=100%25"))


async def test_the_json_api_needs_status_for_a_filter(client):
    for query in ("user=alice", "q=p53"):
        response = await client.get(f"{API}?{query}")
        assert response.status == 400
        assert "needs status" in (await response.json())["error"]
