"""Two of the review's attacks as it reproduced them in Chromium (SPEC §12), against the
default set-up it attacked: no ADMIN_PASSWORD, AUTH_MODE=none, serve on loopback.

DNS rebinding: a page on the attacker's name, which the attacker's DNS then points at
127.0.0.1, runs in the browser of someone whose board has no password. Chromium's host
resolver maps the name to 127.0.0.1 here; the page's scripts then reach the real `serve`,
naming the attacker's host, and read and change nothing. Cross-site forms: a page on another
site auto-submits a form to /api/chat in a victim's name, and creates no job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.board.conftest import CHROMIUM, CHROMIUM_ARGS, ROOT, _free_port, _stop, _wait_until_up

pytestmark = pytest.mark.browser

ATTACKER = "rebind.attacker.example"
# What the attacker's script tries once its name resolves to 127.0.0.1: read every queue, take
# the board's CSRF token from its page (same origin, so readable) and pause, then ask in a
# victim's name.
ATTACK = """async () => {
    const read = await fetch("/admin/queues/api/queues");
    const board = await (await fetch("/admin/queues")).text();
    const token = (board.match(/name="csrf-token" content="([^"]+)"/) || [])[1] || "";
    const pause = await fetch("/admin/queues/api/queues/chat/pause", {
        method: "POST",
        headers: {"X-CSRF-Token": token},
    });
    const ask = await fetch("/api/chat", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({message: "exfiltrate", userId: "victim"}),
    });
    return [read.status, await read.text(), pause.status, ask.status];
}"""


@pytest.fixture(scope="module")
def passwordless_serve(tmp_path_factory):
    """The default set-up the review attacked: no ADMIN_PASSWORD, AUTH_MODE=none, loopback."""
    tmp = tmp_path_factory.mktemp("rebinding")
    port, log = _free_port(), tmp / "serve.log"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp}/rebinding.db",
        "USE_JOB_QUEUE": "false",
        "AUTH_MODE": "none",
        "ADMIN_PASSWORD": "",
        "ALLOWED_HOSTS": "",
    }
    serve = subprocess.Popen(
        [sys.executable, "bioagents.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/api/health", serve, log)
        yield port
    finally:
        _stop(serve)


@pytest.fixture(scope="module")
def rebinding_browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1"],
        )
        yield chromium
        chromium.close()


def test_a_page_on_a_rebound_name_reads_and_changes_nothing(rebinding_browser, passwordless_serve):
    port = passwordless_serve
    page = rebinding_browser.new_context().new_page()
    try:
        # A document of the attacker's origin once its name resolves to 127.0.0.1 (the attacker
        # served it before re-pointing the name; whoever served it, its scripts run in that
        # origin, which is all the attack needs).
        page.goto(f"http://{ATTACKER}:{port}/cats.html")
        read, body, pause, ask = page.evaluate(ATTACK)
        direct = page.goto(f"http://{ATTACKER}:{port}/admin/queues")
    finally:
        page.context.close()

    assert (read, pause, ask) == (421, 421, 421)
    assert "queues" not in json.loads(body) and json.loads(body)["ok"] is False
    assert direct.status == 421
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/queues/api/queues") as response:
        queues = json.load(response)["queues"]
    assert [queue["isPaused"] for queue in queues] == [False, False]
    assert sum(queue["counts"]["waiting"] + queue["counts"]["completed"] for queue in queues) == 0


def test_another_sites_auto_submitting_form_creates_no_job(rebinding_browser, passwordless_serve):
    """Finding 2 as reported: a page on another site auto-submits a form to /api/chat."""
    port = passwordless_serve
    target = f"http://127.0.0.1:{port}/api/chat"
    attack_page = f"""<!doctype html><form id=f method=post action="{target}">
        <input name=message value="sent in your name"><input name=userId value=victim></form>
        <script>document.getElementById("f").submit()</script>"""
    page = rebinding_browser.new_context().new_page()
    page.route(
        "http://attacker.example/",
        lambda route: route.fulfill(body=attack_page, content_type="text/html"),
    )
    try:
        with page.expect_response(target) as answered:
            page.goto("http://attacker.example/")
        response = answered.value
        sent = response.request.all_headers()
        status, body = response.status, response.json()
    finally:
        page.context.close()

    assert sent["origin"] == "http://attacker.example"
    assert sent.get("sec-fetch-site", "cross-site") == "cross-site"  # sent over HTTPS only
    assert status == 403 and body["ok"] is False
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/queues/api/queues") as listed:
        queues = json.load(listed)["queues"]
    assert sum(sum(queue["counts"].values()) for queue in queues) == 0
