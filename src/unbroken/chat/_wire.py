"""The one place the chat service meets the wire-protocol and ASGI layers.

Routes call these functions only, so a change of names in `unbroken.protocols.ai_sdk` or
`unbroken.asgi` is absorbed here.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from unbroken import Backend, StreamEngine
from unbroken.asgi import (
    DataStreamResponse,
    Instead,
    UIMessageStreamResponse,
    append_message_response,
    resume_after,
)
from unbroken.chat.errors import ApiError
from unbroken.protocols.ai_sdk import (
    DATA_STREAM_HEADERS,
    ChatRequest,
    UIMessageAssembler,
    decode_event,
    encode_event,
    is_valid_id,
    parse_chat_request,
    ui_message_to_v4,
)

__all__ = [
    "ChatRequest",
    "UIMessageAssembler",
    "append_message_response",
    "data_stream_response",
    "decode_event",
    "empty_data_stream_response",
    "encode_event",
    "is_valid_id",
    "load_json",
    "parse_chat_request",
    "redis_backend",
    "resume_position",
    "ui_message_stream_response",
    "ui_message_to_v4",
]


def redis_backend(url: str, *, key_prefix: str, write_gather: float) -> Backend:
    from unbroken.backends.redis import RedisBackend

    return RedisBackend(url, key_prefix=key_prefix, write_gather=write_gather)


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


def resume_position(request: Request) -> int:
    """Where a v5 resume starts (``Last-Event-ID``, else ``?after=``); -1 = from the start.
    Anything but an integer >= -1 is a `ProtocolError` (400)."""
    return resume_after(request)


def ui_message_stream_response(
    engine: StreamEngine,
    stream_id: str,
    *,
    after: int,
    flush_interval: float,
    instead: Instead | None = None,
) -> Response:
    return UIMessageStreamResponse(
        engine, stream_id, after=after, flush_interval=flush_interval, instead=instead
    )


def data_stream_response(
    engine: StreamEngine,
    stream_id: str,
    *,
    after: int,
    flush_interval: float,
    instead: Instead | None = None,
) -> Response:
    return DataStreamResponse(
        engine, stream_id, after=after, flush_interval=flush_interval, instead=instead
    )


def empty_data_stream_response() -> Response:
    """v4 "nothing to resume": 200 with an empty body (the v4 client cannot take a 204)."""
    return Response(b"", headers=dict(DATA_STREAM_HEADERS))
