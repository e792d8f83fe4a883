"""Who may use the admin board (SPEC §7, §12): Basic auth from ADMIN_USERNAME/ADMIN_PASSWORD,
braked after repeated failures, or, with no password set, loopback clients only; POSTs also
pass the CSRF checks. One middleware guards every path under /admin."""

from __future__ import annotations

import base64
import binascii
import collections
import ipaddress
import time
from collections.abc import Callable

from aiohttp import web

from . import auth, csrf
from .errors import ApiError
from .keys import SETTINGS
from .ratelimit import client_address

PREFIX = "/admin"
REALM = 'Basic realm="bioagents admin", charset="UTF-8"'
LOOPBACK_PRINCIPAL = "loopback"
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")

# The page loads only its own script and stylesheet; htmx is configured by a <meta> tag and
# never evaluates code (allowEval false), so no 'unsafe-inline' or 'unsafe-eval' is needed.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Same-origin requests keep their Referer (the CSRF fallback); others get none.
    "Referrer-Policy": "same-origin",
}


class SignInBrake:
    """After MAX_FAILURES wrong sign-ins from one address within WINDOW seconds, that address
    is refused for BLOCK seconds, right password or not (SPEC §12). Kept per process."""

    MAX_FAILURES = 10
    WINDOW = 60.0
    BLOCK = 60.0
    MAX_TRACKED = 10_000  # addresses remembered before stale ones are swept

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._blocked_until: dict[str, float] = {}

    def seconds_blocked(self, address: str) -> int:
        """Whole seconds the address stays refused (0: not refused)."""
        left = self._blocked_until.get(address, 0.0) - self._clock()
        return max(1, round(left)) if left > 0 else 0

    def failed(self, address: str) -> None:
        now = self._clock()
        if len(self._failures) >= self.MAX_TRACKED:
            self._sweep(now)
        failures = self._failures.setdefault(address, collections.deque())
        failures.append(now)
        while failures[0] <= now - self.WINDOW:
            failures.popleft()
        if len(failures) >= self.MAX_FAILURES:
            self._blocked_until[address] = now + self.BLOCK
            del self._failures[address]

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _sweep(self, now: float) -> None:
        for address in [a for a, f in self._failures.items() if f[-1] <= now - self.WINDOW]:
            del self._failures[address]
        for address in [a for a, until in self._blocked_until.items() if until <= now]:
            del self._blocked_until[address]


PRINCIPAL = web.RequestKey("board_principal", str)  # who is signed in ("loopback" if no password)
CSRF_TOKEN = web.RequestKey("board_csrf_token", str)  # that admin's CSRF token
CSRF_KEY = web.AppKey("board_csrf_key", bytes)
BRAKE = web.AppKey("board_sign_in_brake", SignInBrake)


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        text = decoded.decode("latin-1")
    username, sep, password = text.partition(":")
    return (username, password) if sep else None


def authenticate(request: web.Request) -> str:
    """The signed-in principal, or raise a 401/403/429 ApiError saying why not."""
    settings = request.app[SETTINGS]
    if not settings.admin_password:
        return _loopback_client(request)
    return _signed_in_admin(request, settings.admin_username, settings.admin_password)


def _loopback_client(request: web.Request) -> str:
    proxied = next((h for h in PROXY_HEADERS if h in request.headers), None)
    if proxied is not None:
        raise ApiError(
            403,
            f"the admin board has no ADMIN_PASSWORD, so it is served to loopback clients "
            f"only, and this request came through a proxy ({proxied} header); set "
            f"ADMIN_PASSWORD to use the board from other machines",
        )
    if not is_loopback(request.remote):
        raise ApiError(
            403,
            "the admin board has no ADMIN_PASSWORD, so it is served to loopback clients "
            "only; set ADMIN_PASSWORD to use the board from other machines",
        )
    return LOOPBACK_PRINCIPAL


def _signed_in_admin(request: web.Request, admin_username: str, admin_password: str) -> str:
    address = client_address(request.remote)
    brake = request.app[BRAKE]
    if blocked := brake.seconds_blocked(address):
        raise ApiError(
            429,
            f"too many failed sign-ins from your address; try again in {blocked} s",
            {"Retry-After": str(blocked)},
            retryAfter=blocked,
        )
    credentials = _basic_credentials(request.headers.get("Authorization"))
    if credentials is None:
        raise ApiError(
            401,
            "the admin board needs the admin username and password (HTTP Basic auth)",
            {"WWW-Authenticate": REALM},
        )
    username, password = credentials
    # Both comparisons always run, so timing says nothing about which one failed.
    user_ok = auth.same_secret(username, admin_username)
    password_ok = auth.same_secret(password, admin_password)
    if not (user_ok & password_ok):
        brake.failed(address)
        raise ApiError(401, "wrong admin username or password", {"WWW-Authenticate": REALM})
    brake.succeeded(address)
    return username


def guards(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


@web.middleware
async def board_guard(request: web.Request, handler):
    """Authenticate every /admin request and check CSRF on its POSTs."""
    if not guards(request.path):
        return await handler(request)
    principal = authenticate(request)
    token = csrf.token_for(request.app[CSRF_KEY], principal)
    request[PRINCIPAL] = principal
    request[CSRF_TOKEN] = token
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if request.app[SETTINGS].admin_read_only:
            raise ApiError(403, "the admin board is read-only (ADMIN_READ_ONLY=true)")
        try:
            csrf.check_origin(request)
            await csrf.check_token(request, token)
        except csrf.CsrfRefused as refused:
            raise ApiError(403, str(refused)) from None
    response = await handler(request)
    # Scripts (curl, monitoring) can read the token here instead of scraping a page.
    response.headers.setdefault(csrf.HEADER, token)
    return response


def setup(app: web.Application) -> None:
    app[CSRF_KEY] = csrf.signing_key(app[SETTINGS])
    app[BRAKE] = SignInBrake()
    app.middlewares.append(board_guard)
