"""What the store hands out: users, API keys, chats, messages and streams, as plain records."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Self

from sqlalchemy.engine import Row

__all__ = [
    "STREAM_GROUP_SEPARATOR",
    "ApiKey",
    "Chat",
    "ChatNotFoundError",
    "ChatPosition",
    "KeyedChat",
    "Message",
    "MessageStatus",
    "Role",
    "Started",
    "StreamRecord",
    "User",
    "as_utc",
    "new_id",
    "new_stream_id",
    "utcnow",
]

MessageStatus = Literal["streaming", "done", "error", "stopped", "interrupted"]
Role = Literal["system", "user", "assistant"]


def utcnow() -> datetime:
    """Now, in UTC (everything is stored in UTC)."""
    return datetime.now(UTC)


def new_id(prefix: str = "", nbytes: int = 18) -> str:
    """An unguessable id (`secrets.token_urlsafe`), optionally prefixed."""
    return prefix + secrets.token_urlsafe(nbytes)


#: Between a stream id's placement group and the rest (`RedisBackend` ``placement_separator``).
STREAM_GROUP_SEPARATOR = "/"


def new_stream_id(group: str | None = None) -> str:
    """A new stream's id, unguessable; in placement group ``group`` if one is given (its
    streams share a Redis Cluster slot)."""
    unique = new_id("s_", 24)
    return f"{group}{STREAM_GROUP_SEPARATOR}{unique}" if group else unique


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime: SQLite hands back naive ones, and everything is
    stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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
    last_used_at: datetime | None = None  # refreshed at most once a minute

    @classmethod
    def from_row(cls, row: Row[Any]) -> Self:
        m = row._mapping
        used = m["last_used_at"]
        return cls(
            id=m["id"],
            user_id=m["user_id"],
            name=m["name"],
            created_at=as_utc(m["created_at"]),
            last_used_at=None if used is None else as_utc(used),
        )


class ChatPosition(NamedTuple):
    """Where a chat stands in the list of its user's chats (see `Store.list_chats`)."""

    updated_at: datetime
    chat_id: str


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
            created_at=as_utc(m["created_at"]),
            updated_at=as_utc(m["updated_at"]),
        )

    @property
    def position(self) -> ChatPosition:
        """Its place in its user's list of chats: the next page starts after it."""
        return ChatPosition(self.updated_at, self.id)


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
            created_at=as_utc(m["created_at"]),
            finished_at=as_utc(finished) if finished is not None else None,
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
    def from_row(cls, row: Row[Any], prefix: str = "") -> Self:
        """The stream of ``row``, whose columns are named ``prefix`` + the field's name."""
        m = row._mapping
        return cls(
            id=m[f"{prefix}id"],
            chat_id=m[f"{prefix}chat_id"],
            message_id=m[f"{prefix}message_id"],
            user_message_id=m[f"{prefix}user_message_id"],
            created_at=as_utc(m[f"{prefix}created_at"]),
        )


@dataclass(frozen=True, slots=True)
class KeyedChat:
    """What `Store.chat_for_api_key` finds: the key's user, and that user's chat with the
    stream its ``active_stream_id`` names (``chat`` None: the user has no such chat)."""

    user: User
    chat: Chat | None
    active: StreamRecord | None


@dataclass(frozen=True, slots=True)
class Started:
    """An answer begun by `Store.start_answer`: its stream, and the history it answers (the
    chat's messages up to the user's, in order)."""

    record: StreamRecord
    history: list[Message]
