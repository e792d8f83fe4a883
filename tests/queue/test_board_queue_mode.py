"""The admin board in a real browser in queue mode: headless Chromium against a real
`python bioagents.py serve --with-worker` with USE_JOB_QUEUE=true on the test's redis-server.
It shows both cards, counts a chat completed by the Redis worker without a reload, and pauses
and resumes the chat queue from its card."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.board import conftest as board_conftest
from tests.board.conftest import (
    PASSWORD,
    USERNAME,
    Board,
    _free_port,
    _wait_until_up,
    open_page,
    screenshot,
)

from .conftest import AppProcess

pytestmark = [pytest.mark.queue, pytest.mark.browser]

# tests/board's Chromium, one per module (Playwright's sync API keeps an event loop running).
browser = board_conftest.browser

LIVE = 10_000  # ms: generous bound for "refreshes by itself" (the board polls every 2 s)


def card(page, queue: str):
    return page.locator(f'section.card[data-queue="{queue}"]')


def count(page, queue: str, state: str):
    return card(page, queue).locator(f'[data-count="{state}"]')


@pytest.fixture
def queue_board(queue_env, tmp_path):
    """`serve --with-worker` in queue mode, returned once its workers are live in Redis."""
    env = {**queue_env, "ADMIN_USERNAME": USERNAME, "ADMIN_PASSWORD": PASSWORD}
    serve = AppProcess("serve", [], env, tmp_path)
    serve.port = _free_port()
    serve.args = ["serve", "--with-worker", "--host", "127.0.0.1", "--port", str(serve.port)]
    serve.start()
    try:
        _wait_until_up(f"{serve.base_url}/api/openapi.json", serve.process, serve.log_path)
        board = Board(serve.base_url, llm_url="")  # the offline LLM answers; no fake server
        deadline = time.monotonic() + 20
        while not all(board.queue(name)["workers"] for name in ("chat", "deep-research")):
            if time.monotonic() > deadline:
                raise AssertionError(f"no live worker:\n{serve.log()[-3000:]}")
            time.sleep(0.05)
        yield board
    finally:
        serve.stop()


def test_the_board_drives_the_redis_queues_in_a_browser(browser, queue_board):
    board = queue_board
    watched = open_page(browser, board)
    page = watched.page
    try:
        assert page.goto("/admin/queues").status == 200
        for queue in ("chat", "deep-research"):
            expect(card(page, queue).locator("h2")).to_have_text(queue)
            expect(card(page, queue).locator('[data-fact="workers"]')).to_have_text("1")
            expect(count(page, queue, "completed")).to_have_text("0")
        page.evaluate("window.__sameDocument = 'yes'")

        # A chat over the public API, run by the worker through Redis, counted on the card.
        job_id = board.chat("What does TP53 encode?")
        board.wait_for_state("chat", job_id, "completed")
        expect(count(page, "chat", "completed")).to_have_text("1", timeout=LIVE)

        # Pause from the card: the next chat waits in Redis, and the card says so.
        chat = card(page, "chat")
        chat.get_by_role("button", name="Pause").click()
        expect(chat.locator(".badge")).to_have_text("paused")
        assert board.queue("chat")["isPaused"] is True
        held = board.chat("held while paused")
        expect(count(page, "chat", "waiting")).to_have_text("1", timeout=LIVE)
        expect(chat.locator(".notice")).to_contain_text("starts when the queue is resumed")
        assert board.job("chat", held)["state"] == "waiting"

        # Resume from the card: the worker takes the held chat.
        chat.get_by_role("button", name="Resume").click()
        expect(chat.locator(".badge")).to_have_text("running")
        board.wait_for_state("chat", held, "completed")
        expect(count(page, "chat", "completed")).to_have_text("2", timeout=LIVE)
        expect(count(page, "chat", "waiting")).to_have_text("0", timeout=LIVE)
        assert board.queue("chat")["isPaused"] is False

        assert page.evaluate("window.__sameDocument") == "yes"  # no reload happened
        screenshot(page, "board-queue-mode.png")
        assert watched.problems() == []
    finally:
        page.context.close()
