"""The chat store: every SQL statement the service runs, behind one class.

Access rules live here, not in the routes: each chat query takes the caller's ``user_id`` and
matches on it, so a chat that belongs to someone else is indistinguishable from one that
does not exist (`ChatNotFoundError` / None).

State changes that race between processes are compare-and-set updates (``active_stream_id``
is only set when empty and only cleared while it still names the same stream; an assistant
message is only finalized while it is still ``streaming``), so a stale stop, a duplicate POST
or a late end-of-generation callback can never undo newer work.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Update

from unbroken.chat.store import migrate
from unbroken.chat.store.tables import api_keys, app_config, chats, messages, streams, users

__all__ = [
    "ApiKey",
    "Chat",
    "ChatNotFoundError",
    "Message",
    "MessageStatus",
    "Store",
    "StreamRecord",
    "User",
    "new_id",
    "utcnow",
]

MessageStatus = Literal["streaming", "done", "error", "stopped", "interrupted"]
Role = Literal["system", "user", "assistant"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str = "", nbytes: int = 18) -> str:
    """An unguessable id (`secrets.token_urlsafe`), optionally prefixed."""
    return prefix + secrets.token_urlsafe(nbytes)


# How stale an API key's last_used_at may be (seconds) before a request refreshes it.
_KEY_USE_RESOLUTION = 60.0
# How long a process trusts a key it looked up, and how many it remembers. Keys cannot be
# revoked (nor their users deleted) yet; whatever adds that must forget the key here too.
_KEY_CACHE_SECONDS = 30.0
_KEY_CACHE_SIZE = 10_000


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ChatNotFoundError(LookupError):
    """No chat with that id that the caller may access (missing and foreign look the same)."""

    def __init__(self, chat_id: str) -> None:
        super().__init__(f"no chat with id {chat_id!r}")
        self.chat_id = chat_id


@dataclass(frozen=True, slots=True)
class User:
    id: str
    kind: str
    name: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    user_id: str
    name: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Chat:
    id: str
    user_id: str
    title: str
    visibility: str
    active_stream_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> Self:
        m = row._mapping
        return cls(
            id=m["id"],
            user_id=m["user_id"],
            title=m["title"],
            visibility=m["visibility"],
            active_stream_id=m["active_stream_id"],
            created_at=_utc(m["created_at"]),
            updated_at=_utc(m["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class Message:
    """A stored chat message: an AI SDK ``UIMessage`` plus bookkeeping."""

    id: str
    chat_id: str
    role: str
    parts: list[dict[str, Any]]
    metadata: dict[str, Any] | None
    status: MessageStatus
    error: str | None
    stream_id: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Self:
        m = row._mapping
        finished = m["finished_at"]
        return cls(
            id=m["id"],
            chat_id=m["chat_id"],
            role=m["role"],
            parts=list(m["parts"] or []),
            metadata=m["metadata"],
            status=m["status"],
            error=m["error"],
            stream_id=m["stream_id"],
            created_at=_utc(m["created_at"]),
            finished_at=_utc(finished) if finished is not None else None,
        )

    def to_ui_message(self) -> dict[str, Any]:
        """The AI SDK v5 ``UIMessage`` (``{id, role, parts, metadata?}``)."""
        ui: dict[str, Any] = {"id": self.id, "role": self.role, "parts": self.parts}
        if self.metadata is not None:
            ui["metadata"] = self.metadata
        return ui


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One generation of one assistant message in a chat (a chat has many)."""

    id: str
    chat_id: str
    message_id: str
    user_message_id: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> Self:
        m = row._mapping
        return cls(
            id=m["id"],
            chat_id=m["chat_id"],
            message_id=m["message_id"],
            user_message_id=m["user_message_id"],
            created_at=_utc(m["created_at"]),
        )


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


class Store:
    """The chat service's SQL store (SQLAlchemy 2 async Core). Use as ``async with``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # key hash -> (when it was looked up, its user); see user_for_api_key
        self._key_users: dict[str, tuple[float, User]] = {}

    @classmethod
    def from_url(cls, url: str) -> Self:
        """A store on ``url`` (``sqlite+aiosqlite://…`` or ``postgresql+asyncpg://…``)."""
        if _is_sqlite(url):
            engine = create_async_engine(url, connect_args={"timeout": 30})
            _configure_sqlite(engine)
        else:
            engine = create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        return cls(engine)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.engine.dispose()

    async def upgrade(self) -> bool:
        """Apply pending migrations (see `migrate.upgrade`); returns whether any ran."""
        return await migrate.upgrade(self.engine)

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    # -- configuration ------------------------------------------------------------------

    async def get_or_create_config(self, key: str, make: str) -> str:
        """The stored value of ``key``; stores ``make`` first if there is none.

        Every process sharing the database gets the same value (the first insert wins).
        """
        async with self.engine.connect() as conn:
            found = await conn.scalar(select(app_config.c.value).where(app_config.c.key == key))
        if found is not None:
            return str(found)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(app_config).values(key=key, value=make))
        except IntegrityError:
            pass  # another process stored it first; read theirs
        async with self.engine.connect() as conn:
            return str(await conn.scalar(select(app_config.c.value).where(app_config.c.key == key)))

    # -- users and keys -----------------------------------------------------------------

    async def create_user(self, *, kind: str = "guest", name: str | None = None) -> User:
        user = User(id=new_id("u_"), kind=kind, name=name, created_at=utcnow())
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(users).values(
                    id=user.id, kind=user.kind, name=user.name, created_at=user.created_at
                )
            )
        return user

    async def get_user(self, user_id: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        if row is None:
            return None
        m = row._mapping
        return User(id=m["id"], kind=m["kind"], name=m["name"], created_at=_utc(m["created_at"]))

    async def create_api_key(self, user_id: str, *, name: str | None = None) -> tuple[str, ApiKey]:
        """A new key for ``user_id``: returns the secret (shown once; only its hash is kept)."""
        secret = new_id("ub_", 32)
        record = ApiKey(id=new_id("k_", 9), user_id=user_id, name=name, created_at=utcnow())
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=record.id,
                    user_id=user_id,
                    name=name,
                    key_hash=_hash_key(secret),
                    created_at=record.created_at,
                )
            )
        return secret, record

    async def user_for_api_key(self, secret: str) -> User | None:
        """The owner of the key, or None for an unknown key.

        ``last_used_at`` is refreshed at most once a minute: writing it on every request
        would put a write transaction (and, on SQLite, the database's write lock) in front
        of every resume. A key found is remembered by this store for 30 s, so most requests
        (every resume is one) start without a query: under load, each query waits its turn
        in the event loop several times, which was half a resume's latency. Unknown keys
        are always looked up.
        """
        key_hash = _hash_key(secret)
        cached = self._key_users.get(key_hash)
        if cached is not None and time.monotonic() - cached[0] < _KEY_CACHE_SECONDS:
            return cached[1]
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(users, api_keys.c.last_used_at)
                    .join(api_keys, api_keys.c.user_id == users.c.id)
                    .where(api_keys.c.key_hash == key_hash)
                )
            ).first()
        if row is None:
            return None
        m = row._mapping
        now = utcnow()
        last_used = m["last_used_at"]
        if last_used is None or (now - _utc(last_used)).total_seconds() >= _KEY_USE_RESOLUTION:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(api_keys).where(api_keys.c.key_hash == key_hash).values(last_used_at=now)
                )
        user = User(id=m["id"], kind=m["kind"], name=m["name"], created_at=_utc(m["created_at"]))
        if len(self._key_users) >= _KEY_CACHE_SIZE:
            self._key_users.clear()
        self._key_users[key_hash] = (time.monotonic(), user)
        return user

    # -- chats --------------------------------------------------------------------------

    async def get_chat(self, chat_id: str, user_id: str) -> Chat | None:
        """The chat if it exists and ``user_id`` may access it."""
        async with self.engine.connect() as conn:
            return await self._get_chat(conn, chat_id, user_id)

    async def get_chat_and_active_stream(
        self, chat_id: str, user_id: str
    ) -> tuple[Chat, StreamRecord | None] | None:
        """`get_chat` and the stream its ``active_stream_id`` names, in one query (what every
        resume asks first)."""
        labelled = [column.label(f"stream_{column.name}") for column in streams.c]
        query = (
            select(chats, *labelled)
            .select_from(chats.outerjoin(streams, streams.c.id == chats.c.active_stream_id))
            .where(and_(chats.c.id == chat_id, chats.c.user_id == user_id))
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        m = row._mapping
        record = None
        if m["stream_id"] is not None:
            record = StreamRecord(
                id=m["stream_id"],
                chat_id=m["stream_chat_id"],
                message_id=m["stream_message_id"],
                user_message_id=m["stream_user_message_id"],
                created_at=_utc(m["stream_created_at"]),
            )
        return Chat.from_row(row), record

    @staticmethod
    async def _get_chat(conn: AsyncConnection, chat_id: str, user_id: str) -> Chat | None:
        row = (
            await conn.execute(
                select(chats).where(and_(chats.c.id == chat_id, chats.c.user_id == user_id))
            )
        ).first()
        return Chat.from_row(row) if row is not None else None

    async def get_or_create_chat(self, chat_id: str, user_id: str, *, title: str) -> Chat | None:
        """The caller's chat ``chat_id``, created (owned by the caller) if the id is free.

        None if the id belongs to another user. Concurrent first uses create it once.
        """
        found = await self.get_chat(chat_id, user_id)
        if found is not None:
            return found
        now = utcnow()
        created = Chat(
            id=chat_id,
            user_id=user_id,
            title=title[:200] or "New chat",
            visibility="private",
            active_stream_id=None,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(chats).values(
                        id=created.id,
                        user_id=created.user_id,
                        title=created.title,
                        visibility=created.visibility,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            # Taken: by this user concurrently (fine) or by someone else (None).
            return await self.get_chat(chat_id, user_id)
        return created  # what was just written: no need to read it back

    async def list_chats(self, user_id: str, *, limit: int = 100) -> list[Chat]:
        """The user's chats, most recently updated first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(chats)
                .where(chats.c.user_id == user_id)
                .order_by(chats.c.updated_at.desc(), chats.c.id)
                .limit(limit)
            )
            return [Chat.from_row(row) for row in rows]

    async def delete_chat(self, chat_id: str, user_id: str) -> bool:
        """Delete the chat with its messages and streams; False if the caller has no such chat."""
        async with self.engine.begin() as conn:
            if await self._get_chat(conn, chat_id, user_id) is None:
                return False
            # Explicit deletes: SQLite only cascades with PRAGMA foreign_keys, so do not rely on it.
            await conn.execute(delete(messages).where(messages.c.chat_id == chat_id))
            await conn.execute(delete(streams).where(streams.c.chat_id == chat_id))
            await conn.execute(delete(chats).where(chats.c.id == chat_id))
        return True

    async def chats_with_active_stream(self, *, older_than: float, limit: int) -> list[Chat]:
        """Chats (of every user) whose active stream was set more than ``older_than``
        seconds ago, oldest first: the candidates for orphan repair."""
        cutoff = utcnow() - timedelta(seconds=older_than)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(chats)
                .where(and_(chats.c.active_stream_id.is_not(None), chats.c.updated_at < cutoff))
                .order_by(chats.c.updated_at)
                .limit(limit)
            )
            return [Chat.from_row(row) for row in rows]

    async def clear_active_stream(self, chat_id: str, stream_id: str) -> bool:
        """Compare-and-set: clear ``active_stream_id`` only while it is ``stream_id``."""
        async with self.engine.begin() as conn:
            result = await conn.execute(_release(chat_id, stream_id))
        return bool(result.rowcount)

    # -- messages -----------------------------------------------------------------------

    async def list_messages(
        self, chat_id: str, *, include_streaming: bool = False
    ) -> list[Message]:
        """The chat's messages in order. Answers still being generated are left out unless
        asked for: clients get those from the stream, and must not see them twice."""
        query = select(messages).where(messages.c.chat_id == chat_id)
        if not include_streaming:
            query = query.where(messages.c.status != "streaming")
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(messages.c.pk))
            return [Message.from_row(row) for row in rows]

    async def last_message(self, chat_id: str) -> Message | None:
        """The newest message that is not still being generated."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(messages)
                    .where(and_(messages.c.chat_id == chat_id, messages.c.status != "streaming"))
                    .order_by(messages.c.pk.desc())
                    .limit(1)
                )
            ).first()
        return Message.from_row(row) if row is not None else None

    async def get_message(self, chat_id: str, message_id: str) -> Message | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(messages).where(
                        and_(messages.c.chat_id == chat_id, messages.c.id == message_id)
                    )
                )
            ).first()
        return Message.from_row(row) if row is not None else None

    async def add_user_message(
        self,
        chat_id: str,
        *,
        message_id: str,
        parts: Sequence[Mapping[str, Any]],
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store a user message unless the chat already has one with that id.

        If it already exists, every message after it is deleted instead: the client asked
        again from that point (a retry, ``regenerate`` or v4 ``reload``), and its history no
        longer contains them. Returns whether the message was new.
        """
        now = utcnow()
        try:
            return await self._add_user_message(chat_id, message_id, parts, metadata, now)
        except IntegrityError:
            return False  # the same message, stored concurrently by a duplicate request

    async def _add_user_message(
        self,
        chat_id: str,
        message_id: str,
        parts: Sequence[Mapping[str, Any]],
        metadata: Mapping[str, Any] | None,
        now: datetime,
    ) -> bool:
        async with self.engine.begin() as conn:
            pk = await conn.scalar(
                select(messages.c.pk).where(
                    and_(messages.c.chat_id == chat_id, messages.c.id == message_id)
                )
            )
            if pk is not None:
                await conn.execute(
                    delete(messages).where(and_(messages.c.chat_id == chat_id, messages.c.pk > pk))
                )
                await conn.execute(
                    update(chats).where(chats.c.id == chat_id).values(updated_at=now)
                )
                return False
            await conn.execute(
                insert(messages).values(
                    id=message_id,
                    chat_id=chat_id,
                    role="user",
                    parts=list(parts),
                    metadata=dict(metadata) if metadata is not None else None,
                    status="done",
                    created_at=now,
                    finished_at=now,
                )
            )
            await conn.execute(update(chats).where(chats.c.id == chat_id).values(updated_at=now))
        return True

    async def finalize_message(
        self,
        chat_id: str,
        message_id: str,
        *,
        parts: Sequence[Mapping[str, Any]],
        status: MessageStatus,
        error: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        release_stream: str | None = None,
    ) -> bool:
        """Compare-and-set: store the final content of an answer still ``streaming``.

        The first caller wins (the producer's end callback, a stop, or crash repair); later
        ones change nothing and get False. ``release_stream``: also `clear_active_stream`
        for that stream, in the same transaction (whoever stores an answer releases it).
        """
        values: dict[str, Any] = {
            "parts": list(parts),
            "status": status,
            "error": error,
            "finished_at": utcnow(),
        }
        if metadata is not None:
            values["metadata"] = dict(metadata)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(messages)
                .where(
                    and_(
                        messages.c.chat_id == chat_id,
                        messages.c.id == message_id,
                        messages.c.status == "streaming",
                    )
                )
                .values(**values)
            )
            stored = bool(result.rowcount)
            if release_stream is not None:
                await conn.execute(_release(chat_id, release_stream))
        return stored

    # -- streams ------------------------------------------------------------------------

    async def create_stream(
        self, chat_id: str, *, message_id: str | None = None, user_message_id: str | None = None
    ) -> str:
        """Record a new stream of ``chat_id``; returns its (unguessable) id."""
        stream_id = new_id("s_", 24)
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(streams).values(
                    id=stream_id,
                    chat_id=chat_id,
                    message_id=message_id or new_id("msg_"),
                    user_message_id=user_message_id,
                    created_at=utcnow(),
                )
            )
        return stream_id

    async def begin_generation(
        self, chat_id: str, *, user_message_id: str | None
    ) -> StreamRecord | None:
        """Atomically: make a new stream the chat's active one (only if none is), record it,
        and insert the assistant message as ``streaming`` (it keeps its place in the chat).

        None if the chat already has an active stream (someone else got there first).
        """
        now = utcnow()
        record = StreamRecord(
            id=new_id("s_", 24),
            chat_id=chat_id,
            message_id=new_id("msg_"),
            user_message_id=user_message_id,
            created_at=now,
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(chats)
                .where(and_(chats.c.id == chat_id, chats.c.active_stream_id.is_(None)))
                .values(active_stream_id=record.id, updated_at=now)
            )
            if not result.rowcount:
                return None  # nothing was written; the empty transaction just ends
            await conn.execute(
                insert(streams).values(
                    id=record.id,
                    chat_id=chat_id,
                    message_id=record.message_id,
                    user_message_id=user_message_id,
                    created_at=now,
                )
            )
            await conn.execute(
                insert(messages).values(
                    id=record.message_id,
                    chat_id=chat_id,
                    role="assistant",
                    parts=[],
                    status="streaming",
                    stream_id=record.id,
                    created_at=now,
                )
            )
        return record

    async def abandon_generation(self, record: StreamRecord) -> None:
        """Undo `begin_generation` when the stream could not be started at all."""
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(messages).where(
                    and_(
                        messages.c.chat_id == record.chat_id,
                        messages.c.id == record.message_id,
                        messages.c.status == "streaming",
                    )
                )
            )
            await conn.execute(delete(streams).where(streams.c.id == record.id))
            await conn.execute(
                update(chats)
                .where(and_(chats.c.id == record.chat_id, chats.c.active_stream_id == record.id))
                .values(active_stream_id=None)
            )

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(streams).where(streams.c.id == stream_id))).first()
        return StreamRecord.from_row(row) if row is not None else None

    async def get_streams_by_chat_id(self, chat_id: str, user_id: str) -> list[StreamRecord]:
        """All streams of the chat, oldest first.

        Raises `ChatNotFoundError` if the chat does not exist or ``user_id`` may not access it.
        """
        async with self.engine.connect() as conn:
            if await self._get_chat(conn, chat_id, user_id) is None:
                raise ChatNotFoundError(chat_id)
            rows = await conn.execute(
                select(streams)
                .where(streams.c.chat_id == chat_id)
                .order_by(streams.c.created_at, streams.c.id)
            )
            return [StreamRecord.from_row(row) for row in rows]

    async def count_streaming(self) -> int:
        """How many answers are marked as being generated (across all processes)."""
        async with self.engine.connect() as conn:
            return int(
                await conn.scalar(
                    select(func.count())
                    .select_from(messages)
                    .where(messages.c.status == "streaming")
                )
                or 0
            )


def _release(chat_id: str, stream_id: str) -> Update:
    """Clear the chat's ``active_stream_id`` only while it is ``stream_id``."""
    return (
        update(chats)
        .where(and_(chats.c.id == chat_id, chats.c.active_stream_id == stream_id))
        .values(active_stream_id=None, updated_at=utcnow())
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    from sqlalchemy import event

    @event.listens_for(engine.sync_engine, "connect")
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
