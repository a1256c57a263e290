"""`PlainBackend`: a backend written only against the `Backend` ABC, for the conformance suite.

It keeps the whole contract (one process, one event loop) and offers nothing more: no
`InlineAppends`, no `GatheredAppends`, and a listener that does not override `Listener.poke`.
So the engine must take its plain paths with it: a writer task per stream, woken per chunk,
and readers that wait with a timeout instead of being poked.

Every method awaits one checkpoint before it looks at the store and then runs to its end
without awaiting again: each call is a real suspension point (as a round trip is), and the
event loop runs nothing else between a method's checks and its writes, which is what makes
each method atomic.

TTLs follow Redis: a deadline is set from the backend's own clock when a call runs, and the
``now`` a caller passes is only recorded (created, updated, finished times). Pass ``clock`` to
control time in a test.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from unbroken import Chunk, StreamState, StreamStatus
from unbroken.backends.base import (
    Appended,
    Backend,
    Ended,
    Lagged,
    Listener,
    Notification,
    StreamTimes,
    require_consecutive,
)
from unbroken.exceptions import CorruptStreamError

__all__ = ["BoundedListener", "PlainBackend"]


class BoundedListener(Listener):
    """Notifications in a bounded memory stream. On overflow everything queued is dropped and
    one `Lagged` takes its place: the reader re-reads the log, which loses nothing."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("listener capacity must be at least 1")
        self._send: MemoryObjectSendStream[Notification]
        self._receive: MemoryObjectReceiveStream[Notification]
        self._send, self._receive = anyio.create_memory_object_stream[Notification](capacity)

    def deliver(self, note: Notification) -> None:
        """Queue ``note`` without blocking (the backend calls this inside its writes)."""
        try:
            self._send.send_nowait(note)
        except anyio.WouldBlock:
            self._drop_queued()
            self._send.send_nowait(Lagged())

    def _drop_queued(self) -> None:
        while True:
            try:
                self._receive.receive_nowait()
            except anyio.WouldBlock:
                return

    async def receive(self) -> Notification:
        return await self._receive.receive()

    def close(self) -> None:
        """Release both ends of the stream (the subscription is over)."""
        self._send.close()
        self._receive.close()


@dataclass(slots=True)
class _Stream:
    """One stream: its metadata, its log, and the deadlines of its data and of its lease."""

    token: str
    created_at: float
    updated_at: float
    expires_at: float
    lease_expires_at: float
    state: StreamState = StreamState.ACTIVE
    finished_at: float | None = None
    error: str | None = None
    char_count: int = 0
    byte_count: int = 0
    log: list[Chunk] = field(default_factory=list)


class PlainBackend(Backend):
    """Streams in a dict: the `Backend` contract and no capability.

    ``reader_buffer`` bounds each listener's queue; ``clock`` returns Unix time in seconds.
    """

    def __init__(self, *, reader_buffer: int = 64, clock: Callable[[], float] = time.time) -> None:
        self._streams: dict[str, _Stream] = {}
        self._listeners: dict[str, set[BoundedListener]] = {}
        self._end_listeners: dict[str, set[BoundedListener]] = {}
        self._reader_buffer = reader_buffer
        self._clock = clock

    def _find(self, stream_id: str) -> _Stream | None:
        """The stream, unless it does not exist or its data expired (then it is purged)."""
        stream = self._streams.get(stream_id)
        if stream is not None and stream.expires_at <= self._clock():
            del self._streams[stream_id]
            return None
        return stream

    def _owned(self, stream_id: str, token: str) -> tuple[_Stream | None, StreamState | None]:
        """(the stream, None) if ``token`` owns it while active, else (None, what to return)."""
        stream = self._find(stream_id)
        if stream is None:
            return None, None
        if stream.state.is_terminal:
            return None, stream.state
        if stream.token != token:
            return None, StreamState.INTERRUPTED
        return stream, None

    def _notify(self, stream_id: str, note: Notification) -> None:
        for listener in self._listeners.get(stream_id, ()):
            listener.deliver(note)
        if isinstance(note, Ended):
            for listener in self._end_listeners.get(stream_id, ()):
                listener.deliver(note)

    async def claim(self, stream_id: str, *, token: str, times: StreamTimes, now: float) -> bool:
        await anyio.lowlevel.checkpoint()
        if self._find(stream_id) is not None:
            return False
        clock = self._clock()
        self._streams[stream_id] = _Stream(
            token=token,
            created_at=now,
            updated_at=now,
            expires_at=clock + times.active,
            lease_expires_at=clock + times.lease,
        )
        return True

    async def append(
        self, stream_id: str, *, token: str, chunks: Sequence[Chunk], times: StreamTimes, now: float
    ) -> StreamState | None:
        await anyio.lowlevel.checkpoint()
        stream, refusal = self._owned(stream_id, token)
        if stream is None:
            return refusal
        if chunks and chunks[0].seq != len(stream.log):
            raise CorruptStreamError(
                f"stream {stream_id!r}: append at seq {chunks[0].seq}, log has {len(stream.log)}"
            )
        require_consecutive(stream_id, chunks, len(stream.log))
        clock = self._clock()
        for chunk in chunks:
            stream.log.append(chunk)
            stream.char_count += len(chunk.data)
            stream.byte_count += len(chunk.data.encode())
        if chunks:
            stream.updated_at = now
        stream.expires_at = clock + times.active
        stream.lease_expires_at = clock + times.lease
        if chunks:
            self._notify(stream_id, Appended(tuple(chunks)))
        return StreamState.ACTIVE

    async def renew_lease(
        self, stream_id: str, *, token: str, times: StreamTimes, now: float
    ) -> StreamState | None:
        await anyio.lowlevel.checkpoint()
        stream, refusal = self._owned(stream_id, token)
        if stream is None:
            return refusal
        clock = self._clock()
        stream.lease_expires_at = clock + times.lease
        stream.expires_at = clock + times.active
        return StreamState.ACTIVE

    async def finish(
        self,
        stream_id: str,
        *,
        state: StreamState,
        error: str | None,
        token: str | None,
        times: StreamTimes,
        now: float,
        only_if_lease_expired: bool = False,
    ) -> StreamState | None:
        if not state.is_terminal:
            raise ValueError("finish needs a terminal state")
        await anyio.lowlevel.checkpoint()
        stream = self._find(stream_id)
        if stream is None:
            return None
        if stream.state.is_terminal:
            return stream.state
        if token is not None and stream.token != token:
            return stream.state
        clock = self._clock()
        if only_if_lease_expired and stream.lease_expires_at > clock:
            return stream.state
        stream.state = state
        stream.error = error
        stream.finished_at = now
        stream.updated_at = now
        stream.lease_expires_at = -math.inf
        stream.expires_at = clock + times.retention
        self._notify(stream_id, Ended(state))
        return state

    async def status(self, stream_id: str) -> StreamStatus | None:
        await anyio.lowlevel.checkpoint()
        stream = self._find(stream_id)
        if stream is None:
            return None
        return StreamStatus(
            stream_id=stream_id,
            state=stream.state,
            chunk_count=len(stream.log),
            char_count=stream.char_count,
            byte_count=stream.byte_count,
            created_at=stream.created_at,
            updated_at=stream.updated_at,
            finished_at=stream.finished_at,
            error=stream.error,
        )

    async def read(self, stream_id: str, *, after: int, limit: int) -> list[Chunk]:
        await anyio.lowlevel.checkpoint()
        stream = self._find(stream_id)
        if stream is None:
            return []
        start = max(after + 1, 0)
        return stream.log[start : start + max(limit, 0)]

    def listen(
        self, stream_id: str, *, ends_only: bool = False
    ) -> AbstractAsyncContextManager[Listener]:
        return self._listen(stream_id, self._end_listeners if ends_only else self._listeners)

    @asynccontextmanager
    async def _listen(
        self, stream_id: str, registry: dict[str, set[BoundedListener]]
    ) -> AsyncIterator[Listener]:
        await anyio.lowlevel.checkpoint()
        listener = BoundedListener(self._reader_buffer)
        registry.setdefault(stream_id, set()).add(listener)
        try:
            yield listener
        finally:
            listeners = registry.get(stream_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del registry[stream_id]
            listener.close()
