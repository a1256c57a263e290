"""The AI SDK's streaming responses for Starlette and FastAPI (extra ``unbroken[fastapi]``).

Each is an `EngineStreamResponse` with the protocol's encoder; see `unbroken.asgi` for how a
response runs, and `EngineStreamResponse.open` for a route that decides before it answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Unpack

from unbroken import StreamEngine
from unbroken.asgi import EngineStreamResponse, ResponseOptions
from unbroken.exceptions import MissingDependencyError
from unbroken.protocols.ai_sdk._convert import ui_message_to_v4
from unbroken.protocols.ai_sdk._data_stream import (
    DATA_STREAM_HEADERS,
    DataStreamEncoder,
    append_message_line,
)
from unbroken.protocols.ai_sdk._targets import ClientTarget
from unbroken.protocols.ai_sdk._ui_stream import UIMessageStreamEncoder

try:
    from starlette.responses import Response
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError("starlette", "fastapi") from exc

__all__ = ["DataStreamResponse", "UIMessageStreamResponse", "append_message_response"]


class UIMessageStreamResponse(EngineStreamResponse):
    """An engine stream as an AI SDK v5+ UI message stream (SSE).

    ``after=-1`` replays everything (what ``useChat`` expects on resume); an offset sends only
    what follows it. ``target``: the client version to fit events to (see `ClientTarget`).
    ``merge_replay``: merge consecutive deltas of one part within a batch (a catch-up, or
    what a ``flush_interval`` gathered). ``options``: see `unbroken.asgi.ResponseOptions`.
    """

    def __init__(
        self,
        engine: StreamEngine,
        stream_id: str,
        *,
        after: int = -1,
        target: str | ClientTarget = "5.0.0",
        merge_replay: bool = True,
        **options: Unpack[ResponseOptions],
    ) -> None:
        encoder = UIMessageStreamEncoder(target=target, merge=merge_replay)
        super().__init__(engine, stream_id, encoder, after=after, **options)


class DataStreamResponse(EngineStreamResponse):
    """An engine stream as an AI SDK v4 data stream (``CODE:JSON`` lines).

    ``merge_replay`` and ``options``: as for `UIMessageStreamResponse`.
    """

    def __init__(
        self,
        engine: StreamEngine,
        stream_id: str,
        *,
        after: int = -1,
        merge_replay: bool = True,
        **options: Unpack[ResponseOptions],
    ) -> None:
        encoder = DataStreamEncoder(merge=merge_replay)
        super().__init__(engine, stream_id, encoder, after=after, **options)


def append_message_response(
    message: Mapping[str, Any], *, headers: Mapping[str, str] | None = None
) -> Response:
    """The v4 resume answer for a stream that already finished: one
    ``2:[{"type":"append-message","message":"<JSON>"}]`` line. ``message`` is a v5 UI message
    (converted with `ui_message_to_v4`) or already a v4 message (it has ``content``)."""
    v4 = dict(message) if isinstance(message.get("content"), str) else ui_message_to_v4(message)
    return Response(
        append_message_line(v4),
        status_code=200,
        headers={**DATA_STREAM_HEADERS, **(headers or {})},
    )
