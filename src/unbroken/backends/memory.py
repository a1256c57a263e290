"""`MemoryBackend`: the complete backend contract inside one process.

The embedded default. Streams, TTLs, leases and live notifications behave exactly as with
Redis, so everything built on the engine works the same; only sharing across processes is
missing (use `unbroken.backends.redis.RedisBackend` for that).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from unbroken._models import Chunk, ChunkLog, StreamState, StreamStatus
from unbroken.backends._listener import QueueListener
from unbroken.backends.base import (
    Appended,
    Backend,
    Ended,
    InlineAppends,
    Listener,
    Notification,
    StreamTimes,
    require_consecutive,
)
from unbroken.exceptions import CorruptStreamError

__all__ = ["MemoryBackend"]

# Expired streams are purged lazily on access and, at most this often, in a full sweep.
_SWEEP_INTERVAL = 5.0


@dataclass(slots=True)
class _Stream:
    token: str
    created_at: float
    updated_at: float
    expires_at: float
    lease_expires_at: float
    state: StreamState = StreamState.ACTIVE
    finished_at: float | None = None
    error: str | None = None
    byte_count: int = 0
    # Not `Chunk` objects: streams are kept for their retention, and an ended one's chunks
    # are packed (see `ChunkLog`).
    log: ChunkLog = field(default_factory=ChunkLog)


class MemoryBackend(Backend, InlineAppends):
    """Streams held in this process's memory, with TTLs and leases.

    An append completes before returning (`InlineAppends`): nothing is sent anywhere, so the
    engine appends each chunk in the producer's own task. ``clock`` returns Unix time in
    seconds (tests may pass their own); ``reader_buffer`` bounds each listener's queue.
    """

    def __init__(
        self, *, reader_buffer: int = 1024, clock: Callable[[], float] = time.time
    ) -> None:
        self._streams: dict[str, _Stream] = {}
        self._listeners: dict[str, set[QueueListener]] = {}
        self._end_listeners: dict[str, set[QueueListener]] = {}
        self._reader_buffer = reader_buffer
        self._clock = clock
        self._next_sweep = 0.0

    def _get(self, stream_id: str) -> _Stream | None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.expires_at <= self._clock():
            del self._streams[stream_id]
            return None
        return stream

    def _sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL
        for stream_id in [k for k, s in self._streams.items() if s.expires_at <= now]:
            del self._streams[stream_id]

    def _notify(self, stream_id: str, note: Notification) -> None:
        for listener in self._listeners.get(stream_id, ()):
            listener.push(note)
        if isinstance(note, Ended):
            for listener in self._end_listeners.get(stream_id, ()):
                listener.push(note)

    async def claim(self, stream_id: str, *, token: str, times: StreamTimes, now: float) -> bool:
        self._sweep()
        if self._get(stream_id) is not None:
            return False
        self._streams[stream_id] = _Stream(
            token=token,
            created_at=now,
            updated_at=now,
            expires_at=now + times.active,
            lease_expires_at=now + times.lease,
        )
        return True

    async def append(
        self, stream_id: str, *, token: str, chunks: Sequence[Chunk], times: StreamTimes, now: float
    ) -> StreamState | None:
        return self.append_nowait(stream_id, token=token, chunks=chunks, times=times, now=now)

    def append_nowait(
        self, stream_id: str, *, token: str, chunks: Sequence[Chunk], times: StreamTimes, now: float
    ) -> StreamState | None:
        stream = self._get(stream_id)
        if stream is None:
            return None
        if stream.state.is_terminal or stream.token != token:
            return stream.state if stream.state.is_terminal else StreamState.INTERRUPTED
        length = len(stream.log)
        if chunks and chunks[0].seq != length:
            raise CorruptStreamError(
                f"stream {stream_id!r}: append at seq {chunks[0].seq}, log has {length}"
            )
        if len(chunks) > 1:  # (one chunk, the inline appends' case, is consecutive)
            require_consecutive(stream_id, chunks, length)
        for chunk in chunks:
            stream.log.append(chunk)
            data = chunk.data
            stream.byte_count += len(data) if data.isascii() else len(data.encode())
        stream.updated_at = now
        stream.expires_at = now + times.active
        stream.lease_expires_at = now + times.lease
        if chunks and stream_id in self._listeners:  # (in-process readers rarely listen)
            self._notify(stream_id, Appended(tuple(chunks)))
        return StreamState.ACTIVE

    async def renew_lease(
        self, stream_id: str, *, token: str, times: StreamTimes, now: float
    ) -> StreamState | None:
        stream = self._get(stream_id)
        if stream is None:
            return None
        if stream.state is not StreamState.ACTIVE:
            return stream.state
        if stream.token != token:
            return StreamState.INTERRUPTED  # another producer owns it: this one lost it
        stream.lease_expires_at = now + times.lease
        stream.expires_at = now + times.active
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
        stream = self._get(stream_id)
        if stream is None:
            return None
        if stream.state.is_terminal:
            return stream.state
        if token is not None and stream.token != token:
            return stream.state
        if only_if_lease_expired and stream.lease_expires_at > self._clock():
            return stream.state
        stream.state = state
        stream.error = error
        # Kept for its retention: packed, at about its compressed size, and out of the
        # garbage collector's sight.
        stream.log.seal()
        stream.finished_at = now
        stream.updated_at = now
        stream.lease_expires_at = 0.0
        stream.expires_at = now + times.retention
        self._notify(stream_id, Ended(state))
        return state

    async def status(self, stream_id: str) -> StreamStatus | None:
        stream = self._get(stream_id)
        if stream is None:
            return None
        return StreamStatus(
            stream_id=stream_id,
            state=stream.state,
            chunk_count=len(stream.log),
            char_count=stream.log.char_count,
            byte_count=stream.byte_count,
            created_at=stream.created_at,
            updated_at=stream.updated_at,
            finished_at=stream.finished_at,
            error=stream.error,
        )

    async def read(self, stream_id: str, *, after: int, limit: int) -> list[Chunk]:
        stream = self._get(stream_id)
        if stream is None:
            return []
        start = max(after + 1, 0)
        return stream.log.chunks(start, start + limit)

    def listen(
        self, stream_id: str, *, ends_only: bool = False
    ) -> AbstractAsyncContextManager[Listener]:
        return self._listen(stream_id, self._end_listeners if ends_only else self._listeners)

    @asynccontextmanager
    async def _listen(
        self, stream_id: str, registry: dict[str, set[QueueListener]]
    ) -> AsyncIterator[Listener]:
        listener = QueueListener(self._reader_buffer)
        registry.setdefault(stream_id, set()).add(listener)
        try:
            yield listener
        finally:
            listeners = registry.get(stream_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del registry[stream_id]
