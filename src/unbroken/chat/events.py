"""An answer's events: model events turned into UI message chunks, and the message they build.

Pure transforms, with no store and no engine: `ui_chunks` makes the AI SDK v5 UI message
chunks of one answer, `assemble` and `AssembledAnswer` the ``UIMessage`` those chunks build
(what ``useChat`` shows), and `ProducedAnswer` builds it while the chunks are produced, so
the producer can store its answer without reading its log back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from unbroken import StreamSourceError
from unbroken.chat.models import (
    Finish,
    ModelError,
    ModelEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from unbroken.chat.store import StreamRecord
from unbroken.exceptions import UnbrokenError
from unbroken.protocols.ai_sdk import UIMessageAssembler, decode_event

__all__ = [
    "AssembledAnswer",
    "ProducedAnswer",
    "assemble",
    "decode_events",
    "settled",
    "ui_chunks",
]

logger = logging.getLogger("unbroken.chat")


async def ui_chunks(
    message_id: str, events: AsyncIterator[ModelEvent], *, metadata: dict[str, Any] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The AI SDK v5 UI message chunks for one answer made of ``events``.

    ``start`` (with the server's ``messageId``, so every replay updates the same message),
    ``start-step``, well-nested parts, ``finish-step``, ``finish``. A `ModelError` closes the
    open part and is re-raised as `StreamSourceError` (the stream ends in ``error`` with its
    message, which the wire encoders turn into an ``error`` chunk).
    """
    start: dict[str, Any] = {"type": "start", "messageId": message_id}
    if metadata:
        start["messageMetadata"] = metadata
    yield start
    yield {"type": "start-step"}
    open_part: tuple[str, str] | None = None  # (kind, id) of the text/reasoning part open
    counter = 0

    def close() -> dict[str, Any] | None:
        nonlocal open_part
        if open_part is None:
            return None
        kind, part_id = open_part
        open_part = None
        return {"type": f"{kind}-end", "id": part_id}

    try:
        async for event in events:
            if isinstance(event, TextDelta | ReasoningDelta):
                if not event.text:
                    continue
                kind = "text" if isinstance(event, TextDelta) else "reasoning"
                if open_part is None or open_part[0] != kind:
                    if (end := close()) is not None:
                        yield end
                    counter += 1
                    open_part = (kind, f"{kind}-{counter}")
                    yield {"type": f"{kind}-start", "id": open_part[1]}
                yield {"type": f"{kind}-delta", "id": open_part[1], "delta": event.text}
            elif isinstance(event, ToolCallStart):
                if (end := close()) is not None:
                    yield end
                yield {
                    "type": "tool-input-start",
                    "toolCallId": event.tool_call_id,
                    "toolName": event.tool_name,
                }
            elif isinstance(event, ToolCallDelta):
                yield {
                    "type": "tool-input-delta",
                    "toolCallId": event.tool_call_id,
                    "inputTextDelta": event.args_delta,
                }
            elif isinstance(event, ToolCallEnd):
                yield {
                    "type": "tool-input-available",
                    "toolCallId": event.tool_call_id,
                    "toolName": event.tool_name,
                    "input": event.input,
                }
            elif isinstance(event, Finish):
                if (end := close()) is not None:
                    yield end
                yield {"type": "finish-step"}
                yield {"type": "finish", "finishReason": event.reason}
                return
    except ModelError as exc:
        if (end := close()) is not None:
            yield end
        raise StreamSourceError(str(exc)) from exc
    # The model stopped without saying it finished: end the message cleanly anyway.
    if (end := close()) is not None:
        yield end
    yield {"type": "finish-step"}
    yield {"type": "finish", "finishReason": "stop"}


def assemble(message_id: str, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The assistant ``UIMessage`` that ``events`` build (what ``useChat`` would show)."""
    return AssembledAnswer.of(message_id, events).message


@dataclass(frozen=True)
class AssembledAnswer:
    """An answer as it is stored: the message its events build, and the type of its last
    event (a stop that lost the race with the end is stored as done)."""

    message: dict[str, Any]
    last_type: str | None

    @classmethod
    def of(cls, message_id: str, events: Sequence[dict[str, Any]]) -> AssembledAnswer:
        """The answer ``events`` build, in order."""
        message: dict[str, Any] = _assembler(message_id).feed_all(events)
        message["id"] = message_id
        last = events[-1].get("type") if events else None
        return cls(message, last if isinstance(last, str) else None)


def settled(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` as it is stored once its answer ended: a text or reasoning part cut off
    by a stop, an error or a lost worker is ``done`` (nothing more will come), not
    ``streaming``."""
    parts = message.get("parts")
    if not isinstance(parts, list) or not any(
        isinstance(part, dict) and part.get("state") == "streaming" for part in parts
    ):
        return message
    fixed = [
        {**part, "state": "done"}
        if isinstance(part, dict)
        and part.get("state") == "streaming"
        and part.get("type") in ("text", "reasoning")
        else part
        for part in parts
    ]
    return {**message, "parts": fixed}


def _assembler(message_id: str) -> UIMessageAssembler:
    # Not strict: a stored answer is kept even if some event in it is malformed.
    return UIMessageAssembler({"id": message_id, "role": "assistant", "parts": []}, strict=False)


def decode_events(stream_id: str, encoded: Iterable[str]) -> list[dict[str, Any]]:
    """The events of a stream's chunks, skipping (and logging) any that is not one."""
    events: list[dict[str, Any]] = []
    for data in encoded:
        try:
            events.append(decode_event(data))
        except UnbrokenError:
            logger.warning("stream %r holds a chunk that is not an event", stream_id)
    return events


class ProducedAnswer:
    """An answer as its producer writes it: the message its events build, built as they are
    produced, and the events as their JSON text (the strings the log holds too), for an
    answer whose log ends early."""

    def __init__(self, record: StreamRecord) -> None:
        self._record = record
        self._events: list[str] = []
        self._assembler = _assembler(record.message_id)
        self._last_type: str | None = None

    def add(self, event: dict[str, Any], encoded: str) -> None:
        """Take the next event produced, and ``encoded``, the chunk it is written as."""
        self._events.append(encoded)
        self._assembler.feed(event)
        self._last_type = event["type"]

    def as_logged(self, chunk_count: int) -> AssembledAnswer:
        """The answer the log's first ``chunk_count`` chunks make: the first events
        produced, one chunk each, in order."""
        if chunk_count == len(self._events):  # the usual end: the log holds every event
            message: dict[str, Any] = self._assembler.message
            message["id"] = self._record.message_id
            return AssembledAnswer(message, self._last_type)
        # A stop or a lost backend kept the last events out of the log: assemble the rest.
        events = decode_events(self._record.id, self._events[:chunk_count])
        return AssembledAnswer.of(self._record.message_id, events)
