"""Streaming responses for Starlette and FastAPI (extra ``unbroken[fastapi]``).

A response here only *reads* an engine stream and writes it through a protocol encoder; it
never owns the producer. So a client that leaves (a closed tab, a cut network, a client that
stops reading) ends its own response and nothing else: generation goes on in the engine and
the client can resume later.

How a response runs (the shape of Starlette's ``StreamingResponse.__call__``)::

    task group ─┬─ watch receive() for http.disconnect ────────┐ the first one to finish
                └─ write: engine.read_batches(), one write each ┘ cancels the other
    on each of the engine's liveness ticks (`StreamEngine.on_tick`, every lease_ttl / 3):
                   a send stuck for send_timeout, or the server shutting down, ends it

- Batches: the engine hands over everything there is to read at once, so a catch-up goes out
  in a few writes and a live stream in one write per wake-up. The response reads in its own
  task: one chunk costs one task switch from the producer, as plain streaming would.
- Keep-alive: while nothing arrives for ``keepalive`` seconds, a comment (SSE) or an empty
  line (v4) is written, so proxies and browsers keep the connection (the engine's heartbeat:
  no timer per wait).
- Send timeout: a write that takes longer than ``send_timeout`` (the client stopped reading
  and the socket buffers are full) drops the connection, noticed on the engine's next
  liveness tick (no timer per write, no watchdog task per response).
- Flush interval (off by default): after a write, the response waits ``flush_interval``
  seconds before it reads again, so what arrived meanwhile goes out as one write, with its
  text deltas merged. A token then reaches the client up to that much later, and the
  server writes (and the client parses) a fraction of the frames: at 30 tokens/s, 0.05 s
  halves them. Nothing waits when the stream is idle: the first token after a pause that
  long goes out at once.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from unbroken._engine import OpenedStream, StreamEngine
from unbroken._models import Chunk, StreamEnd
from unbroken.exceptions import (
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
    "Instead",
    "UIMessageStreamResponse",
    "append_message_response",
    "error_response",
    "resume_after",
    "unavailable_response",
]

logger = logging.getLogger("unbroken")

_AFTER_RE = re.compile(r"^(?:-1|\d{1,18})$")
NOT_FOUND_TEXT = "the stream is no longer available"
#: Lifespan state key: an `anyio.Event` set when the server starts shutting down. Open
#: responses then end on the engine's next liveness tick, within ``lease_ttl / 3`` (without a
#: terminal event, so clients resume elsewhere) instead of being cancelled by the server's
#: graceful-shutdown timeout.
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
#: See `EngineStreamResponse` (``instead``).
Instead = Callable[[OpenedStream | None], Awaitable[Response | None]]


async def _close(opened: OpenedStream | None) -> None:
    if opened is not None:
        with anyio.CancelScope(shield=True):
            await opened.batches.aclose()


def error_response(status_code: int, code: str, message: str) -> JSONResponse:
    """The JSON error shape unbroken's HTTP APIs use: ``{"error": {"code", "message"}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code)


def unavailable_response() -> JSONResponse:
    """503, for a request that needs the stream backend while it is unreachable."""
    response = error_response(
        503, "unavailable", "the stream backend is unavailable; try again shortly"
    )
    response.headers["Retry-After"] = "1"
    return response


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
    ``send_timeout``: seconds one write may take before the client is dropped (0 disables),
    noticed on the engine's next liveness tick (every ``lease_ttl / 3``).
    ``flush_interval``: seconds to wait after a write before the next one, to send what
    arrives meanwhile in one write (0: write each wake-up at once).
    ``instead``: called once the stream is opened, with how it stood (None: there is no such
    stream), before anything is sent; it returns the response to send instead, or None to
    send the stream. Without it, a missing stream is a 404. It lets a route serve a stream
    only while it is live or just ended, with no round trip of its own to ask (see
    `StreamEngine.open_batches`).
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
        flush_interval: float = 0.0,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        instead: Instead | None = None,
    ) -> None:
        if after < -1:
            raise ValueError("after must be >= -1")
        if not 0 <= flush_interval < math.inf:
            raise ValueError("flush_interval must be a finite number >= 0")
        self.engine = engine
        self.stream_id = stream_id
        self.encoder = encoder
        self.after = after
        self.keepalive = keepalive
        self.send_timeout = send_timeout
        self.flush_interval = flush_interval
        self.instead = instead
        self.status_code = status_code
        self.background = None
        self.init_headers({**encoder.headers, **(headers or {})})
        #: Why the response ended: "end" (stream ended), "disconnect" (client left),
        #: "timeout" (client stopped reading), "not-found", "instead" (``instead`` answered),
        #: "unavailable" (the backend was unreachable before anything was sent), "shutdown"
        #: (the server is stopping; see SHUTDOWN_STATE_KEY).
        self.outcome: str | None = None
        self._cut = False  # the body ends without a terminal event (see _ReadFailed)
        self._send_started: float | None = None  # when the send in progress began

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Opened before the watchers start: until the stream is found this is like any
        # route's work, and a response sent instead is sent as any route's would be.
        opened = await self._open()
        if isinstance(opened, Response):
            await opened(scope, receive, send)
            return
        first, batches = opened
        shutdown = scope.get("state", {}).get(SHUTDOWN_STATE_KEY)
        send_timeout = self.send_timeout if self.send_timeout > 0 else math.inf  # 0: never
        async with anyio.create_task_group() as task_group:

            def end(outcome: str) -> None:
                self.outcome = self.outcome or outcome
                task_group.cancel_scope.cancel()

            async def watch_disconnect() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                end("disconnect")

            def check() -> None:
                # On each engine tick, instead of a task (or a timeout around every write)
                # per response: a send that has not returned after send_timeout drops the
                # client; a server shutting down ends the response.
                started = self._send_started
                if started is not None and time.monotonic() - started >= send_timeout:
                    self.outcome = "timeout"  # whatever else was happening
                    task_group.cancel_scope.cancel()
                elif isinstance(shutdown, anyio.Event) and shutdown.is_set():
                    end("shutdown")

            task_group.start_soon(watch_disconnect)
            unwatch = self.engine.on_tick(check)
            try:
                await self._respond(send, first, batches)
            finally:
                unwatch()
            task_group.cancel_scope.cancel()
        if self.outcome == "shutdown":
            # End the body without a terminal event: the client resumes from its offset on
            # another instance, while this one drains its producers.
            with anyio.move_on_after(self.send_timeout or math.inf):
                await self._send(send, {"type": "http.response.body", "body": b""})
        if self.outcome == "timeout":
            logger.info("dropped a client of stream %r: it stopped reading", self.stream_id)

    async def _open(
        self,
    ) -> tuple[list[_Item], AsyncGenerator[list[Chunk | StreamEnd], None] | None] | Response:
        """The stream's first batch and the rest, or the response to send instead."""
        # Read one chunk early when resuming: the chunk the client already has tells the
        # encoder whether the stream's own terminal event was delivered.
        start = self.after - 1 if self.after >= 0 else -1
        heartbeat = self.keepalive if 0 < self.keepalive < math.inf else None
        opened: OpenedStream | None = None
        try:
            opened = await self.engine.open_batches(
                self.stream_id, after=start, heartbeat=heartbeat
            )
        except InvalidStreamIdError:
            pass
        except BackendUnavailableError as exc:
            # Nothing sent yet: a clean 503 tells the client to try again, as any request
            # that needs the backend gets meanwhile.
            logger.warning("stream %r: backend unreachable: %s", self.stream_id, exc)
            self.outcome = "unavailable"
            return unavailable_response()
        except UnbrokenError as exc:
            return [self._read_failed(exc)], None
        if self.instead is not None:
            try:
                instead = await self.instead(opened)
            except BaseException:
                await _close(opened)
                raise
            if instead is not None:
                await _close(opened)
                self.outcome = "instead"
                return instead
        if opened is None:
            self.outcome = "not-found"
            return error_response(404, "stream_not_found", NOT_FOUND_TEXT)
        return list(opened.first), opened.batches

    async def _respond(
        self,
        send: Send,
        batch: list[_Item],
        batches: AsyncGenerator[list[Chunk | StreamEnd], None] | None,
    ) -> None:
        try:
            head = {"type": "http.response.start", "status": self.status_code}
            if not await self._send(send, {**head, "headers": self.raw_headers}):
                return
            text = self._encode(batch)
            while True:
                if text and not await self._write(send, text):
                    return
                if self.encoder.finished or self._cut or batches is None:
                    break
                if batch and self.flush_interval:  # after data, not after a keep-alive
                    await anyio.sleep(self.flush_interval)
                batch = await self._next(batches)
                text = self._encode(batch) if batch else self.encoder.keepalive()
            self.outcome = self.outcome or "end"
            await self._send(send, {"type": "http.response.body", "body": b""})
        finally:
            # Close the reader now (not at garbage collection), even when cancelled.
            if batches is not None:
                with anyio.CancelScope(shield=True):
                    await batches.aclose()

    async def _next(self, batches: AsyncGenerator[list[Chunk | StreamEnd], None]) -> list[_Item]:
        """The next batch; a read that failed becomes a `_ReadFailed` item."""
        try:
            return list(await anext(batches))
        except StopAsyncIteration:
            return [_ReadFailed(READ_FAILED_TEXT)]
        except UnbrokenError as exc:
            return [self._read_failed(exc)]

    def _read_failed(self, exc: UnbrokenError) -> _ReadFailed:
        if isinstance(exc, StreamNotFoundError | InvalidStreamIdError):
            return _ReadFailed(NOT_FOUND_TEXT)  # it expired while being read
        if isinstance(exc, BackendUnavailableError):
            logger.info("stream %r: backend unreachable; ending this response", self.stream_id)
            return _ReadFailed(READ_FAILED_TEXT, retryable=True)
        logger.warning("reading stream %r failed", self.stream_id, exc_info=exc)
        return _ReadFailed(READ_FAILED_TEXT)

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
        """False when the client is gone. (A send that takes too long is cancelled by the
        response's watchdog.)"""
        self._send_started = time.monotonic()
        try:
            await send(message)
        except OSError:  # the server reports a vanished client this way (ASGI 2.4)
            self.outcome = self.outcome or "disconnect"
            return False
        finally:
            self._send_started = None
        return True


class UIMessageStreamResponse(EngineStreamResponse):
    """An engine stream as an AI SDK v5+ UI message stream (SSE).

    ``after=-1`` replays everything (what ``useChat`` expects on resume); an offset sends only
    what follows it. ``target``: the client version to fit events to (see `ClientTarget`).
    ``merge_replay``: merge consecutive deltas of one part within a batch (a catch-up, or
    what a ``flush_interval`` gathered).
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
        flush_interval: float = 0.0,
        headers: Mapping[str, str] | None = None,
        instead: Instead | None = None,
    ) -> None:
        super().__init__(
            engine,
            stream_id,
            UIMessageStreamEncoder(target=target, merge=merge_replay),
            after=after,
            keepalive=keepalive,
            send_timeout=send_timeout,
            flush_interval=flush_interval,
            headers=headers,
            instead=instead,
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
        flush_interval: float = 0.0,
        headers: Mapping[str, str] | None = None,
        instead: Instead | None = None,
    ) -> None:
        super().__init__(
            engine,
            stream_id,
            DataStreamEncoder(merge=merge_replay),
            after=after,
            keepalive=keepalive,
            send_timeout=send_timeout,
            flush_interval=flush_interval,
            headers=headers,
            instead=instead,
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
