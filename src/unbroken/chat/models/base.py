"""What a chat model produces, independent of any provider and of the wire protocols.

A model turns the conversation (AI SDK ``UIMessage`` dicts, oldest first) into an async
iterator of `ModelEvent`. `unbroken.chat.events.ui_chunks` turns those into UI message chunks.
A model raises `ModelError` with a message safe to show users when the provider fails.
Provider models read their SDK's stream through the `unbroken.integrations` adapters and turn
the UI message chunks those make back into events with `model_events`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ChatModel",
    "Finish",
    "ModelError",
    "ModelEvent",
    "ReasoningDelta",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "message_text",
    "model_events",
]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    tool_call_id: str
    tool_name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    tool_call_id: str
    args_delta: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """The tool call's arguments are complete; ``input`` is the parsed JSON (or the raw text)."""

    tool_call_id: str
    tool_name: str
    input: Any


@dataclass(frozen=True, slots=True)
class Finish:
    """The model finished normally. ``reason`` as in the AI SDK (stop, length, tool-calls…)."""

    reason: str = "stop"


ModelEvent = TextDelta | ReasoningDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | Finish


class ModelError(Exception):
    """The provider failed; ``str(exc)`` is shown to the user, so keep secrets out of it."""


class ChatModel(Protocol):
    """A source of answers. ``name`` is shown at start and recorded in metrics."""

    @property
    def name(self) -> str: ...

    def stream(self, messages: Sequence[dict[str, Any]]) -> AsyncIterator[ModelEvent]:
        """The answer to the conversation ``messages`` (UIMessages, oldest first)."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once when the app shuts down."""
        ...


def message_text(message: dict[str, Any]) -> str:
    """The concatenated text parts of a UIMessage (v5 ``parts``, or v4 ``content``)."""
    parts = message.get("parts")
    if isinstance(parts, list):
        texts = [
            part["text"]
            for part in parts
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ]
        if texts:
            return "".join(texts)
    content = message.get("content")
    return content if isinstance(content, str) else ""


async def model_events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[ModelEvent]:
    """The model events that an adapter's UI message ``chunks`` carry.

    Text, reasoning and tool-call chunks become their events, ``finish`` a `Finish`, and an
    ``error`` chunk a `ModelError` with its (safe) text; the structure chunks are left to
    `unbroken.chat.events.ui_chunks`, which makes them again. ``chunks`` is closed when this
    is, so a stopped answer closes the provider's stream.
    """
    try:
        async for chunk in chunks:
            kind = chunk.get("type")
            if kind == "text-delta":
                yield TextDelta(chunk["delta"])
            elif kind == "reasoning-delta":
                yield ReasoningDelta(chunk["delta"])
            elif kind == "tool-input-start":
                yield ToolCallStart(chunk["toolCallId"], chunk["toolName"])
            elif kind == "tool-input-delta":
                yield ToolCallDelta(chunk["toolCallId"], chunk["inputTextDelta"])
            elif kind == "tool-input-available":
                yield ToolCallEnd(chunk["toolCallId"], chunk["toolName"], chunk["input"])
            elif kind == "finish":
                yield Finish(chunk.get("finishReason") or "stop")
                return
            elif kind == "error":
                raise ModelError(chunk["errorText"])
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
