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


def redis_backend(url: str, *, key_prefix: str) -> Backend:
    from unbroken.backends.redis import RedisBackend

    return RedisBackend(url, key_prefix=key_prefix)


def load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(400, "invalid_request", "the request body is not valid JSON") from None


def resume_position(request: Request) -> int:
    """Where a v5 resume starts (``Last-Event-ID``, else ``?after=``); -1 = from the start.
    Anything but an integer >= -1 is a `ProtocolError` (400)."""
    return resume_after(request)


def ui_message_stream_response(engine: StreamEngine, stream_id: str, *, after: int) -> Response:
    return UIMessageStreamResponse(engine, stream_id, after=after)


def data_stream_response(engine: StreamEngine, stream_id: str, *, after: int) -> Response:
    return DataStreamResponse(engine, stream_id, after=after)


def empty_data_stream_response() -> Response:
    """v4 "nothing to resume": 200 with an empty body (the v4 client cannot take a 204)."""
    return Response(b"", headers=dict(DATA_STREAM_HEADERS))
