"""Which UI message chunks each AI SDK client version accepts: the one place for versions.

Every client version rejects a chunk whose ``type`` it does not know, and the 5.x and early
6.x/7.x clients also reject unknown *fields* (their zod schemas are strict). So the encoder
fits each event to the target before sending it: unknown types are dropped, unknown fields
are stripped, enum values the target does not know are replaced.

The table below was read from the ``uiMessageChunkSchema`` of the published ``ai`` packages
(every boundary checked against the versions just before and after it):

========  ==============================================================================
5.0.0     the base set (see ``_BASE``)
5.0.7     ``tool-input-error``
5.0.11    ``preliminary`` on ``tool-output-available``
5.0.92    ``finishReason`` on ``finish`` (enum includes ``unknown``)
6.0.0     ``tool-approval-request``, ``tool-output-denied``, ``title`` on tool input chunks;
          ``finishReason`` loses ``unknown``
6.0.15    ``reason`` on ``abort``
7.0.0     ``providerMetadata``/``toolMetadata`` on more tool chunks, approval ``isAutomatic``
          and ``signature``, ``custom`` and ``reasoning-file`` chunks
========  ==============================================================================
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["KNOWN_CHUNK_TYPES", "ClientTarget"]

Kind = Literal["string", "boolean", "object", "any", "finish-reason"]
Version = tuple[int, int, int]

# field name -> (kind, required)
_Fields = dict[str, tuple[Kind, bool]]

_PM: _Fields = {"providerMetadata": ("object", False)}

_BASE: dict[str, _Fields] = {
    "start": {"messageId": ("string", False), "messageMetadata": ("any", False)},
    "start-step": {},
    "finish-step": {},
    "text-start": {"id": ("string", True), **_PM},
    "text-delta": {"id": ("string", True), "delta": ("string", True), **_PM},
    "text-end": {"id": ("string", True), **_PM},
    "reasoning-start": {"id": ("string", True), **_PM},
    "reasoning-delta": {"id": ("string", True), "delta": ("string", True), **_PM},
    "reasoning-end": {"id": ("string", True), **_PM},
    "tool-input-start": {
        "toolCallId": ("string", True),
        "toolName": ("string", True),
        "providerExecuted": ("boolean", False),
        "dynamic": ("boolean", False),
    },
    "tool-input-delta": {"toolCallId": ("string", True), "inputTextDelta": ("string", True)},
    "tool-input-available": {
        "toolCallId": ("string", True),
        "toolName": ("string", True),
        "input": ("any", True),
        "providerExecuted": ("boolean", False),
        "dynamic": ("boolean", False),
        **_PM,
    },
    "tool-output-available": {
        "toolCallId": ("string", True),
        "output": ("any", True),
        "providerExecuted": ("boolean", False),
        "dynamic": ("boolean", False),
    },
    "tool-output-error": {
        "toolCallId": ("string", True),
        "errorText": ("string", True),
        "providerExecuted": ("boolean", False),
        "dynamic": ("boolean", False),
    },
    "source-url": {
        "sourceId": ("string", True),
        "url": ("string", True),
        "title": ("string", False),
        **_PM,
    },
    "source-document": {
        "sourceId": ("string", True),
        "mediaType": ("string", True),
        "title": ("string", True),
        "filename": ("string", False),
        **_PM,
    },
    "file": {"url": ("string", True), "mediaType": ("string", True), **_PM},
    "data-*": {"id": ("string", False), "data": ("any", True), "transient": ("boolean", False)},
    "message-metadata": {"messageMetadata": ("any", True)},
    "finish": {"messageMetadata": ("any", False)},
    "error": {"errorText": ("string", True)},
    "abort": {},
}

# (since, type, fields added). A type not yet in the schema is added whole.
_CHANGES: list[tuple[Version, str, _Fields]] = [
    (
        (5, 0, 7),
        "tool-input-error",
        {
            "toolCallId": ("string", True),
            "toolName": ("string", True),
            "input": ("any", True),
            "providerExecuted": ("boolean", False),
            "dynamic": ("boolean", False),
            "errorText": ("string", True),
            **_PM,
        },
    ),
    ((5, 0, 11), "tool-output-available", {"preliminary": ("boolean", False)}),
    ((5, 0, 92), "finish", {"finishReason": ("finish-reason", False)}),
    (
        (6, 0, 0),
        "tool-approval-request",
        {"approvalId": ("string", True), "toolCallId": ("string", True)},
    ),
    ((6, 0, 0), "tool-output-denied", {"toolCallId": ("string", True)}),
    ((6, 0, 0), "tool-input-start", {"title": ("string", False)}),
    ((6, 0, 0), "tool-input-available", {"title": ("string", False)}),
    ((6, 0, 0), "tool-input-error", {"title": ("string", False)}),
    ((6, 0, 15), "abort", {"reason": ("string", False)}),
    ((7, 0, 0), "tool-input-start", {**_PM, "toolMetadata": ("object", False)}),
    ((7, 0, 0), "tool-input-available", {"toolMetadata": ("object", False)}),
    ((7, 0, 0), "tool-input-error", {"toolMetadata": ("object", False)}),
    ((7, 0, 0), "tool-output-available", {**_PM, "toolMetadata": ("object", False)}),
    ((7, 0, 0), "tool-output-error", {**_PM, "toolMetadata": ("object", False)}),
    (
        (7, 0, 0),
        "tool-approval-request",
        {"isAutomatic": ("boolean", False), "signature": ("string", False)},
    ),
    ((7, 0, 0), "custom", {"kind": ("string", True), **_PM}),
    ((7, 0, 0), "reasoning-file", {"url": ("string", True), "mediaType": ("string", True), **_PM}),
]

_FINISH_REASONS_5 = frozenset(
    {"stop", "length", "content-filter", "tool-calls", "error", "other", "unknown"}
)
_FINISH_REASONS_6 = _FINISH_REASONS_5 - {"unknown"}

#: Every chunk type some supported client version accepts (``data-*`` stands for data parts).
KNOWN_CHUNK_TYPES: frozenset[str] = frozenset(_BASE) | {change[1] for change in _CHANGES}

_VERSION_RE = re.compile(r"^v?(\d{1,3})(?:\.(\d{1,4}))?(?:\.(\d{1,5}))?$")


def _parse_version(text: str) -> Version:
    match = _VERSION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"invalid AI SDK target version {text!r}; use e.g. '5.0.0' or '6'")
    major, minor, patch = (int(group) if group else 0 for group in match.groups())
    if major < 5:
        raise ValueError(
            f"AI SDK {text} does not speak the UI message stream; use the data stream (v4)"
        )
    return (major, minor, patch)


@functools.cache
def _schema(version: Version) -> dict[str, _Fields]:
    schema = {name: dict(fields) for name, fields in _BASE.items()}
    for since, name, fields in _CHANGES:
        if version >= since:
            schema.setdefault(name, {}).update(fields)
    return schema


@dataclass(frozen=True, slots=True)
class ClientTarget:
    """The AI SDK client version a UI message stream is written for.

    Built from a version string: ``"5.0.0"`` (the default: the strictest 5.x client),
    ``"5.0.92"``, ``"6"``, ``"7.0.0"``. Newer targets unlock newer fields and chunk types.
    """

    version: Version

    @classmethod
    def parse(cls, target: str | ClientTarget) -> ClientTarget:
        if isinstance(target, ClientTarget):
            return target
        return cls(_parse_version(target))

    def __str__(self) -> str:
        return ".".join(map(str, self.version))

    def accepts_type(self, chunk_type: str) -> bool:
        """Whether this client knows the chunk type at all."""
        key = "data-*" if chunk_type.startswith("data-") else chunk_type
        return key in _schema(self.version)

    def fit(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        """The event as this client accepts it, or None when it must not be sent.

        Unknown fields are stripped; an unknown type, or a required field that is missing or
        of the wrong kind, drops the event (the client would reject it and fail the stream).
        """
        chunk_type = event.get("type")
        if not isinstance(chunk_type, str):
            return None
        key = "data-*" if chunk_type.startswith("data-") and len(chunk_type) > 5 else chunk_type
        fields = _schema(self.version).get(key)
        if fields is None:
            return None
        out: dict[str, Any] = {"type": chunk_type}
        for name, (kind, required) in fields.items():
            value = event.get(name)
            if value is None and not (required and kind == "any" and name in event):
                if required:
                    return None
                continue
            if kind == "finish-reason":
                allowed = _FINISH_REASONS_5 if self.version < (6, 0, 0) else _FINISH_REASONS_6
                value = value if value in allowed else "other"
            elif not _is_kind(value, kind):
                if required:
                    return None
                continue
            out[name] = value
        return out


def _is_kind(value: object, kind: Kind) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, Mapping)
    return True
