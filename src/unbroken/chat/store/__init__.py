"""The chat service's SQL store: tables, Alembic migrations and the `Store` queries."""

from unbroken.chat.store.queries import (
    ApiKey,
    Chat,
    ChatNotFoundError,
    Message,
    MessageStatus,
    Started,
    Store,
    StreamRecord,
    User,
    new_id,
    utcnow,
)

__all__ = [
    "ApiKey",
    "Chat",
    "ChatNotFoundError",
    "Message",
    "MessageStatus",
    "Started",
    "Store",
    "StreamRecord",
    "User",
    "new_id",
    "utcnow",
]
