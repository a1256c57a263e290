"""The shapes of the chat service's JSON, for its OpenAPI document.

The routes read and write JSON themselves (bodies are checked by
`unbroken.protocols.ai_sdk.parse_chat_request`, answers built in the routes), so these
models describe; they do not validate. A test fuzzes the service from the document and
checks every answer against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_TITLE",
    "PAGE_MAX",
    "ActiveStream",
    "ApiErrorBody",
    "ChatDetail",
    "ChatList",
    "ChatRequest",
    "ChatSummary",
    "Health",
    "MessagePart",
    "RenameRequest",
    "StopRequest",
    "StopResult",
    "StoredMessage",
    "UIMessage",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}$"
MAX_TITLE = 200
PAGE_MAX = 100  # chats per page of `GET /api/chats` at most, and by default
_ID = Field(pattern=ID_PATTERN, description="1-128 letters, digits or `._:~-`.")


class ApiError(BaseModel):
    code: str = Field(description="A stable, machine-readable reason, e.g. `not_found`.")
    message: str = Field(description="What went wrong and what to do, for people.")


class ApiErrorBody(BaseModel):
    """Every error the service answers: a 4xx for a request it cannot take, a 5xx when it
    cannot serve one now."""

    error: ApiError


class MessagePart(BaseModel):
    """One part of a message, as the AI SDK defines it: ``{"type": "text", "text": …}``,
    ``reasoning``, ``file``, ``source-url``, ``tool-<name>``, ``dynamic-tool``, ``data-<name>``,
    ``step-start``…; other fields depend on the type."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = Field(None, description="For `text` and `reasoning` parts (required).")


class UIMessage(BaseModel):
    """An AI SDK UI message (what ``useChat`` holds)."""

    model_config = ConfigDict(extra="allow")

    id: str = _ID
    role: Literal["system", "user", "assistant"]
    parts: list[MessagePart]
    metadata: Any | None = None


class ChatRequest(BaseModel):
    """What ``useChat`` posts. AI SDK 5 and later send ``trigger`` (the answer is a UI message
    stream); AI SDK 4 sends no ``trigger``, and its messages may carry ``content`` instead of
    ``parts`` (the answer is a data stream). Other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=ID_PATTERN, description="The chat's id (created on first use).")
    messages: list[UIMessage] | None = Field(
        None,
        description="The whole conversation, oldest first; the last message is the user's "
        "new one. A message that is already stored (same id) replaces it, and every later "
        "message is dropped: this is how an edit or a regenerate is sent.",
    )
    message: UIMessage | None = Field(
        None, description="Only the new message (instead of `messages`)."
    )
    trigger: Literal["submit-message", "regenerate-message"] | None = None
    messageId: str | None = Field(
        None, pattern=ID_PATTERN, description="For a regenerate: the message to replace."
    )


class StopRequest(BaseModel):
    """Optional: stop only this answer (so a late stop never cancels a newer one)."""

    model_config = ConfigDict(extra="allow")

    streamId: str | None = None
    messageId: str | None = None


class StopResult(BaseModel):
    chatId: str
    stopped: bool = Field(description="Whether an answer was running and is now stopped.")
    streamId: str | None = None
    messageId: str | None = None
    state: str | None = Field(
        None, description="How that answer ended: `cancelled`, or `done` if it finished first."
    )


class RenameRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    title: str = Field(
        min_length=1,
        max_length=MAX_TITLE,
        pattern=r"\S",
        description="The new title (spaces are collapsed).",
    )


class ChatSummary(BaseModel):
    id: str
    title: str
    visibility: str
    activeStreamId: str | None = Field(description="The answer being generated, if any.")
    createdAt: str | None
    updatedAt: str | None


class ChatList(BaseModel):
    chats: list[ChatSummary] = Field(
        description=f"Most recently updated first, at most `limit` (default {PAGE_MAX})."
    )
    nextCursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class StoredMessage(UIMessage):
    """A stored message: the UI message plus how it ended."""

    status: Literal["done", "error", "stopped", "interrupted"]
    createdAt: str | None
    finishedAt: str | None
    error: str | None = Field(
        None, description="Why an answer failed or was interrupted (safe to show)."
    )


class ActiveStream(BaseModel):
    id: str
    messageId: str = Field(description="The id the answer's message will have.")
    state: str | None = Field(description="`active`, or how it just ended.")
    createdAt: str | None


class ChatDetail(ChatSummary):
    messages: list[StoredMessage] = Field(
        description="Stored messages, oldest first; the answer being generated is not among "
        "them (resume its stream)."
    )
    activeStream: ActiveStream | None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unreachable"]
    streams: Literal["redis", "memory"]
    redis: Literal["ok", "unreachable"] | None = Field(
        None,
        description="With Redis: whether it answered. The service goes on without it (answers "
        "stream from memory), so it does not change `status`.",
    )
    model: str
