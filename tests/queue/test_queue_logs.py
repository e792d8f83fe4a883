"""Logs in queue mode (SPEC §11): with LOG_FORMAT=json every line of a real `worker` and `serve`
on one Redis is one JSON object with time, level, logger and message, from start to SIGTERM."""

from __future__ import annotations

import asyncio

import pytest

from tests.queue.conftest import post_chat, until_status
from tests.test_logs import json_lines

pytestmark = pytest.mark.queue


async def test_every_line_of_a_worker_and_a_serve_is_json(procs, http):
    worker = await procs.worker(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    serve = await procs.serve(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    status, body = await post_chat(http, serve)
    assert status == 202
    await until_status(http, serve, body["jobId"], ("completed",))
    await asyncio.to_thread(procs.stop_all)

    for app in (worker, serve):
        assert app.process.returncode == 0, app.log()[-2000:]
        entries = json_lines(app.log(), app.name)  # its stdout and stderr, interleaved
        assert entries, f"{app.name} wrote nothing"
    assert any(e["message"].startswith("Running on http://") for e in json_lines(serve.log(), ""))
