"""Who may use the board, and how its POSTs are protected (SPEC §7): Basic auth, the loopback
rule without a password, CSRF token plus Origin check, and the page's security headers."""

from __future__ import annotations

import pytest
from aiohttp import web

from bioagents.app import create_app
from bioagents.board_auth import CONTENT_SECURITY_POLICY, SignInBrake
from tests.admin_support import basic_auth, board_post, board_token, csrf_token_of, origin_of

API = "/admin/queues/api/queues"
ADMIN = basic_auth("admin", "s3cret")
BOARD_GETS = (
    "/admin/queues",
    "/admin/queues/fragments/overview",
    "/admin/queues/queue/chat",
    "/admin/queues/fragments/queue/chat",
    "/admin/queues/jump?id=x",
    API,
)
ACTIONS = (
    "chat/pause",
    "chat/resume",
    "chat/retry/failed",
    "chat/clean/completed",
    "chat/some-job/retry",
    "chat/some-job/remove",
    "chat/some-job/promote",
)


@pytest.fixture
async def guarded(make_client):
    return await make_client(ADMIN_PASSWORD="s3cret")


async def _paused(client, auth=None) -> bool:
    queues = (await (await client.get(API, headers=auth or {})).json())["queues"]
    return queues[0]["isPaused"]


# --- Basic auth --------------------------------------------------------------------------------


async def test_with_a_password_every_board_route_needs_basic_auth(guarded):
    for path in (*BOARD_GETS, "/admin/queues/no-such-page"):
        response = await guarded.get(path)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="bioagents admin"')
        body = await response.json()
        assert body["ok"] is False and "username and password" in body["error"]


async def test_wrong_credentials_are_refused(guarded):
    for auth in (basic_auth("admin", "wrong"), basic_auth("root", "s3cret"), basic_auth("", "")):
        response = await guarded.get("/admin/queues", headers=auth)
        assert response.status == 401
        assert (await response.json())["error"] == "wrong admin username or password"
    garbled = await guarded.get("/admin/queues", headers={"Authorization": "Basic !!!"})
    assert garbled.status == 401


async def test_right_credentials_open_every_board_route(guarded):
    for path in BOARD_GETS:
        response = await guarded.get(path, headers=ADMIN)
        assert response.status == 200, path


async def test_the_username_comes_from_admin_username(make_client):
    client = await make_client(ADMIN_USERNAME="ops", ADMIN_PASSWORD="pw")
    assert (await client.get("/admin/queues", headers=basic_auth("ops", "pw"))).status == 200
    assert (await client.get("/admin/queues", headers=basic_auth("admin", "pw"))).status == 401


async def test_a_password_is_needed_even_from_loopback(guarded):
    assert guarded.server.host == "127.0.0.1"
    assert (await guarded.get("/admin/queues")).status == 401


async def test_the_public_api_and_static_files_stay_outside_the_board_auth(guarded):
    assert (await guarded.get("/api/health")).status == 200
    assert (await guarded.get("/static/admin.css")).status == 200


async def test_authenticated_actions_work_with_csrf(guarded):
    response = await board_post(guarded, f"{API}/chat/pause", auth=ADMIN)
    assert response.status == 200
    assert await _paused(guarded, ADMIN) is True


# --- loopback only without a password ----------------------------------------------------------


def _as_remote(address: str):
    @web.middleware
    async def pretend(request: web.Request, handler):
        return await handler(request.clone(remote=address))

    return pretend


async def test_without_a_password_loopback_clients_are_served(client):
    assert (await client.get("/admin/queues")).status == 200
    assert (await client.get(API)).status == 200


@pytest.mark.parametrize("address", ["203.0.113.7", "10.0.0.2", "2001:db8::1"])
async def test_without_a_password_other_clients_get_403_saying_why(
    aiohttp_client, settings_for, address
):
    app = create_app(settings_for())
    app.middlewares.insert(0, _as_remote(address))
    client = await aiohttp_client(app)
    for path in BOARD_GETS:
        response = await client.get(path)
        assert response.status == 403, path
        error = (await response.json())["error"]
        assert "loopback clients only" in error and "set ADMIN_PASSWORD" in error
    assert (await client.get("/api/health")).status == 200


async def test_without_a_password_a_proxied_request_is_not_loopback(client):
    response = await client.get("/admin/queues", headers={"X-Forwarded-For": "198.51.100.4"})
    assert response.status == 403
    assert "came through a proxy (X-Forwarded-For header)" in (await response.json())["error"]


async def test_ipv6_loopback_counts_as_loopback(aiohttp_client, settings_for):
    app = create_app(settings_for())
    app.middlewares.insert(0, _as_remote("::1"))
    client = await aiohttp_client(app)
    assert (await client.get("/admin/queues")).status == 200


# --- CSRF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
async def test_a_post_without_the_csrf_token_is_refused(client, action):
    response = await client.post(f"{API}/{action}", headers={"Origin": origin_of(client)})
    assert response.status == 403
    body = await response.json()
    assert body["ok"] is False and "missing CSRF token" in body["error"]


async def test_a_refused_post_changes_nothing(client):
    response = await client.post(f"{API}/chat/pause", headers={"Origin": origin_of(client)})
    assert response.status == 403
    assert await _paused(client) is False


async def test_a_wrong_csrf_token_is_refused(client):
    headers = {"X-CSRF-Token": "forged", "Origin": origin_of(client)}
    response = await client.post(f"{API}/chat/pause", headers=headers)
    assert response.status == 403
    assert "invalid CSRF token" in (await response.json())["error"]
    assert await _paused(client) is False


async def test_the_token_may_come_as_a_form_field(client):
    token = await board_token(client)
    response = await client.post(
        f"{API}/chat/pause", data={"csrf_token": token}, headers={"Origin": origin_of(client)}
    )
    assert response.status == 200
    assert await _paused(client) is True


async def test_the_token_is_in_the_page_meta_and_a_response_header(client):
    response = await client.get("/admin/queues")
    assert csrf_token_of(await response.text()) == response.headers["X-CSRF-Token"]


async def test_tokens_are_per_admin(make_client):
    client = await make_client(ADMIN_PASSWORD="s3cret")
    token = await board_token(client, ADMIN)
    other = await make_client(ADMIN_USERNAME="other", ADMIN_PASSWORD="s3cret")
    assert await board_token(other, basic_auth("other", "s3cret")) != token


async def test_a_post_from_another_origin_is_refused_even_with_the_token(client):
    token = await board_token(client)
    for origin in ("https://evil.example", "null", f"https://{client.server.host}:1"):
        headers = {"X-CSRF-Token": token, "Origin": origin}
        response = await client.post(f"{API}/chat/pause", headers=headers)
        assert response.status == 403, origin
        assert "cross-origin POST refused" in (await response.json())["error"]
    assert await _paused(client) is False


async def test_a_post_without_origin_or_referer_is_refused(client):
    token = await board_token(client)
    response = await client.post(f"{API}/chat/pause", headers={"X-CSRF-Token": token})
    assert response.status == 403
    assert "must carry an Origin (or Referer)" in (await response.json())["error"]


async def test_referer_stands_in_for_a_missing_origin(client):
    token = await board_token(client)
    good = {"X-CSRF-Token": token, "Referer": f"{origin_of(client)}/admin/queues"}
    assert (await client.post(f"{API}/chat/pause", headers=good)).status == 200
    bad = {"X-CSRF-Token": token, "Referer": "https://evil.example/admin/queues"}
    response = await client.post(f"{API}/chat/resume", headers=bad)
    assert response.status == 403
    assert "Referer" in (await response.json())["error"]


async def test_the_origin_check_honours_a_tls_terminating_proxy(make_client):
    client = await make_client(ADMIN_PASSWORD="s3cret")
    token = await board_token(client, ADMIN)
    host = f"{client.server.host}:{client.server.port}"
    headers = {"X-CSRF-Token": token, "Origin": f"https://{host}", "X-Forwarded-Proto": "https"}
    response = await client.post(f"{API}/chat/pause", headers={**headers, **ADMIN})
    assert response.status == 200


async def test_csrf_is_checked_after_auth(guarded):
    response = await guarded.post(f"{API}/chat/pause")
    assert response.status == 401


# --- headers -------------------------------------------------------------------------------------


async def test_board_responses_carry_a_strict_csp_and_friends(client):
    for path in ("/admin/queues", "/admin/queues/fragments/overview", API):
        response = await client.get(path)
        headers = response.headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "same-origin"
    policy = CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


async def test_pages_are_not_stored_and_fragments_revalidate(client):
    page = await client.get("/admin/queues")
    assert page.headers["Cache-Control"] == "no-store"
    fragment = await client.get("/admin/queues/fragments/overview")
    assert fragment.headers["Cache-Control"] == "no-cache, private"


async def test_board_errors_carry_the_boards_security_headers_too(make_client):
    guarded = await make_client(ADMIN_PASSWORD="s3cret")
    open_board = await make_client()
    answers = [
        await guarded.get("/admin/queues"),  # 401
        await guarded.get("/admin/queues/no-such-page", headers=ADMIN),  # 404
        await guarded.post(f"{API}/chat/pause", headers=ADMIN),  # 403: no CSRF token
        await open_board.get("/admin/queues", headers={"Host": "rebind.attacker.example"}),  # 421
    ]
    for wrong in range(10):
        await guarded.get("/admin/queues", headers=basic_auth("admin", f"guess {wrong}"))
    answers.append(await guarded.get("/admin/queues", headers=ADMIN))  # 429
    assert [response.status for response in answers] == [401, 404, 403, 421, 429]
    for response in answers:
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Server"] == "bioagents"


# --- the CSRF key and the sign-in brake (SPEC §12) ---------------------------------------------


async def test_the_csrf_key_is_the_boards_own_not_the_jwt_secret(make_client):
    one = await make_client(ADMIN_PASSWORD="s3cret", BIOAGENTS_SECRET="a" * 40)
    other_secret = await make_client(ADMIN_PASSWORD="s3cret", BIOAGENTS_SECRET="b" * 40)
    other_password = await make_client(ADMIN_PASSWORD="n3w", BIOAGENTS_SECRET="a" * 40)
    token = await board_token(one, ADMIN)

    assert await board_token(other_secret, ADMIN) == token  # every serve copy agrees
    assert await board_token(other_password, basic_auth("admin", "n3w")) != token
    no_password = [await board_token(await make_client()) for _ in range(2)]
    assert no_password[0] != no_password[1]  # random per process


def test_the_brake_holds_an_address_for_a_minute_after_ten_failures():
    now = [0.0]
    brake = SignInBrake(clock=lambda: now[0])
    for _ in range(9):
        brake.failed("203.0.113.7")
    assert brake.seconds_blocked("203.0.113.7") == 0
    brake.failed("203.0.113.7")
    assert brake.seconds_blocked("203.0.113.7") == 60
    assert brake.seconds_blocked("203.0.113.8") == 0  # per address
    now[0] = 59.5
    assert brake.seconds_blocked("203.0.113.7") == 1
    now[0] = 60.0
    assert brake.seconds_blocked("203.0.113.7") == 0


def test_the_brake_counts_failures_within_a_minute_and_forgets_them_on_success():
    now = [0.0]
    brake = SignInBrake(clock=lambda: now[0])
    for _ in range(9):
        brake.failed("a")
    brake.succeeded("a")
    for _ in range(9):
        brake.failed("a")
    now[0] = 61.0  # those nine are older than a minute
    brake.failed("a")
    assert brake.seconds_blocked("a") == 0
