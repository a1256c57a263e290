"""`UIMessageAssembler`: the assistant UI message a stream of events builds, computed the way
the AI SDK's ``readUIMessageStream`` (``processUIMessageStream``, ai 5.x, plus the 6.x tool
approval states) computes it. Fields the JavaScript code leaves ``undefined`` are absent.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from unbroken.exceptions import ProtocolError
from unbroken.protocols.ai_sdk._chunks import BaseChunk, UIEvent, event_to_dict

__all__ = ["UIMessageAssembler", "parse_partial_json"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def _merge_objects(base: Any, overrides: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(overrides, dict):
        return overrides
    result = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge_objects(result[key], value)
        else:
            result[key] = value
    return result


class UIMessageAssembler:
    """Feed UI message chunks; read the assembled assistant message.

    ``message``: a previous assistant message to continue (as ``readUIMessageStream``'s
    ``message`` option); a ``start`` with a different ``messageId`` starts over.
    ``strict``: raise `ProtocolError` on an event the client would fail on (a delta without
    its start, an output for an unknown tool call); otherwise skip such events.
    """

    def __init__(self, message: Mapping[str, Any] | None = None, *, strict: bool = True) -> None:
        self.strict = strict
        self._reset(message)

    def _reset(self, message: Mapping[str, Any] | None, message_id: str | None = None) -> None:
        if message is not None and message.get("role") == "assistant":
            self._message: dict[str, Any] = copy.deepcopy(dict(message))
            self._message.setdefault("parts", [])
        else:
            default_id = message.get("id", "") if message is not None else ""
            self._message = {"id": message_id or default_id, "role": "assistant", "parts": []}
        self._text: dict[str, dict[str, Any]] = {}
        self._reasoning: dict[str, dict[str, Any]] = {}
        self._partial: dict[str, dict[str, Any]] = {}
        #: The ``finishReason`` of the ``finish`` chunk, if one came.
        self.finish_reason: str | None = None
        #: The text of the ``error`` chunk, if one came.
        self.error_text: str | None = None
        #: Whether the stream ended with ``finish``, ``error`` or ``abort``.
        self.finished = False
        self.aborted = False

    # -- public ------------------------------------------------------------------------

    @property
    def message(self) -> dict[str, Any]:
        """A snapshot of the message so far: ``{id, role: "assistant", parts, metadata?}``."""
        return copy.deepcopy(self._message)

    @property
    def message_id(self) -> str:
        return str(self._message["id"])

    def feed_all(self, events: Iterable[BaseChunk | Mapping[str, Any]]) -> dict[str, Any]:
        """Feed every event; return the message."""
        for event in events:
            self.feed(event)
        return self.message

    def feed(self, event: BaseChunk | Mapping[str, Any]) -> None:
        """Apply one event to the message."""
        chunk = event_to_dict(event)
        chunk_type = chunk.get("type")
        if not isinstance(chunk_type, str):
            self._fail("a UI message chunk needs a string 'type'")
            return
        try:
            self._apply(chunk_type, chunk)
        except (KeyError, TypeError) as exc:
            self._fail(f"invalid {chunk_type!r} chunk: {exc}")

    # -- the state machine --------------------------------------------------------------

    def _apply(self, chunk_type: str, chunk: UIEvent) -> None:
        parts: list[dict[str, Any]] = self._message["parts"]
        if chunk_type == "text-start":
            part = _defined(type="text", text="", providerMetadata=chunk.get("providerMetadata"))
            part["state"] = "streaming"
            self._text[chunk["id"]] = part
            parts.append(part)
        elif chunk_type in ("text-delta", "reasoning-delta"):
            active = self._text if chunk_type == "text-delta" else self._reasoning
            open_part = active.get(chunk["id"])
            if open_part is None:
                self._fail(f"{chunk_type} for part {chunk['id']!r} that was not started")
                return
            open_part["text"] += chunk["delta"]
            _set_if(open_part, "providerMetadata", chunk.get("providerMetadata"))
        elif chunk_type in ("text-end", "reasoning-end"):
            active = self._text if chunk_type == "text-end" else self._reasoning
            ended = active.pop(chunk["id"], None)
            if ended is None:
                self._fail(f"{chunk_type} for part {chunk['id']!r} that was not started")
                return
            ended["state"] = "done"
            _set_if(ended, "providerMetadata", chunk.get("providerMetadata"))
        elif chunk_type == "reasoning-start":
            part = _defined(
                type="reasoning",
                id=chunk["id"],
                text="",
                providerMetadata=chunk.get("providerMetadata"),
            )
            part["state"] = "streaming"
            self._reasoning[chunk["id"]] = part
            parts.append(part)
        elif chunk_type == "file":
            parts.append({"type": "file", "mediaType": chunk["mediaType"], "url": chunk["url"]})
        elif chunk_type == "source-url":
            parts.append(
                _defined(
                    type="source-url",
                    sourceId=chunk["sourceId"],
                    url=chunk["url"],
                    title=chunk.get("title"),
                    providerMetadata=chunk.get("providerMetadata"),
                )
            )
        elif chunk_type == "source-document":
            parts.append(
                _defined(
                    type="source-document",
                    sourceId=chunk["sourceId"],
                    mediaType=chunk["mediaType"],
                    title=chunk["title"],
                    filename=chunk.get("filename"),
                    providerMetadata=chunk.get("providerMetadata"),
                )
            )
        elif chunk_type.startswith("tool-"):
            self._apply_tool(chunk_type, chunk)
        elif chunk_type == "start-step":
            parts.append({"type": "step-start"})
        elif chunk_type == "finish-step":
            self._text = {}
            self._reasoning = {}
        elif chunk_type == "start":
            message_id = chunk.get("messageId")
            if message_id is not None and message_id != self._message["id"]:
                self._reset(None, message_id)
            self._update_metadata(chunk.get("messageMetadata"))
        elif chunk_type == "finish":
            if chunk.get("finishReason") is not None:
                self.finish_reason = chunk["finishReason"]
            self._update_metadata(chunk.get("messageMetadata"))
            self.finished = True
        elif chunk_type == "message-metadata":
            self._update_metadata(chunk.get("messageMetadata"))
        elif chunk_type == "error":
            self.error_text = str(chunk.get("errorText", ""))
            self.finished = True
        elif chunk_type == "abort":
            self.aborted = True
            self.finished = True
        elif chunk_type.startswith("data-"):
            if chunk.get("transient"):
                return
            existing = None
            if chunk.get("id") is not None:
                existing = next(
                    (p for p in parts if p["type"] == chunk_type and p.get("id") == chunk["id"]),
                    None,
                )
            if existing is not None:
                existing["data"] = chunk.get("data")
            else:
                parts.append(dict(chunk))

    def _update_metadata(self, metadata: Any) -> None:
        if metadata is None:
            return
        current = self._message.get("metadata")
        self._message["metadata"] = (
            _merge_objects(current, metadata) if current is not None else copy.deepcopy(metadata)
        )

    # -- tools -----------------------------------------------------------------------------

    def _step_parts(self) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = self._message["parts"]
        index = len(parts) - 1
        while index >= 0 and parts[index]["type"] != "step-start":
            index -= 1
        return parts[index + 1 :]

    def _find_tool(self, tool_call_id: str, *, current_step: bool = False) -> dict[str, Any] | None:
        parts: list[dict[str, Any]] = self._message["parts"]
        searches: list[list[dict[str, Any]]] = [self._step_parts()]
        if not current_step:
            searches.append(parts)
        part: dict[str, Any]
        for candidates in searches:
            for part in reversed(candidates):
                if _is_tool(part) and part.get("toolCallId") == tool_call_id:
                    return part
        return None

    def _apply_tool(self, chunk_type: str, chunk: UIEvent) -> None:
        tool_call_id: str = chunk["toolCallId"]
        if chunk_type == "tool-input-start":
            dynamic = bool(chunk.get("dynamic"))
            self._partial[tool_call_id] = {
                "text": "",
                "toolName": chunk["toolName"],
                "dynamic": dynamic,
                "title": chunk.get("title"),
            }
            self._update_tool(
                chunk,
                dynamic=dynamic,
                tool_name=chunk["toolName"],
                state="input-streaming",
                provider_executed=chunk.get("providerExecuted", UNSET),
            )
        elif chunk_type == "tool-input-delta":
            partial = self._partial.get(tool_call_id)
            if partial is None:
                self._fail(f"tool-input-delta for tool call {tool_call_id!r} that was not started")
                return
            partial["text"] += chunk["inputTextDelta"]
            self._update_tool(
                chunk,
                dynamic=partial["dynamic"],
                tool_name=partial["toolName"],
                state="input-streaming",
                input=parse_partial_json(partial["text"]),
                rawInput=partial["text"],
                title=partial["title"],
            )
        elif chunk_type == "tool-input-available":
            self._update_tool(
                chunk,
                dynamic=bool(chunk.get("dynamic")),
                tool_name=chunk["toolName"],
                state="input-available",
                input=chunk.get("input"),
                provider_executed=chunk.get("providerExecuted", UNSET),
                provider_metadata=chunk.get("providerMetadata"),
            )
        elif chunk_type == "tool-input-error":
            dynamic = bool(chunk.get("dynamic"))
            self._update_tool(
                chunk,
                dynamic=dynamic,
                tool_name=chunk["toolName"],
                state="output-error",
                input=chunk.get("input") if dynamic else UNSET,
                rawInput=UNSET if dynamic else chunk.get("input"),
                errorText=chunk["errorText"],
                provider_executed=chunk.get("providerExecuted", UNSET),
                provider_metadata=chunk.get("providerMetadata"),
            )
        elif chunk_type in ("tool-output-available", "tool-output-error"):
            part = self._find_tool(tool_call_id)
            if part is None:
                self._fail(f"{chunk_type} for unknown tool call {tool_call_id!r}")
                return
            dynamic = part["type"] == "dynamic-tool"
            name = part["toolName"] if dynamic else part["type"][len("tool-") :]
            fields: dict[str, Any] = {"input": part.get("input", UNSET)}
            if chunk_type == "tool-output-available":
                fields["output"] = chunk.get("output")
                fields["preliminary"] = chunk.get("preliminary", UNSET)
                state = "output-available"
            else:
                fields["errorText"] = chunk["errorText"]
                if not dynamic:
                    fields["rawInput"] = part.get("rawInput", UNSET)
                state = "output-error"
            self._update_tool(
                chunk,
                dynamic=dynamic,
                tool_name=name,
                state=state,
                existing=part,
                provider_executed=chunk.get("providerExecuted", UNSET),
                **fields,
            )
        elif chunk_type in ("tool-approval-request", "tool-output-denied"):
            part = self._find_tool(tool_call_id)
            if part is None:
                self._fail(f"{chunk_type} for unknown tool call {tool_call_id!r}")
                return
            if chunk_type == "tool-approval-request":
                part["state"] = "approval-requested"
                part["approval"] = {"id": chunk["approvalId"]}
            else:
                part["state"] = "output-denied"

    def _update_tool(
        self,
        chunk: UIEvent,
        *,
        dynamic: bool,
        tool_name: str,
        state: str,
        existing: dict[str, Any] | None = None,
        provider_executed: Any = UNSET,
        provider_metadata: Any = None,
        title: Any = None,
        **fields: Any,
    ) -> None:
        tool_call_id = chunk["toolCallId"]
        title = chunk.get("title", title)
        part = existing
        if part is None:
            part = next(
                (
                    p
                    for p in self._step_parts()
                    if (p["type"] == "dynamic-tool") == dynamic
                    and _is_tool(p)
                    and p.get("toolCallId") == tool_call_id
                ),
                None,
            )
        values = {
            key: fields.get(key, UNSET)
            for key in ("input", "output", "errorText", "rawInput", "preliminary")
        }
        if part is not None:
            part["state"] = state
            if dynamic:
                part["toolName"] = tool_name
            for key, value in values.items():
                _assign(part, key, value)
            if provider_executed is not UNSET and provider_executed is not None:
                part["providerExecuted"] = provider_executed
            if provider_metadata is not None and state == "input-available":
                part["callProviderMetadata"] = provider_metadata
            if title is not None:
                part["title"] = title
            return
        new: dict[str, Any] = (
            {"type": "dynamic-tool", "toolName": tool_name}
            if dynamic
            else {"type": f"tool-{tool_name}"}
        )
        new["toolCallId"] = tool_call_id
        new["state"] = state
        for key, value in values.items():
            _assign(new, key, value)
        _assign(new, "providerExecuted", provider_executed)
        if title is not None:
            new["title"] = title
        if provider_metadata is not None:
            new["callProviderMetadata"] = provider_metadata
        self._message["parts"].append(new)

    def _fail(self, message: str) -> None:
        if self.strict:
            raise ProtocolError(message)


def _is_tool(part: Mapping[str, Any]) -> bool:
    kind = part.get("type")
    return isinstance(kind, str) and (kind.startswith("tool-") or kind == "dynamic-tool")


def _assign(target: dict[str, Any], key: str, value: Any) -> None:
    # JavaScript `part.x = undefined` makes the key vanish from the JSON form.
    if value is UNSET:
        target.pop(key, None)
    else:
        target[key] = value


def _set_if(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def _defined(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


# -- partial JSON ----------------------------------------------------------------------------


def parse_partial_json(text: str) -> Any:
    """The value of a JSON text cut anywhere, like the AI SDK's ``parsePartialJson``: open
    strings, arrays and objects are closed, a dangling key or separator is dropped. Returns
    ``UNSET`` when nothing can be made of it."""
    if not text.strip():
        return UNSET
    try:
        return json.loads(text)
    except ValueError:
        pass
    repaired = _repair(text)
    if repaired is None:
        return UNSET
    try:
        return json.loads(repaired)
    except ValueError:
        return UNSET


_LITERALS = ("true", "false", "null")


def _repair(text: str) -> str | None:
    # stack entries: [closer, state]; object states: key, colon, value, comma; arrays: value,
    # comma. `safe` is the longest prefix that is complete once the open containers close.
    stack: list[list[str]] = []
    safe: tuple[int, str] | None = None
    i, n = 0, len(text)

    def closers() -> str:
        return "".join(entry[0] for entry in reversed(stack))

    def value_done(end: int) -> None:
        nonlocal safe
        if stack:
            stack[-1][1] = "comma"
        safe = (end, closers())

    while i < n:
        char = text[i]
        if char in " \t\r\n":
            i += 1
            continue
        state = stack[-1][1] if stack else "value"
        if char == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:  # the text ends inside this string
                if state == "key":
                    break
                body = text[i:n]
                if body.endswith("\\") and not body.endswith("\\\\"):
                    body = body[:-1]
                # a cut \uXXXX escape cannot be closed; drop it
                cut = body.rfind("\\u")
                if cut != -1 and len(body) - cut < 6:
                    body = body[:cut]
                return text[:i] + body + '"' + closers()
            if state == "key":
                stack[-1][1] = "colon"
            else:
                value_done(j + 1)
            i = j + 1
        elif char in "{[":
            stack.append(["}" if char == "{" else "]", "key" if char == "{" else "value"])
            safe = (i + 1, closers())
            i += 1
        elif char in "}]":
            if not stack:
                return None
            stack.pop()
            value_done(i + 1)
            i += 1
        elif char == ":":
            if stack:
                stack[-1][1] = "value"
            i += 1
        elif char == ",":
            if stack:
                stack[-1][1] = "key" if stack[-1][0] == "}" else "value"
            i += 1
        else:
            j = i
            while j < n and text[j] not in ' \t\r\n,:]}"{[':
                j += 1
            token = text[i:j]
            if j >= n:  # the text ends inside this number or literal
                for literal in _LITERALS:
                    if literal.startswith(token):
                        return text[:i] + literal + closers()
                trimmed = token.rstrip(".eE+-")
                if trimmed and trimmed != "-":
                    return text[:i] + trimmed + closers()
                break
            value_done(j)
            i = j
    if stack and stack[-1][1] == "comma" and safe is None:
        return None
    if safe is None:
        return None
    end, close = safe
    return text[:end] + close
