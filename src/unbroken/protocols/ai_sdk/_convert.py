"""UI messages between their v5 form (``parts`` only) and the v4 ``Message`` form.

v5 ``UIMessage``: ``{id, role, parts, metadata?}``.
v4 ``Message``: ``{id, role, content, parts, createdAt, annotations?}`` with v4 part shapes
(``tool-invocation``, ``source``, ``file`` with base64 ``data``, reasoning ``details``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ui_message_to_v4", "v4_message_to_ui"]

_DATA_URL_RE = re.compile(r"^data:([^;,]*)(?:;[^,]*)?;base64,(.*)$", re.S)
_TOOL_STATES_TO_V4 = {
    "input-streaming": "partial-call",
    "input-available": "call",
    "approval-requested": "call",
    "approval-responded": "call",
    "output-available": "result",
    "output-error": "result",
    "output-denied": "result",
}
_TOOL_STATES_FROM_V4 = {
    "partial-call": "input-streaming",
    "call": "input-available",
    "result": "output-available",
}


def _now_iso() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ui_message_to_v4(
    message: Mapping[str, Any], *, created_at: str | None = None
) -> dict[str, Any]:
    """The v4 ``Message`` for a v5 UI message (what the v4 ``append-message`` fallback sends).

    ``content`` is the text parts joined; data parts become ``annotations``; parts v4 cannot
    show (``source-document``, file URLs that are not ``data:`` URLs) are left out.
    ``createdAt``: ``created_at``, else ``metadata.createdAt``, else now (ISO 8601, UTC).
    """
    parts: list[dict[str, Any]] = []
    annotations: list[Any] = []
    texts: list[str] = []
    step = 0
    for part in message.get("parts") or []:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if not isinstance(kind, str):
            continue
        if kind == "text":
            text = str(part.get("text", ""))
            texts.append(text)
            parts.append({"type": "text", "text": text})
        elif kind == "reasoning":
            text = str(part.get("text", ""))
            parts.append(
                {
                    "type": "reasoning",
                    "reasoning": text,
                    "details": [{"type": "text", "text": text}],
                }
            )
        elif kind == "step-start":
            if any(p["type"] == "step-start" for p in parts):
                step += 1
            parts.append({"type": "step-start"})
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            invocation = _tool_to_v4(part, step)
            if invocation is not None:
                parts.append({"type": "tool-invocation", "toolInvocation": invocation})
        elif kind == "source-url":
            source = {"sourceType": "url", "id": part.get("sourceId"), "url": part.get("url")}
            if part.get("title") is not None:
                source["title"] = part["title"]
            if part.get("providerMetadata") is not None:
                source["providerMetadata"] = part["providerMetadata"]
            parts.append({"type": "source", "source": source})
        elif kind == "file":
            match = _DATA_URL_RE.match(str(part.get("url", "")))
            if match is not None:
                mime = part.get("mediaType") or match.group(1)
                parts.append({"type": "file", "mimeType": mime, "data": match.group(2)})
        elif kind.startswith("data-"):
            annotation = {"type": kind, "data": part.get("data")}
            if part.get("id") is not None:
                annotation["id"] = part["id"]
            annotations.append(annotation)
    metadata = message.get("metadata")
    if created_at is None and isinstance(metadata, Mapping):
        value = metadata.get("createdAt")
        created_at = value if isinstance(value, str) else None
    out: dict[str, Any] = {
        "id": message.get("id"),
        "role": message.get("role"),
        "content": "".join(texts),
        "createdAt": created_at or _now_iso(),
        "parts": parts,
    }
    if annotations:
        out["annotations"] = annotations
    return out


def _tool_to_v4(part: Mapping[str, Any], step: int) -> dict[str, Any] | None:
    kind: str = part["type"]
    tool_name = part.get("toolName") if kind == "dynamic-tool" else kind[len("tool-") :]
    tool_call_id = part.get("toolCallId")
    if not isinstance(tool_call_id, str) or not isinstance(tool_name, str):
        return None
    state = _TOOL_STATES_TO_V4.get(str(part.get("state")), "call")
    invocation: dict[str, Any] = {
        "state": state,
        "step": step,
        "toolCallId": tool_call_id,
        "toolName": tool_name,
        "args": part.get("input"),
    }
    if state == "result":
        if part.get("state") == "output-available":
            invocation["result"] = part.get("output")
        elif part.get("state") == "output-denied":
            invocation["result"] = {"error": "denied"}
        else:
            invocation["result"] = {"error": part.get("errorText", "")}
    return invocation


def v4_message_to_ui(message: Mapping[str, Any]) -> dict[str, Any]:
    """The v5 UI message for a v4 ``Message`` (``parts`` when present, else ``content``).

    Attachments become ``file`` parts; ``createdAt`` and ``annotations`` go to ``metadata``.
    """
    parts: list[dict[str, Any]] = []
    v4_parts = message.get("parts")
    if isinstance(v4_parts, list) and v4_parts:
        for part in v4_parts:
            converted = _part_from_v4(part) if isinstance(part, Mapping) else None
            if converted is not None:
                parts.append(converted)
    elif isinstance(message.get("content"), str) and message["content"]:
        parts.append({"type": "text", "text": message["content"]})
    for attachment in message.get("experimental_attachments") or []:
        if isinstance(attachment, Mapping) and isinstance(attachment.get("url"), str):
            file_part = {
                "type": "file",
                "mediaType": attachment.get("contentType") or "application/octet-stream",
                "url": attachment["url"],
            }
            if isinstance(attachment.get("name"), str):
                file_part["filename"] = attachment["name"]
            parts.append(file_part)
    out: dict[str, Any] = {"id": message.get("id"), "role": message.get("role"), "parts": parts}
    metadata: dict[str, Any] = {}
    if isinstance(message.get("createdAt"), str):
        metadata["createdAt"] = message["createdAt"]
    if isinstance(message.get("annotations"), list):
        metadata["annotations"] = message["annotations"]
    if metadata:
        out["metadata"] = metadata
    return out


def _part_from_v4(part: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "reasoning":
        return {"type": "reasoning", "text": str(part.get("reasoning", ""))}
    if kind == "step-start":
        return {"type": "step-start"}
    if kind == "source":
        source = part.get("source")
        if isinstance(source, Mapping) and isinstance(source.get("url"), str):
            out = {
                "type": "source-url",
                "sourceId": str(source.get("id", "")),
                "url": source["url"],
            }
            if isinstance(source.get("title"), str):
                out["title"] = source["title"]
            return out
        return None
    if kind == "file":
        mime = str(part.get("mimeType", "application/octet-stream"))
        return {
            "type": "file",
            "mediaType": mime,
            "url": f"data:{mime};base64,{part.get('data', '')}",
        }
    if kind == "tool-invocation":
        invocation = part.get("toolInvocation")
        if not isinstance(invocation, Mapping) or not isinstance(invocation.get("toolName"), str):
            return None
        state = _TOOL_STATES_FROM_V4.get(str(invocation.get("state")), "input-available")
        tool: dict[str, Any] = {
            "type": f"tool-{invocation['toolName']}",
            "toolCallId": str(invocation.get("toolCallId", "")),
            "state": state,
            "input": invocation.get("args"),
        }
        if state == "output-available":
            tool["output"] = invocation.get("result")
        return tool
    return None
