"""Readers: a stream's chunks after an offset, live until it ends, with no gap and no duplicate.

- `LocalReader`: a stream produced in this process, served from its `LocalStream`.
- `BackendReader`: any other stream. Its first look reads the status and the first few
  chunks of the log (its first batch); then it subscribes to live notifications and reads
  both again once the subscription is live (so nothing between the look and the
  subscription is missed), then follows notifications, using sequence numbers to drop
  duplicates and to fill gaps from the log. A stream already ended needs no subscription.
- `StreamReader`: what `StreamEngine.open` gives the caller: the stream's state as the
  reader found it, then its batches.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from functools import partial
from typing import Any, Self

import anyio

from unbroken._engine.flushing import status_quietly
from unbroken._engine.liveness import Liveness, QuietReader
from unbroken._engine.local import DATA_LOST, LocalStream
from unbroken._models import Chunk, StreamEnd, StreamState, StreamStatus
from unbroken.backends.base import (
    Appended,
    Backend,
    Ended,
    Idle,
    InlineAppends,
    Listener,
    Notification,
    ReadsWithStatus,
)
from unbroken.exceptions import BackendUnavailableError, StreamNotFoundError

__all__ = [
    "FIRST_READ",
    "READ_PAGE",
    "BackendReader",
    "Batch",
    "Batches",
    "LocalReader",
    "Opening",
    "StreamReader",
    "cut_at_offset",
]

READ_PAGE = 512  # chunks per log read while catching up
# Chunks in a reader's first batch: the first byte of a response waits for these to be read,
# decoded and encoded, not for a whole page; the rest of a catch-up follows in pages.
FIRST_READ = 32

Batch = list[Chunk | StreamEnd]
Batches = AsyncGenerator[Batch, None]


class LocalReader:
    """Reads a stream produced in this process from its chunks in memory; at most
    ``first_read`` chunks in the first batch."""

    def __init__(
        self,
        local: LocalStream,
        after: int,
        heartbeat: float | None,
        first_read: int = FIRST_READ,
    ) -> None:
        self.local = local
        self.after = after
        self.heartbeat = heartbeat
        self.first_read = first_read

    async def batches(self) -> Batches:
        local, heartbeat = self.local, self.heartbeat
        position = max(self.after + 1, 0)
        first = True
        last_yield = time.monotonic()
        while True:
            visible = local.visible
            batch: Batch = []
            page = self.first_read if first else READ_PAGE
            batch += local.log.chunks(position, min(visible, position + page))
            position += len(batch)
            if position >= visible and local.state.is_terminal:
                batch.append(local.end())
                yield batch
                return
            if batch or first:
                first = False
                yield batch
                if heartbeat is not None:
                    last_yield = time.monotonic()
            elif heartbeat is not None and time.monotonic() - last_yield >= heartbeat:
                yield []
                last_yield = time.monotonic()
            else:
                await local.readers.wait()


class BackendReader:
    """Reads a stream from the backend: catch-up from the log, then live notifications.

    ``interrupt_if_dead(stream_id)`` records ``interrupted`` if the producer's lease lapsed
    and returns the state; an idle reader calls it, since a dead producer sends nothing.
    ``first_read``: at most this many chunks in the first batch.
    """

    def __init__(
        self,
        backend: Backend,
        liveness: Liveness,
        interrupt_if_dead: Callable[[str], Awaitable[StreamState | None]],
        *,
        stream_id: str,
        after: int,
        heartbeat: float | None,
        lease_ttl: float,
        first_read: int = FIRST_READ,
    ) -> None:
        self.backend = backend
        self.liveness = liveness
        self.interrupt_if_dead = interrupt_if_dead
        self.stream_id = stream_id
        self.heartbeat = heartbeat
        self.lease_ttl = lease_ttl
        self.first_read = first_read
        self.last = max(after, -1)  # the last sequence number delivered
        #: The status the reader found at its first look (set before its first batch).
        self.opened: StreamStatus | None = None
        self._last_yield = time.monotonic()
        self._missing_since: float | None = None

    async def batches(self) -> Batches:
        status, peeked = await self._look(self.first_read)
        if status is None:
            # Missing, as far as a backend that can subscribe can tell: one that cannot is
            # coming back (a restarted Redis is empty until the producers write their
            # streams again), and then the stream is unavailable for now, not gone.
            async with self.backend.listen(self.stream_id):
                raise StreamNotFoundError(self.stream_id)
        self.opened = status
        yield self._continuing(peeked)  # at once, possibly empty: the stream exists
        if status.is_terminal:  # its log is final: no notification can tell more
            async with aclosing(self._rest(_end_of(status))) as tail:
                async for batch in tail:
                    yield batch
            return
        # Subscribed only now, off the path to the first batch: the log is the truth, and
        # notifications only wake the reader, so the status and the log read again once
        # the subscription is live close the gap since the first look (an append, or the
        # end). Either order of the two closes it, so both go at once.
        async with self.backend.listen(self.stream_id) as listener:
            status, rest = await self._look(READ_PAGE)
            async for page in self._catch_up(rest):
                yield page
            # A stream gone meanwhile is handled as missing (the backend lost it).
            state = status.state if status is not None else None
            async for batch in self._follow(listener, state):
                yield batch
                if batch and isinstance(batch[-1], StreamEnd):
                    return
        # The state is terminal, so the log is final: deliver whatever is still unseen.
        async with aclosing(self._rest(await self._final_end())) as tail:
            async for batch in tail:
                yield batch

    async def _rest(self, end: StreamEnd) -> Batches:
        """The log after the last chunk delivered, then ``end`` (with the last page) for a
        stream whose log is final and ``end.chunk_count`` chunks long."""
        tail: Batch = []
        # The count, not a read's length, says what is left: a look's read may have gone
        # before the status that found the stream ended.
        if self.last + 1 < end.chunk_count:
            async for page in self._catch_up():
                if tail:
                    yield tail
                tail = page
            if self.last + 1 < end.chunk_count:  # the log went (it expired) while read
                end = StreamEnd(StreamState.INTERRUPTED, DATA_LOST, self.last + 1, 0)
        tail.append(end)
        yield tail

    async def _follow(self, listener: Listener, state: StreamState | None) -> Batches:
        """Live notifications until the stream is terminal (or a batch ending the read)."""
        quiet = QuietReader(listener)
        pokeable = listener.pokeable()
        if pokeable:
            self.liveness.readers.add(quiet)
        try:
            while state is None or not state.is_terminal:
                note = await (listener.receive() if pokeable else self._receive_or_idle(listener))
                if isinstance(note, Idle):
                    if self._heartbeat_due():
                        yield []
                    try:
                        state = await self.interrupt_if_dead(self.stream_id)
                    except BackendUnavailableError:
                        continue  # unreachable is no evidence that the stream is gone
                    if self._gone_for_good(state):
                        yield [StreamEnd(StreamState.INTERRUPTED, DATA_LOST, self.last + 1, 0)]
                        return
                    continue
                quiet.heard = True
                if isinstance(note, Ended):
                    state = await self._on_ended()
                elif isinstance(note, Appended) and note.chunks[0].seq <= self.last + 1:
                    fresh = self._continuing(note.chunks)
                    if fresh:
                        yield fresh
                else:
                    # Lagged, or a gap before this batch: the log has what was missed (and,
                    # since notifications were dropped, maybe the end).
                    async for page in self._catch_up():
                        yield page
                    state = await self._check_producer()
        finally:
            self.liveness.readers.discard(quiet)

    async def _receive_or_idle(self, listener: Listener) -> Notification:
        """For a listener that cannot be poked: its next notification, or `Idle` after one
        liveness interval of silence."""
        with anyio.move_on_after(self.liveness.interval):
            return await listener.receive()
        return Idle()

    # -- handlers ----------------------------------------------------------------------

    def _heartbeat_due(self) -> bool:
        if self.heartbeat is None or time.monotonic() - self._last_yield < self.heartbeat:
            return False
        self._last_yield = time.monotonic()
        return True

    def _gone_for_good(self, state: StreamState | None) -> bool:
        """Whether the stream is missing (``state`` None) for longer than its producer
        takes to write it again after a backend lost it: two lease periods."""
        if state is not None:
            self._missing_since = None
        elif self._missing_since is None:
            self._missing_since = time.monotonic()
        elif time.monotonic() - self._missing_since > 2 * self.lease_ttl:
            return True
        return False

    async def _on_ended(self) -> StreamState | None:
        # Trust the backend, not the channel (a message can be forged).
        status = await status_quietly(self.backend, self.stream_id)
        return status.state if status is not None else None

    async def _check_producer(self) -> StreamState | None:
        """If the producer's lease lapsed, record ``interrupted``. Returns the state, or
        None while the stream is missing or the backend unreachable."""
        try:
            return await self.interrupt_if_dead(self.stream_id)
        except BackendUnavailableError:
            return None

    # -- the log -----------------------------------------------------------------------

    def _continuing(self, chunks: Any) -> Batch:
        """The chunks that continue exactly after the last one delivered."""
        fresh: Batch = []
        for chunk in chunks:
            if chunk.seq == self.last + 1:
                self.last = chunk.seq
                fresh.append(chunk)
        if fresh:
            self._last_yield = time.monotonic()
        return fresh

    async def _catch_up(self, batch: list[Chunk] | None = None) -> AsyncIterator[Batch]:
        """Pages of the log after the last chunk delivered, each continuing it exactly;
        ``batch``: the first page, already read."""
        while True:
            if batch is None:
                batch = await self.backend.read(self.stream_id, after=self.last, limit=READ_PAGE)
            page = self._continuing(batch)
            if page:
                yield page
            if len(batch) < READ_PAGE or not page:
                self._last_yield = time.monotonic()
                return
            batch = None

    async def _final_end(self) -> StreamEnd:
        final = await self.backend.status(self.stream_id)
        if final is None:
            return StreamEnd(StreamState.INTERRUPTED, DATA_LOST, self.last + 1, 0)
        return _end_of(final)

    async def _look(self, limit: int) -> tuple[StreamStatus | None, list[Chunk]]:
        """The stream's status and up to ``limit`` chunks after the last one delivered."""
        backend, stream_id = self.backend, self.stream_id
        if isinstance(backend, ReadsWithStatus):
            return await backend.look(stream_id, after=self.last, limit=limit)
        read = partial(backend.read, stream_id, after=self.last, limit=limit)
        if isinstance(backend, InlineAppends):
            return await backend.status(stream_id), await read()
        status, page = await _together(partial(backend.status, stream_id), read)
        return status, page


def _end_of(status: StreamStatus) -> StreamEnd:
    """How a terminal stream ended, as its status says."""
    return StreamEnd(status.state, status.error, status.chunk_count, status.char_count)


async def _together(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Every call's result, the calls made at the same time (the first in this task); the
    first call's error if it failed, else the first error among the others."""
    results: list[Any] = [None] * len(calls)
    failures: list[tuple[int, Exception]] = []

    async def call(index: int) -> None:
        try:
            results[index] = await calls[index]()
        except Exception as exc:
            failures.append((index, exc))

    async with anyio.create_task_group() as others:
        for index in range(1, len(calls)):
            others.start_soon(call, index)
        await call(0)
    if failures:
        raise min(failures, key=lambda failure: failure[0])[1]
    return results


async def cut_at_offset(batches: Batches, offset: int) -> Batches:
    """``batches`` from character ``offset`` on: earlier chunks dropped, the chunk that
    holds the offset cut to start exactly there."""
    async with aclosing(batches), aclosing(_cut(batches, offset)) as cut:
        async for batch in cut:
            yield batch


async def _cut(batches: Batches, offset: int) -> Batches:
    first = True
    async for batch in batches:
        cut: Batch = []
        for item in batch:
            if isinstance(item, Chunk):
                if item.end_offset <= offset:
                    continue
                if item.offset < offset:
                    item = Chunk(item.seq, item.data[offset - item.offset :], offset)
            cut.append(item)
        # An empty batch means "exists" (first) or "heartbeat"; a batch wholly before the
        # offset means nothing to the caller.
        if cut or first or not batch:
            yield cut
        first = False


class StreamReader:
    """An open reader of one stream: how the stream stood when it was opened, then its
    batches (as `StreamEngine.read_batches` yields them, the first one included).

    Made by `StreamEngine.open`. Iterate it (``async for batch in reader``); close it with
    `aclose` or by leaving ``async with``, which also ends a read in progress.
    """

    __slots__ = ("_batches", "_first", "chunk_count", "finished_at", "state", "stream_id")

    def __init__(
        self,
        stream_id: str,
        state: StreamState,
        finished_at: float | None,
        first: Batch,
        batches: Batches,
        chunk_count: int = 0,
    ) -> None:
        #: The stream this reads.
        self.stream_id = stream_id
        #: The stream's state when the reader opened it.
        self.state = state
        #: When it ended (Unix timestamp), if it had ended when the reader opened it.
        self.finished_at = finished_at
        #: How many chunks the stream had when the reader opened it (at least as many as
        #: the first batch reaches): where a catch-up from that moment ends.
        self.chunk_count = chunk_count
        self._first: Batch | None = first
        self._batches = batches

    def __repr__(self) -> str:
        return f"<StreamReader {self.stream_id!r} opened {self.state.value}>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Batch:
        first = self._first
        if first is not None:
            self._first = None
            return first
        return await anext(self._batches)

    async def aclose(self) -> None:
        """Stop reading and release what the reader holds (its subscription). Idempotent."""
        self._first = None
        with anyio.CancelScope(shield=True):
            await self._batches.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Opening:
    """What `StreamEngine.open` returns: await it for the `StreamReader`, or enter it with
    ``async with`` to have the reader closed on the way out."""

    __slots__ = ("_open", "_reader")

    def __init__(self, open_reader: Callable[[], Awaitable[StreamReader]]) -> None:
        self._open = open_reader
        self._reader: StreamReader | None = None

    def __await__(self) -> Any:
        return self._open().__await__()

    async def __aenter__(self) -> StreamReader:
        self._reader = await self._open()
        return self._reader

    async def __aexit__(self, *exc_info: object) -> None:
        if self._reader is not None:
            await self._reader.aclose()
