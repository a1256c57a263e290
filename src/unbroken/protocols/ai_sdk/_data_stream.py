"""AI SDK v4 "Data Stream Protocol": ``CODE:JSON`` lines, translated from v5 events.

The v4 client throws on an unknown code or a malformed payload, so only the codes below are
ever written, each with the payload ``@ai-sdk/ui-utils`` 1.2.x checks for:

=========================  ==========================================================
v5 event                   v4 line
=========================  ==========================================================
``start``                  remembered; its ``messageId`` goes out in ``f:``
``start-step``             ``f:{"messageId"}`` (also sent before the first content line
                           of a replay whose stream has no ``start-step``)
``text-delta``             ``0:"…"``
``reasoning-delta``        ``g:"…"``
``tool-input-start``       ``b:{toolCallId, toolName}``
``tool-input-delta``       ``c:{toolCallId, argsTextDelta}``
``tool-input-available``   ``9:{toolCallId, toolName, args}`` (non-object input is wrapped
                           as ``{"value": input}``: v4 requires an object)
``tool-output-available``  ``a:{toolCallId, result}`` (preliminary outputs are skipped)
``tool-output-error``      ``a:{toolCallId, result: {"error": errorText}}``
``tool-input-error``       ``9:`` then ``a:`` with ``{"error": errorText}``
``source-url``             ``h:{sourceType: "url", id, url, title?}``
``file``                   ``k:{data, mimeType}`` for ``data:`` URLs (v4 has no file URLs)
``data-*``                 ``2:[{type, id?, data}]`` (appended to ``useChat().data``)
message metadata           ``8:[metadata]`` (message annotations)
``finish-step``            ``e:{finishReason, isContinued: false}`` (``tool-calls`` after a
                           tool call in the step, else ``stop``)
``finish``                 ``d:{finishReason}`` (``stop`` unless the event says otherwise)
``error``                  ``3:"errorText"``
``abort``                  ``d:{"finishReason": "other"}``: the v4 client accepts any string
                           here and has no "aborted" reason; ``other`` tells a stop apart
                           from a natural ``stop`` in ``onFinish``
=========================  ==========================================================

Everything else (``*-start``/``*-end``, ``source-document``, approvals) has no v4 form and is
left out. The keep-alive is an empty line, which the v4 client skips.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from unbroken._json import compact_json
from unbroken.protocols.ai_sdk._chunks import UIEvent
from unbroken.protocols.ai_sdk._encoding import UIEventStreamEncoder

__all__ = ["DATA_STREAM_HEADERS", "DataStreamEncoder", "append_message_line"]

DATA_STREAM_HEADERS: dict[str, str] = {
    "content-type": "text/plain; charset=utf-8",
    "x-vercel-ai-data-stream": "v1",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}

_V4_FINISH_REASONS = frozenset(
    {"stop", "length", "content-filter", "tool-calls", "error", "other", "unknown"}
)
_DATA_URL_RE = re.compile(r"^data:([^;,]*)(?:;[^,]*)?;base64,(.*)$", re.S)

Line = tuple[str, Any]


class DataStreamEncoder(UIEventStreamEncoder[Line]):
    """Engine items (v5 events) -> v4 data stream lines."""

    headers = DATA_STREAM_HEADERS

    def __init__(self, *, merge: bool = True) -> None:
        super().__init__(merge=merge)
        self._message_id: str | None = None
        self._needs_step = False
        self._step_has_tools = False

    def keepalive(self) -> str:
        return "\n"

    def _translate(self, event: UIEvent) -> list[Line]:
        lines = self._lines(event)
        if self._needs_step and lines and lines[0][0] not in ("f", "d", "e", "3", "8"):
            self._needs_step = False
            lines.insert(0, ("f", {"messageId": self._message_id}))
        return lines

    def _lines(self, event: UIEvent) -> list[Line]:
        chunk_type: str = event["type"]
        get = event.get
        if chunk_type == "start":
            message_id = get("messageId")
            if isinstance(message_id, str):
                self._message_id = message_id
                self._needs_step = True
            return _annotations(get("messageMetadata"))
        if chunk_type == "start-step":
            self._needs_step = False
            self._step_has_tools = False
            if self._message_id is None:
                return []
            return [("f", {"messageId": self._message_id})]
        if chunk_type == "text-delta":
            return [("0", get("delta"))] if isinstance(get("delta"), str) else []
        if chunk_type == "reasoning-delta":
            return [("g", get("delta"))] if isinstance(get("delta"), str) else []
        tool_call_id = get("toolCallId")
        if chunk_type.startswith("tool-") and not isinstance(tool_call_id, str):
            return []
        if chunk_type == "tool-input-start":
            return [("b", {"toolCallId": tool_call_id, "toolName": get("toolName", "")})]
        if chunk_type == "tool-input-delta":
            delta = get("inputTextDelta")
            return [("c", {"toolCallId": tool_call_id, "argsTextDelta": delta})] if delta else []
        if chunk_type in ("tool-input-available", "tool-input-error"):
            self._step_has_tools = True
            call = {"toolCallId": tool_call_id, "toolName": get("toolName", ""), "args": None}
            call["args"] = _args(get("input"))
            lines: list[Line] = [("9", call)]
            if chunk_type == "tool-input-error":
                error = {"error": get("errorText", "")}
                lines.append(("a", {"toolCallId": tool_call_id, "result": error}))
            return lines
        if chunk_type == "tool-output-available":
            if get("preliminary"):
                return []
            return [("a", {"toolCallId": tool_call_id, "result": get("output")})]
        if chunk_type == "tool-output-error":
            error = {"error": get("errorText", "")}
            return [("a", {"toolCallId": tool_call_id, "result": error})]
        if chunk_type == "source-url":
            source: dict[str, Any] = {"sourceType": "url", "id": get("sourceId"), "url": get("url")}
            if isinstance(get("title"), str):
                source["title"] = get("title")
            if isinstance(get("providerMetadata"), Mapping):
                source["providerMetadata"] = get("providerMetadata")
            return [("h", source)]
        if chunk_type == "file":
            match = _DATA_URL_RE.match(str(get("url", "")))
            if match is None:
                return []
            mime = get("mediaType") or match.group(1) or "application/octet-stream"
            return [("k", {"data": match.group(2), "mimeType": mime})]
        if chunk_type.startswith("data-"):
            item = {"type": chunk_type, "id": get("id"), "data": get("data")}
            if item["id"] is None:
                del item["id"]
            return [("2", [item])]
        if chunk_type == "message-metadata":
            return _annotations(get("messageMetadata"))
        if chunk_type == "finish-step":
            reason = "tool-calls" if self._step_has_tools else "stop"
            self._step_has_tools = False
            return [("e", {"finishReason": reason, "isContinued": False})]
        if chunk_type == "finish":
            given = get("finishReason")
            reason = given if given in _V4_FINISH_REASONS else "stop"
            return [*_annotations(get("messageMetadata")), ("d", {"finishReason": reason})]
        if chunk_type == "error":
            return [("3", str(get("errorText", "")))]
        if chunk_type == "abort":
            return [("d", {"finishReason": "other"})]
        return []

    def _format(self, seq: int | None, wire: Line) -> str:
        code, payload = wire
        return f"{code}:{compact_json(payload)}\n"

    def _merge_key(self, wire: Line) -> Any:
        code, payload = wire
        if code in ("0", "g", "2", "8"):
            return code
        if code == "c":
            return (code, payload["toolCallId"])
        return None

    def _merge_pair(self, first: Line, second: Line) -> Line:
        code, payload = first
        if code == "c":
            delta = payload["argsTextDelta"] + second[1]["argsTextDelta"]
            return (code, {**payload, "argsTextDelta": delta})
        return (code, payload + second[1])


def _annotations(metadata: Any) -> list[Line]:
    return [] if metadata is None else [("8", [metadata])]


def _args(value: Any) -> Any:
    # v4 checks `typeof args === "object"`: objects, arrays and null pass.
    if value is None or isinstance(value, Mapping | list):
        return value
    return {"value": value}


def append_message_line(message: Mapping[str, Any]) -> str:
    """The seed's fallback for a finished stream: one ``2:`` line carrying the stored message
    as a JSON *string* (``useAutoResume`` parses it and swaps it into the chat)."""
    item = {"type": "append-message", "message": compact_json(message)}
    return f"2:{compact_json([item])}\n"
