"""The admin board in a real browser (headless Chromium) against a real `serve` process: sign in,
watch counts move without reloading, retry a job that failed for real, pause and resume."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.board.conftest import PHONE, open_page, screenshot

pytestmark = pytest.mark.browser

LIVE = 10_000  # ms: generous bound for "refreshes by itself" (the board polls every 2 s)
FRAGMENT = re.compile(r"/admin/queues/fragments/")
# Headless tabs are always visible; this makes the page believe it was hidden (or shown).
SET_VISIBILITY = """(hidden) => {
    Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
    const state = hidden ? "hidden" : "visible";
    Object.defineProperty(document, "visibilityState", {configurable: true, get: () => state});
    document.dispatchEvent(new Event("visibilitychange"));
}"""


def card(page, queue: str):
    return page.locator(f'section.card[data-queue="{queue}"]')


def count(page, queue: str, state: str):
    return card(page, queue).locator(f'[data-count="{state}"]')


def test_the_board_needs_credentials(browser, board):
    anonymous = open_page(browser, board, credentials=False)
    try:
        # Headless Chromium cannot answer the sign-in prompt, so look at the challenge itself.
        response = anonymous.page.request.get("/admin/queues")
        assert response.status == 401
        assert response.headers["www-authenticate"].startswith('Basic realm="bioagents admin"')
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            anonymous.page.goto("/admin/queues")
    finally:
        anonymous.page.context.close()


def test_signed_in_the_overview_shows_both_queue_cards(browser, board, watched):
    page = watched.page
    response = page.goto("/admin/queues")
    assert response.status == 200
    for queue in ("chat", "deep-research"):
        expect(card(page, queue)).to_be_visible()
        expect(card(page, queue).locator("h2")).to_have_text(queue)
        for state in ("waiting", "active", "delayed", "completed", "failed"):
            expect(count(page, queue, state)).to_have_text(re.compile(r"^[\d,]+$"))
        expect(card(page, queue).locator('[data-fact="workers"]')).to_have_text("1")
    assert page.evaluate("window.htmx && window.htmx.version") == "2.0.11"
    assert watched.problems() == []


def test_completed_count_rises_without_a_reload(board, watched):
    page = watched.page
    page.goto("/admin/queues")
    before = int(count(page, "chat", "completed").inner_text().replace(",", ""))
    page.evaluate("window.__sameDocument = 'yes'")

    job_id = board.chat("What does TP53 encode?")
    board.wait_for_state("chat", job_id, "completed")

    expect(count(page, "chat", "completed")).to_have_text(str(before + 1), timeout=LIVE)
    assert page.evaluate("window.__sameDocument") == "yes"  # no reload happened
    # With nothing changing, the next poll is answered 304 and the card is left as it is.
    with page.expect_response(lambda r: FRAGMENT.search(r.url) and r.status == 304, timeout=LIVE):
        pass
    expect(count(page, "chat", "completed")).to_have_text(str(before + 1))
    screenshot(page, "board-overview.png")
    assert watched.problems() == []


def test_a_failed_job_is_retried_from_its_page(board, watched):
    board.set_llm_broken(True)
    job_id = board.chat("FAIL-ME: summarise <b>BRCA1</b> papers")
    failed = board.fail("chat", job_id)
    assert failed["attemptsMade"] == 4

    page = watched.page
    page.goto(f"/admin/queues/queue/chat/{job_id}")
    expect(page.locator(".job-state .badge")).to_have_text("failed")
    errors = page.locator(".attempt-error")
    expect(errors).to_have_count(4)
    expect(errors.last.locator("pre.traceback")).to_be_visible()
    expect(errors.last.locator("pre.traceback")).to_contain_text("Traceback (most recent call")
    # The summary line is what users were told; the provider's own answer is in the traceback.
    expect(errors.first.locator(".error-line")).to_have_text(
        "the language model service failed (HTTP 500)"
    )
    expect(errors.last.locator("pre.traceback")).to_contain_text(
        'HTTP 500: <img src=x onerror="alert(1)"><b>model overloaded</b>'
    )
    expect(page.locator(".big")).to_contain_text("4 of 4")
    screenshot(page, "board-failed-job.png")

    board.set_llm_broken(False)
    page.get_by_role("button", name="Retry", exact=True).click()
    expect(page.locator("#toast")).to_contain_text("Retrying job")
    expect(page.locator(".job-state .badge")).to_have_text("completed", timeout=LIVE)
    expect(page.locator(".big")).to_contain_text("1 of 4")
    expect(page.locator("#job-live")).to_contain_text("fake answer to: FAIL-ME")
    message = board.json("GET", f"/api/messages/{job_id}", headers={"X-User-Id": "browser"})
    assert message["status"] == "COMPLETE"
    assert watched.problems() == []


def test_retry_all_failed_names_how_many_in_its_confirmation(board, watched):
    board.set_llm_broken(True)
    ids = [board.chat(f"FAIL-ME batch {n}") for n in range(2)]
    for job_id in ids:
        board.fail("chat", job_id)
    failed_now = board.queue("chat")["counts"]["failed"]

    page = watched.page
    page.goto("/admin/queues/queue/chat?status=failed")
    expect(page.locator("tr[data-job-id]")).to_have_count(failed_now)
    # Ages are shown relative ("12 s"), counted in the page from the server's fixed times.
    age = page.locator('td[data-label="Age"] time[data-age]').first
    expect(age).to_have_text(re.compile(r"^\d+ (s|min|h|d)$"))
    board.set_llm_broken(False)
    page.get_by_role("button", name=f"Retry all {failed_now}").click()
    expect(page.locator("#toast")).to_contain_text(f"Retried {failed_now} failed")
    noun = "job" if failed_now == 1 else "jobs"
    assert watched.dialogs == [f"Retry all {failed_now} failed {noun} of chat?"]
    expect(page.locator('.tab-n[data-count="failed"]')).to_have_text("0", timeout=LIVE)
    for job_id in ids:
        board.wait_for_state("chat", job_id, "completed")
    assert watched.problems() == []


def test_pause_and_resume_a_queue(browser, board, watched):
    page = watched.page
    page.goto("/admin/queues")
    chat = card(page, "chat")
    chat.get_by_role("button", name="Pause").click()
    expect(chat.locator(".badge")).to_have_text("paused")
    assert board.queue("chat")["isPaused"] is True

    job_id = board.chat("held while paused")
    expect(count(page, "chat", "waiting")).to_have_text("1", timeout=LIVE)
    expect(chat.locator(".notice")).to_contain_text("starts when the queue is resumed")
    assert board.job("chat", job_id)["state"] == "waiting"
    phone = open_page(browser, board, viewport=PHONE)
    try:
        phone.page.goto("/admin/queues")
        expect(card(phone.page, "chat").locator(".badge")).to_have_text("paused")
        screenshot(phone.page, "board-overview-phone.png")
        assert phone.problems() == []
    finally:
        phone.page.context.close()

    chat.get_by_role("button", name="Resume").click()
    expect(chat.locator(".badge")).to_have_text("running")
    expect(count(page, "chat", "waiting")).to_have_text("0", timeout=LIVE)
    board.wait_for_state("chat", job_id, "completed")
    assert board.queue("chat")["isPaused"] is False
    assert watched.problems() == []


def test_polling_stops_while_the_tab_is_hidden(watched):
    page = watched.page
    page.goto("/admin/queues")
    polls: list[str] = []
    page.on(
        "request",
        lambda request: polls.append(request.url) if FRAGMENT.search(request.url) else None,
    )

    page.evaluate(SET_VISIBILITY, True)
    polls.clear()
    page.wait_for_timeout(4_500)  # more than two poll intervals
    assert polls == []

    with page.expect_request(FRAGMENT, timeout=LIVE):
        page.evaluate(SET_VISIBILITY, False)
    assert watched.problems() == []


def test_jump_to_a_job_by_id_then_remove_it_from_its_page(board, watched):
    job_id = board.chat("What is a promoter region?")
    board.wait_for_state("chat", job_id, "completed")

    page = watched.page
    page.goto("/admin/queues")
    page.get_by_label("Job id").fill(job_id)
    page.get_by_role("button", name="Go").click()
    expect(page).to_have_url(re.compile(f"/admin/queues/queue/chat/{job_id}$"))
    expect(page.locator(".job-state .badge")).to_have_text("completed")

    page.get_by_role("button", name="Remove").click()
    expect(page).to_have_url(re.compile(r"/admin/queues/queue/chat\?status=completed$"))
    assert watched.dialogs == [f"Remove job {job_id} from chat? This cannot be undone."]
    expect(page.locator(f'tr[data-job-id="{job_id}"]')).to_have_count(0)
    assert board.job("chat", job_id) is None
    assert watched.problems() == []
