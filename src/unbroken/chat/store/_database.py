"""How the store runs SQL: one connection per operation, where its driver is cheapest."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any, Self, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import create_engine, make_url, select
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import Executable

from unbroken.chat.store import migrate

__all__ = ["Database", "Params"]

_T = TypeVar("_T")
#: Bound parameters of one statement.
Params = Mapping[str, Any]


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


# How many threads (and connections) run a SQLite store's work at once. SQLite has one
# writer at a time anyway; a few threads let reads go on beside it, and a writer waiting for
# another process's lock does not hold up the rest.
_SQLITE_THREADS = 8


class Database:
    """A SQL database (SQLAlchemy 2 Core) that runs each operation whole on one connection.
    Use as ``async with``.

    - PostgreSQL: on the event loop, through asyncpg (``AsyncConnection.run_sync``). A read
      is one round trip: it runs in autocommit (a lone statement needs no BEGIN and
      ROLLBACK around it; under READ COMMITTED each statement sees what was committed when
      it began either way), on a pooled connection used without a ping first. A read that
      finds its connection dead (a database restart) runs again once, on a new one. A write
      checks its connection with its transaction's first statement, so one that finds it
      dead runs again before it has done anything.
    - SQLite: in one of a few threads, on a plain `sqlite3` connection. Through aiosqlite,
      each statement, fetch and commit would be its own hop to a thread and back, dozens for
      one answer, each costing CPU on the event loop; run whole, an operation is one hop
      (`benchmarks/store_bench.py` measures both).

    `engine` stays the async engine (migrations use it); `sql_engine` is the engine every
    statement runs on, for event hooks.
    """

    def __init__(self, engine: AsyncEngine, *, threaded: Engine | None = None) -> None:
        self.engine = engine
        self._threaded = threaded
        self._limiter = anyio.CapacityLimiter(_SQLITE_THREADS)
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    def from_url(cls, url: str) -> Self:
        """A store on ``url`` (``sqlite+aiosqlite://…`` or ``postgresql+asyncpg://…``)."""
        if _is_sqlite(url):
            engine = create_async_engine(url, connect_args={"timeout": 30})
            _configure_sqlite(engine.sync_engine)
            threaded = create_engine(
                make_url(url).set(drivername="sqlite+pysqlite"),
                connect_args={"timeout": 30, "check_same_thread": False},
                pool_size=_SQLITE_THREADS,
                max_overflow=0,
            )
            _configure_sqlite(threaded)
            return cls(engine, threaded=threaded)
        # No pool_pre_ping: a ping is a round trip before every operation; see _run.
        engine = create_async_engine(url, pool_size=10, max_overflow=20)
        return cls(engine)

    @property
    def sql_engine(self) -> Engine:
        """The engine every statement of the store runs on (for event hooks)."""
        return self._threaded if self._threaded is not None else self.engine.sync_engine

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.engine.dispose()
        if self._threaded is not None:
            self._threaded.dispose()

    async def upgrade(self) -> bool:
        """Apply pending migrations (see `migrate.upgrade`); returns whether any ran."""
        return await migrate.upgrade(self.engine)

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""
        await self._scalar(select(1))

    # -- running work ------------------------------------------------------------------

    async def _run(self, work: Callable[[Connection], _T], *, write: bool = False) -> _T:
        """``work`` on one connection; with ``write``, inside a transaction committed when
        it returns (rolled back if it raises). On SQLite a thread runs it to the end even if
        the caller is cancelled meanwhile; on PostgreSQL a cancellation rolls it back."""
        if self._threaded is not None:
            return await anyio.to_thread.run_sync(
                self._run_threaded, work, write, limiter=self._limiter
            )
        try:
            return await self._run_once(work, write)
        except _StaleConnection:
            pass  # nothing was done; SQLAlchemy has dropped the pool's connections meanwhile
        except DBAPIError as exc:
            if write or not exc.connection_invalidated:
                raise
        try:
            return await self._run_once(work, write)
        except _StaleConnection as stale:
            raise stale.error from None  # the database is away: the app answers 503

    async def _run_once(self, work: Callable[[Connection], _T], write: bool) -> _T:
        # Closed by hand rather than by `async with`, whose exit closes the connection in a
        # task of its own: two more turns of a busy event loop on the way to every result.
        # The close is shielded, so a cancelled caller still returns the connection.
        conn: AsyncConnection = await (self.engine if write else self._reads).connect().start()
        try:
            if write:
                return await conn.run_sync(_in_checked_transaction, work)
            return await conn.run_sync(work)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    def _run_threaded(self, work: Callable[[Connection], _T], write: bool) -> _T:
        assert self._threaded is not None
        if write:
            with self._threaded.begin() as conn:
                return work(conn)
        with self._threaded.connect() as conn:
            return work(conn)

    async def _first(self, query: Executable, params: Params | None = None) -> Row[Any] | None:
        return await self._run(lambda conn: conn.execute(query, params).first())

    async def _all(self, query: Executable) -> list[Row[Any]]:
        return await self._run(lambda conn: list(conn.execute(query)))

    async def _scalar(self, query: Executable) -> Any:
        return await self._run(lambda conn: conn.scalar(query))

    async def _write(self, *statements: Executable | tuple[Executable, Params]) -> list[int]:
        """Run ``statements`` (each alone or with its parameters) in one transaction; the rows
        each changed."""

        def work(conn: Connection) -> list[int]:
            return [
                (conn.execute(*item) if isinstance(item, tuple) else conn.execute(item)).rowcount
                for item in statements
            ]

        return await self._run(work, write=True)


class _StaleConnection(Exception):
    """A write's connection was dead before the write did anything (``error`` said so):
    run it again."""

    def __init__(self, error: DBAPIError) -> None:
        super().__init__(str(error))
        self.error = error


def _in_checked_transaction(conn: Connection, work: Callable[[Connection], _T]) -> _T:
    """``work`` in a transaction on ``conn``, committed when it returns; raises
    `_StaleConnection` if the transaction's first statement finds the connection dead."""
    with conn.begin():
        try:
            conn.exec_driver_sql("SELECT 1")
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise _StaleConnection(exc) from exc
            raise
        return work(conn)


def _configure_sqlite(engine: Engine) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL: readers never block the writer, which matters with several workers on one file.
        cursor = dbapi_connection.cursor()
        _enable_wal(cursor)
        # With WAL, NORMAL syncs at checkpoints instead of on every commit: the database
        # is never corrupted; a power cut may lose the last commits. Each answer commits a
        # few times, and an fsync each would cost more than the answer's SQL.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def _enable_wal(cursor: Any, timeout: float = 30) -> None:
    """Switch the file to WAL (it stays so), waiting out connections that switch it at once.

    The switch writes the file's header, and SQLite does not apply the busy timeout to it (the
    statement already holds a read lock when it asks for the write lock), so connections opening
    one fresh file together, as workers or processes upgrading it at start do, fail at once with
    'database is locked'. Retry instead: once the file is in WAL, the PRAGMA writes nothing. (The
    sleep blocks this connection's loop, only while a fresh file is being switched.)
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.01)
