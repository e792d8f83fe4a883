"""The board's history (SPEC §7): per queue, completed and failed per minute over the last 24 h
and wait/run p50/p95, as inline SVG in a live fragment answered with an ETag, through the real
app over HTTP. (tests/board/test_board_charts.py watches them in a browser.)"""

from __future__ import annotations

import re

from tests.admin_support import FAIL_MARK, fail_job, fake_llm_app, job_in_state, llm_env
from tests.conftest import post_chat

FRAGMENT = "/admin/queues/fragments/history"


def section(page: str, queue: str) -> str:
    return page.split(f'data-history="{queue}"')[1].split("</section>")[0]


def total(page: str, queue: str, outcome: str) -> int:
    match = re.search(rf'data-total="{outcome}">([\d,]+)', section(page, queue))
    assert match, f"no {outcome} total for {queue}"
    return int(match.group(1).replace(",", ""))


def path_of(page: str, queue: str, series: str) -> str:
    match = re.search(rf'data-series="{series}" d="([^"]*)"', section(page, queue))
    assert match, f"no {series} series for {queue}"
    return match.group(1)


async def test_the_overview_charts_every_queue_and_counts_what_finished(
    aiohttp_server, make_client
):
    llm = await aiohttp_server(fake_llm_app())
    client = await make_client(**llm_env(str(llm.make_url("")).rstrip("/")))
    page = await (await client.get("/admin/queues")).text()
    for queue in ("chat", "deep-research"):
        assert total(page, queue, "completed") == 0
        assert path_of(page, queue, "completed").startswith("M0 100")  # flat at zero
        assert path_of(page, queue, "wait-p50") == ""  # no time measured yet
    assert f'hx-get="{FRAGMENT}"' in page

    for n in range(3):
        _, body = await post_chat(client, f"question {n}")
        await job_in_state(client, "chat", body["jobId"], "completed")
    _, body = await post_chat(client, f"{FAIL_MARK} question")
    await fail_job(client, "chat", body["jobId"])

    fragment = await (await client.get(FRAGMENT)).text()
    assert total(fragment, "chat", "completed") == 3
    assert total(fragment, "chat", "failed") == 1
    assert total(fragment, "deep-research", "completed") == 0
    # The last minute rises above the axis; the run time has a p50 line.
    assert path_of(fragment, "chat", "completed").endswith("H1440V100Z")
    assert not path_of(fragment, "chat", "completed").startswith("M0 100H1440")
    assert path_of(fragment, "chat", "run-p50").startswith("M")
    assert re.search(r'data-quantiles="run">\d', section(fragment, "chat"))


async def test_an_unchanged_history_is_a_304_and_a_new_job_changes_it(client):
    response = await client.get(FRAGMENT)
    etag = response.headers["ETag"]
    again = await client.get(FRAGMENT, headers={"If-None-Match": etag})
    assert again.status == 304

    _, body = await post_chat(client)
    await job_in_state(client, "chat", body["jobId"], "completed")
    changed = await client.get(FRAGMENT, headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    assert total(await changed.text(), "chat", "completed") == 1


async def test_a_queue_page_charts_its_own_queue(client):
    page = await (await client.get("/admin/queues/queue/deep-research")).text()
    assert 'data-history="deep-research"' in page and 'data-history="chat"' not in page
    assert f'hx-get="{FRAGMENT}?queue=deep-research"' in page
    assert (await client.get(f"{FRAGMENT}?queue=nope")).status == 404


async def test_charts_are_drawn_without_inline_style_or_script(client):
    page = await (await client.get("/admin/queues")).text()
    history = page.split('id="history-live"')[1]
    assert "<svg" in history
    assert "style=" not in history and "<script" not in history and "<style" not in history
