"""Fixtures for the chat service: real uvicorn servers on real sockets, real SQLite and
PostgreSQL databases, real Redis.

- ``chat_config``: the backend/database combinations the end-to-end tests run on:
  ``memory-sqlite`` (the embedded default) and ``redis-postgres`` (the scaled setup).
- ``start_server(settings)``: runs `create_app(settings)` under uvicorn in a thread, on its
  own port; returns its base URL. Several may run at once (two "workers").
- ``postgres_url``: a database of its own for this test run (created, migrated by the
  first app, dropped at the end); skips when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests._services import delete_redis_keys, port_answers, serve_asgi
from unbroken.chat.app import create_app
from unbroken.chat.settings import Settings

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
FAST_TPS = 1000.0  # demo tokens per second in tests: a ~430-token answer takes about 0.5 s


def _pg_base_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgresql", "postgres")):
        return url.replace("postgresql://", "postgresql+asyncpg://", 1).replace(
            "postgres://", "postgresql+asyncpg://", 1
        )
    return DEFAULT_PG


async def _admin(base_url: str, sql: str) -> None:
    import asyncpg

    dsn = base_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def temporary_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; dropped afterwards. Skips if there is no server."""
    base = _pg_base_url()
    from sqlalchemy.engine import make_url

    parsed = make_url(base)
    if not port_answers(parsed.host or "127.0.0.1", parsed.port or 5432):
        pytest.skip("PostgreSQL is not reachable (set DATABASE_URL)")
    name = f"unbroken_chat_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    try:
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with temporary_postgres_database() as url:
        yield url


@dataclass
class Server:
    url: str
    settings: Settings
    server: uvicorn.Server


@contextmanager
def serve(settings: Settings) -> Iterator[Server]:
    """Run the chat app for ``settings`` until the block ends."""
    with serve_asgi(create_app(settings)) as (url, server):
        yield Server(url, settings, server)


@pytest.fixture(params=["memory-sqlite", "redis-postgres"])
def chat_config(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_settings(
    request: pytest.FixtureRequest, chat_config: str, tmp_path: Path
) -> Iterator[Callable[..., Settings]]:
    """Settings for ``chat_config``; every call in one test shares its database and Redis
    prefix (several apps = several workers of one deployment)."""
    backend, database = chat_config.split("-")
    if database == "postgres":
        database_url = request.getfixturevalue("postgres_url")
    else:
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}"
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    prefix = request.getfixturevalue("key_prefix") if backend == "redis" else "unbroken"

    def make(**changes: Any) -> Settings:
        base = Settings(
            database_url=database_url,
            redis_url=redis_url,
            redis_key_prefix=prefix,
            demo_tokens_per_second=FAST_TPS,
            lease_ttl=1.0,
            retention=600.0,
            # Tests post many answers as one user; test_limits turns the limits on.
            max_concurrent_answers=0,
            answers_per_minute=0,
        )
        return base.replace(**changes) if changes else base

    yield make
    if redis_url is not None:
        asyncio.run(delete_redis_keys(redis_url, prefix))


@pytest.fixture
def start_server(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Server]]:
    """``start_server(**setting_changes)`` -> a running server (stopped after the test)."""
    with _Servers() as servers:
        yield lambda **changes: servers.start(make_settings(**changes))


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


class _Servers:
    def __init__(self) -> None:
        self._stack: list[Any] = []

    def __enter__(self) -> _Servers:
        return self

    def start(self, settings: Settings) -> Server:
        context = serve(settings)
        running = context.__enter__()
        self._stack.append(context)
        return running

    def __exit__(self, *exc_info: object) -> None:
        while self._stack:
            self._stack.pop().__exit__(None, None, None)
