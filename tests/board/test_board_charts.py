"""The history charts in a real browser (headless Chromium) against a real `serve`: drawn as
inline SVG under the board's strict CSP, updated by the live fragment as jobs finish, and
readable on a phone (screenshots saved under the test's tmp dir)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.admin_support import FAIL_MARK
from tests.board.conftest import PHONE, open_page

pytestmark = pytest.mark.browser

LIVE = 10_000  # ms: the board polls every 2 s


def history(page, queue: str):
    return page.locator(f'section[data-history="{queue}"]')


def total(page, queue: str, outcome: str):
    return history(page, queue).locator(f'[data-total="{outcome}"]')


def number(text: str) -> int:
    return int(re.match(r"[\d,]+", text.strip()).group(0).replace(",", ""))


def test_charts_render_and_follow_finished_jobs(board, watched, tmp_path):
    page = watched.page
    page.goto("/admin/queues")
    for queue in ("chat", "deep-research"):
        for chart in ("throughput", "times"):
            svg = history(page, queue).locator(f'[data-chart="{chart}"] svg')
            expect(svg).to_be_visible()
            box = svg.bounding_box()
            assert box["width"] > 300 and box["height"] > 80, box
    completed_before = number(total(page, "chat", "completed").inner_text())
    failed_before = number(total(page, "chat", "failed").inner_text())
    area = history(page, "chat").locator('path[data-series="completed"]')
    drawn_before = area.get_attribute("d")
    page.evaluate("window.__sameDocument = 'yes'")

    for n in range(3):
        board.wait_for_state("chat", board.chat(f"chart question {n}"), "completed")
    board.fail("chat", board.chat(f"{FAIL_MARK} chart question"))

    expect(total(page, "chat", "completed")).to_have_text(
        re.compile(rf"^{completed_before + 3}\b"), timeout=LIVE
    )
    expect(total(page, "chat", "failed")).to_have_text(
        re.compile(rf"^{failed_before + 1}\b"), timeout=LIVE
    )
    assert area.get_attribute("d") != drawn_before
    run_line = history(page, "chat").locator('path[data-series="run-p50"]')
    assert run_line.get_attribute("d").startswith("M")
    expect(history(page, "chat").locator('[data-quantiles="run"]')).to_have_text(re.compile(r"\d"))
    assert page.evaluate("window.__sameDocument") == "yes"  # updated without a reload
    history(page, "chat").screenshot(path=str(tmp_path / "history-laptop.png"))
    assert watched.problems() == []


def test_charts_are_readable_on_a_phone(browser, board, tmp_path):
    phone = open_page(browser, board, viewport=PHONE)
    try:
        page = phone.page
        board.wait_for_state("chat", board.chat("phone chart question"), "completed")
        page.goto("/admin/queues/queue/chat")
        section = history(page, "chat")
        section.scroll_into_view_if_needed()
        expect(section).to_be_visible()
        # The charts fit the screen: no sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        svg_box = section.locator('[data-chart="throughput"] svg').bounding_box()
        assert svg_box["width"] > PHONE["width"] * 0.6, svg_box
        # Axis labels keep a readable size at this width.
        label_size = section.locator(".chart-x span").first.evaluate(
            "e => parseFloat(getComputedStyle(e).fontSize)"
        )
        assert label_size >= 9, label_size
        section.screenshot(path=str(tmp_path / "history-phone.png"))
        assert phone.problems() == []
    finally:
        phone.page.context.close()
