"""Identity (SPEC §3): JWT (HS256) → API key → anonymous."""

from __future__ import annotations

import dataclasses
import hmac
import time
import uuid

import jwt

from .config import Settings

MAX_USER_ID_LENGTH = 128


class AuthError(Exception):
    """Credentials are missing or invalid; answered 401 (HTTP) or close 4001 (WebSocket)."""


@dataclasses.dataclass(frozen=True)
class Identity:
    user_id: str
    method: str  # "jwt", "api_key" or "anonymous"
    assigned: bool = False  # the server made up the id (anonymous caller without one)


def issue_token(settings: Settings, user_id: str, ttl: int = 3600) -> str:
    if not settings.secret:
        raise AuthError("BIOAGENTS_SECRET is not set, so no token can be signed")
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl}, settings.secret, "HS256")


def verify_token(settings: Settings, token: str) -> str:
    """The token's user id; raises AuthError saying what is wrong."""
    if not settings.secret:
        raise AuthError("tokens are not accepted: BIOAGENTS_SECRET is not set")
    try:
        claims = jwt.decode(
            token,
            settings.secret,
            algorithms=["HS256"],
            options={"require": ["sub", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired") from None
    except jwt.InvalidTokenError as error:
        raise AuthError(f"the token is invalid: {error}") from None
    if claims["exp"] - time.time() > settings.max_jwt_expiration:
        raise AuthError("the token's expiry lies further ahead than MAX_JWT_EXPIRATION allows")
    user_id = claims["sub"]
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID_LENGTH:
        raise AuthError("the token's sub must be a user id string")
    return user_id


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
        if not settings.secret or not hmac.compare_digest(api_key, settings.secret):
            raise AuthError("the API key is not valid")
        return _chosen_or_new(chosen_user_id, "api_key")
    if settings.auth_mode == "jwt":
        raise AuthError("authentication required: send 'Authorization: Bearer <jwt>'")
    return _chosen_or_new(chosen_user_id, "anonymous")


def _chosen_or_new(chosen_user_id: str | None, method: str) -> Identity:
    if chosen_user_id:
        return Identity(chosen_user_id, method)
    return Identity(str(uuid.uuid4()), method, assigned=True)
