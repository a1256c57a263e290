"""Streaming responses for Starlette and FastAPI (extra ``unbroken[fastapi]``).

A response here only *reads* an engine stream and writes it through a protocol encoder; it
never owns the producer. So a client that leaves (a closed tab, a cut network, a client that
stops reading) ends its own response and nothing else: generation goes on in the engine and
the client can resume later.

How a response runs (the shape of Starlette's ``StreamingResponse.__call__``)::

    task group ─┬─ watch receive() for http.disconnect ──────────────┐ first one to finish
                └─ write: headers, then batches from the reader ─────┘ cancels the other
                     └─ reader task: engine.read(stream, after) -> bounded memory stream

- Batches: everything the reader has ready goes out in one write (a catch-up merges into a few
  frames; live chunks go out as they come).
- Keep-alive: while nothing arrives for ``keepalive`` seconds, a comment (SSE) or an empty
  line (v4) is written, so proxies and browsers keep the connection.
- Send timeout: one write that takes longer than ``send_timeout`` (the client stopped
  reading and the socket buffers are full) drops the connection.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from unbroken._engine import StreamEngine
from unbroken._models import Chunk, StreamEnd
from unbroken.exceptions import (
    BackendError,
    BackendUnavailableError,
    InvalidStreamIdError,
    MissingDependencyError,
    ProtocolError,
    StreamNotFoundError,
    UnbrokenError,
)
from unbroken.protocols.ai_sdk._convert import ui_message_to_v4
from unbroken.protocols.ai_sdk._data_stream import (
    DATA_STREAM_HEADERS,
    DataStreamEncoder,
    append_message_line,
)
from unbroken.protocols.ai_sdk._encoding import StreamEncoder
from unbroken.protocols.ai_sdk._targets import ClientTarget
from unbroken.protocols.ai_sdk._ui_stream import UIMessageStreamEncoder

try:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError("starlette", "fastapi") from exc

__all__ = [
    "SHUTDOWN_STATE_KEY",
    "DataStreamResponse",
    "EngineStreamResponse",
    "UIMessageStreamResponse",
    "append_message_response",
    "error_response",
    "resume_after",
]

logger = logging.getLogger("unbroken")

_AFTER_RE = re.compile(r"^(?:-1|\d{1,18})$")
NOT_FOUND_TEXT = "the stream is no longer available"
#: Lifespan state key: an `anyio.Event` set when the server starts shutting down. Open
#: responses then end at once (without a terminal event, so clients resume elsewhere)
#: instead of being cancelled by the server's graceful-shutdown timeout.
SHUTDOWN_STATE_KEY = "unbroken.shutdown"
READ_FAILED_TEXT = "the stream could not be read; try again"


@dataclass(frozen=True, slots=True)
class _ReadFailed:
    """The stream could not be read. ``retryable``: the backend is unreachable for now, so
    the body ends without a terminal event and the client resumes from its offset (an
    ``error`` event would end the answer for it, although the answer goes on)."""

    message: str
    retryable: bool = False


_Item = Chunk | StreamEnd | _ReadFailed


def error_response(status_code: int, code: str, message: str) -> JSONResponse:
    """The JSON error shape unbroken's HTTP APIs use: ``{"error": {"code", "message"}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code)


def resume_after(request: Request) -> int:
    """The sequence number a resuming client already has: the ``Last-Event-ID`` header (what
    ``EventSource`` sends on reconnect), else the ``after`` query parameter, else -1 (from
    the start). Raises `ProtocolError` for anything but an integer >= -1."""
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        raw = request.query_params.get("after")
    if raw is None or not raw.strip():
        return -1
    raw = raw.strip()
    if not _AFTER_RE.match(raw):
        raise ProtocolError("Last-Event-ID and 'after' must be an integer sequence number >= -1")
    return int(raw)


class EngineStreamResponse(Response):
    """Reads ``stream_id`` from ``engine`` after sequence number ``after`` and writes it with
    ``encoder``. Answers 404 (JSON error) when there is no such stream.

    ``keepalive``: seconds of silence before a keep-alive is written (0 disables).
    ``send_timeout``: seconds one write may take before the client is dropped.
    ``batch_size``: most engine items per write. ``buffer_size``: items read ahead.
    """

    def __init__(
        self,
        engine: StreamEngine,
        stream_id: str,
        encoder: StreamEncoder[Any],
        *,
        after: int = -1,
        keepalive: float = 15.0,
        send_timeout: float = 30.0,
        batch_size: int = 256,
        buffer_size: int = 256,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if after < -1:
            raise ValueError("after must be >= -1")
        if batch_size < 1 or buffer_size < 1:
            raise ValueError("batch_size and buffer_size must be >= 1")
        self.engine = engine
        self.stream_id = stream_id
        self.encoder = encoder
        self.after = after
        self.keepalive = keepalive
        self.send_timeout = send_timeout
        self.batch_size = batch_size
        self.buffer_size = buffer_size
        self.status_code = status_code
        self.background = None
        self.init_headers({**encoder.headers, **(headers or {})})
        #: Why the response ended: "end" (stream ended), "disconnect" (client left),
        #: "timeout" (client stopped reading), "not-found", "shutdown" (the server is
        #: stopping; see SHUTDOWN_STATE_KEY).
        self.outcome: str | None = None
        self._cut = False  # the body ends without a terminal event (see _ReadFailed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self._exists():
            self.outcome = "not-found"
            await error_response(404, "stream_not_found", NOT_FOUND_TEXT)(scope, receive, send)
            return
        shutdown = scope.get("state", {}).get(SHUTDOWN_STATE_KEY)
        async with anyio.create_task_group() as task_group:

            async def watch_disconnect() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                self.outcome = self.outcome or "disconnect"
                task_group.cancel_scope.cancel()

            async def watch_shutdown(event: anyio.Event) -> None:
                await event.wait()
                self.outcome = self.outcome or "shutdown"
                task_group.cancel_scope.cancel()

            task_group.start_soon(watch_disconnect)
            if isinstance(shutdown, anyio.Event):
                task_group.start_soon(watch_shutdown, shutdown)
            await self._respond(send)
            task_group.cancel_scope.cancel()
        if self.outcome == "shutdown":
            # End the body without a terminal event: the client resumes from its offset on
            # another instance, while this one drains its producers.
            await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
        if self.outcome == "timeout":
            logger.info("dropped a client of stream %r: it stopped reading", self.stream_id)

    async def _exists(self) -> bool:
        try:
            return await self.engine.status(self.stream_id) is not None
        except InvalidStreamIdError:
            return False
        except BackendError:
            # Fail open: this process may be producing the stream and serve it from memory.
            return True

    async def _respond(self, send: Send) -> None:
        sender, items = anyio.create_memory_object_stream[_Item](self.buffer_size)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._read, sender)
            try:
                await self._write_all(send, items)
            finally:
                task_group.cancel_scope.cancel()

    async def _read(self, sender: MemoryObjectSendStream[_Item]) -> None:
        # Read one chunk early when resuming: the chunk the client already has tells the
        # encoder whether the stream's own terminal event was delivered.
        start = self.after - 1 if self.after >= 0 else -1
        async with sender:
            try:
                stream = self.engine.read(self.stream_id, after=start)
                try:
                    async for item in stream:
                        await sender.send(item)
                finally:
                    # Close the reader now (not at garbage collection), even when cancelled.
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        with anyio.CancelScope(shield=True):
                            await aclose()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the writer is gone (the client left); nothing to deliver
            except StreamNotFoundError:
                await sender.send(_ReadFailed(NOT_FOUND_TEXT))
            except BackendUnavailableError:
                logger.info("stream %r: backend unreachable; ending this response", self.stream_id)
                await sender.send(_ReadFailed(READ_FAILED_TEXT, retryable=True))
            except UnbrokenError:
                logger.warning("reading stream %r failed", self.stream_id, exc_info=True)
                await sender.send(_ReadFailed(READ_FAILED_TEXT))

    async def _write_all(self, send: Send, items: MemoryObjectReceiveStream[_Item]) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        if not await self._send(send, {**start, "headers": self.raw_headers}):
            return
        idle = self.keepalive if self.keepalive > 0 else math.inf
        encoder = self.encoder
        async with items:
            while not encoder.finished and not self._cut:
                first: _Item | None = None
                with anyio.move_on_after(idle):
                    try:
                        first = await items.receive()
                    except anyio.EndOfStream:
                        first = _ReadFailed(READ_FAILED_TEXT)
                if first is None:
                    if not await self._write(send, encoder.keepalive()):
                        return
                    continue
                batch = await self._batch(first, items)
                text = self._encode(batch)
                if text and not await self._write(send, text):
                    return
        self.outcome = self.outcome or "end"
        await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _batch(self, first: _Item, items: MemoryObjectReceiveStream[_Item]) -> list[_Item]:
        """``first`` and whatever else the reader has ready. The reader gets one turn each
        time the buffer is empty, so a catch-up (read without waiting) becomes one batch
        while a live chunk goes out on its own."""
        batch = [first]
        yielded = False
        while len(batch) < self.batch_size and not isinstance(batch[-1], StreamEnd | _ReadFailed):
            try:
                batch.append(items.receive_nowait())
                yielded = False
            except anyio.WouldBlock:
                if yielded:
                    break
                await anyio.lowlevel.checkpoint()
                yielded = True
            except anyio.EndOfStream:
                break
        return batch

    def _encode(self, batch: list[_Item]) -> str:
        encoder = self.encoder
        out: list[Chunk | StreamEnd] = []
        for item in batch:
            if isinstance(item, Chunk) and item.seq <= self.after:
                encoder.seen(item)
            elif isinstance(item, _ReadFailed):
                if item.retryable:
                    self._cut = True
                    return encoder.encode(out)
                return encoder.encode(out) + encoder.fail(item.message)
            else:
                out.append(item)
        return encoder.encode(out)

    async def _write(self, send: Send, text: str) -> bool:
        message = {"type": "http.response.body", "body": text.encode(), "more_body": True}
        return await self._send(send, message)

    async def _send(self, send: Send, message: dict[str, Any]) -> bool:
        """Send within the timeout; False when the client is gone or stopped reading."""
        with anyio.move_on_after(self.send_timeout) as scope:
            try:
                await send(message)
            except OSError:  # the server reports a vanished client this way (ASGI 2.4)
                self.outcome = self.outcome or "disconnect"
                return False
        if scope.cancelled_caught:
            self.outcome = "timeout"
            return False
        return True


class UIMessageStreamResponse(EngineStreamResponse):
    """An engine stream as an AI SDK v5+ UI message stream (SSE).

    ``after=-1`` replays everything (what ``useChat`` expects on resume); an offset sends only
    what follows it. ``target``: the client version to fit events to (see `ClientTarget`).
    ``merge_replay``: merge consecutive deltas of one part within a batch.
    """

    def __init__(
        self,
        engine: StreamEngine,
        stream_id: str,
        *,
        after: int = -1,
        target: str | ClientTarget = "5.0.0",
        keepalive: float = 15.0,
        merge_replay: bool = True,
        send_timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            engine,
            stream_id,
            UIMessageStreamEncoder(target=target, merge=merge_replay),
            after=after,
            keepalive=keepalive,
            send_timeout=send_timeout,
            headers=headers,
        )


class DataStreamResponse(EngineStreamResponse):
    """An engine stream as an AI SDK v4 data stream (``CODE:JSON`` lines)."""

    def __init__(
        self,
        engine: StreamEngine,
        stream_id: str,
        *,
        after: int = -1,
        keepalive: float = 15.0,
        merge_replay: bool = True,
        send_timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            engine,
            stream_id,
            DataStreamEncoder(merge=merge_replay),
            after=after,
            keepalive=keepalive,
            send_timeout=send_timeout,
            headers=headers,
        )


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
