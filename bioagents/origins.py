"""The host and origin a request was sent to, as browsers spell them in `Host` and `Origin`."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import hdrs, web


def sent_host(request: web.Request) -> str:
    """The `Host` header, or "" without one. (aiohttp's `request.host` falls back to a DNS
    lookup of this machine's name, which a stream of Host-less requests must not trigger.)"""
    return request.headers.get(hdrs.HOST, "")


def own_origin(request: web.Request) -> str:
    """The origin this request was sent to.

    `X-Forwarded-Proto` is honoured because a TLS-terminating proxy (Heroku's router) talks
    plain HTTP to us; trusting it is safe here since a forged value cannot make a foreign
    page's Origin equal our host."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    scheme = forwarded if forwarded in ("http", "https") else request.scheme
    return f"{scheme}://{sent_host(request)}".lower()


def is_own_origin(request: web.Request, origin: str) -> bool:
    """Whether an `Origin` header names the origin this request was sent to."""
    return origin.strip().lower() == own_origin(request)


def origin_of(url: str) -> str | None:
    """The origin of a URL (a `Referer`), or None when it has none."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()
