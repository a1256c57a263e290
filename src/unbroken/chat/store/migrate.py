"""Apply the chat store's Alembic migrations programmatically.

The migration scripts ship inside the package (``unbroken/chat/store/migrations``), so an
installed wheel can upgrade its database with no ``alembic.ini`` and no source checkout.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["current_revision", "head_revision", "upgrade"]

SCRIPT_LOCATION = "unbroken.chat.store:migrations"
# Any constant works; it only has to be the same in every process migrating one database.
_PG_LOCK_KEY = 0x756E62726F6B656E  # "unbroken"
# Alembic keeps its migration context in module globals: one upgrade at a time per process
# (apps in several threads or tasks of one process would otherwise trample each other).
_PROCESS_LOCK = threading.Lock()


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision the shipped scripts know."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> bool:
    """Bring the database to ``revision``; returns whether anything was applied.

    Safe to call from several processes at once (PostgreSQL: the upgrade holds a
    transaction-scoped advisory lock; SQLite: it holds the file's write lock, and the others
    wait for it with the busy timeout) and from several apps in one process. A database already
    at head is not written to at all and the process lock is not waited for, so SQLite workers
    started after ``unbroken db upgrade`` (the CLI runs it before forking) never contend for
    its write lock. Whoever finds it behind re-reads the revision once it holds the lock: the
    others then find it at head and apply nothing.
    """
    if revision == "head" and await current_revision(engine) == head_revision():
        return False
    async with _process_lock():
        if engine.dialect.name == "sqlite":
            return await _upgrade_sqlite(engine, revision)
        return await _upgrade(engine, revision)


@asynccontextmanager
async def _process_lock() -> AsyncIterator[None]:
    # Polled, not waited for in a thread: nothing can cancel us between acquire and try. (An
    # anyio primitive would not do: the apps sharing this process may run in other loops.)
    while not _PROCESS_LOCK.acquire(blocking=False):  # noqa: ASYNC110
        await anyio.sleep(0.01)
    try:
        yield
    finally:
        _PROCESS_LOCK.release()


def _apply(connection: Connection, revision: str) -> bool:
    before = _current(connection)
    command.upgrade(_config(connection), revision)
    return _current(connection) != before


async def _upgrade(engine: AsyncEngine, revision: str) -> bool:
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY}
            )
        return await connection.run_sync(_apply, revision)


async def _upgrade_sqlite(engine: AsyncEngine, revision: str) -> bool:
    async with engine.connect() as connection:
        # The driver's own transactions would not do: sqlite3 opens one only before DML, so
        # Alembic's CREATE TABLEs would each commit alone (a concurrent upgrade could find
        # half a schema), and it opens it deferred (see below). Manage the transaction here.
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        # IMMEDIATE: take the write lock before reading the revision, waiting for another
        # upgrade to commit (busy timeout). A deferred transaction would read first and then
        # fail at once with 'database is locked' when it tried to write, as SQLite does not
        # wait for a write lock wanted by a connection that is already reading.
        await connection.exec_driver_sql("BEGIN IMMEDIATE")
        applied = await connection.run_sync(_apply, revision)
        # On an error we never get here; the connection goes back to the pool, which rolls
        # the transaction back (the driver's rollback ends any open transaction).
        await connection.exec_driver_sql("COMMIT")
    return applied
