"""The one place the chat service meets the wire-protocol and ASGI layers.

Routes call these functions only, so a change of names in `unbroken.protocols.ai_sdk` or
`unbroken.asgi` is absorbed here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from unbroken import Backend, Chunk, StreamEngine
from unbroken.chat.errors import ApiError
from unbroken.protocols.ai_sdk._assembler import UIMessageAssembler
from unbroken.protocols.ai_sdk._chunks import decode_event, encode_event
from unbroken.protocols.ai_sdk._convert import ui_message_to_v4
from unbroken.protocols.ai_sdk._data_stream import (
    DATA_STREAM_HEADERS,
    DataStreamEncoder,
    append_message_line,
)
from unbroken.protocols.ai_sdk._encoding import StreamEncoder
from unbroken.protocols.ai_sdk._request import ChatRequest, is_valid_id, parse_chat_request
from unbroken.protocols.ai_sdk._ui_stream import UIMessageStreamEncoder

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


def resume_position(after: str | None, last_event_id: str | None) -> int:
    """Where a v5 resume starts: ``?after=`` wins over ``Last-Event-ID``; -1 = from the start."""
    raw = after if after is not None else last_event_id
    if raw is None or not raw.strip():
        return -1
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(400, "invalid_request", "after / Last-Event-ID must be an integer") from None
    if value < -1:
        raise ApiError(400, "invalid_request", "after / Last-Event-ID must be >= -1")
    return value


async def _encoded(
    engine: StreamEngine, stream_id: str, after: int, encoder: StreamEncoder[Any]
) -> AsyncIterator[str]:
    async for item in engine.read(stream_id, after=after):
        if isinstance(item, Chunk):
            yield encoder.encode([item])
        else:
            yield encoder.encode([item])
            return


def ui_message_stream_response(engine: StreamEngine, stream_id: str, *, after: int) -> Response:
    encoder = UIMessageStreamEncoder()
    return StreamingResponse(
        _encoded(engine, stream_id, after, encoder), headers=dict(encoder.headers)
    )


def data_stream_response(engine: StreamEngine, stream_id: str, *, after: int) -> Response:
    encoder = DataStreamEncoder()
    return StreamingResponse(
        _encoded(engine, stream_id, after, encoder), headers=dict(encoder.headers)
    )


def append_message_response(message: dict[str, Any]) -> Response:
    return Response(append_message_line(message), headers=dict(DATA_STREAM_HEADERS))


def empty_data_stream_response() -> Response:
    """v4 "nothing to resume": 200 with an empty body (the v4 client cannot take a 204)."""
    return Response(b"", headers=dict(DATA_STREAM_HEADERS))
