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

import contextlib
import functools
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from unbroken.chat.store._database import Database, Params
from unbroken.chat.store.records import (
    ApiKey,
    Chat,
    ChatNotFoundError,
    ChatPosition,
    KeyedChat,
    Message,
    MessageStatus,
    Started,
    StreamRecord,
    User,
    as_utc,
    new_id,
    new_stream_id,
    utcnow,
)
from unbroken.chat.store.tables import api_keys, app_config, chats, messages, streams, users

__all__ = ["Store"]

# How stale an API key's last_used_at may be (seconds) before a request refreshes it.
_KEY_USE_RESOLUTION = 60.0


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Store(Database):
    """The chat service's SQL store: every query it runs (see `Database` for how they run).
    Use as ``async with``."""

    def __init__(self, engine: AsyncEngine, *, threaded: Engine | None = None) -> None:
        super().__init__(engine, threaded=threaded)

    # -- configuration ------------------------------------------------------------------

    async def get_or_create_config(self, key: str, make: str) -> str:
        """The stored value of ``key``; stores ``make`` first if there is none.

        Every process sharing the database gets the same value (the first insert wins).
        """
        query = select(app_config.c.value).where(app_config.c.key == key)
        found = await self._scalar(query)
        if found is not None:
            return str(found)
        with contextlib.suppress(IntegrityError):  # another process stored it first
            await self._write(insert(app_config).values(key=key, value=make))
        return str(await self._scalar(query))

    # -- users and keys -----------------------------------------------------------------

    async def create_user(self, *, kind: str = "guest", name: str | None = None) -> User:
        user = User(id=new_id("u_"), kind=kind, name=name, created_at=utcnow())
        await self._write(
            insert(users).values(
                id=user.id, kind=user.kind, name=user.name, created_at=user.created_at
            )
        )
        return user

    async def get_user(self, user_id: str) -> User | None:
        row = await self._first(select(users).where(users.c.id == user_id))
        if row is None:
            return None
        m = row._mapping
        return User(id=m["id"], kind=m["kind"], name=m["name"], created_at=as_utc(m["created_at"]))

    async def create_api_key(self, user_id: str, *, name: str | None = None) -> tuple[str, ApiKey]:
        """A new key for ``user_id``: returns the secret (shown once; only its hash is kept)."""
        secret = new_id("ub_", 32)
        record = ApiKey(id=new_id("k_", 9), user_id=user_id, name=name, created_at=utcnow())
        await self._write(
            insert(api_keys).values(
                id=record.id,
                user_id=user_id,
                name=name,
                key_hash=_hash_key(secret),
                created_at=record.created_at,
            )
        )
        return secret, record

    async def list_api_keys(self, user_id: str | None = None) -> list[ApiKey]:
        """Every API key (``user_id``: that user's), oldest first; never their secrets."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        return [ApiKey.from_row(row) for row in await self._all(query)]

    async def delete_api_key(self, key_id: str) -> ApiKey | None:
        """Delete the key ``key_id`` (the next request with it is refused); None if there is
        no such key."""

        def work(conn: Connection) -> ApiKey | None:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
            if row is None:
                return None
            conn.execute(delete(api_keys).where(api_keys.c.id == key_id))
            return ApiKey.from_row(row)

        return await self._run(work, write=True)

    async def idle_guests(self, *, idle_since: datetime, limit: int = 500) -> list[str]:
        """Guests who stored nothing since ``idle_since`` (see `_idle_guest`), oldest
        first, at most ``limit``."""
        query = (
            select(users.c.id)
            .where(_idle_guest(idle_since))
            .order_by(users.c.created_at, users.c.id)
            .limit(limit)
        )
        return [row[0] for row in await self._all(query)]

    async def count_idle_guests(self, *, idle_since: datetime) -> int:
        """How many guests stored nothing since ``idle_since`` (see `_idle_guest`)."""
        query = select(func.count()).select_from(users).where(_idle_guest(idle_since))
        return int(await self._scalar(query))

    async def delete_idle_guests(self, user_ids: Sequence[str], *, idle_since: datetime) -> int:
        """Delete those of the guests ``user_ids`` still idle since ``idle_since`` (see
        `_idle_guest`), with their chats, messages and streams, in one transaction; how many
        were deleted. A guest who comes back later starts with no chats."""

        def work(conn: Connection) -> int:
            # Looked at again in the transaction: one may have written since it was listed.
            query = select(users.c.id).where(users.c.id.in_(user_ids), _idle_guest(idle_since))
            idle = [row[0] for row in conn.execute(query)]
            if not idle:
                return 0
            _delete_chats(conn, chats.c.user_id.in_(idle))
            return int(conn.execute(delete(users).where(users.c.id.in_(idle))).rowcount)

        return await self._run(work, write=True)

    async def user_for_api_key(self, secret: str) -> User | None:
        """The owner of the key, or None for an unknown key.

        Looked up on every call, never remembered: a key deleted from the database stops
        working at once, in every process. ``last_used_at`` is refreshed at most once a
        minute: writing it on every request would put a write transaction (and, on SQLite,
        the database's write lock) in front of every request.
        """
        key_hash = _hash_key(secret)
        row = await self._first(_KEY_OWNER, {"b_key": key_hash})
        if row is None:
            return None
        await self._note_key_use(key_hash, row._mapping["key_last_used_at"])
        return _owner(row)

    async def chat_for_api_key(self, secret: str, chat_id: str) -> KeyedChat | None:
        """`user_for_api_key` and that user's `get_chat_and_active_stream` in one query,
        what a resume with an API key asks first. None for an unknown key."""
        key_hash = _hash_key(secret)
        row = await self._first(_KEY_CHAT_AND_ACTIVE_STREAM, {"b_key": key_hash, "b_chat": chat_id})
        if row is None:
            return None
        await self._note_key_use(key_hash, row._mapping["key_last_used_at"])
        if row._mapping["id"] is None:
            return KeyedChat(_owner(row), None, None)
        return KeyedChat(_owner(row), Chat.from_row(row), _active_stream(row))

    async def _note_key_use(self, key_hash: str, last_used: datetime | None) -> None:
        now = utcnow()
        if last_used is None or (now - as_utc(last_used)).total_seconds() >= _KEY_USE_RESOLUTION:
            await self._write(
                update(api_keys).where(api_keys.c.key_hash == key_hash).values(last_used_at=now)
            )

    # -- chats --------------------------------------------------------------------------

    async def get_chat(self, chat_id: str, user_id: str) -> Chat | None:
        """The chat if it exists and ``user_id`` may access it."""
        row = await self._first(_SELECT_CHAT, {"b_chat": chat_id, "b_user": user_id})
        return Chat.from_row(row) if row is not None else None

    async def get_chat_and_active_stream(
        self, chat_id: str, user_id: str
    ) -> tuple[Chat, StreamRecord | None] | None:
        """`get_chat` and the stream its ``active_stream_id`` names, in one query (what every
        resume asks first)."""
        row = await self._first(_CHAT_AND_ACTIVE_STREAM, {"b_chat": chat_id, "b_user": user_id})
        if row is None:
            return None
        return Chat.from_row(row), _active_stream(row)

    async def list_chats(
        self, user_id: str, *, limit: int = 100, after: ChatPosition | None = None
    ) -> list[Chat]:
        """The user's chats, most recently updated first (those updated at the same moment
        by id), at most ``limit``; ``after``: only those that come after that position in
        this order (`Chat.position` of the last one listed), so pages never overlap."""
        query = select(chats).where(chats.c.user_id == user_id)
        if after is not None:
            query = query.where(
                or_(
                    chats.c.updated_at < after.updated_at,
                    and_(chats.c.updated_at == after.updated_at, chats.c.id > after.chat_id),
                )
            )
        rows = await self._all(query.order_by(chats.c.updated_at.desc(), chats.c.id).limit(limit))
        return [Chat.from_row(row) for row in rows]

    async def delete_chat(self, chat_id: str, user_id: str) -> bool:
        """Delete the chat with its messages and streams; False if the caller has no such chat."""

        def work(conn: Connection) -> bool:
            if conn.execute(_SELECT_CHAT, {"b_chat": chat_id, "b_user": user_id}).first() is None:
                return False
            _delete_chats(conn, chats.c.id == chat_id)
            return True

        return await self._run(work, write=True)

    async def rename_chat(self, chat_id: str, user_id: str, title: str) -> Chat | None:
        """Give the caller's chat a new title; None if the caller has no such chat."""
        (renamed,) = await self._write(
            update(chats)
            .where(and_(chats.c.id == chat_id, chats.c.user_id == user_id))
            .values(title=title[:200])
        )
        return await self.get_chat(chat_id, user_id) if renamed else None

    async def chats_with_active_stream(self, *, older_than: float, limit: int) -> list[Chat]:
        """Chats (of every user) whose active stream was set more than ``older_than``
        seconds ago, oldest first: the candidates for orphan repair."""
        cutoff = utcnow() - timedelta(seconds=older_than)
        rows = await self._all(
            select(chats)
            .where(and_(chats.c.active_stream_id.is_not(None), chats.c.updated_at < cutoff))
            .order_by(chats.c.updated_at)
            .limit(limit)
        )
        return [Chat.from_row(row) for row in rows]

    async def clear_active_stream(self, chat_id: str, stream_id: str) -> bool:
        """Compare-and-set: clear ``active_stream_id`` only while it is ``stream_id``."""
        (cleared,) = await self._write(_release(chat_id, stream_id))
        return bool(cleared)

    # -- messages -----------------------------------------------------------------------

    async def list_messages(
        self, chat_id: str, *, include_streaming: bool = False
    ) -> list[Message]:
        """The chat's messages in order. Answers still being generated are left out unless
        asked for: clients get those from the stream, and must not see them twice."""
        query = select(messages).where(messages.c.chat_id == chat_id)
        if not include_streaming:
            query = query.where(messages.c.status != "streaming")
        return [Message.from_row(row) for row in await self._all(query.order_by(messages.c.pk))]

    async def last_message(self, chat_id: str) -> Message | None:
        """The newest message that is not still being generated."""
        row = await self._first(
            select(messages)
            .where(and_(messages.c.chat_id == chat_id, messages.c.status != "streaming"))
            .order_by(messages.c.pk.desc())
            .limit(1)
        )
        return Message.from_row(row) if row is not None else None

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
            "b_chat": chat_id,
            "b_message": message_id,
            "parts": list(parts),
            "status": status,
            "error": error,
            "finished_at": utcnow(),
        }
        if metadata is not None:
            values["metadata"] = dict(metadata)
        store = (_STORE_ANSWER, values)  # (the SET clause: the values' columns)
        if release_stream is None:
            (stored,) = await self._write(store)
        else:
            stored, _ = await self._write(store, _release(chat_id, release_stream))
        return bool(stored)

    # -- streams ------------------------------------------------------------------------

    async def start_answer(
        self,
        chat_id: str,
        user_id: str,
        *,
        title: str,
        message_id: str,
        parts: Sequence[Mapping[str, Any]],
        metadata: Mapping[str, Any] | None = None,
        guest: bool = False,
        stream_group: str | None = None,
    ) -> Started | Chat | None:
        """Begin the answer to the user's message ``message_id``, in one transaction.

        The chat is created (owned by ``user_id``, called ``title``) if the id is free; with
        ``guest``, the guest user ``user_id`` is stored with it unless it is already. If it
        has no active stream, a new stream is made its active one (compare-and-set) and
        recorded, the user message is stored (or, if the chat already has it, every message
        after it is deleted: the client asked again from that point, a retry, ``regenerate``
        or v4 ``reload``), and the assistant message is inserted as ``streaming``, so it keeps
        its place in the chat. Returns the stream and the history it answers. The new
        stream's id is in placement group ``stream_group`` if one is given.

        Returns the chat, with nothing written, if it has an active stream (the caller
        deals with that and asks again); None if the id belongs to another user.
        """

        def work(conn: Connection, *, create: bool) -> Started | Chat | None:
            now = utcnow()
            record = StreamRecord(
                id=new_stream_id(stream_group),
                chat_id=chat_id,
                message_id=new_id("msg_"),
                user_message_id=message_id,
                created_at=now,
            )
            whose = {"b_chat": chat_id, "b_user": user_id}
            row = conn.execute(_SELECT_CHAT, whose).first()
            if row is None:
                if not create:
                    return None
                if guest:
                    _store_guest(conn, user_id, now)
                conn.execute(
                    _INSERT_CHAT,
                    {
                        "id": chat_id,
                        "user_id": user_id,
                        "title": title[:200] or "New chat",
                        "visibility": "private",
                        "active_stream_id": record.id,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
            elif row.active_stream_id is not None:
                return Chat.from_row(row)
            elif not _claim(conn, chat_id, record.id, now):
                row = conn.execute(_SELECT_CHAT, whose).first()  # claimed meanwhile
                return Chat.from_row(row) if row is not None else None
            # The stream is this request's from here on: nobody else writes the chat's
            # messages until it is released.
            _put_user_message(conn, chat_id, message_id, parts, metadata, now)
            conn.execute(
                _INSERT_STREAM,
                {
                    "id": record.id,
                    "chat_id": chat_id,
                    "message_id": record.message_id,
                    "user_message_id": message_id,
                    "created_at": now,
                },
            )
            conn.execute(
                _INSERT_MESSAGE,
                {
                    "id": record.message_id,
                    "chat_id": chat_id,
                    "role": "assistant",
                    "parts": [],
                    "status": "streaming",
                    "stream_id": record.id,
                    "created_at": now,
                },
            )
            history = conn.execute(_HISTORY, {"b_chat": chat_id})
            return Started(record, [Message.from_row(row) for row in history])

        try:
            return await self._run(functools.partial(work, create=True), write=True)
        except IntegrityError:
            # The chat was created meanwhile, by this user (use it) or another (None).
            return await self._run(functools.partial(work, create=False), write=True)

    async def abandon_generation(self, record: StreamRecord) -> None:
        """Undo `start_answer` when the stream could not be started at all."""
        await self._write(
            delete(messages).where(
                and_(
                    messages.c.chat_id == record.chat_id,
                    messages.c.id == record.message_id,
                    messages.c.status == "streaming",
                )
            ),
            delete(streams).where(streams.c.id == record.id),
            update(chats)
            .where(and_(chats.c.id == record.chat_id, chats.c.active_stream_id == record.id))
            .values(active_stream_id=None),
        )

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        row = await self._first(select(streams).where(streams.c.id == stream_id))
        return StreamRecord.from_row(row) if row is not None else None

    async def get_streams_by_chat_id(self, chat_id: str, user_id: str) -> list[StreamRecord]:
        """All streams of the chat, oldest first.

        Raises `ChatNotFoundError` if the chat does not exist or ``user_id`` may not access it.
        """

        def work(conn: Connection) -> list[Row[Any]] | None:
            if conn.execute(_SELECT_CHAT, {"b_chat": chat_id, "b_user": user_id}).first() is None:
                return None
            query = (
                select(streams)
                .where(streams.c.chat_id == chat_id)
                .order_by(streams.c.created_at, streams.c.id)
            )
            return list(conn.execute(query))

        rows = await self._run(work)
        if rows is None:
            raise ChatNotFoundError(chat_id)
        return [StreamRecord.from_row(row) for row in rows]


# -- the statements of every answer and resume, built once ---------------------------------
# Building a statement (and its cache key) costs SQLAlchemy more than running it, so these
# are made once, with bound parameters named b_* (a name of their own: a column's name is
# taken by the SET and VALUES clauses).

_SELECT_CHAT = select(chats).where(
    and_(chats.c.id == bindparam("b_chat"), chats.c.user_id == bindparam("b_user"))
)
_STREAM_COLUMNS = [column.label(f"stream_{column.name}") for column in streams.c]
_OWNER_COLUMNS = [
    *[column.label(f"owner_{column.name}") for column in users.c],
    api_keys.c.last_used_at.label("key_last_used_at"),
]
_KEY_OWNER = (
    select(*_OWNER_COLUMNS)
    .select_from(api_keys.join(users, users.c.id == api_keys.c.user_id))
    .where(api_keys.c.key_hash == bindparam("b_key"))
)
_CHAT_AND_ACTIVE_STREAM = (
    select(chats, *_STREAM_COLUMNS)
    .select_from(chats.outerjoin(streams, streams.c.id == chats.c.active_stream_id))
    .where(and_(chats.c.id == bindparam("b_chat"), chats.c.user_id == bindparam("b_user")))
)
# The key's owner, and the owner's chat (NULLs when the owner has no such chat) with its
# active stream: a foreign chat is found exactly like a missing one.
_KEY_CHAT_AND_ACTIVE_STREAM = (
    select(*_OWNER_COLUMNS, chats, *_STREAM_COLUMNS)
    .select_from(
        api_keys.join(users, users.c.id == api_keys.c.user_id)
        .outerjoin(chats, and_(chats.c.id == bindparam("b_chat"), chats.c.user_id == users.c.id))
        .outerjoin(streams, streams.c.id == chats.c.active_stream_id)
    )
    .where(api_keys.c.key_hash == bindparam("b_key"))
)
_CLAIM = (
    update(chats)
    .where(and_(chats.c.id == bindparam("b_chat"), chats.c.active_stream_id.is_(None)))
    .values(active_stream_id=bindparam("b_stream"), updated_at=bindparam("b_now"))
)
_RELEASE = (
    update(chats)
    .where(
        and_(chats.c.id == bindparam("b_chat"), chats.c.active_stream_id == bindparam("b_stream"))
    )
    .values(active_stream_id=None, updated_at=bindparam("b_now"))
)
_MESSAGE_PK = select(messages.c.pk).where(
    and_(messages.c.chat_id == bindparam("b_chat"), messages.c.id == bindparam("b_message"))
)
_EDIT_MESSAGE = update(messages).where(
    and_(messages.c.pk == bindparam("b_pk"), messages.c.role == "user")
)
_DELETE_AFTER = delete(messages).where(
    and_(messages.c.chat_id == bindparam("b_chat"), messages.c.pk > bindparam("b_pk"))
)
_HISTORY = (
    select(messages)
    .where(and_(messages.c.chat_id == bindparam("b_chat"), messages.c.status != "streaming"))
    .order_by(messages.c.pk)
)
_STORE_ANSWER = update(messages).where(
    and_(
        messages.c.chat_id == bindparam("b_chat"),
        messages.c.id == bindparam("b_message"),
        messages.c.status == "streaming",
    )
)
_INSERT_CHAT, _INSERT_MESSAGE, _INSERT_STREAM = insert(chats), insert(messages), insert(streams)


def _owner(row: Row[Any]) -> User:
    m = row._mapping
    return User(
        id=m["owner_id"],
        kind=m["owner_kind"],
        name=m["owner_name"],
        created_at=as_utc(m["owner_created_at"]),
    )


def _active_stream(row: Row[Any]) -> StreamRecord | None:
    """The stream of a row with `_STREAM_COLUMNS`, None if there is none (an outer join)."""
    if row._mapping["stream_id"] is None:
        return None
    return StreamRecord.from_row(row, prefix="stream_")


def _claim(conn: Connection, chat_id: str, stream_id: str, now: datetime) -> bool:
    """Compare-and-set: make ``stream_id`` the chat's active stream if it has none."""
    claimed = conn.execute(_CLAIM, {"b_chat": chat_id, "b_stream": stream_id, "b_now": now})
    return bool(claimed.rowcount)


def _delete_chats(conn: Connection, which: ColumnElement[bool]) -> None:
    """Delete the chats ``which`` selects, with their messages and streams."""
    chosen = select(chats.c.id).where(which).scalar_subquery()
    # Explicit deletes: SQLite only cascades with PRAGMA foreign_keys, so do not rely on it.
    conn.execute(delete(messages).where(messages.c.chat_id.in_(chosen)))
    conn.execute(delete(streams).where(streams.c.chat_id.in_(chosen)))
    conn.execute(delete(chats).where(which))


def _idle_guest(since: datetime) -> ColumnElement[bool]:
    """A guest who stored nothing since ``since``: created before it, without API keys, and
    every chat of theirs last updated before it, none with an answer running."""
    busy_chat = or_(chats.c.updated_at >= since, chats.c.active_stream_id.is_not(None))
    return and_(
        users.c.kind == "guest",
        users.c.created_at < since,
        ~exists().where(api_keys.c.user_id == users.c.id),
        ~exists().where(chats.c.user_id == users.c.id, busy_chat),
    )


def _store_guest(conn: Connection, user_id: str, now: datetime) -> None:
    """Insert the guest user ``user_id`` unless it exists (two first posts may race)."""
    insert_into = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    values = {"id": user_id, "kind": "guest", "name": None, "created_at": now}
    conn.execute(insert_into(users).values(values).on_conflict_do_nothing(index_elements=["id"]))


def _put_user_message(
    conn: Connection,
    chat_id: str,
    message_id: str,
    parts: Sequence[Mapping[str, Any]],
    metadata: Mapping[str, Any] | None,
    now: datetime,
) -> None:
    """Store a user message; if the chat has it already, store its new content (an edit, or
    the same again) and delete every message after it."""
    pk = conn.scalar(_MESSAGE_PK, {"b_chat": chat_id, "b_message": message_id})
    if pk is not None:
        conn.execute(
            _EDIT_MESSAGE,
            {
                "b_pk": pk,
                "parts": list(parts),
                "metadata": dict(metadata) if metadata is not None else None,
            },
        )
        conn.execute(_DELETE_AFTER, {"b_chat": chat_id, "b_pk": pk})
        return
    conn.execute(
        _INSERT_MESSAGE,
        {
            "id": message_id,
            "chat_id": chat_id,
            "role": "user",
            "parts": list(parts),
            "metadata": dict(metadata) if metadata is not None else None,
            "status": "done",
            "created_at": now,
            "finished_at": now,
        },
    )


def _release(chat_id: str, stream_id: str) -> tuple[Executable, Params]:
    """Clear the chat's ``active_stream_id`` only while it is ``stream_id``."""
    return _RELEASE, {"b_chat": chat_id, "b_stream": stream_id, "b_now": utcnow()}
