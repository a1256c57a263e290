"""Streaming responses for Starlette and FastAPI (extra ``unbroken[fastapi]``).

A response here only *reads* an engine stream and writes it through an encoder (any
`unbroken.protocols.StreamEncoder`); it never owns the producer. So a client that leaves (a
closed tab, a cut network, a client that stops reading) ends its own response and nothing
else: generation goes on in the engine and the client can resume later.

- `EngineStreamResponse`: any stream, any encoder. `SSEStreamResponse`: a plain text stream
  as Server-Sent Events. The AI SDK's responses are in `unbroken.protocols.ai_sdk`.
- A route that needs to know how the stream stands before it answers opens the response
  first (``await UIMessageStreamResponse(...).open()``), looks at ``response.reader.state``,
  then returns either that response or another one (after ``await response.aclose()``).

How a response runs (the shape of Starlette's ``StreamingResponse.__call__``)::

    task group ─┬─ watch receive() for http.disconnect ────┐ the first one to finish
                └─ write: the reader's batches, one write each ┘ cancels the other
    on each of the engine's liveness ticks (`StreamEngine.on_tick`, every lease_ttl / 3):
                   a send stuck for send_timeout, or the server shutting down, ends it

- Batches: the engine hands over everything there is to read at once, so a catch-up goes out
  in a few writes and a live stream in one write per wake-up. The response reads in its own
  task: one chunk costs one task switch from the producer, as plain streaming would.
- Keep-alive: while nothing arrives for ``keepalive`` seconds, the encoder's keep-alive (an
  SSE comment, a v4 empty line) is written, so proxies and browsers keep the connection (the
  engine's heartbeat: no timer per wait).
- Send timeout: a write that takes longer than ``send_timeout`` (the client stopped reading
  and the socket buffers are full) drops the connection, noticed on the engine's next
  liveness tick (no timer per write, no watchdog task per response).
- Flush interval (off by default): after a write, the response waits ``flush_interval``
  seconds before it reads again, so what arrived meanwhile goes out as one write (an encoder
  may merge it: the AI SDK's encoders merge text deltas). A chunk then reaches the client up to
  that much later, and the server writes (and the client parses) fewer frames, the more so
  the faster the stream. Nothing waits when the stream is idle: the first chunk after a
  pause that long goes out at once.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypedDict, Unpack

import anyio

from unbroken import Chunk, StreamEnd, StreamEngine, StreamReader
from unbroken.exceptions import (
    BackendUnavailableError,
    InvalidStreamIdError,
    MissingDependencyError,
    ProtocolError,
    StreamNotFoundError,
    UnbrokenError,
)
from unbroken.protocols import SSEEncoder, StreamEncoder

try:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError("starlette", "fastapi") from exc

__all__ = [
    "SHUTDOWN_STATE_KEY",
    "EngineStreamResponse",
    "ResponseOptions",
    "SSEStreamResponse",
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
_Batches = AsyncIterator[list[Chunk | StreamEnd]]


class ResponseOptions(TypedDict, total=False):
    """How a streaming response writes, whatever its protocol.

    ``keepalive``: seconds of silence before a keep-alive is written (default 15; 0
    disables). ``send_timeout``: seconds one write may take before the client is dropped
    (default 30; 0 disables), noticed on the engine's next liveness tick (every
    ``lease_ttl / 3``). ``flush_interval``: seconds to wait after a write before the next
    one, to send what arrives meanwhile in one write (default 0: each wake-up at once).
    ``status_code`` (default 200) and ``headers`` (added to the protocol's) of the response.
    """

    keepalive: float
    send_timeout: float
    flush_interval: float
    status_code: int
    headers: Mapping[str, str] | None


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
    ``encoder``.

    Returned as it is, the response opens its reader when it runs and answers 404 (JSON
    error) when there is no such stream, 503 when the backend is unreachable. After
    ``await response.open()`` it holds its reader already, so the route knows how the stream
    stands (``response.reader.state``) before it answers. Either way the reader is closed
    when the response has run.

    ``options``: see `ResponseOptions`.
    """

    def __init__(
        self,
        engine: StreamEngine,
        stream_id: str,
        encoder: StreamEncoder,
        *,
        after: int = -1,
        **options: Unpack[ResponseOptions],
    ) -> None:
        keepalive = options.get("keepalive", 15.0)
        send_timeout = options.get("send_timeout", 30.0)
        flush_interval = options.get("flush_interval", 0.0)
        headers = options.get("headers")
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
        self.status_code = options.get("status_code", 200)
        self.background = None
        self.init_headers({**encoder.headers, **(headers or {})})
        #: Why the response ended: "end" (stream ended), "disconnect" (client left),
        #: "timeout" (client stopped reading), "not-found", "unavailable" (the backend was
        #: unreachable before anything was sent), "shutdown" (the server is stopping; see
        #: SHUTDOWN_STATE_KEY). None until it has run.
        self.outcome: str | None = None
        self._reader: StreamReader | None = None
        self._cut = False  # the body ends without a terminal event (see _ReadFailed)
        self._send_started: float | None = None  # when the send in progress began

    async def open(self) -> Self:
        """Open the response's reader now and return the response: look at
        ``response.reader``, then return the response, or ``await response.aclose()`` and
        answer otherwise.

        Raises what `StreamEngine.open` raises: `StreamNotFoundError` when there is no such
        stream, `InvalidStreamIdError`, `BackendUnavailableError`, ...
        """
        if self._reader is None:
            self._reader = await self.engine.open(
                self.stream_id, after=self._start, heartbeat=self._heartbeat
            )
        return self

    @property
    def reader(self) -> StreamReader:
        """The response's reader: how the stream stood when it was opened (``state``,
        ``finished_at``). There is one once `open` returned or the response has run."""
        if self._reader is None:
            raise RuntimeError("the reader is not open yet: call 'await response.open()'")
        return self._reader

    async def aclose(self) -> None:
        """Release the reader without sending anything (for a route that answers with
        another response). Idempotent; a response that runs closes it by itself."""
        if self._reader is not None:
            await self._reader.aclose()

    @property
    def _start(self) -> int:
        # One chunk early when resuming: the chunk the client already has tells the encoder
        # whether the stream's own terminal event was delivered.
        return self.after - 1 if self.after >= 0 else -1

    @property
    def _heartbeat(self) -> float | None:
        return self.keepalive if 0 < self.keepalive < math.inf else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # Opened before the watchers start: until the stream is found this is like any
            # route's work, and an error response is sent as any route's would be.
            opened = self._reader if self._reader is not None else await self._open_lazily()
            if isinstance(opened, Response):
                await opened(scope, receive, send)
                return
            await self._stream(scope, receive, send, opened)
        finally:
            # Closed now (not at garbage collection), even when cancelled.
            await self.aclose()

    async def _open_lazily(self) -> StreamReader | _ReadFailed | Response:
        """The reader, the failure to send in the stream's protocol, or the response to
        send instead (404, 503)."""
        try:
            await self.open()
        except (StreamNotFoundError, InvalidStreamIdError):
            self.outcome = "not-found"
            return error_response(404, "stream_not_found", NOT_FOUND_TEXT)
        except BackendUnavailableError as exc:
            # Nothing sent yet: a clean 503 tells the client to try again, as any request
            # that needs the backend gets meanwhile.
            logger.warning("stream %r: backend unreachable: %s", self.stream_id, exc)
            self.outcome = "unavailable"
            return unavailable_response()
        except UnbrokenError as exc:
            return self._read_failed(exc)
        return self.reader

    async def _stream(
        self, scope: Scope, receive: Receive, send: Send, opened: StreamReader | _ReadFailed
    ) -> None:
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
                if isinstance(opened, _ReadFailed):
                    await self._respond(send, [opened], None)
                else:
                    await self._respond_with(send, opened)
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

    async def _respond_with(self, send: Send, reader: StreamReader) -> None:
        batches = aiter(reader)
        first: list[_Item] = list(await anext(batches))  # there at once: no wait
        await self._respond(send, first, batches)

    async def _respond(self, send: Send, batch: list[_Item], batches: _Batches | None) -> None:
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

    async def _next(self, batches: _Batches) -> list[_Item]:
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
        """False when the client is gone. (A send that takes too long is cancelled on the
        engine's tick, see `_stream`.)"""
        self._send_started = time.monotonic()
        try:
            await send(message)
        except OSError:  # the server reports a vanished client this way (ASGI 2.4)
            self.outcome = self.outcome or "disconnect"
            return False
        finally:
            self._send_started = None
        return True


class SSEStreamResponse(EngineStreamResponse):
    """A plain text stream as Server-Sent Events (`SSEEncoder`): one event per chunk, with
    ``id: <seq>``, then an ``end`` event. Pass ``after=resume_after(request)`` so a client
    that reconnects with ``Last-Event-ID`` gets exactly what it missed."""

    def __init__(
        self,
        engine: StreamEngine,
        stream_id: str,
        *,
        after: int = -1,
        **options: Unpack[ResponseOptions],
    ) -> None:
        super().__init__(engine, stream_id, SSEEncoder(), after=after, **options)
