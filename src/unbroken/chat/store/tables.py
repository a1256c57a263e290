"""The chat service's tables (SQLAlchemy Core). Migrations in ``migrations/versions`` create
exactly this schema; a test compares the two.

Ids are strings: chat and user-message ids come from AI SDK clients, stream ids and
assistant-message ids are generated here with `secrets.token_urlsafe` (unguessable).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = ["api_keys", "app_config", "chats", "messages", "metadata", "streams", "users"]

# Named constraints so migrations can refer to them on every database.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(128)
JSONType = JSON().with_variant(JSONB(), "postgresql")

app_config = Table(
    "app_config",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    # "guest" (issued with a session cookie) or "user" (created by the CLI, holds API keys).
    Column("kind", String(16), nullable=False),
    Column("name", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=True),
    # SHA-256 of the key: keys are 256-bit random tokens, so a fast hash is enough.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)

chats = Table(
    "chats",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("title", String(200), nullable=False),
    Column("visibility", String(16), nullable=False, server_default="private"),
    Column("active_stream_id", ID, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_chats_user_id_updated_at", "user_id", "updated_at"),
)

messages = Table(
    "messages",
    metadata,
    # Surrogate key: the order of messages in a chat (ids are client-chosen, not ordered).
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False),
    Column("chat_id", ID, ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(16), nullable=False),
    Column("parts", JSONType, nullable=False),
    Column("metadata", JSONType, nullable=True),
    # streaming | done | error | stopped | interrupted
    Column("status", String(16), nullable=False),
    # Why an answer ended in error or was interrupted (safe to show to the user).
    Column("error", Text, nullable=True),
    Column("stream_id", ID, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("chat_id", "id", name="uq_messages_chat_id_id"),
)

streams = Table(
    "streams",
    metadata,
    Column("id", ID, primary_key=True),
    Column("chat_id", ID, ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
    # The assistant message this stream produces, and the user message that asked for it.
    Column("message_id", ID, nullable=False),
    Column("user_message_id", ID, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_streams_chat_id_created_at", "chat_id", "created_at"),
)
