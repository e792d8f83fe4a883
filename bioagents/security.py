"""Safe by default at the HTTP edge (SPEC §12): which `Host` names are answered, which
cross-site requests are refused, which socket handshakes are read at all, and the headers
every response carries."""

from __future__ import annotations

from aiohttp import hdrs, web

from . import board_auth, forms, hosts, origins
from .config import Settings
from .errors import ApiError
from .keys import SETTINGS

SERVER_NAME = "bioagents"  # replaces aiohttp's "Python/3.x aiohttp/3.x"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values a form may carry: absent (not a browser), our own page's, or "none"
# (the user's own navigation, which no page can cause).
FORM_FETCH_SITES = ("", "same-origin", "none")
SOCKET_PATH = "/api/ws"  # app.py's WebSocket route
# aiohttp's handshake refusals echo these in their text, which fails (a 500) on non-ASCII bytes.
HANDSHAKE_HEADERS = (
    hdrs.UPGRADE,
    hdrs.CONNECTION,
    hdrs.SEC_WEBSOCKET_KEY,
    hdrs.SEC_WEBSOCKET_VERSION,
    hdrs.SEC_WEBSOCKET_PROTOCOL,
)
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
BOARD_HEADERS = {**board_auth.SECURITY_HEADERS, "Cache-Control": "no-store"}


def _is_api(path: str) -> bool:
    return path.startswith("/api/")


def _is_board(path: str) -> bool:
    """The board, its assets, and `/` (which redirects to it)."""
    return board_auth.guards(path) or path == "/" or path.startswith("/static/")


METRICS_PATH = "/metrics"


# --- hosts -------------------------------------------------------------------------------------


def _host_checked(path: str, settings: Settings) -> bool:
    """Where trust rests on the network alone — the API with AUTH_MODE=none, the board without
    ADMIN_PASSWORD, /metrics without METRICS_TOKEN — a rebinding DNS name must not reach us;
    elsewhere only ALLOWED_HOSTS restricts the Host."""
    if settings.allowed_hosts:
        return True
    if _is_api(path):
        return settings.auth_mode == "none"
    if path == METRICS_PATH:
        return not settings.metrics_token
    return _is_board(path) and not settings.admin_password


def _host_served(authority: str, allowed: tuple[str, ...]) -> bool:
    if hosts.ANY_HOST in allowed:
        return True
    name = hosts.host_name(authority)
    return name is not None and (hosts.is_loopback(name) or name in allowed)


def _check_host(request: web.Request, settings: Settings) -> None:
    """421 for a `Host` this server does not answer to (defeats DNS rebinding)."""
    host = origins.sent_host(request)
    if _host_checked(request.path, settings) and not _host_served(host, settings.allowed_hosts):
        raise ApiError(
            421,
            f"this server does not answer to the host {host[:100]!r}: only loopback names "
            "and the names in ALLOWED_HOSTS are served here",
        )


# --- cross-site requests -----------------------------------------------------------------------


def _opens_socket_on_network_trust(request: web.Request, settings: Settings) -> bool:
    """With AUTH_MODE=none a WebSocket may act as any user, so a page of another site must not
    open one in a visitor's browser."""
    upgrade = request.headers.get("Upgrade", "").lower()
    return settings.auth_mode == "none" and upgrade == "websocket"


def cross_site_refusal(request: web.Request) -> str | None:
    """Why a browser request from another site is refused, or None when it is not one."""
    origin = request.headers.get("Origin")
    fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if origin is not None and not origins.is_own_origin(request, origin):
        return f"cross-site request refused: Origin {origin[:100]!r} is not this server's origin"
    if fetch_site == "cross-site":
        return "cross-site request refused (Sec-Fetch-Site: cross-site)"
    if forms.is_form(request) and origin is None and fetch_site not in FORM_FETCH_SITES:
        return (
            f"a form is accepted only from this server's own pages or from clients that are "
            f"not browsers (Sec-Fetch-Site: {fetch_site[:20]})"
        )
    return None


def _check_cross_site(request: web.Request, settings: Settings) -> None:
    """403 for a state-changing API request (or socket) that another site's page sent."""
    if _is_api(request.path) and (
        request.method in STATE_CHANGING or _opens_socket_on_network_trust(request, settings)
    ):
        refusal = cross_site_refusal(request)
        if refusal is not None:
            raise ApiError(403, refusal)


def _check_handshake(request: web.Request) -> None:
    """400 for a socket handshake whose headers aiohttp could not even quote back."""
    if request.path == SOCKET_PATH and any(
        not value.isascii()
        for name in HANDSHAKE_HEADERS
        for value in request.headers.getall(name, ())
    ):
        raise ApiError(400, "the WebSocket handshake's headers must be ASCII")


@web.middleware
async def edge_guard(request: web.Request, handler):
    """The Host rule (421), then cross-site refusal (403), then the socket handshake (400)."""
    settings = request.app[SETTINGS]
    _check_host(request, settings)
    _check_cross_site(request, settings)
    _check_handshake(request)
    return await handler(request)


# --- headers -----------------------------------------------------------------------------------


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, errors included: the API's are never cached or sniffed, the board's
    carry its CSP and frame ban, and none names our software's versions."""
    headers = response.headers
    headers["Server"] = SERVER_NAME
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if _is_api(request.path):
        extra = API_HEADERS
    elif board_auth.guards(request.path):
        extra = BOARD_HEADERS
    else:
        return
    for name, value in extra.items():
        headers.setdefault(name, value)


def setup(app: web.Application) -> None:
    app.middlewares.append(edge_guard)
    app.on_response_prepare.append(add_security_headers)
