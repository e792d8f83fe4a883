"""Settings read from the environment when the app or a worker starts (never at import)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from . import hosts

TRUE_WORDS = {"true", "1", "yes"}
MIN_SECRET_BYTES = 32
FALSE_WORDS = {"false", "0", "no"}


class ConfigError(ValueError):
    """A variable is missing or malformed; the message names it in one line."""


@dataclasses.dataclass(frozen=True)
class Settings:
    use_job_queue: bool = False
    redis_url: str = "redis://localhost:6379"
    database_url: str = "sqlite:///bioagents.db"
    host: str = "127.0.0.1"
    port: int = 3000
    chat_concurrency: int = 5
    deep_research_concurrency: int = 3
    chat_rate_limit_per_minute: int = 10
    deep_research_rate_limit_per_5min: int = 3
    auth_mode: str = "none"
    secret: str = ""
    api_key: str = ""
    allowed_hosts: tuple[str, ...] = ()  # host names besides loopback ones; ("*",) = any
    max_jwt_expiration: int = 86400
    admin_username: str = "admin"
    admin_password: str = ""
    max_body_bytes: int = 1048576
    max_ws_frame_bytes: int = 65536
    stalled_interval: float = 30.0
    shutdown_grace_seconds: float = 25.0
    workers_in_api: bool = False
    llm_provider: str = "offline"
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str = ""
    llm_model: str = "gpt-4o-mini"
    llm_timeout: float = 120.0
    offline_delay: float = 0.0
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_token: str = ""  # set: /metrics needs it as a bearer token; unset: loopback only
    admin_read_only: bool = False
    chat_job_timeout: float = 300.0  # seconds an attempt may run; 0 = no limit (SPEC §10)
    deep_research_job_timeout: float = 0.0
    notify_replay_seconds: float = 3600.0  # how long notifications are kept for replay (§5)
    notify_replay_max: int = 1000  # how many per conversation
    max_sockets_per_user: int = 50

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build and validate settings; raises ConfigError naming the bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = dict(
            use_job_queue=env.get("USE_JOB_QUEUE", "false").strip().lower() in TRUE_WORDS,
            redis_url=_redis_url(env),
            database_url=env.get("DATABASE_URL", cls.database_url),
            host=env.get("HOST", cls.host),
            port=_int(env, "PORT", cls.port, minimum=0, maximum=65535),
            chat_concurrency=_int(env, "CHAT_QUEUE_CONCURRENCY", cls.chat_concurrency, minimum=1),
            deep_research_concurrency=_int(
                env, "DEEP_RESEARCH_QUEUE_CONCURRENCY", cls.deep_research_concurrency, minimum=1
            ),
            chat_rate_limit_per_minute=_int(env, "CHAT_RATE_LIMIT_PER_MINUTE", 10, minimum=0),
            deep_research_rate_limit_per_5min=_int(
                env, "DEEP_RESEARCH_RATE_LIMIT_PER_5MIN", 3, minimum=0
            ),
            auth_mode=_choice(env, "AUTH_MODE", "none", {"none", "jwt"}),
            secret=env.get("BIOAGENTS_SECRET", ""),
            api_key=env.get("BIOAGENTS_API_KEY", ""),
            allowed_hosts=_allowed_hosts(env.get("ALLOWED_HOSTS", "")),
            max_jwt_expiration=_int(env, "MAX_JWT_EXPIRATION", 86400, minimum=1),
            admin_username=env.get("ADMIN_USERNAME", "admin"),
            admin_password=env.get("ADMIN_PASSWORD", ""),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 1048576, minimum=1),
            max_ws_frame_bytes=_int(env, "MAX_WS_FRAME_BYTES", 65536, minimum=64),
            stalled_interval=_float(env, "STALLED_INTERVAL", 30.0, minimum=1.0),
            shutdown_grace_seconds=_float(env, "SHUTDOWN_GRACE_SECONDS", 25.0, minimum=0.0),
            workers_in_api=env.get("WORKERS_IN_API", "false").strip().lower() in TRUE_WORDS,
            llm_provider=_choice(env, "LLM_PROVIDER", "offline", {"offline", "openai"}),
            openai_base_url=env.get("OPENAI_BASE_URL", cls.openai_base_url).rstrip("/"),
            openai_api_key=env.get("OPENAI_API_KEY", ""),
            llm_model=env.get("LLM_MODEL", cls.llm_model),
            llm_timeout=_float(env, "LLM_TIMEOUT_SECONDS", 120.0, minimum=0.1),
            offline_delay=_float(env, "OFFLINE_LLM_DELAY", 0.0, minimum=0.0),
            log_level=_choice(
                env, "LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"}, upper=True
            ),
            log_format=_choice(env, "LOG_FORMAT", "text", {"text", "json"}),
            metrics_token=env.get("METRICS_TOKEN", "").strip(),
            admin_read_only=_flag(env, "ADMIN_READ_ONLY", False),
            chat_job_timeout=_float(env, "CHAT_JOB_TIMEOUT_SECONDS", 300.0, minimum=0.0),
            deep_research_job_timeout=_float(
                env, "DEEP_RESEARCH_JOB_TIMEOUT_SECONDS", 0.0, minimum=0.0
            ),
            notify_replay_seconds=_float(env, "NOTIFY_REPLAY_SECONDS", 3600.0, minimum=1.0),
            notify_replay_max=_int(env, "NOTIFY_REPLAY_MAX", 1000, minimum=1),
            max_sockets_per_user=_int(env, "MAX_SOCKETS_PER_USER", 50, minimum=1),
        )
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        _check_database_url(self.database_url)
        if self.auth_mode == "jwt" and _byte_length(self.secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"BIOAGENTS_SECRET must be at least {MIN_SECRET_BYTES} bytes when AUTH_MODE=jwt"
            )
        if self.api_key and _byte_length(self.api_key) < MIN_SECRET_BYTES:
            raise ConfigError(f"BIOAGENTS_API_KEY must be at least {MIN_SECRET_BYTES} bytes")
        if self.llm_provider == "openai" and not urlsplit(self.openai_base_url).netloc:
            raise ConfigError(f"OPENAI_BASE_URL is not a URL: {self.openai_base_url!r}")

    @property
    def sqlite_path(self) -> str | None:
        if self.database_url.startswith("sqlite:///"):
            return self.database_url.removeprefix("sqlite:///")
        return None


def _int(env, name, default, *, minimum=None, maximum=None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    _bounds(name, value, minimum, maximum)
    return value


def _float(env, name, default, *, minimum=None) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    _bounds(name, value, minimum, None)
    return value


def _bounds(name, value, minimum, maximum) -> None:
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")


def _flag(env, name, default: bool) -> bool:
    """A yes/no setting that refuses anything else: a typo must not flip a safety switch."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be true or false, got {env[name]!r}")


def _choice(env, name, default, allowed, *, upper=False) -> str:
    raw = env.get(name, default).strip()
    value = raw.upper() if upper else raw.lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(sorted(allowed))}, got {raw!r}")
    return value


def _redis_url(env) -> str:
    url = env.get("REDIS_URL", "").strip()
    if not url:
        host = env.get("REDIS_HOST", "").strip()
        if not host:
            return Settings.redis_url
        port = _int(env, "REDIS_PORT", 6379, minimum=1, maximum=65535)
        password = env.get("REDIS_PASSWORD", "")
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{host}:{port}"
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix", "redis+sentinel"} or (
        parts.scheme != "unix" and not parts.netloc
    ):
        raise ConfigError(
            f"REDIS_URL must be redis://, rediss://, unix:// or redis+sentinel://, got {url!r}"
        )
    if parts.scheme == "redis+sentinel" and not parts.path.strip("/"):
        raise ConfigError("REDIS_URL redis+sentinel:// needs a service name: /<service>")
    return url


def _byte_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _allowed_hosts(raw: str) -> tuple[str, ...]:
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if hosts.ANY_HOST in entries:
        return (hosts.ANY_HOST,)
    names = []
    for entry in entries:
        name = hosts.host_name(entry)
        if name is None:
            raise ConfigError(
                f"ALLOWED_HOSTS takes host names separated by commas (or *), got {entry!r}"
            )
        names.append(name)
    return tuple(names)


def _check_database_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    known = {"sqlite", "postgres", "postgresql", "postgresext", "postgresqlext", "mysql"}
    if scheme not in known:
        raise ConfigError(f"DATABASE_URL must be a sqlite:// or postgresql:// URL, got {url!r}")
