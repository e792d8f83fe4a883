"""Cross-site requests (SPEC §12): a state-changing API request another site's page sent is
refused with 403; forms only from our own pages or from clients that are not browsers; reads
are not refused; with AUTH_MODE=none another site's page cannot open a WebSocket either."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from tests.admin_support import origin_of
from tests.api_support import app_settings, message_rows

EVIL = "https://attacker.example"
FORM = {"message": "hi", "userId": "victim"}


async def post(client, headers: dict, *, form: bool = False, path: str = "/api/chat") -> int:
    body = {"data": FORM} if form else {"json": FORM}
    async with client.post(path, headers=headers, **body) as response:
        if response.status >= 400:
            assert (await response.json())["ok"] is False
        return response.status


async def test_json_from_another_origin_is_refused_and_from_our_own_accepted(client):
    own = origin_of(client)
    assert await post(client, {"Origin": EVIL}) == 403
    assert await post(client, {"Origin": "null"}) == 403
    assert await post(client, {"Origin": own, "Sec-Fetch-Site": "cross-site"}) == 403
    assert await post(client, {"Origin": own}) == 202
    # JSON from a sibling site cannot arrive without a CORS preflight we never grant.
    assert await post(client, {"Sec-Fetch-Site": "same-site"}) == 202


async def test_forms_only_from_our_own_pages_or_from_clients_that_are_not_browsers(client):
    own = origin_of(client)
    assert await post(client, {"Sec-Fetch-Site": "same-site"}, form=True) == 403
    assert await post(client, {"Sec-Fetch-Site": "cross-site"}, form=True) == 403
    assert await post(client, {"Origin": EVIL}, form=True) == 403
    assert len(message_rows(app_settings(client))) == 0

    assert await post(client, {}, form=True) == 202  # curl
    assert await post(client, {"Origin": own, "Sec-Fetch-Site": "same-origin"}, form=True) == 202
    assert await post(client, {"Sec-Fetch-Site": "none"}, form=True) == 202  # typed by the user
    assert len(message_rows(app_settings(client))) == 3


async def test_every_state_changing_route_is_guarded_and_reads_are_not(client):
    some_id = uuid.uuid4()
    for path in ("/api/deep-research/start", f"/api/chat/retry/{some_id}"):
        assert await post(client, {"Origin": EVIL}, path=path) == 403, path
    async with client.get("/api/health", headers={"Origin": EVIL}) as response:
        assert response.status == 200


async def test_a_tls_terminating_proxys_scheme_counts_for_our_origin(client):
    host = f"{client.server.host}:{client.server.port}"
    headers = {"Origin": f"https://{host}", "X-Forwarded-Proto": "https"}
    assert await post(client, headers, form=True) == 202


@pytest.mark.parametrize("auth_mode, evil_status", [("none", 403), ("jwt", 101)])
async def test_another_sites_page_opens_no_socket_where_anyone_may_name_a_user(
    make_client, auth_mode, evil_status
):
    client = await make_client(AUTH_MODE=auth_mode)
    url = client.make_url("/api/ws")
    async with aiohttp.ClientSession() as http:
        for origin, expected in ((EVIL, evil_status), (origin_of(client), 101)):
            try:
                async with http.ws_connect(url, origin=origin) as ws:
                    status = 101
                    await ws.close()
            except aiohttp.WSServerHandshakeError as error:
                status = error.status
            assert status == expected, (auth_mode, origin)
