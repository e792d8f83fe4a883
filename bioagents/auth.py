"""Identity (SPEC §3): JWT (HS256) → API key (`BIOAGENTS_API_KEY`) → anonymous."""

from __future__ import annotations

import dataclasses
import hmac
import math
import time
import uuid

import jwt

from .config import Settings

MAX_USER_ID_LENGTH = 128
CLOCK_SKEW_SECONDS = 5  # leeway for `exp` and `nbf` between the token's issuer and us


class AuthError(Exception):
    """Credentials are missing or invalid; answered 401 (HTTP) or close 4001 (WebSocket)."""


@dataclasses.dataclass(frozen=True)
class Identity:
    user_id: str
    method: str  # "jwt", "api_key" or "anonymous"
    assigned: bool = False  # the server made up the id (anonymous caller without one)

    @property
    def anonymous(self) -> bool:
        return self.method == "anonymous"


def as_bytes(text: str) -> bytes:
    """Text from a header or the environment as its bytes: aiohttp and Python keep bytes that
    are not UTF-8 as surrogates, which a plain `encode()` refuses."""
    return text.encode("utf-8", "surrogateescape")


def same_secret(sent: str, expected: str) -> bool:
    """Constant-time comparison of any two strings, whatever bytes they hold."""
    return hmac.compare_digest(as_bytes(sent), as_bytes(expected))


def issue_token(settings: Settings, user_id: str, ttl: int = 3600) -> str:
    if not settings.secret:
        raise AuthError("BIOAGENTS_SECRET is not set, so no token can be signed")
    now = int(time.time())
    claims = {"sub": user_id, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, as_bytes(settings.secret), "HS256")


def verify_token(settings: Settings, token: str) -> str:
    """The token's user id; raises AuthError saying what is wrong."""
    if not settings.secret:
        raise AuthError("tokens are not accepted: BIOAGENTS_SECRET is not set")
    try:
        claims = jwt.decode(
            as_bytes(token),
            as_bytes(settings.secret),
            algorithms=["HS256"],
            options={"require": ["sub", "exp"]},
            leeway=CLOCK_SKEW_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired") from None
    except jwt.InvalidTokenError as error:
        raise AuthError(f"the token is invalid: {error}") from None
    if _too_far_ahead(claims["exp"], settings.max_jwt_expiration):
        raise AuthError("the token's expiry lies further ahead than MAX_JWT_EXPIRATION allows")
    try:
        user_id = check_user_id(claims["sub"])
    except ValueError:
        user_id = None
    if user_id is None:
        raise AuthError("the token's sub must be a user id: 1..128 printable characters")
    return user_id


def _too_far_ahead(exp, max_seconds: int) -> bool:
    """PyJWT accepts any `exp` that int() takes ("123", 10**400): only a finite number is a
    time, and it is compared, never subtracted, so no size overflows."""
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return True
    if isinstance(exp, float) and not math.isfinite(exp):
        return True
    return exp > time.time() + max_seconds


def check_user_id(value) -> str | None:
    """A caller-chosen user id, or None when absent; raises ValueError when malformed."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_USER_ID_LENGTH or not value.isprintable():
        raise ValueError(f"userId must be a string of 1..{MAX_USER_ID_LENGTH} printable characters")
    return value.strip() or None


def resolve(
    settings: Settings,
    authorization: str | None,
    api_key: str | None,
    chosen_user_id: str | None,
) -> Identity:
    """Who is calling. `chosen_user_id` (X-User-Id, then body/query userId) is honoured only for
    API-key and anonymous callers. Raises AuthError."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization must be 'Bearer <jwt>'")
        return Identity(verify_token(settings, token.strip()), "jwt")
    if api_key:
        if not settings.api_key:
            raise AuthError("X-API-Key is not accepted: BIOAGENTS_API_KEY is not set")
        if not same_secret(api_key, settings.api_key):
            raise AuthError("the API key is not valid")
        return _chosen_or_new(chosen_user_id, "api_key")
    if settings.auth_mode == "jwt":
        raise AuthError("authentication required: send 'Authorization: Bearer <jwt>'")
    return _chosen_or_new(chosen_user_id, "anonymous")


def _chosen_or_new(chosen_user_id: str | None, method: str) -> Identity:
    if chosen_user_id:
        return Identity(chosen_user_id, method)
    return Identity(str(uuid.uuid4()), method, assigned=True)
