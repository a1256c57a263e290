"""Helpers for producers: build a well-formed event sequence, feed it to the engine."""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Any

from unbroken.protocols.ai_sdk._chunks import BaseChunk, UIEvent, encode_event

__all__ = ["UIMessageStreamBuilder", "generate_id", "ui_events_to_chunks"]

_ALPHABET = string.ascii_letters + string.digits


def generate_id(prefix: str = "", size: int = 16) -> str:
    """A random id like the AI SDK's ``generateId``: ``size`` letters and digits."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(size))


def _defined(**fields: Any) -> UIEvent:
    return {key: value for key, value in fields.items() if value is not None}


class UIMessageStreamBuilder:
    """Produces the events of one assistant message, in an order every client accepts.

    Like ``createUIMessageStream`` + ``streamText`` in the AI SDK: the message id is generated
    on the server (``message_id``) and sent in ``start``; each method returns the events to
    send (a list, possibly empty). The builder opens what is needed first (``start``, a step,
    a text or reasoning part) and closes open parts and the step before ``finish``.

    >>> b = UIMessageStreamBuilder("m1")
    >>> [e["type"] for e in b.text("Hi") + b.finish()]
    ['start', 'start-step', 'text-start', 'text-delta', 'text-end', 'finish-step', 'finish']
    """

    def __init__(self, message_id: str | None = None) -> None:
        self.message_id = message_id or generate_id("msg-")
        self._started = False
        self._step_open = False
        self._open: tuple[str, str] | None = None  # ("text" | "reasoning", part id)
        self._counter = 0
        self._tool_inputs_started: set[str] = set()

    def _next_id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}-{self._counter}"

    # -- structure -------------------------------------------------------------------------

    def start(self, *, metadata: Any = None) -> list[UIEvent]:
        """The ``start`` event with the message id (once; later calls return nothing)."""
        if self._started:
            return []
        self._started = True
        return [_defined(type="start", messageId=self.message_id, messageMetadata=metadata)]

    def start_step(self) -> list[UIEvent]:
        """Open a new step (one model call), closing the previous one."""
        events = self.start() + self.finish_step()
        self._step_open = True
        return [*events, {"type": "start-step"}]

    def finish_step(self) -> list[UIEvent]:
        """Close the open part and the open step, if any."""
        events = self.close_part()
        if self._step_open:
            self._step_open = False
            events.append({"type": "finish-step"})
        return events

    def close_part(self) -> list[UIEvent]:
        """End the open text or reasoning part, if any."""
        if self._open is None:
            return []
        kind, part_id = self._open
        self._open = None
        return [{"type": f"{kind}-end", "id": part_id}]

    def _content(self) -> list[UIEvent]:
        return self.start_step() if not self._step_open else self.start()

    def _part(self, kind: str, delta: str, provider_metadata: Any) -> list[UIEvent]:
        events = self._content()
        if self._open is None or self._open[0] != kind:
            events += self.close_part()
            part_id = self._next_id(kind)
            self._open = (kind, part_id)
            events.append({"type": f"{kind}-start", "id": part_id})
        if delta:
            events.append(
                _defined(
                    type=f"{kind}-delta",
                    id=self._open[1],
                    delta=delta,
                    providerMetadata=provider_metadata,
                )
            )
        return events

    # -- content ---------------------------------------------------------------------------

    def text(self, delta: str, *, provider_metadata: Any = None) -> list[UIEvent]:
        """Append text, opening a text part if none is open."""
        return self._part("text", delta, provider_metadata)

    def reasoning(self, delta: str, *, provider_metadata: Any = None) -> list[UIEvent]:
        """Append reasoning, opening a reasoning part if none is open."""
        return self._part("reasoning", delta, provider_metadata)

    def tool_input_start(
        self,
        tool_call_id: str,
        tool_name: str,
        *,
        dynamic: bool | None = None,
        provider_executed: bool | None = None,
    ) -> list[UIEvent]:
        """Announce a tool call whose input will stream (``tool_input_delta``)."""
        events = self._content() + self.close_part()
        self._tool_inputs_started.add(tool_call_id)
        events.append(
            _defined(
                type="tool-input-start",
                toolCallId=tool_call_id,
                toolName=tool_name,
                providerExecuted=provider_executed,
                dynamic=dynamic,
            )
        )
        return events

    def tool_input_delta(self, tool_call_id: str, delta: str) -> list[UIEvent]:
        """A piece of a streaming tool call's JSON input."""
        return [{"type": "tool-input-delta", "toolCallId": tool_call_id, "inputTextDelta": delta}]

    def tool_call(
        self,
        tool_call_id: str,
        tool_name: str,
        input: Any,
        *,
        dynamic: bool | None = None,
        provider_executed: bool | None = None,
    ) -> list[UIEvent]:
        """A complete tool call (``tool-input-start`` first unless it was already sent)."""
        events: list[UIEvent] = []
        if tool_call_id not in self._tool_inputs_started:
            events += self.tool_input_start(
                tool_call_id, tool_name, dynamic=dynamic, provider_executed=provider_executed
            )
        events.append(
            _defined(
                type="tool-input-available",
                toolCallId=tool_call_id,
                toolName=tool_name,
                input=None,
                providerExecuted=provider_executed,
                dynamic=dynamic,
            )
            | {"input": input}
        )
        return events

    def tool_result(
        self,
        tool_call_id: str,
        output: Any,
        *,
        preliminary: bool | None = None,
        dynamic: bool | None = None,
        provider_executed: bool | None = None,
    ) -> list[UIEvent]:
        """The output of a tool call."""
        event = _defined(
            type="tool-output-available",
            toolCallId=tool_call_id,
            providerExecuted=provider_executed,
            dynamic=dynamic,
            preliminary=preliminary,
        )
        return [{**event, "output": output}]

    def tool_error(
        self, tool_call_id: str, error_text: str, *, dynamic: bool | None = None
    ) -> list[UIEvent]:
        """A tool call that failed while running."""
        return [
            _defined(
                type="tool-output-error",
                toolCallId=tool_call_id,
                errorText=error_text,
                dynamic=dynamic,
            )
        ]

    def data(
        self, name: str, data: Any, *, id: str | None = None, transient: bool = False
    ) -> list[UIEvent]:
        """A ``data-<name>`` part (``transient``: delivered to ``onData``, not kept)."""
        event: UIEvent = {"type": f"data-{name}"}
        if id is not None:
            event["id"] = id
        event["data"] = data
        if transient:
            event["transient"] = True
        return [*self.start(), event]

    def source_url(
        self, url: str, *, source_id: str | None = None, title: str | None = None
    ) -> list[UIEvent]:
        """A URL source the answer cites."""
        source_id = source_id or self._next_id("source")
        return [
            *self._content(),
            _defined(type="source-url", sourceId=source_id, url=url, title=title),
        ]

    def source_document(
        self,
        title: str,
        media_type: str,
        *,
        source_id: str | None = None,
        filename: str | None = None,
    ) -> list[UIEvent]:
        """A document source the answer cites."""
        source_id = source_id or self._next_id("source")
        event = _defined(
            type="source-document",
            sourceId=source_id,
            mediaType=media_type,
            title=title,
            filename=filename,
        )
        return [*self._content(), event]

    def file(self, url: str, media_type: str) -> list[UIEvent]:
        """A file part (``url`` may be a ``data:`` URL)."""
        return [*self._content(), {"type": "file", "url": url, "mediaType": media_type}]

    def metadata(self, metadata: Any) -> list[UIEvent]:
        """Message metadata, merged into what the client already has."""
        return [*self.start(), {"type": "message-metadata", "messageMetadata": metadata}]

    # -- endings ---------------------------------------------------------------------------

    def finish(self, *, finish_reason: str | None = None, metadata: Any = None) -> list[UIEvent]:
        """Close everything and end the message."""
        events = self.start() + self.finish_step()
        events.append(_defined(type="finish", finishReason=finish_reason, messageMetadata=metadata))
        return events

    def error(self, error_text: str) -> list[UIEvent]:
        """End the message in error (``useChat`` shows ``error_text``)."""
        return [*self.start(), {"type": "error", "errorText": error_text}]

    def abort(self, reason: str | None = None) -> list[UIEvent]:
        """End the message as stopped."""
        return [*self.start(), _defined(type="abort", reason=reason)]


async def ui_events_to_chunks(
    events: AsyncIterable[BaseChunk | Mapping[str, Any] | Sequence[BaseChunk | Mapping[str, Any]]],
) -> AsyncIterator[str]:
    """Engine chunks for a source of UI message events: one compact JSON event per chunk.

    Items may be single events or lists of them (what the builder's methods return).
    Raises `ProtocolError` on an event that is not a UI message chunk.
    """
    async for item in events:
        if isinstance(item, BaseChunk | Mapping):
            yield encode_event(item)
        else:
            for event in item:
                yield encode_event(event)
