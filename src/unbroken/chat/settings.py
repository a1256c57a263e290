"""Settings of the reference chat service, read once from the environment.

Every setting has a default that runs offline: a SQLite file in the working directory, the
in-process memory backend, and the ``demo`` model. `Settings.from_env` validates everything up
front, so a bad value fails at start with a message that names the variable, never later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit, urlunsplit

__all__ = ["DEFAULT_DATABASE_URL", "Settings", "SettingsError", "mask_url"]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./unbroken.sqlite3"
STATIC_DIR = Path(__file__).parent / "static"


class SettingsError(ValueError):
    """A setting has a value the service cannot use; the message names the variable."""


#: The values of ``UNBROKEN_REDIS_PLACEMENT``.
REDIS_PLACEMENTS = ("stream", "worker")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `create_app` needs. Build it with `from_env` or directly (tests do)."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    redis_key_prefix: str = "unbroken"
    secret_key: str | None = None
    model: str = "demo"
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    #: An answer still running this many seconds after it began is ended there, in error
    #: (its text so far kept): a model that never stops costs no more than that. 0: no limit.
    max_answer_seconds: float = 600.0
    #: Sent to the model as a system message before every conversation (not stored, not
    #: shown to users).
    system_prompt: str | None = None
    demo_tokens_per_second: float = 20.0
    #: How long a producer's lease lives without renewal (crash detection), seconds.
    lease_ttl: float = 3.0
    #: How long a finished stream stays readable in the stream backend, seconds. Once an
    #: answer is stored, resumes past ``resume_window`` are served from the database, so
    #: the backend only has to keep it a while (the memory backend holds it in the heap).
    retention: float = 600.0
    #: On shutdown, running generations get this long to finish; the rest are stored as
    #: interrupted.
    drain_timeout: float = 10.0
    #: A finished answer is still replayed to a resuming client this long after it ended.
    resume_window: float = 15.0
    #: A streaming response waits this long after each write and sends what arrived
    #: meanwhile in one write (deltas merged): fewer, larger writes for up to this much
    #: delay per token. 0 writes every token at once. See docs/benchmarks.md.
    flush_interval: float = 0.0
    #: With Redis: how long a stream's write may wait to share a pipeline with other
    #: streams' (`RedisBackend` ``write_gather``): less CPU per chunk for that much delay.
    redis_write_gather: float = 0.002
    #: With Redis: where a new answer's stream is placed in a Redis Cluster. ``stream``:
    #: by its own id (spread over every master); ``worker``: with every other stream this
    #: process starts (one master gets each write window's pipeline, not every master).
    redis_placement: str = "stream"
    #: Largest accepted request body, bytes (413 above).
    max_body_bytes: int = 1024 * 1024
    #: Answers one user may have generating at once (429 above; 0: no limit).
    max_concurrent_answers: int = 3
    #: Answers one user may start in any 60 s (429 above; 0: no limit).
    answers_per_minute: int = 20
    #: When set, ``/metrics`` answers only ``Authorization: Bearer <metrics_token>``.
    metrics_token: str | None = None
    #: Every this many seconds each instance looks for answers whose producer died and stores
    #: them as interrupted (0: only when someone opens the chat).
    sweep_interval: float = 10.0
    #: Origins (``https://host[:port]``) besides the request's own ``Host`` whose
    #: cookie-authenticated POSTs are accepted: set it behind a proxy that rewrites ``Host``.
    allowed_origins: tuple[str, ...] = ()
    #: Apply migrations in the application lifespan (the CLI applies them before forking).
    migrate_on_start: bool = True
    static_dir: Path = field(default=STATIC_DIR)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read ``DATABASE_URL``, ``REDIS_URL`` and the ``UNBROKEN_*``, ``OPENAI_*`` and
        ``ANTHROPIC_*`` variables."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        settings = cls(
            database_url=normalize_database_url(text("DATABASE_URL") or DEFAULT_DATABASE_URL),
            redis_url=text("REDIS_URL"),
            redis_key_prefix=text("UNBROKEN_REDIS_PREFIX") or "unbroken",
            secret_key=text("UNBROKEN_SECRET_KEY"),
            model=text("UNBROKEN_MODEL") or "demo",
            openai_api_key=text("OPENAI_API_KEY"),
            openai_base_url=text("OPENAI_BASE_URL"),
            anthropic_api_key=text("ANTHROPIC_API_KEY"),
            anthropic_base_url=text("ANTHROPIC_BASE_URL"),
            system_prompt=text("UNBROKEN_SYSTEM_PROMPT"),
            max_answer_seconds=_number(env, "UNBROKEN_MAX_ANSWER_SECONDS", 600.0),
            demo_tokens_per_second=_number(env, "UNBROKEN_DEMO_TOKENS_PER_SECOND", 20.0),
            lease_ttl=_number(env, "UNBROKEN_LEASE_TTL", 3.0),
            retention=_number(env, "UNBROKEN_RETENTION", 600.0),
            drain_timeout=_number(env, "UNBROKEN_DRAIN_TIMEOUT", 10.0),
            sweep_interval=_number(env, "UNBROKEN_SWEEP_INTERVAL", 10.0),
            flush_interval=_number(env, "UNBROKEN_FLUSH_INTERVAL", 0.0),
            redis_write_gather=_number(env, "UNBROKEN_REDIS_WRITE_GATHER", 0.002),
            redis_placement=text("UNBROKEN_REDIS_PLACEMENT") or "stream",
            max_body_bytes=int(_number(env, "UNBROKEN_MAX_BODY_BYTES", 1024 * 1024)),
            max_concurrent_answers=_count(env, "UNBROKEN_MAX_CONCURRENT_ANSWERS", 3),
            answers_per_minute=_count(env, "UNBROKEN_ANSWERS_PER_MINUTE", 20),
            metrics_token=text("UNBROKEN_METRICS_TOKEN"),
            allowed_origins=tuple(
                origin.strip().rstrip("/")
                for origin in env.get("UNBROKEN_ALLOWED_ORIGINS", "").split(",")
                if origin.strip()
            ),
        )
        settings.validate()
        return settings

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (validated)."""
        new = replace(self, **changes)  # type: ignore[arg-type]
        new.validate()
        return new

    def validate(self) -> None:
        """Raise `SettingsError` for a value the service cannot run with."""
        normalize_database_url(self.database_url)
        if self.redis_url is not None:
            _check_redis_url(self.redis_url)
        provider, model = self.model_provider
        if not model:
            raise SettingsError(
                f"UNBROKEN_MODEL={self.model!r} names no model: use demo, <model>, "
                "openai:<model> or anthropic:<model>"
            )
        if provider == "openai" and not self.openai_api_key and not self.openai_base_url:
            raise SettingsError(
                f"UNBROKEN_MODEL={self.model!r} needs OPENAI_API_KEY (or OPENAI_BASE_URL for a "
                "local OpenAI-compatible server); use UNBROKEN_MODEL=demo to run offline"
            )
        if provider == "anthropic" and not self.anthropic_api_key and not self.anthropic_base_url:
            raise SettingsError(
                f"UNBROKEN_MODEL={self.model!r} needs ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL "
                "for a compatible server); use UNBROKEN_MODEL=demo to run offline"
            )
        if self.secret_key is not None and len(self.secret_key) < 16:
            raise SettingsError("UNBROKEN_SECRET_KEY must be at least 16 characters long")
        if self.demo_tokens_per_second <= 0:
            raise SettingsError("UNBROKEN_DEMO_TOKENS_PER_SECOND must be positive")
        if self.lease_ttl <= 0 or self.retention <= 0:
            raise SettingsError("UNBROKEN_LEASE_TTL and UNBROKEN_RETENTION must be positive")
        if self.retention < self.resume_window:
            raise SettingsError("UNBROKEN_RETENTION must be at least the resume window")
        if self.max_answer_seconds < 0:
            raise SettingsError("UNBROKEN_MAX_ANSWER_SECONDS must not be negative (0: no limit)")
        if self.drain_timeout < 0 or self.sweep_interval < 0:
            raise SettingsError(
                "UNBROKEN_DRAIN_TIMEOUT and UNBROKEN_SWEEP_INTERVAL must not be negative"
            )
        for origin in self.allowed_origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise SettingsError(
                    f"UNBROKEN_ALLOWED_ORIGINS: {origin!r} is not an origin like https://host"
                )
        if not 0 <= self.flush_interval <= 1:
            raise SettingsError("UNBROKEN_FLUSH_INTERVAL must be between 0 and 1 (seconds)")
        if not 0 <= self.redis_write_gather <= 1:
            raise SettingsError("UNBROKEN_REDIS_WRITE_GATHER must be between 0 and 1 (seconds)")
        if self.redis_placement not in REDIS_PLACEMENTS:
            raise SettingsError(
                f"UNBROKEN_REDIS_PLACEMENT must be one of {', '.join(REDIS_PLACEMENTS)}"
            )
        if self.max_body_bytes < 1024:
            raise SettingsError("UNBROKEN_MAX_BODY_BYTES must be at least 1024")
        if self.max_concurrent_answers < 0 or self.answers_per_minute < 0:
            raise SettingsError(
                "UNBROKEN_MAX_CONCURRENT_ANSWERS and UNBROKEN_ANSWERS_PER_MINUTE must not be "
                "negative (0: no limit)"
            )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def model_provider(self) -> tuple[str, str]:
        """Who serves `model`, and the model's name there: ``("demo", "demo")``,
        ``("anthropic", <model>)`` for ``anthropic:<model>``, else ``("openai", <model>)``
        (``openai:`` is optional: any other name goes to the OpenAI-compatible endpoint)."""
        if self.model == "demo":
            return "demo", "demo"
        provider, sep, name = self.model.partition(":")
        if sep and provider in ("openai", "anthropic"):
            return provider, name.strip()
        return "openai", self.model


def normalize_database_url(url: str) -> str:
    """The async driver form of a database URL: ``sqlite+aiosqlite`` or ``postgresql+asyncpg``.

    Plain ``sqlite://``, ``postgres://`` and ``postgresql://`` are accepted and rewritten, so
    a URL copied from a hosting dashboard works as is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SettingsError(
            "DATABASE_URL must look like sqlite+aiosqlite:///./file.sqlite3 or "
            "postgresql+asyncpg://user:password@host/db"
        )
    aliases = {
        "sqlite": "sqlite+aiosqlite",
        "sqlite+aiosqlite": "sqlite+aiosqlite",
        "postgres": "postgresql+asyncpg",
        "postgresql": "postgresql+asyncpg",
        "postgresql+asyncpg": "postgresql+asyncpg",
    }
    if scheme not in aliases:
        raise SettingsError(
            f"DATABASE_URL scheme {scheme!r} is not supported; use sqlite+aiosqlite:// or "
            "postgresql+asyncpg://"
        )
    return f"{aliases[scheme]}://{rest}"


def _check_redis_url(url: str) -> None:
    """Raise `SettingsError` unless ``url`` is a Redis URL the backend can use: one server,
    ``redis+cluster://`` or ``redis+sentinel://`` (checked here, so a typo fails at start)."""
    try:
        # Imported here: the redis extra is needed only when REDIS_URL is set.
        from unbroken.backends.redis._url import parse_redis_url
    except ImportError as exc:
        raise SettingsError(f"REDIS_URL is set: {exc}") from None
    try:
        parse_redis_url(url)
    except ValueError as exc:
        raise SettingsError(f"REDIS_URL: {exc}") from None


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise SettingsError(f"{name} must be a number, not {raw!r}")
    return number


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print and log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
