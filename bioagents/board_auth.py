"""Who may use the admin board (SPEC §7): Basic auth from ADMIN_USERNAME/ADMIN_PASSWORD, or,
with no password set, loopback clients only; POSTs also pass the CSRF checks. One middleware
guards every path under /admin and adds the board's security headers."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress

from aiohttp import web

from . import csrf
from .errors import ApiError
from .keys import SETTINGS

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

PRINCIPAL = web.RequestKey("board_principal", str)  # who is signed in ("loopback" if no password)
CSRF_TOKEN = web.RequestKey("board_csrf_token", str)  # that admin's CSRF token
CSRF_KEY = web.AppKey("board_csrf_key", bytes)


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
    """The signed-in principal, or raise a 401/403 ApiError saying why not."""
    settings = request.app[SETTINGS]
    if not settings.admin_password:
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
    credentials = _basic_credentials(request.headers.get("Authorization"))
    if credentials is None:
        raise ApiError(
            401,
            "the admin board needs the admin username and password (HTTP Basic auth)",
            {"WWW-Authenticate": REALM},
        )
    username, password = credentials
    # Both comparisons always run, so timing says nothing about which one failed.
    user_ok = hmac.compare_digest(username.encode(), settings.admin_username.encode())
    password_ok = hmac.compare_digest(password.encode(), settings.admin_password.encode())
    if not (user_ok & password_ok):
        raise ApiError(401, "wrong admin username or password", {"WWW-Authenticate": REALM})
    return username


def _guards(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


@web.middleware
async def board_guard(request: web.Request, handler):
    """Authenticate every /admin request, check CSRF on its POSTs, add security headers."""
    if not _guards(request.path):
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
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Scripts (curl, monitoring) can read the token here instead of scraping a page.
    response.headers.setdefault(csrf.HEADER, token)
    return response


def setup(app: web.Application) -> None:
    app[CSRF_KEY] = csrf.signing_key(app[SETTINGS])
    app.middlewares.append(board_guard)
