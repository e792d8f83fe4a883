"""/metrics in queue mode (SPEC §11): one scrape of any `serve` copy describes the whole
system — the jobs every worker process ran, the requests every `serve` copy answered —
aggregated through Redis. Read with prometheus_client's own text parser."""

from __future__ import annotations

import pytest

from tests.admin_support import FAIL_MARK, fake_llm_app, llm_env
from tests.metrics_support import parse, value

from .conftest import post_chat, until_status, wait_until

pytestmark = pytest.mark.queue


async def test_one_scrape_of_any_serve_copy_counts_every_worker_process(
    procs, http, aiohttp_server
):
    fake = await aiohttp_server(fake_llm_app())
    env = llm_env(str(fake.make_url("")).rstrip("/"))
    api = await procs.serve(**env)
    quiet = await procs.serve(**env)  # answers nothing but the scrapes
    workers = [await procs.worker("chat", **env) for _ in range(2)]

    ok = [(await post_chat(http, api, f"question {n}"))[1]["jobId"] for n in range(4)]
    bad = [(await post_chat(http, api, f"{FAIL_MARK} {n}"))[1]["jobId"] for n in range(2)]
    for job_id in ok + bad:
        await until_status(http, api, job_id, timeout=30)

    async def scrape_counts_everything():
        async with http.get(f"{quiet.base_url}/metrics") as response:
            assert response.status == 200
            samples = parse(await response.text())[0]
        finished = "bioagents_jobs_finished_total"
        done = (
            value(samples, finished, queue="chat", outcome="completed") == 4
            and value(samples, finished, queue="chat", outcome="failed") == 2
            and value(samples, "bioagents_http_requests_total", **_posts()) == 6
        )
        return samples if done else None

    samples = await wait_until(scrape_counts_everything, timeout=15, what="the whole system")
    assert value(samples, "bioagents_jobs_enqueued_total", queue="chat") == 6
    assert value(samples, "bioagents_job_retries_total", queue="chat") == 6  # 3 per failed job
    assert value(samples, "bioagents_job_wait_seconds_count", queue="chat") == 6
    run = "bioagents_job_run_seconds_count"
    assert value(samples, run, queue="chat", outcome="completed") == 4
    assert value(samples, "bioagents_workers", queue="chat") == 2
    assert value(samples, "bioagents_queue_jobs", queue="chat", state="completed") == 4
    assert value(samples, "bioagents_queue_jobs", queue="chat", state="failed") == 2
    ran = set()
    for worker in workers:
        ran.update(line for line in worker.log().splitlines() if "Finished" in line)
    assert ran  # the jobs ran in the worker processes, not in the serve copies


def _posts() -> dict:
    return {"method": "POST", "route": "/api/chat", "status": "202"}
