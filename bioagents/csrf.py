"""CSRF protection for the admin board's POSTs (SPEC §7): a token bound to the signed-in admin,
sent back as `X-CSRF-Token` or a `csrf_token` form field, plus an Origin (or Referer) that must
be the board's own origin. Both checks are needed: the token proves the request was built from a
board page, the origin proves a browser did not send it on behalf of another site."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from aiohttp import web

from . import auth, forms
from .config import Settings
from .origins import is_own_origin, origin_of, own_origin

HEADER = "X-CSRF-Token"
FORM_FIELD = "csrf_token"


class CsrfRefused(Exception):
    """The POST fails a CSRF check; the message says which one, in one sentence."""


def signing_key(settings: Settings) -> bytes:
    """The board's own key for its tokens, shared by nothing else. With ADMIN_PASSWORD it is
    derived from the admin's credentials (so every `serve` copy accepts the others' tokens,
    and a new password voids old tokens) by scrypt, so a leaked token is no cheap test of
    password guesses. Without a password it is random per process: the board is then served
    to loopback clients of this one machine only."""
    if not settings.admin_password:
        return secrets.token_bytes(32)
    salt = b"bioagents board csrf key\x00" + auth.as_bytes(settings.admin_username)
    password = auth.as_bytes(settings.admin_password)
    return hashlib.scrypt(password, salt=salt, n=2**14, r=8, p=1, dklen=32)


def token_for(key: bytes, principal: str) -> str:
    """The token of one admin. Stable, so fragments that carry it stay cacheable by ETag."""
    digest = hmac.new(key, f"csrf\x00{principal}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def check_origin(request: web.Request) -> None:
    """Raise CsrfRefused unless Origin (or, without one, Referer) is the board's origin."""
    expected = own_origin(request)
    origin = request.headers.get("Origin")
    if origin is not None:
        if not is_own_origin(request, origin):
            raise CsrfRefused(
                f"cross-origin POST refused: Origin {origin[:100]!r} is not the board's "
                f"origin {expected!r}"
            )
        return
    referer = request.headers.get("Referer")
    if referer is None:
        raise CsrfRefused(
            "a board POST must carry an Origin (or Referer) header naming the board's origin"
        )
    if origin_of(referer) != expected:
        raise CsrfRefused(
            f"cross-origin POST refused: Referer {referer[:100]!r} is not on the board's "
            f"origin {expected!r}"
        )


async def check_token(request: web.Request, expected: str) -> None:
    """Raise CsrfRefused unless the request carries `expected` in the header or form field."""
    sent = request.headers.get(HEADER)
    if sent is None and forms.is_form(request):
        sent = (await forms.read_form(request)).get(FORM_FIELD)
    if not sent:
        raise CsrfRefused(
            f"missing CSRF token: send the {HEADER} header or a {FORM_FIELD} form field "
            '(every board page carries it in <meta name="csrf-token">)'
        )
    if not auth.same_secret(sent, expected):
        raise CsrfRefused("invalid CSRF token; reload the board page and try again")
