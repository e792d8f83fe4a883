"""Form bodies (urlencoded and multipart) read by aiohttp, with every way they can be broken —
undecodable bytes, an unknown charset, no boundary, a truncated body — answered 400, never 500."""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import ApiError

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def is_form(request: web.Request) -> bool:
    return request.content_type in FORM_TYPES


async def read_form(request: web.Request) -> dict[str, str]:
    """The form's text fields (file parts are ignored); raises ApiError(400) when unreadable."""
    try:
        form = await request.post()
    except LookupError:
        raise ApiError(400, "the form names a charset this server does not know") from None
    except UnicodeDecodeError:
        raise ApiError(400, "the form holds bytes that are not valid in its charset") from None
    except (ValueError, HttpProcessingError):  # a part's headers are parsed as HTTP's are
        raise ApiError(400, "the multipart body is malformed (no boundary, or cut short)") from None
    except RuntimeError:  # aiohttp's word for a part's unknown transfer or content encoding
        raise ApiError(
            400, "a multipart part names an encoding this server does not know"
        ) from None
    return {key: value for key, value in form.items() if isinstance(value, str)}
