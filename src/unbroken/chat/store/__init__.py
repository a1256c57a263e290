"""The chat service's SQL store: tables, Alembic migrations, the records and the `Store` queries."""

from unbroken.chat.store.queries import Store
from unbroken.chat.store.records import (
    STREAM_GROUP_SEPARATOR,
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
    new_id,
    new_stream_id,
    utcnow,
)

__all__ = [
    "STREAM_GROUP_SEPARATOR",
    "ApiKey",
    "Chat",
    "ChatNotFoundError",
    "ChatPosition",
    "KeyedChat",
    "Message",
    "MessageStatus",
    "Started",
    "Store",
    "StreamRecord",
    "User",
    "new_id",
    "new_stream_id",
    "utcnow",
]
