"""Request bodies: JSON values the store can keep as they are, or a 400."""

from __future__ import annotations

import json
from typing import Any

from unbroken.chat.errors import ApiError

__all__ = ["json_object", "load_json"]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bad_string(value: str) -> bool:
    # NUL cannot be stored by PostgreSQL; lone surrogates cannot be encoded as UTF-8 at all.
    if "\x00" in value:
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def load_json(body: bytes) -> Any:
    """The JSON value of a request body; a 400 for anything the store could not keep as is:
    invalid JSON or UTF-8, NaN/Infinity, nesting too deep to parse, NUL characters or lone
    surrogates in strings."""
    if not body.strip():
        raise ApiError(400, "invalid_request", "the request body is empty; send a JSON object")
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_request", "the request body is not valid JSON") from None
    pending = [value]
    while pending:  # iterative: a deep body must not exhaust the stack here either
        item = pending.pop()
        if isinstance(item, str):
            if _bad_string(item):
                raise ApiError(
                    400,
                    "invalid_request",
                    "strings must not contain NUL characters or unpaired surrogates",
                )
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return value


def json_object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a 400 (bodies must be objects)."""
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the request body must be a JSON object")
    return value
