"""Which `Host` names are answered (SPEC §12): where trust rests on the network alone only
loopback names and ALLOWED_HOSTS; with a password or JWTs any, unless ALLOWED_HOSTS is set;
and a real `serve --host 0.0.0.0` reached through a non-loopback address of this machine."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from tests import serve_support
from tests.admin_support import basic_auth
from tests.conftest import bearer
from tests.serve_support import raw_request

served = serve_support.served  # the fixture
BOARD_API = "/admin/queues/api/queues"
ADMIN = basic_auth("admin", "s3cret")


async def status_for(client, host: str, method="GET", path=BOARD_API, **kwargs) -> int:
    headers = {"Host": host, **kwargs.pop("headers", {})}
    async with client.request(method, path, headers=headers, **kwargs) as response:
        if response.status >= 400:
            assert (await response.json())["ok"] is False
        return response.status


async def test_allowed_hosts_adds_names_to_the_loopback_ones(make_client):
    client = await make_client(ALLOWED_HOSTS="bio.example.com, [2001:db8::5]")

    for host in ("bio.example.com", "BIO.example.com.:443", "[2001:db8::5]:8080", "localhost"):
        assert await status_for(client, host) == 200, host
    for host in ("other.example", "bio.example.com.evil", "evil.bio.example.com", "a b", "[::1"):
        assert await status_for(client, host) == 421, host


async def test_allowed_hosts_star_answers_any_host(make_client):
    client = await make_client(ALLOWED_HOSTS="*")
    assert await status_for(client, "anything.example:1") == 200


async def test_a_password_and_jwts_lift_the_rule_unless_allowed_hosts_is_set(
    make_client, settings_for
):
    open_settings = settings_for(ADMIN_PASSWORD="s3cret", AUTH_MODE="jwt")
    anywhere = await make_client(open_settings)
    token = bearer(open_settings, "alice")
    chat = {"method": "POST", "path": "/api/chat", "json": {"message": "hi"}}

    assert await status_for(anywhere, "bio.example.com", headers=ADMIN) == 200
    assert await status_for(anywhere, "bio.example.com", headers=token, **chat) == 202

    listed = await make_client(
        settings_for(ADMIN_PASSWORD="s3cret", AUTH_MODE="jwt", ALLOWED_HOSTS="bio.example.com")
    )
    assert await status_for(listed, "bio.example.com", headers=ADMIN) == 200
    assert await status_for(listed, "other.example", headers=ADMIN) == 421
    assert await status_for(listed, "other.example", headers=token, **chat) == 421
    assert await status_for(listed, "other.example", path="/api/health") == 421


async def test_the_rule_guards_what_rests_on_the_network_and_nothing_else(make_client):
    open_api = await make_client(ADMIN_PASSWORD="s3cret")  # AUTH_MODE=none: the API is open
    assert await status_for(open_api, "evil.example", path="/api/health") == 421
    assert await status_for(open_api, "evil.example", headers=ADMIN) == 200  # board: password

    open_board = await make_client(AUTH_MODE="jwt")  # no ADMIN_PASSWORD: the board is open
    assert await status_for(open_board, "evil.example") == 421
    assert await status_for(open_board, "evil.example", path="/static/admin.css") == 421
    assert await status_for(open_board, "evil.example", path="/api/health") == 200  # API: JWTs


async def test_a_request_without_a_usable_host_is_misdirected(client):
    port = client.server.port
    for host_line in (b"Host: \r\n", b"Host: [::1\r\n", b"Host: a\xffb\r\n"):
        status, _, body = await raw_request(
            port, b"GET " + BOARD_API.encode() + b" HTTP/1.1\r\n" + host_line
        )
        assert status == 421, (host_line, body)


# --- a real serve on every interface ----------------------------------------------------------


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback: the one a route out would use
    (a UDP connect sends no packet), else one its host name resolves to."""
    candidates = []
    for target in ("198.51.100.1", "10.255.255.254"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((target, 9))
                candidates.append(probe.getsockname()[0])
            except OSError:
                continue
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    return next((a for a in candidates if not a.startswith(("127.", "0."))), None)


async def _status(http, url: str, host: str, method="GET", **kwargs) -> int:
    async with http.request(method, url, headers={"Host": host}, **kwargs) as response:
        return response.status


async def test_serve_on_all_interfaces_answers_other_hosts_only_when_allowed(served):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach serve through")
    plain = await served("in-process", "--host", "0.0.0.0")
    allowed = await served("in-process", "--host", "0.0.0.0", ALLOWED_HOSTS=address)
    chat = {"json": {"message": "hi", "userId": "lan"}}

    async with aiohttp.ClientSession() as http:
        # The peer is this machine's LAN address: not loopback, so the board stays closed.
        for server, own_name in ((plain, 421), (allowed, 202)):
            base = f"http://{address}:{server.port}"
            named = f"{address}:{server.port}"
            assert await _status(http, f"{base}/api/chat", named, "POST", **chat) == own_name
            assert await _status(http, f"{base}/admin/queues", named) in (403, 421)
            rebound = f"rebind.attacker.example:{server.port}"
            assert await _status(http, f"{base}/api/chat", rebound, "POST", **chat) == 421
            local = f"localhost:{server.port}"
            assert await _status(http, f"{base}/admin/queues", local) == 403  # loopback only
        assert (
            await _status(http, f"http://{address}:{allowed.port}/api/health", "x.example") == 421
        )
        assert await _status(http, f"http://{address}:{plain.port}/api/health", "x.example") == 421
        loopback = f"http://127.0.0.1:{plain.port}"
        assert await _status(http, f"{loopback}/admin/queues", f"127.0.0.1:{plain.port}") == 200
