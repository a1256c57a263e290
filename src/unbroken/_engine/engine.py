"""`StreamEngine`: producers that outlive requests, readers that resume without gaps.

The facade over the engine's parts (see docs/architecture.md):

- `producing`: ``start()`` claims the id in the backend (exactly one producer, across
  processes) and runs the producer in the engine's task group. The producer keeps its
  stream's chunks in memory too (`local.LocalStream`), so readers in this process are
  served from there and a backend outage never stops the answer reaching its client.
- `writing` / `flushing`: how chunks reach the backend (inline, gathered, or by the
  stream's own writer task) and how a stream's end is recorded.
- `reading`: readers in this process and in others.
- `liveness`: the one tick that renews leases, pokes idle readers and runs timed checks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from contextlib import aclosing
from functools import partial
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup

from unbroken._engine.liveness import Liveness
from unbroken._engine.local import PRODUCER_LOST, LocalStream, validate_id
from unbroken._engine.producing import OnEnd, Producers
from unbroken._engine.reading import (
    FIRST_READ,
    BackendReader,
    Batch,
    Batches,
    LocalReader,
    Opening,
    StreamReader,
    cut_at_offset,
)
from unbroken._engine.writing import Writes
from unbroken._models import Chunk, StreamEnd, StreamState, StreamStatus
from unbroken._wakeups import wakeups_factory
from unbroken.backends.base import Backend, StreamTimes
from unbroken.exceptions import EngineClosedError

__all__ = ["OnEnd", "StreamEngine"]


class StreamEngine:
    """Runs stream producers and serves readers over a `Backend`. Use as ``async with``.

    - ``lease_ttl``: a producer whose lease is not renewed for this long is declared dead;
      readers then see ``interrupted`` (at most ``lease_ttl * 5/3`` after it died).
    - ``active_ttl``: sliding time-to-live of an active stream's data in the backend.
    - ``retention``: how long a finished stream stays readable (default 24 h).
    - ``max_chunks`` / ``max_chars``: a stream that grows past these ends in ``error``.
    - ``drain_timeout``: on exit, running producers get this long to finish; the rest are
      recorded as ``interrupted``.
    - ``backend_retry``: how long a producer keeps retrying an unreachable backend to record
      its end before giving up (its own readers are served regardless).
    - ``owns_backend``: the engine opens and closes the backend with itself.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        lease_ttl: float = 2.4,
        active_ttl: float = 3600.0,
        retention: float = 86400.0,
        max_chunks: int = 100_000,
        max_chars: int = 20_000_000,
        drain_timeout: float = 10.0,
        backend_retry: float = 30.0,
        owns_backend: bool = True,
    ) -> None:
        if backend is None:
            from unbroken.backends.memory import MemoryBackend

            backend = MemoryBackend()
        if lease_ttl <= 0 or active_ttl <= 0 or retention <= 0:
            raise ValueError("lease_ttl, active_ttl and retention must be positive")
        self.backend = backend
        self.lease_ttl = lease_ttl
        self.active_ttl = active_ttl
        self.retention = retention
        self.max_chunks = max_chunks
        self.max_chars = max_chars
        self.drain_timeout = drain_timeout
        self.backend_retry = backend_retry
        self._owns_backend = owns_backend
        self._writes = Writes(backend, backend_retry=backend_retry)
        self._producers = Producers(
            backend, self._writes, max_chunks=max_chunks, max_chars=max_chars
        )
        self._liveness = Liveness(lease_ttl / 3, self._producers.streams, self._writes)
        self._task_group: TaskGroup | None = None
        self._closing = False

    def __repr__(self) -> str:
        state = "open" if self._task_group is not None else "closed"
        return f"<StreamEngine {type(self.backend).__name__} {state}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise RuntimeError("the engine is already open")
        if self._owns_backend:
            await self.backend.open()
        new_wakeups = wakeups_factory()
        self._producers.new_wakeups = new_wakeups
        task_group = self._task_group = anyio.create_task_group()
        await task_group.__aenter__()
        task_group.start_soon(self._liveness.run, task_group, name="unbroken:liveness")
        self._writes.open(task_group, new_wakeups)
        self._closing = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group = self._task_group
        if task_group is None:
            return
        self._closing = True
        try:
            with anyio.CancelScope(shield=True):
                await self._producers.drain(self.drain_timeout)
        finally:
            task_group.cancel_scope.cancel()  # producers are done; stop the liveness timer
            try:
                await task_group.__aexit__(exc_type, exc, tb)
            finally:
                self._task_group = None
                if self._owns_backend:
                    # Not under a shield of ours: a backend's close() exits task groups its
                    # open() entered, which must happen in the same cancel-scope nesting.
                    await self.backend.close()

    def on_tick(self, check: Callable[[], None]) -> Callable[[], None]:
        """Call ``check`` on each of the engine's liveness ticks (every ``lease_ttl / 3``)
        until the function returned is called: timed checks without a task or a timer of
        their own (`unbroken.asgi` times its sends and notices a shutdown this way). A
        check that raises is logged and does not stop the tick."""
        return self._liveness.on_tick(check)

    def _require_open(self, *, for_reading: bool = False) -> TaskGroup:
        """The engine's task group; raises `EngineClosedError` outside ``async with``.

        While closing (draining producers) reads, status and cancel still work, so on_end
        callbacks and readers can finish; only new streams are refused.
        """
        if self._task_group is None or (self._closing and not for_reading):
            raise EngineClosedError("the engine is closed; use it inside 'async with engine:'")
        return self._task_group

    def _times(self, retention: float | None = None) -> StreamTimes:
        return StreamTimes(
            lease=self.lease_ttl,
            active=self.active_ttl,
            retention=self.retention if retention is None else retention,
        )

    # -- producing ---------------------------------------------------------------------

    async def start(
        self,
        stream_id: str,
        source: AsyncIterable[str],
        *,
        retention: float | None = None,
        on_end: OnEnd | None = None,
    ) -> None:
        """Claim ``stream_id`` and run ``source`` in the engine until it ends or is stopped.

        Returns once the claim succeeded; the producer then runs on its own, whether or not
        anyone reads. Raises `StreamExistsError` if the id was ever used (in any process
        sharing the backend, within its retention). ``on_end`` runs once the stream is
        terminal, in this process, shielded from cancellation.
        """
        task_group = self._require_open()
        validate_id(stream_id)
        await self._producers.start(task_group, stream_id, source, self._times(retention), on_end)

    def produces(self, stream_id: str) -> bool:
        """Whether this engine runs the stream's producer right now: started here, and its
        end (``on_end`` included) not done yet. Such a stream's producer is alive by
        definition, so a sweep for dead producers can skip it without asking the backend."""
        return stream_id in self._producers.streams

    # -- stopping and inspecting -------------------------------------------------------

    async def cancel(self, stream_id: str) -> StreamState | None:
        """Stop the stream from any process: its producer is cancelled within milliseconds
        and every reader ends with ``cancelled``. Idempotent: a finished stream keeps its
        state. Returns the stream's state afterwards, or None if there is no such stream.
        """
        self._require_open(for_reading=True)
        validate_id(stream_id)
        local = self._producers.streams.get(stream_id)
        state = await self.backend.finish(
            stream_id,
            state=StreamState.CANCELLED,
            error=None,
            token=None,
            times=local.times if local else self._times(),
            now=time.time(),
        )
        if local is not None and state is StreamState.CANCELLED:
            local.stop(state)
        return state

    async def status(self, stream_id: str) -> StreamStatus | None:
        """The stream's state, counts and times, or None if there is no such stream."""
        self._require_open(for_reading=True)
        validate_id(stream_id)
        return await self.backend.status(stream_id)

    async def check_producer(self, stream_id: str) -> StreamState | None:
        """If the stream is active but its producer's lease has lapsed (its process died),
        record ``interrupted`` now. Returns the stream's state afterwards, or None if there
        is no such stream. Readers do this by themselves when they hear nothing for a while;
        call it to notice dead producers of streams nobody is reading.
        """
        self._require_open(for_reading=True)
        validate_id(stream_id)
        return await self._interrupt_if_dead(stream_id)

    async def _interrupt_if_dead(self, stream_id: str) -> StreamState | None:
        return await self.backend.finish(
            stream_id,
            state=StreamState.INTERRUPTED,
            error=PRODUCER_LOST,
            token=None,
            times=self._times(),
            now=time.time(),
            only_if_lease_expired=True,
        )

    async def wait(self, stream_id: str) -> StreamEnd:
        """Wait until the stream is terminal and return how it ended."""
        async with aclosing(self.read(stream_id)) as items:
            async for item in items:
                if isinstance(item, StreamEnd):
                    return item
        raise AssertionError("unreachable: every read ends with a StreamEnd")

    # -- reading -----------------------------------------------------------------------

    async def read(
        self, stream_id: str, *, after: int = -1, offset: int | None = None
    ) -> AsyncGenerator[Chunk | StreamEnd, None]:
        """Yield the stream's chunks after sequence number ``after`` (or from character
        ``offset``), live until it ends, then one `StreamEnd`.

        No gap and no duplicate: chunks come in ``seq`` order exactly once, whatever
        happens between the catch-up and the live part. Raises `StreamNotFoundError` if the
        stream does not exist. With ``offset``, the first chunk is cut to start exactly at
        that character.
        """
        async with aclosing(self.read_batches(stream_id, after=after, offset=offset)) as batches:
            async for batch in batches:
                for item in batch:
                    yield item

    async def read_batches(
        self,
        stream_id: str,
        *,
        after: int = -1,
        offset: int | None = None,
        heartbeat: float | None = None,
    ) -> AsyncGenerator[Batch, None]:
        """`read`, in batches: each batch is everything that is there to read at that
        moment (at most a page), so a catch-up comes in a few batches and a live stream in
        one batch per wake-up. What a response writing to a client wants: one write each.

        The first batch comes at once, possibly empty: it says the stream exists. It holds a
        few chunks at most, so it waits for one short look at the backend
        (for a stream produced in another process), not for a page to be read, and a
        response encodes little before its first byte. The last batch ends with the
        `StreamEnd`. With ``heartbeat``, an empty batch also comes when
        nothing arrived for that many seconds (noticed on the engine's liveness tick, every
        ``lease_ttl / 3``), so the caller can keep its connection alive without a timer.
        """
        self._check_read(stream_id, heartbeat)
        batches: AsyncGenerator[Batch, None]
        if offset is None:
            batches = self._reader(stream_id, after, heartbeat)[0]
        else:
            if offset < 0:
                raise ValueError("offset must be >= 0")
            batches = cut_at_offset(self.read_batches(stream_id, heartbeat=heartbeat), offset)
        # Closed here, not left to the garbage collector, when our caller stops early.
        async with aclosing(batches):
            async for batch in batches:
                yield batch

    def open(self, stream_id: str, *, after: int = -1, heartbeat: float | None = None) -> Opening:
        """Open a reader of the stream after sequence number ``after``: ``async with
        engine.open(stream_id) as reader:``, or ``reader = await engine.open(...)`` and
        close it later.

        The reader knows the stream's state (and its chunk count) before its first batch
        is sent, so a caller decides what to answer (the stream, or something else) before
        writing anything; for a reader in another process that look is the reader's own
        first round trip, the one its first batch comes from. Raises `StreamNotFoundError`
        if there is no such stream. ``heartbeat``: as for `read_batches`.
        """
        return Opening(partial(self._open_reader, stream_id, after, heartbeat))

    async def _open_reader(
        self,
        stream_id: str,
        after: int,
        heartbeat: float | None,
        *,
        first_read: int = FIRST_READ,
    ) -> StreamReader:
        """`open`; ``first_read``: at most this many chunks in the first batch
        (`unbroken.compat` wants a whole page there, since its first text is the whole
        catch-up)."""
        self._check_read(stream_id, heartbeat)
        batches, local, backend_reader = self._reader(stream_id, after, heartbeat, first_read)
        first = await anext(batches)  # raises StreamNotFoundError as the read would
        if local is not None:  # this process produces it: if it ended, it ended just now
            state = local.state
            finished_at = time.time() if state.is_terminal else None
            count = local.visible
        else:
            assert backend_reader is not None and backend_reader.opened is not None
            opened = backend_reader.opened
            state, finished_at, count = opened.state, opened.finished_at, opened.chunk_count
        if first and isinstance(first[-1], Chunk):  # the look at the log may be the later one
            count = max(count, first[-1].seq + 1)
        return StreamReader(stream_id, state, finished_at, first, batches, count)

    def _check_read(self, stream_id: str, heartbeat: float | None) -> None:
        self._require_open(for_reading=True)
        validate_id(stream_id)
        if heartbeat is not None and heartbeat <= 0:
            raise ValueError("heartbeat must be positive (or None)")

    def _reader(
        self, stream_id: str, after: int, heartbeat: float | None, first_read: int = FIRST_READ
    ) -> tuple[Batches, LocalStream | None, BackendReader | None]:
        """The stream's batches: from this process's copy if it produces the stream, else
        from the backend. Also returns the local stream or the backend reader."""
        local = self._producers.streams.get(stream_id)
        if local is not None:
            return LocalReader(local, after, heartbeat, first_read).batches(), local, None
        reader = BackendReader(
            self.backend,
            self._liveness,
            self._interrupt_if_dead,
            stream_id=stream_id,
            after=after,
            heartbeat=heartbeat,
            lease_ttl=self.lease_ttl,
            first_read=first_read,
        )
        return reader.batches(), None, reader
