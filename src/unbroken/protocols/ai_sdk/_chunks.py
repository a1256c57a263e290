"""The v5 UI message chunks: one class per chunk type, named after the upstream union members
(``ai/src/ui-message-stream/ui-message-chunks.ts``), plus plain-dict interop.

The dict form (camelCase keys, ``type`` first, optional fields omitted) is the canonical one:
it is what streams store (one compact JSON event per engine chunk) and what encoders read.
The classes are typed constructors for it: ``TextDeltaChunk(id="t1", delta="Hi").to_dict()``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from unbroken._json import strict_compact_json
from unbroken.exceptions import ProtocolError
from unbroken.protocols.ai_sdk._targets import KNOWN_CHUNK_TYPES

__all__ = [
    "AbortChunk",
    "BaseChunk",
    "DataChunk",
    "ErrorChunk",
    "FileChunk",
    "FinishChunk",
    "FinishReason",
    "FinishStepChunk",
    "MessageMetadataChunk",
    "ReasoningDeltaChunk",
    "ReasoningEndChunk",
    "ReasoningStartChunk",
    "SourceDocumentChunk",
    "SourceUrlChunk",
    "StartChunk",
    "StartStepChunk",
    "TextDeltaChunk",
    "TextEndChunk",
    "TextStartChunk",
    "ToolApprovalRequestChunk",
    "ToolInputAvailableChunk",
    "ToolInputDeltaChunk",
    "ToolInputErrorChunk",
    "ToolInputStartChunk",
    "ToolOutputAvailableChunk",
    "ToolOutputDeniedChunk",
    "ToolOutputErrorChunk",
    "UIEvent",
    "UIMessageChunk",
    "chunk_from_dict",
    "decode_event",
    "encode_event",
    "event_to_dict",
]

#: A UI message chunk in its plain form: a JSON object with a ``type``.
UIEvent = dict[str, Any]
ProviderMetadata = dict[str, dict[str, Any]]
FinishReason = Literal[
    "stop", "length", "content-filter", "tool-calls", "error", "other", "unknown"
]

_CAMEL_RE = re.compile(r"_([a-z])")


def _camel(name: str) -> str:
    return _CAMEL_RE.sub(lambda m: m.group(1).upper(), name)


class BaseChunk:
    """Common behaviour of the chunk classes: the camelCase dict form."""

    __slots__ = ()
    type: str

    def to_dict(self) -> UIEvent:
        """The wire form: camelCase keys, ``type`` first, unset optional fields left out."""
        out: UIEvent = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[_camel(f.name)] = value
        return out


_chunk = dataclass(frozen=True, slots=True, kw_only=True)


@_chunk
class StartChunk(BaseChunk):
    """Opens an assistant message. Send a server-generated ``message_id``: replays carry the
    same id, so a client replaces the message instead of appending a duplicate."""

    type: Literal["start"] = field(default="start", init=False)
    message_id: str | None = None
    message_metadata: Any = None


@_chunk
class StartStepChunk(BaseChunk):
    """Opens one model call (step); the client adds a ``step-start`` part."""

    type: Literal["start-step"] = field(default="start-step", init=False)


@_chunk
class FinishStepChunk(BaseChunk):
    """Closes one model call; the client forgets which text/reasoning parts were open."""

    type: Literal["finish-step"] = field(default="finish-step", init=False)


@_chunk
class TextStartChunk(BaseChunk):
    type: Literal["text-start"] = field(default="text-start", init=False)
    id: str
    provider_metadata: ProviderMetadata | None = None


@_chunk
class TextDeltaChunk(BaseChunk):
    type: Literal["text-delta"] = field(default="text-delta", init=False)
    id: str
    delta: str
    provider_metadata: ProviderMetadata | None = None


@_chunk
class TextEndChunk(BaseChunk):
    type: Literal["text-end"] = field(default="text-end", init=False)
    id: str
    provider_metadata: ProviderMetadata | None = None


@_chunk
class ReasoningStartChunk(BaseChunk):
    type: Literal["reasoning-start"] = field(default="reasoning-start", init=False)
    id: str
    provider_metadata: ProviderMetadata | None = None


@_chunk
class ReasoningDeltaChunk(BaseChunk):
    type: Literal["reasoning-delta"] = field(default="reasoning-delta", init=False)
    id: str
    delta: str
    provider_metadata: ProviderMetadata | None = None


@_chunk
class ReasoningEndChunk(BaseChunk):
    type: Literal["reasoning-end"] = field(default="reasoning-end", init=False)
    id: str
    provider_metadata: ProviderMetadata | None = None


@_chunk
class ToolInputStartChunk(BaseChunk):
    type: Literal["tool-input-start"] = field(default="tool-input-start", init=False)
    tool_call_id: str
    tool_name: str
    provider_executed: bool | None = None
    dynamic: bool | None = None
    title: str | None = None  # ai >= 6.0.0


@_chunk
class ToolInputDeltaChunk(BaseChunk):
    type: Literal["tool-input-delta"] = field(default="tool-input-delta", init=False)
    tool_call_id: str
    input_text_delta: str


@_chunk
class ToolInputAvailableChunk(BaseChunk):
    type: Literal["tool-input-available"] = field(default="tool-input-available", init=False)
    tool_call_id: str
    tool_name: str
    input: Any
    provider_executed: bool | None = None
    provider_metadata: ProviderMetadata | None = None
    dynamic: bool | None = None
    title: str | None = None  # ai >= 6.0.0


@_chunk
class ToolInputErrorChunk(BaseChunk):
    """The model produced an invalid tool call (ai >= 5.0.7; older clients get a
    ``tool-output-error`` instead when they know the call)."""

    type: Literal["tool-input-error"] = field(default="tool-input-error", init=False)
    tool_call_id: str
    tool_name: str
    input: Any
    error_text: str
    provider_executed: bool | None = None
    provider_metadata: ProviderMetadata | None = None
    dynamic: bool | None = None
    title: str | None = None  # ai >= 6.0.0


@_chunk
class ToolOutputAvailableChunk(BaseChunk):
    type: Literal["tool-output-available"] = field(default="tool-output-available", init=False)
    tool_call_id: str
    output: Any
    provider_executed: bool | None = None
    dynamic: bool | None = None
    preliminary: bool | None = None  # ai >= 5.0.11; older clients never see preliminary ones


@_chunk
class ToolOutputErrorChunk(BaseChunk):
    type: Literal["tool-output-error"] = field(default="tool-output-error", init=False)
    tool_call_id: str
    error_text: str
    provider_executed: bool | None = None
    dynamic: bool | None = None


@_chunk
class ToolApprovalRequestChunk(BaseChunk):
    """Ask the user to approve a tool call (ai >= 6.0.0 only)."""

    type: Literal["tool-approval-request"] = field(default="tool-approval-request", init=False)
    approval_id: str
    tool_call_id: str


@_chunk
class ToolOutputDeniedChunk(BaseChunk):
    """The user denied a tool call (ai >= 6.0.0 only)."""

    type: Literal["tool-output-denied"] = field(default="tool-output-denied", init=False)
    tool_call_id: str


@_chunk
class SourceUrlChunk(BaseChunk):
    type: Literal["source-url"] = field(default="source-url", init=False)
    source_id: str
    url: str
    title: str | None = None
    provider_metadata: ProviderMetadata | None = None


@_chunk
class SourceDocumentChunk(BaseChunk):
    type: Literal["source-document"] = field(default="source-document", init=False)
    source_id: str
    media_type: str
    title: str
    filename: str | None = None
    provider_metadata: ProviderMetadata | None = None


@_chunk
class FileChunk(BaseChunk):
    type: Literal["file"] = field(default="file", init=False)
    url: str
    media_type: str
    provider_metadata: ProviderMetadata | None = None


@_chunk
class DataChunk(BaseChunk):
    """A custom ``data-<name>`` part. With ``id``, a later chunk of the same type and id
    replaces the part's data; ``transient`` chunks reach ``onData`` but not the message."""

    type: str
    data: Any
    id: str | None = None
    transient: bool | None = None

    def __post_init__(self) -> None:
        if not self.type.startswith("data-") or len(self.type) <= 5:
            raise ValueError(f"a data chunk type must look like 'data-<name>', not {self.type!r}")


@_chunk
class MessageMetadataChunk(BaseChunk):
    type: Literal["message-metadata"] = field(default="message-metadata", init=False)
    message_metadata: Any


@_chunk
class FinishChunk(BaseChunk):
    """Ends the message. ``finish_reason`` reaches ai >= 5.0.92 clients only."""

    type: Literal["finish"] = field(default="finish", init=False)
    finish_reason: FinishReason | None = None
    message_metadata: Any = None


@_chunk
class ErrorChunk(BaseChunk):
    """Ends the stream in error for ``useChat``; ``error_text`` is shown to the user."""

    type: Literal["error"] = field(default="error", init=False)
    error_text: str


@_chunk
class AbortChunk(BaseChunk):
    """The generation was stopped. ``reason`` reaches ai >= 6.0.15 clients only."""

    type: Literal["abort"] = field(default="abort", init=False)
    reason: str | None = None


UIMessageChunk = (
    StartChunk
    | StartStepChunk
    | FinishStepChunk
    | TextStartChunk
    | TextDeltaChunk
    | TextEndChunk
    | ReasoningStartChunk
    | ReasoningDeltaChunk
    | ReasoningEndChunk
    | ToolInputStartChunk
    | ToolInputDeltaChunk
    | ToolInputAvailableChunk
    | ToolInputErrorChunk
    | ToolOutputAvailableChunk
    | ToolOutputErrorChunk
    | ToolApprovalRequestChunk
    | ToolOutputDeniedChunk
    | SourceUrlChunk
    | SourceDocumentChunk
    | FileChunk
    | DataChunk
    | MessageMetadataChunk
    | FinishChunk
    | ErrorChunk
    | AbortChunk
)


def _type_of(cls: type[BaseChunk]) -> str:
    return next(str(f.default) for f in dataclasses.fields(cls) if f.name == "type")  # type: ignore[arg-type]


_CLASSES: dict[str, type[BaseChunk]] = {
    _type_of(cls): cls
    for cls in (
        StartChunk,
        StartStepChunk,
        FinishStepChunk,
        TextStartChunk,
        TextDeltaChunk,
        TextEndChunk,
        ReasoningStartChunk,
        ReasoningDeltaChunk,
        ReasoningEndChunk,
        ToolInputStartChunk,
        ToolInputDeltaChunk,
        ToolInputAvailableChunk,
        ToolInputErrorChunk,
        ToolOutputAvailableChunk,
        ToolOutputErrorChunk,
        ToolApprovalRequestChunk,
        ToolOutputDeniedChunk,
        SourceUrlChunk,
        SourceDocumentChunk,
        FileChunk,
        MessageMetadataChunk,
        FinishChunk,
        ErrorChunk,
        AbortChunk,
    )
}


def event_to_dict(event: BaseChunk | Mapping[str, Any]) -> UIEvent:
    """The plain form of an event given as a chunk object or a mapping (copied)."""
    if isinstance(event, BaseChunk):
        return event.to_dict()
    if isinstance(event, Mapping):
        return dict(event)
    raise ProtocolError(f"a UI message chunk must be a chunk object or a mapping, not {event!r}")


def _check_type(event: Mapping[str, Any]) -> str:
    chunk_type = event.get("type")
    if not isinstance(chunk_type, str):
        raise ProtocolError("a UI message chunk needs a string 'type'")
    if chunk_type.startswith("data-"):
        if len(chunk_type) == 5:
            raise ProtocolError("a data chunk type needs a name after 'data-'")
    elif chunk_type not in KNOWN_CHUNK_TYPES:
        raise ProtocolError(f"unknown UI message chunk type {chunk_type!r}")
    return chunk_type


def chunk_from_dict(event: Mapping[str, Any]) -> UIMessageChunk:
    """The typed chunk for a plain event. Unknown fields are ignored (newer clients' extras);
    an unknown type or a missing required field raises `ProtocolError`."""
    chunk_type = _check_type(event)
    cls: type[BaseChunk] = (
        DataChunk if chunk_type.startswith("data-") else _CLASSES.get(chunk_type, BaseChunk)
    )
    if cls is BaseChunk:
        raise ProtocolError(f"UI message chunk type {chunk_type!r} has no class here")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        wire = _camel(f.name)
        if wire in event:
            kwargs[f.name] = event[wire]
        elif f.default is dataclasses.MISSING:
            raise ProtocolError(f"UI message chunk {chunk_type!r} lacks {wire!r}")
    try:
        return cls(**kwargs)  # type: ignore[return-value]
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"invalid UI message chunk {chunk_type!r}: {exc}") from exc


def encode_event(event: BaseChunk | Mapping[str, Any]) -> str:
    """One event as compact JSON: the string stored as one engine chunk.

    Raises `ProtocolError` for an unknown type or a value JSON cannot carry.
    """
    data = event_to_dict(event)
    _check_type(data)
    try:
        return strict_compact_json(data)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"UI message chunk is not JSON-serializable: {exc}") from exc


def decode_event(data: str) -> UIEvent:
    """The event stored in one engine chunk. Raises `ProtocolError` if it is not one."""
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise ProtocolError("stored chunk is not a JSON UI message chunk") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("stored chunk is not a JSON object with a 'type'")
    return event
