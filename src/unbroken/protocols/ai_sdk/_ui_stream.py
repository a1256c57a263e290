"""AI SDK v5+ "UI Message Stream": SSE, one JSON chunk per event, ``data: [DONE]`` last.

Each frame carries ``id: <seq>`` (the sequence number of the last stored chunk in it), so a
client that reconnects with ``Last-Event-ID`` gets exactly what it missed. Frames the encoder
makes up itself (the terminal ``finish``/``error``/``abort``) carry no id.
"""

from __future__ import annotations

from typing import Any

from unbroken._json import compact_json
from unbroken._sse import sse_comment, sse_event
from unbroken.protocols.ai_sdk._chunks import UIEvent
from unbroken.protocols.ai_sdk._encoding import UIEventStreamEncoder
from unbroken.protocols.ai_sdk._targets import ClientTarget

__all__ = ["UI_MESSAGE_STREAM_HEADERS", "UIMessageStreamEncoder"]

UI_MESSAGE_STREAM_HEADERS: dict[str, str] = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "connection": "keep-alive",
    "x-vercel-ai-ui-message-stream": "v1",
    "x-accel-buffering": "no",
}

_DELTA_FIELD = {"text-delta": "delta", "reasoning-delta": "delta"}


class UIMessageStreamEncoder(UIEventStreamEncoder[UIEvent]):
    """Engine items -> UI message stream SSE text, fitted to one client version.

    ``target`` is the oldest ``ai`` version the client may run (default ``"5.0.0"``, the
    strictest); events it would reject are never sent to it (see `ClientTarget`).
    """

    headers = UI_MESSAGE_STREAM_HEADERS

    def __init__(self, *, target: str | ClientTarget = "5.0.0", merge: bool = True) -> None:
        super().__init__(merge=merge)
        self.target = ClientTarget.parse(target)
        self._tool_calls: set[str] = set()

    def keepalive(self) -> str:
        return sse_comment("keep-alive")

    def _observe(self, event: UIEvent) -> None:
        super()._observe(event)
        if event["type"] in ("tool-input-start", "tool-input-available"):
            tool_call_id = event.get("toolCallId")
            if isinstance(tool_call_id, str):
                self._tool_calls.add(tool_call_id)

    def _translate(self, event: UIEvent) -> list[UIEvent]:
        chunk_type = event["type"]
        if chunk_type == "tool-input-error" and not self.target.accepts_type(chunk_type):
            # ai < 5.0.7: report the failed call as a failed output of a call it knows.
            if event.get("toolCallId") not in self._tool_calls:
                return []
            event = {**event, "type": "tool-output-error"}
        elif (
            chunk_type == "tool-output-available"
            and event.get("preliminary")
            and self.target.version < (5, 0, 11)
        ):
            return []  # the client cannot tell a preliminary output from the final one
        fitted = self.target.fit(event)
        return [] if fitted is None else [fitted]

    def _format(self, seq: int | None, wire: UIEvent) -> str:
        data = compact_json(wire)
        return sse_event(data, id=None if seq is None else str(seq))

    def _as_stored(self, event: UIEvent, wire: UIEvent, data: str) -> str | None:
        # Fitting dropped no field and changed no value; the stored text is one line (JSON
        # whitespace may hold line breaks, which SSE would split).
        if wire == event and "\n" not in data and "\r" not in data:
            return data
        return None

    def _format_stored(self, seq: int, data: str) -> str:
        return sse_event(data, id=str(seq))

    def _close(self) -> str:
        return sse_event("[DONE]")

    def _merge_key(self, wire: UIEvent) -> Any:
        chunk_type = wire["type"]
        if chunk_type in _DELTA_FIELD:
            return (chunk_type, wire["id"])
        if chunk_type == "tool-input-delta":
            return (chunk_type, wire["toolCallId"])
        return None

    def _merge_pair(self, first: UIEvent, second: UIEvent) -> UIEvent:
        merged = dict(second)
        field = _DELTA_FIELD.get(first["type"], "inputTextDelta")
        merged[field] = first[field] + second[field]
        # The client keeps the last provider metadata it was given.
        if "providerMetadata" not in second and "providerMetadata" in first:
            merged["providerMetadata"] = first["providerMetadata"]
        return merged
