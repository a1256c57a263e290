"""Chat request bodies as the AI SDK clients send them, parsed and checked.

- v5+ ``DefaultChatTransport``: ``{id, messages, trigger, messageId?, ...extra}``
- vercel/ai-chatbot (v5): ``{id, message, ...extra}`` (only the new message; no trigger)
- v4 ``useChat``: ``{id, messages, ...extra}``: no ``trigger`` (that is how v4 is told apart)

Messages are normalized to v5 UI messages ``{id, role, parts, metadata?}``. v4 messages come
without ids unless the client sets ``sendExtraMessageFields``; they get generated ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from unbroken.exceptions import ProtocolError
from unbroken.protocols.ai_sdk._builder import generate_id
from unbroken.protocols.ai_sdk._convert import v4_message_to_ui

__all__ = ["ChatRequest", "is_valid_id", "parse_chat_request"]

Trigger = Literal["submit-message", "regenerate-message"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}$")
_ROLES = frozenset({"system", "user", "assistant"})
_KNOWN_KEYS = frozenset({"id", "messages", "message", "trigger", "messageId"})
MAX_MESSAGES = 10_000
MAX_PARTS = 10_000


def is_valid_id(value: object) -> bool:
    """Ids unbroken accepts for chats and messages: 1-128 characters of ``A-Z a-z 0-9 . _ :
    ~ -``, starting with a letter or digit (what ``generateId`` and UUIDs produce)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A parsed chat POST body.

    ``protocol``: which wire protocol to answer in (``v4`` data stream or ``v5`` UI message
    stream). ``messages``: v5 UI messages, oldest first. ``trigger``: ``submit-message`` or
    ``regenerate-message``. ``message_id``: for a regenerate, the message to replace.
    ``extra``: the body's other top-level keys (e.g. the app's ``selectedChatModel``).
    """

    protocol: Literal["v4", "v5"]
    chat_id: str
    messages: list[dict[str, Any]]
    trigger: Trigger = "submit-message"
    message_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def last_user_message(self) -> dict[str, Any] | None:
        """The newest message with role ``user``, if any."""
        message: dict[str, Any]
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message
        return None


def parse_chat_request(body: bytes | str | Mapping[str, Any]) -> ChatRequest:
    """Parse and check a chat request body. Raises `ProtocolError` with a message fit for a
    4xx response when the body is not a valid request."""
    data = _load(body)
    chat_id = data.get("id")
    if chat_id is None:
        raise ProtocolError("the request body needs the chat 'id'")
    if not is_valid_id(chat_id):
        raise ProtocolError(
            "the chat 'id' must be 1-128 letters, digits or '._:~-', starting with a letter"
            " or digit"
        )
    extra = {key: value for key, value in data.items() if key not in _KNOWN_KEYS}
    message_id = data.get("messageId")
    if message_id is not None and not is_valid_id(message_id):
        raise ProtocolError("'messageId' must be a valid message id")

    if "trigger" in data:
        trigger = data["trigger"]
        if trigger == "submit-message" or trigger == "regenerate-message":
            raw = _message_list(data.get("messages"))
            messages = [_ui_message(message, index) for index, message in enumerate(raw)]
            return ChatRequest("v5", chat_id, messages, trigger, message_id, extra)
        raise ProtocolError("'trigger' must be 'submit-message' or 'regenerate-message'")

    if "message" in data and "messages" not in data:
        message = _ui_message(data["message"], 0)
        return ChatRequest("v5", chat_id, [message], "submit-message", message_id, extra)

    raw = _message_list(data.get("messages"))
    messages = []
    for index, message in enumerate(raw):
        if isinstance(message, Mapping) and message.get("role") == "data":
            continue  # v4 "data" messages carry nothing for the model
        messages.append(_v4_message(message, index))
    return ChatRequest("v4", chat_id, messages, "submit-message", message_id, extra)


def _load(body: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, bytes | str):
        if not body:
            raise ProtocolError("the request body is empty; send a JSON object")
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise ProtocolError("the request body is not valid JSON") from exc
        except RecursionError as exc:  # nested thousands deep: refuse, don't crash
            raise ProtocolError("the request body is nested too deeply") from exc
    if not isinstance(body, Mapping):
        raise ProtocolError("the request body must be a JSON object")
    return body


def _message_list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError("'messages' must be a list of messages")
    if len(value) > MAX_MESSAGES:
        raise ProtocolError(f"too many messages (at most {MAX_MESSAGES})")
    return value


def _check_common(message: object, index: int, *, id_required: bool = True) -> Mapping[str, Any]:
    if not isinstance(message, Mapping):
        raise ProtocolError(f"message {index} must be an object")
    if not is_valid_id(message.get("id")) and (id_required or message.get("id") is not None):
        raise ProtocolError(f"message {index} needs a valid 'id'")
    if message.get("role") not in _ROLES:
        raise ProtocolError(f"message {index} has an invalid 'role' (system, user or assistant)")
    return message


def _ui_message(message: object, index: int) -> dict[str, Any]:
    checked = _check_common(message, index)
    parts = checked.get("parts")
    if not isinstance(parts, list):
        raise ProtocolError(f"message {index} needs a 'parts' list")
    if len(parts) > MAX_PARTS:
        raise ProtocolError(f"message {index} has too many parts (at most {MAX_PARTS})")
    for number, part in enumerate(parts):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise ProtocolError(f"part {number} of message {index} needs a string 'type'")
        if part["type"] in ("text", "reasoning") and not isinstance(part.get("text"), str):
            raise ProtocolError(f"{part['type']} part {number} of message {index} needs 'text'")
    out: dict[str, Any] = {
        "id": checked["id"],
        "role": checked["role"],
        "parts": [dict(part) for part in parts],
    }
    if checked.get("metadata") is not None:
        out["metadata"] = checked["metadata"]
    return out


def _v4_message(message: object, index: int) -> dict[str, Any]:
    # v4 `useChat` leaves ids out unless `sendExtraMessageFields` is set: make one up.
    checked = _check_common(message, index, id_required=False)
    if checked.get("id") is None:
        checked = {**checked, "id": generate_id("msg-")}
    content = checked.get("content")
    parts = checked.get("parts")
    if content is not None and not isinstance(content, str):
        raise ProtocolError(f"message {index} has a non-string 'content'")
    if parts is not None and not isinstance(parts, list):
        raise ProtocolError(f"message {index} has a non-list 'parts'")
    if content is None and not parts:
        raise ProtocolError(f"message {index} needs 'content' or 'parts'")
    return v4_message_to_ui(checked)
