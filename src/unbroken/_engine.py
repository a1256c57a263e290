"""`StreamEngine`: producers that outlive requests, readers that resume without gaps.

How the pieces fit (see docs/concepts.md for the sequence diagrams):

- ``start()`` claims the id in the backend (exactly one producer, across processes) and runs
  the producer in the engine's task group. The producer keeps the chunks of its own stream
  in memory too (``_LocalStream``): readers in this process are served from there, so a
  backend outage never stops the answer from reaching the client that asked for it.
- A writer task coalesces chunks: whatever the source yields while a write is in flight goes
  out together in the next write, so backend round trips per chunk fall well below one.
- A lease, renewed by the producer, tells every other process the producer is alive.
  Readers that sit idle check it; the first to see it lapsed records ``interrupted``.
- Readers elsewhere subscribe to live notifications first, then catch up from the log, then
  follow the notifications, using sequence numbers to drop duplicates and fill gaps.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Protocol, Self

import anyio
from anyio.abc import TaskGroup

from unbroken._asyncio import on_asyncio
from unbroken._models import Chunk, ChunkLog, StreamEnd, StreamState, StreamStatus
from unbroken.backends.base import (
    Append,
    Appended,
    Backend,
    Ended,
    Idle,
    Listener,
    StreamTimes,
)
from unbroken.exceptions import (
    BackendError,
    BackendUnavailableError,
    CorruptStreamError,
    EngineClosedError,
    InvalidStreamIdError,
    StreamExistsError,
    StreamNotFoundError,
    StreamSourceError,
    UnbrokenError,
)

__all__ = ["OnEnd", "OpenedStream", "StreamEngine"]

logger = logging.getLogger("unbroken")

OnEnd = Callable[[StreamEnd], Awaitable[None]]

# Public, safe messages recorded for readers; the real cause goes to the log.
SOURCE_FAILED = "the answer could not be completed because its source failed"
PRODUCER_LOST = "the stream's producer stopped unexpectedly"
SHUTDOWN = "the server shut down before the stream was complete"
TOO_LARGE = "the stream exceeded its size limit"
CORRUPT = "the stream's data in the storage backend is unreadable"
DATA_LOST = "the stream's data was lost by the storage backend"

_READ_PAGE = 512  # chunks per log read while catching up
_WRITE_BATCH = 512  # chunks per backend append at most
_RETRY_MIN, _RETRY_MAX = 0.05, 1.0  # backoff bounds while the backend is unreachable


def _validate_id(stream_id: str) -> str:
    if (
        not isinstance(stream_id, str)
        or not 1 <= len(stream_id) <= 256
        or "{" in stream_id
        or "}" in stream_id
        or not stream_id.isprintable()
    ):
        raise InvalidStreamIdError(stream_id)
    return stream_id


def _safe_message(exc: BaseException) -> str:
    if isinstance(exc, StreamSourceError):
        return str(exc) or SOURCE_FAILED
    return SOURCE_FAILED


class _Wakeups(Protocol):
    """Wakes every task waiting in `wait`, and starts over: a reader with nothing new, an
    idle writer wait on one until the next chunk (or write) sets it."""

    def set(self) -> None: ...

    async def wait(self) -> None:
        """Call only after finding nothing to do, with no await between the look and this."""


class _LoopWakeups:
    """`_Wakeups` on the running asyncio loop: one future per wait, and nothing else made
    per chunk (an `asyncio.Event` binds itself to the loop under a global lock on first use;
    an `anyio.Event` looks the async library up on every creation; an object per wait is
    one more allocation per chunk for the garbage collector to count)."""

    __slots__ = ("_loop", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        waiters = self._waiters
        if waiters:
            # set_result only schedules the waiters: none of them runs (or waits again)
            # before the list is cleared.
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            waiters.clear()

    async def wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter


class _EventWakeups:
    """`_Wakeups` for any async library: an event made when a task is about to wait, set
    and dropped by the next `set`."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def set(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


def _wakeups_factory() -> Callable[[], _Wakeups]:
    """Wake-ups for the running event loop's library."""
    if on_asyncio():
        return partial(_LoopWakeups, asyncio.get_running_loop())
    return _EventWakeups


@dataclass(eq=False)
class _LocalStream:
    """A stream produced in this process: its chunks, its state, and what wakes its readers."""

    stream_id: str
    token: str
    times: StreamTimes
    new_wakeups: Callable[[], _Wakeups] = _EventWakeups
    log: ChunkLog = field(default_factory=ChunkLog)  # lives as long as the answer
    # Chunks the backend has acknowledged. Local readers see only these (so what they see is
    # what every other reader will see), except while the backend is unreachable: then they
    # see everything ("fail open"), and the backend gets it all once it is back.
    durable: int = 0
    degraded: bool = False
    lost: bool = False  # the backend forgot the stream; claim it again before writing
    # A write of its chunks is under way (by the engine's gathered appends, its writer task
    # or its end): never two at once, or the second would repeat the first's chunks.
    writing: bool = False
    # Its last gathered append failed: its own writer task writes it (retrying, resyncing)
    # until it has caught up, then the gathered appends take it back.
    slow: bool = False
    state: StreamState = StreamState.ACTIVE
    error: str | None = None
    stop_state: StreamState | None = None
    stop_error: str | None = None
    source_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ended: anyio.Event = field(default_factory=anyio.Event)
    readers: _Wakeups = field(init=False)  # what local readers wait on (see wake_readers)
    writer: _Wakeups = field(init=False)  # what the idle writer task waits on
    written: _Wakeups = field(init=False)  # woken when a write of it ends (see `writing`)
    quiet: bool = False  # no reader was woken since the engine's last liveness tick
    # An append landed since the engine's last tick (an append renews the lease).
    lease_fresh: bool = True
    ending: bool = False  # the source is done: its end is being recorded
    # The producer's helpers (see `_produce`); its writer task is started there on demand.
    helpers: TaskGroup | None = None
    has_writer: bool = False

    def __post_init__(self) -> None:
        self.readers = self.new_wakeups()
        self.writer = self.new_wakeups()
        self.written = self.new_wakeups()

    @property
    def visible(self) -> int:
        return len(self.log) if self.degraded else self.durable

    @property
    def unwritten(self) -> bool:
        return self.lost or self.durable < len(self.log)

    def wake_readers(self) -> None:
        self.quiet = False
        self.readers.set()

    def add(self, data: str) -> Chunk:
        chunk = self.log.add(data)
        if self.degraded:
            self.wake_readers()
        return chunk

    def stop(self, state: StreamState, error: str | None = None) -> None:
        """Stop the source; the first reason wins (cancel, shutdown, lost lease, ...)."""
        if self.stop_state is None:
            self.stop_state, self.stop_error = state, error
        self.source_scope.cancel()

    def end(self) -> StreamEnd:
        return StreamEnd(self.state, self.error, self.visible, self.log.offset_at(self.visible))


@dataclass(frozen=True, slots=True, eq=False)
class OpenedStream:
    """A reader of a stream, opened by `StreamEngine.open_batches`: how the stream stood when
    the reader first looked, that first batch, and the batches after it."""

    #: The stream's state when the reader opened it.
    state: StreamState
    #: When it ended (Unix timestamp), if it had ended.
    finished_at: float | None
    #: The first batch, as `read_batches` yields it first (possibly empty).
    first: list[Chunk | StreamEnd]
    #: The rest of `read_batches`: close it (``aclose``) once done with the stream.
    batches: AsyncGenerator[list[Chunk | StreamEnd], None]


@dataclass(eq=False)
class _QuietReader:
    """A reader waiting on live notifications; ``heard`` is reset by each tick."""

    listener: Listener
    heard: bool = True


class StreamEngine:
    """Runs stream producers and serves readers over a `Backend`. Use as ``async with``.

    - ``lease_ttl``: a producer whose lease is not renewed for this long is declared dead;
      readers then see ``interrupted`` (at most ``lease_ttl * 5/3`` after it died: 4 s by
      default).
    - ``active_ttl``: sliding time-to-live of an active stream's data in the backend.
    - ``retention``: how long a finished stream stays readable (default 24 h).
    - ``max_chunks`` / ``max_chars``: a stream that grows past these ends in ``error``.
    - ``drain_timeout``: on exit, running producers get this long to finish; the rest are
      recorded as ``interrupted``.
    - ``backend_retry``: how long a producer keeps retrying an unreachable backend to record
      its end before giving up (its own readers are served regardless).
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
        self._appends_inline = backend.appends_without_waiting
        self._appends_together = backend.appends_together and not self._appends_inline
        # Streams with chunks to append, for the gathered appends (``appends_together``).
        self._dirty: dict[str, _LocalStream] = {}
        self._new_wakeups: Callable[[], _Wakeups] = _EventWakeups
        self._dirty_wakeup: _Wakeups = self._new_wakeups()
        self._local: dict[str, _LocalStream] = {}
        self._readers: set[_QuietReader] = set()
        self._tick_checks: set[Callable[[], None]] = set()
        self._task_group: TaskGroup | None = None
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise RuntimeError("the engine is already open")
        if self._owns_backend:
            await self.backend.open()
        self._new_wakeups = _wakeups_factory()
        self._dirty_wakeup = self._new_wakeups()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._tick, self._task_group, name="unbroken:liveness")
        if self._appends_together:
            self._task_group.start_soon(
                self._gather_appends, self._task_group, name="unbroken:appends"
            )
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
                await self._drain()
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

    async def _drain(self) -> None:
        """Let producers finish up to the deadline, then interrupt and record the rest."""
        with anyio.move_on_after(self.drain_timeout):
            for local in list(self._local.values()):
                await local.ended.wait()
        for local in list(self._local.values()):
            local.stop(StreamState.INTERRUPTED, SHUTDOWN)
        # Each producer records its end within a bounded time (see _record_end).
        for local in list(self._local.values()):
            await local.ended.wait()

    async def _tick(self, task_group: TaskGroup) -> None:
        """The engine's liveness tick, every lease_ttl/3, for every timed check of all its
        streams (one task and one timer instead of some per stream):

        - poke readers that heard nothing since the last tick, so they check the producer's
          lease (a dead producer sends nothing, not even an end) and send their heartbeats;
        - renew the lease of each stream produced here that has not appended since the last
          tick (an append renews it too: a stream that streams needs no renewal);
        - run the `on_tick` checks.
        """
        interval = self.lease_ttl / 3
        while True:
            await anyio.sleep(interval)
            for reader in list(self._readers):
                if reader.heard:
                    reader.heard = False
                else:
                    reader.listener.poke()
            due: list[_LocalStream] = []
            for local in list(self._local.values()):
                # Wake the local readers of quiet streams, so those waiting with a heartbeat
                # see that it is due (the others look, find nothing new and wait again).
                if local.quiet:
                    local.wake_readers()
                local.quiet = True
                if local.lease_fresh:
                    local.lease_fresh = False
                elif not local.ending:
                    due.append(local)
            if due:
                task_group.start_soon(self._renew_leases, due, interval)
            for check in list(self._tick_checks):
                try:
                    check()
                except Exception:
                    logger.exception("a liveness tick check failed")

    def on_tick(self, check: Callable[[], None]) -> Callable[[], None]:
        """Call ``check`` on each of the engine's liveness ticks (every ``lease_ttl / 3``)
        until the function returned is called. For a reader's timed checks without a task
        or a timer of its own: `EngineStreamResponse` times its sends and notices a server
        shutting down this way."""
        self._tick_checks.add(check)
        return partial(self._tick_checks.discard, check)

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
        _validate_id(stream_id)
        if stream_id in self._local:
            raise StreamExistsError(stream_id)
        local = _LocalStream(
            stream_id, secrets.token_hex(16), self._times(retention), self._new_wakeups
        )
        try:
            claimed = await self.backend.claim(
                stream_id, token=local.token, times=local.times, now=time.time()
            )
        except BackendUnavailableError:
            # Fail open: the caller's own readers are served from memory right away, and the
            # claim is made once the backend is back (a loser of that claim then stops).
            logger.warning("backend unreachable: stream %r starts from memory", stream_id)
            claimed = local.lost = local.degraded = True
        if not claimed:
            raise StreamExistsError(stream_id)
        self._local[stream_id] = local
        task_group.start_soon(self._produce, local, source, on_end, name=f"unbroken:{stream_id}")

    async def _produce(
        self, local: _LocalStream, source: AsyncIterable[str], on_end: OnEnd | None
    ) -> None:
        try:
            async with anyio.create_task_group() as helpers:
                local.helpers = helpers
                try:
                    if local.unwritten:  # the claim found the backend unreachable
                        self._wake_writer(local)
                    helpers.start_soon(self._watch_for_stop, local)
                    state, error = await self._pump(local, source)
                finally:
                    # From now on its end writes what is left (no writer task may start).
                    local.ending, local.helpers = True, None
                helpers.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await self._record_end(local, state, error)
        except Exception:
            # A bug of ours must not take down the engine and every other stream with it.
            logger.exception("producer of stream %r failed", local.stream_id)
            local.state, local.error = StreamState.INTERRUPTED, PRODUCER_LOST
            local.wake_readers()
        try:
            if on_end is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await on_end(local.end())
                    except Exception:
                        logger.exception("on_end callback of stream %r failed", local.stream_id)
        finally:
            self._local.pop(local.stream_id, None)
            local.ended.set()

    async def _pump(
        self, local: _LocalStream, source: AsyncIterable[str]
    ) -> tuple[StreamState, str | None]:
        """Copy the source into the stream; returns the terminal state it calls for."""
        iterator = aiter(source)
        state, error = StreamState.DONE, None
        try:
            with local.source_scope:
                async for data in iterator:
                    if not isinstance(data, str):
                        raise TypeError(f"stream sources yield str, got {type(data).__name__}")
                    if not data:
                        continue
                    if (
                        len(local.log) >= self.max_chunks
                        or local.log.char_count + len(data) > self.max_chars
                    ):
                        state, error = StreamState.ERROR, TOO_LARGE
                        break
                    chunk = local.add(data)
                    if self._appends_inline:
                        self._append_inline(local, chunk)
                    elif self._appends_together:
                        self._append_later(local)
                    else:
                        self._wake_writer(local)
        except Exception as exc:
            logger.exception("source of stream %r failed", local.stream_id)
            state, error = StreamState.ERROR, _safe_message(exc)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with anyio.move_on_after(5, shield=True):
                    try:
                        await aclose()
                    except Exception:
                        logger.exception("closing the source of %r failed", local.stream_id)
        if local.stop_state is not None:
            state, error = local.stop_state, local.stop_error
        return state, error

    def _append_inline(self, local: _LocalStream, chunk: Chunk) -> None:
        """Append the chunk just added, without a task switch (in-process backends). Anything
        unusual (a lost or degraded stream, an error) is left to the writer task."""
        if local.lost or local.degraded or local.durable != chunk.seq:
            self._wake_writer(local)
            return
        try:
            result = self.backend.append_nowait(
                local.stream_id,
                token=local.token,
                chunks=(chunk,),
                times=local.times,
                now=time.time(),
            )
        except BackendError:
            self._wake_writer(local)  # it retries, resynchronises or gives up, as for any write
            return
        self._appended(local, 1, result)
        if result is None:
            self._wake_writer(local)  # the backend forgot the stream: the writer claims it again

    def _wake_writer(self, local: _LocalStream) -> None:
        """Have the stream's own writer look at it, starting its task the first time: most
        streams never need one (their chunks are appended inline or gathered)."""
        if not local.has_writer and local.helpers is not None:
            local.has_writer = True
            local.helpers.start_soon(self._write_loop, local)
        local.writer.set()

    async def _write_loop(self, local: _LocalStream) -> None:
        """The stream's own writer. With gathered appends it writes only what they leave to
        it: a stream the backend forgot, one it cannot reach, one whose append failed."""
        while True:
            if local.unwritten and not local.writing and self._writes_alone(local):
                local.writing = True
                try:
                    upto = len(local.log) if self._appends_together else None
                    if not await self._flush(local, upto):
                        # The stream ended or another producer owns it: the producer is
                        # being stopped, and there is nothing left to write. (Writing again
                        # would get the same answer, and from an in-process backend without
                        # ever yielding: a loop that starves every other task.)
                        return
                    local.slow = False
                finally:
                    local.writing = False
                    local.written.set()
                self._hand_over(local)  # what came meanwhile
            else:
                await local.writer.wait()

    def _append_later(self, local: _LocalStream) -> None:
        """Have the stream's new chunks appended with the next gathered appends."""
        self._dirty[local.stream_id] = local
        self._dirty_wakeup.set()

    def _writes_alone(self, local: _LocalStream) -> bool:
        return not self._appends_together or local.lost or local.degraded or local.slow

    def _hand_over(self, local: _LocalStream) -> None:
        """After a write: the stream's chunks still unwritten go to whoever writes them now,
        its own writer or the next gathered appends."""
        if not local.unwritten:
            return
        if self._writes_alone(local):
            self._wake_writer(local)
        else:
            self._append_later(local)

    async def _gather_appends(self, task_group: TaskGroup) -> None:
        """With ``appends_together``: every ``append_gather`` seconds, append the new chunks
        of every stream of this engine in one `Backend.append_many`: one task and one round
        trip for all of them, instead of a task switch and a pipelined call each."""
        gather = self.backend.append_gather
        while True:
            if not self._dirty:
                await self._dirty_wakeup.wait()
                continue
            if gather:
                await anyio.sleep(gather)
            dirty, self._dirty = self._dirty, {}
            group: list[tuple[_LocalStream, list[Chunk]]] = []
            for local in dirty.values():
                if local.writing or not local.unwritten:
                    continue  # whoever writes it now looks again when done
                if self._writes_alone(local):
                    self._wake_writer(local)
                    continue
                local.writing = True
                group.append((local, local.log.chunks(local.durable, local.durable + _WRITE_BATCH)))
            if group:
                task_group.start_soon(self._append_group, group)

    async def _append_group(self, group: list[tuple[_LocalStream, list[Chunk]]]) -> None:
        now = time.time()
        appends = [
            Append(local.stream_id, local.token, chunks, local.times, now)
            for local, chunks in group
        ]
        outcomes: Sequence[StreamState | BackendError | None] = ()
        try:
            outcomes = await self.backend.append_many(appends)
        except Exception as exc:
            # The streams' own writers retry; a bug of ours must not end the engine.
            if not isinstance(exc, UnbrokenError):
                logger.exception("appending %d streams together failed", len(group))
        finally:
            for local, _ in group:
                local.writing = False
                local.written.set()
        if len(outcomes) != len(group):
            outcomes = [BackendError("the append did not complete")] * len(group)
        for (local, chunks), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BackendError):
                local.slow = True  # its writer retries, resyncs or gives up, as for any write
            elif not self._appended(local, len(chunks), outcome):
                continue
            self._hand_over(local)

    def _appended(self, local: _LocalStream, count: int, result: StreamState | None) -> bool:
        """Apply the backend's answer to an append of ``count`` chunks. Returns False if the
        producer must stop (the stream ended or another producer owns it)."""
        if result is StreamState.ACTIVE:
            local.durable += count
            local.lease_fresh = True
            if local.degraded and local.durable == len(local.log):
                local.degraded = False
            local.wake_readers()
        elif result is None:
            local.lost = True  # forgotten by the backend: claim it again, write it all again
        else:
            local.stop(result, PRODUCER_LOST if result is StreamState.INTERRUPTED else None)
            return False
        return True

    async def _flush(self, local: _LocalStream, upto: int | None = None) -> bool:
        """Write every chunk not yet durable (``upto``: those before it; the writer of a
        stream whose gathered append failed stops there and gives the stream back). Returns
        False if the producer lost the stream.

        Retries (with backoff) while the backend is unreachable; meanwhile local readers are
        served from memory. If the backend lost the stream (a restarted Redis without
        persistence), re-claims it under the same token and writes it again from chunk 0.
        """
        # Never runs twice at once for a stream: see `_LocalStream.writing`.
        delay = _RETRY_MIN
        while local.unwritten and (upto is None or local.lost or local.durable < upto):
            batch = local.log.chunks(local.durable, local.durable + _WRITE_BATCH)
            try:
                if local.lost:
                    if not await self._reclaim(local):
                        return False
                    continue
                result = await self.backend.append(
                    local.stream_id,
                    token=local.token,
                    chunks=batch,
                    times=local.times,
                    now=time.time(),
                )
            except CorruptStreamError:
                # A write whose reply was lost (cancelled, timed out) may have landed:
                # trust the log's length if it is one we could have written, else give up.
                synced = await self._resync(local)
                if synced is None:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                elif not synced:
                    logger.error("stream %r is corrupt in the backend", local.stream_id)
                    local.stop(StreamState.ERROR, CORRUPT)
                    return False
                continue
            except BackendError:
                if not local.degraded:
                    logger.warning(
                        "backend unreachable; stream %r continues from memory", local.stream_id
                    )
                    local.degraded = True
                    local.wake_readers()
                await anyio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if not self._appended(local, len(batch), result):
                return False
            delay = _RETRY_MIN
        return True

    async def _resync(self, local: _LocalStream, *, owned: bool = False) -> bool | None:
        """After a refused append, adopt the log's length if we could have written it:
        beyond what we know to be durable, or (``owned``: the stream is known to be ours
        under our token) any length up to what we have.

        None: the backend cannot tell right now (try again later).
        """
        try:
            status = await self.backend.status(local.stream_id)
        except BackendUnavailableError:
            return None
        except BackendError:
            return False
        if status is None or not status.chunk_count <= len(local.log):
            return False
        if not owned and status.chunk_count <= local.durable:
            return False
        local.durable = status.chunk_count
        local.wake_readers()
        return True

    async def _reclaim(self, local: _LocalStream) -> bool:
        """The backend forgot the stream: claim it again and rewrite it from the start.

        A claim of ours may already have landed (its reply lost to a cancellation): then the
        stream is ours, and writing continues from what the log holds.
        """
        claimed = await self.backend.claim(
            local.stream_id, token=local.token, times=local.times, now=time.time()
        )
        if claimed:
            logger.warning("stream %r was lost by the backend; writing it again", local.stream_id)
            local.durable = 0
        elif await self.backend.renew_lease(
            local.stream_id, token=local.token, times=local.times, now=time.time()
        ) is not StreamState.ACTIVE or not await self._resync(local, owned=True):
            local.stop(StreamState.INTERRUPTED, DATA_LOST)
            return False
        local.lost = False
        return True

    async def _renew_leases(self, due: list[_LocalStream], within: float) -> None:
        # Given up after ``within`` (the next tick's renewals are on their way by then).
        with anyio.move_on_after(within):
            async with anyio.create_task_group() as renewals:
                for local in due:
                    renewals.start_soon(self._renew_lease, local)

    async def _renew_lease(self, local: _LocalStream) -> None:
        try:
            state = await self.backend.renew_lease(
                local.stream_id, token=local.token, times=local.times, now=time.time()
            )
        except BackendError as exc:
            # Unreachable: try again next time. Corrupt: the next write will say so.
            logger.debug("lease renewal of %r failed: %s", local.stream_id, exc)
            return
        if state is None:
            local.lost = True
            self._wake_writer(local)
        elif state.is_terminal:
            local.stop(state, PRODUCER_LOST if state is StreamState.INTERRUPTED else None)

    async def _watch_for_stop(self, local: _LocalStream) -> None:
        """Stop the producer within milliseconds when another process ends the stream."""
        delay = _RETRY_MIN
        while True:
            try:
                async with self.backend.listen(local.stream_id, ends_only=True) as listener:
                    delay = _RETRY_MIN
                    while True:
                        note = await listener.receive()
                        # Trust the backend, not the channel (a message can be forged).
                        if (
                            isinstance(note, Ended)
                            and (status := await self._status_quietly(local.stream_id))
                            and status.is_terminal
                        ):
                            local.stop(status.state)
                            return
            except BackendError:
                await anyio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)

    async def _record_end(self, local: _LocalStream, state: StreamState, error: str | None) -> None:
        """Flush what is left and record the terminal state (first terminal state wins)."""
        while local.writing:  # a gathered append of its chunks is on its way
            await local.written.wait()
        local.writing = True  # the end writes the rest itself
        try:
            await self._record_end_alone(local, state, error)
        finally:
            local.writing = False

    async def _record_end_alone(
        self, local: _LocalStream, state: StreamState, error: str | None
    ) -> None:
        recorded: StreamState | None = None
        with anyio.move_on_after(self.backend_retry) as scope:
            if state is StreamState.DONE or state is StreamState.ERROR:
                await self._flush(local)
            delay = _RETRY_MIN
            while True:
                try:
                    recorded = await self.backend.finish(
                        local.stream_id,
                        state=state,
                        error=error,
                        token=local.token,
                        times=local.times,
                        now=time.time(),
                    )
                except BackendUnavailableError:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                except BackendError:
                    logger.exception("recording the end of stream %r failed", local.stream_id)
                    break
                if recorded is None:
                    # Forgotten by the backend: write it all again, then record the end.
                    local.lost = True
                    if await self._flush(local):
                        continue
                break
        in_backend = not scope.cancelled_caught and recorded is not None
        if recorded is None or scope.cancelled_caught:
            logger.error("could not record the end of stream %r in the backend", local.stream_id)
            recorded = state
        else:
            # The final log may hold more than we know to be durable: a write cancelled on
            # its way back (the stop cancelled the writer) may still have landed.
            status = await self._status_quietly(local.stream_id)
            if status is not None:
                if local.durable < status.chunk_count <= len(local.log):
                    local.durable = status.chunk_count
                if recorded is not state:
                    error = status.error
        if recorded is StreamState.INTERRUPTED and error is None:
            error = PRODUCER_LOST
        local.state, local.error = recorded, error
        # Once the end is recorded, what the backend holds is final and every reader sees
        # exactly that (chunks it refused, e.g. after a stop, are dropped here too). If the
        # backend never took the end, what this process has is all there is.
        local.degraded = not in_backend
        local.wake_readers()

    async def _status_quietly(self, stream_id: str) -> StreamStatus | None:
        with anyio.move_on_after(5):
            try:
                return await self.backend.status(stream_id)
            except BackendError:
                pass
        return None

    # -- stopping and inspecting -------------------------------------------------------

    async def cancel(self, stream_id: str) -> StreamState | None:
        """Stop the stream from any process: its producer is cancelled within milliseconds
        and every reader ends with ``cancelled``. Idempotent: a finished stream keeps its
        state. Returns the stream's state afterwards, or None if there is no such stream.
        """
        self._require_open(for_reading=True)
        _validate_id(stream_id)
        local = self._local.get(stream_id)
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
        _validate_id(stream_id)
        return await self.backend.status(stream_id)

    async def wait(self, stream_id: str) -> StreamEnd:
        """Wait until the stream is terminal and return how it ended."""
        async for item in self.read(stream_id):
            if isinstance(item, StreamEnd):
                return item
        raise AssertionError("unreachable: every read ends with a StreamEnd")

    # -- reading -----------------------------------------------------------------------

    async def read(
        self, stream_id: str, *, after: int = -1, offset: int | None = None
    ) -> AsyncIterator[Chunk | StreamEnd]:
        """Yield the stream's chunks after sequence number ``after`` (or from character
        ``offset``), live until it ends, then one `StreamEnd`.

        No gap and no duplicate: chunks come in ``seq`` order exactly once, whatever
        happens between the catch-up and the live part. Raises `StreamNotFoundError` if the
        stream does not exist. With ``offset``, the first chunk is cut to start exactly at
        that character.
        """
        async for batch in self.read_batches(stream_id, after=after, offset=offset):
            for item in batch:
                yield item

    async def read_batches(
        self,
        stream_id: str,
        *,
        after: int = -1,
        offset: int | None = None,
        heartbeat: float | None = None,
    ) -> AsyncGenerator[list[Chunk | StreamEnd], None]:
        """`read`, in batches: each batch is everything that is there to read at that
        moment (at most a page), so a catch-up comes in a few batches and a live stream in
        one batch per wake-up. What a response writing to a client wants: one write each.

        The first batch comes at once, possibly empty: it says the stream exists. The last
        batch ends with the `StreamEnd`. With ``heartbeat``, an empty batch also comes when
        nothing arrived for that many seconds (noticed on the engine's liveness tick, every
        ``lease_ttl / 3``), so the caller can keep its connection alive without a timer.
        """
        self._check_read(stream_id, heartbeat)
        batches: AsyncIterator[list[Chunk | StreamEnd]]
        if offset is None:
            batches = self._read(stream_id, self._local.get(stream_id), after, heartbeat, None)
        else:
            if offset < 0:
                raise ValueError("offset must be >= 0")
            batches = self._read_from_offset(stream_id, offset, heartbeat)
        async for batch in batches:
            yield batch

    async def open_batches(
        self, stream_id: str, *, after: int = -1, heartbeat: float | None = None
    ) -> OpenedStream | None:
        """`read_batches`, opened: its first batch read, with the stream's state as the
        reader found it; None if there is no such stream.

        For a reader in another process this is one round trip fewer than asking `status`
        first: the state comes with the reader's first look at the backend. So a caller that
        serves a stream only while it is live (or recently ended) decides with no extra
        round trip. Close ``batches`` once done.
        """
        self._check_read(stream_id, heartbeat)
        local = self._local.get(stream_id)
        seen: list[StreamStatus] = []
        batches = self._read(stream_id, local, after, heartbeat, seen)
        try:
            first = await anext(batches)
        except StreamNotFoundError:
            return None
        if local is not None:  # this process produces it: if it ended, it ended just now
            state = local.state
            finished_at = time.time() if state.is_terminal else None
        else:
            state, finished_at = seen[0].state, seen[0].finished_at
        return OpenedStream(state, finished_at, first, batches)

    def _check_read(self, stream_id: str, heartbeat: float | None) -> None:
        self._require_open(for_reading=True)
        _validate_id(stream_id)
        if heartbeat is not None and heartbeat <= 0:
            raise ValueError("heartbeat must be positive (or None)")

    def _read(
        self,
        stream_id: str,
        local: _LocalStream | None,
        after: int,
        heartbeat: float | None,
        seen: list[StreamStatus] | None,
    ) -> AsyncGenerator[list[Chunk | StreamEnd], None]:
        """From this process's copy if it produces the stream, else from the backend."""
        if local is not None:
            return self._read_local(local, after, heartbeat)
        return self._read_backend(stream_id, after, heartbeat, seen)

    async def _read_from_offset(
        self, stream_id: str, offset: int, heartbeat: float | None
    ) -> AsyncIterator[list[Chunk | StreamEnd]]:
        first = True
        async for batch in self.read_batches(stream_id, heartbeat=heartbeat):
            cut: list[Chunk | StreamEnd] = []
            for item in batch:
                if isinstance(item, Chunk):
                    if item.end_offset <= offset:
                        continue
                    if item.offset < offset:
                        item = Chunk(item.seq, item.data[offset - item.offset :], offset)
                cut.append(item)
            # An empty batch means "exists" (first) or "heartbeat"; a batch wholly before
            # the offset means nothing to the caller.
            if cut or first or not batch:
                yield cut
            first = False

    async def _read_local(
        self, local: _LocalStream, after: int, heartbeat: float | None
    ) -> AsyncGenerator[list[Chunk | StreamEnd], None]:
        position = max(after + 1, 0)
        first = True
        last_yield = time.monotonic()
        while True:
            visible = local.visible
            batch: list[Chunk | StreamEnd] = []
            batch += local.log.chunks(position, min(visible, position + _READ_PAGE))
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

    async def _read_backend(
        self,
        stream_id: str,
        after: int,
        heartbeat: float | None,
        seen: list[StreamStatus] | None = None,
    ) -> AsyncGenerator[list[Chunk | StreamEnd], None]:
        """``seen``: gets the status the reader found, before the first batch."""
        last = max(after, -1)
        async with AsyncExitStack() as stack:
            listener, status, peeked = await self._listen_and_peek(stack, stream_id, last)
            if status is None:
                raise StreamNotFoundError(stream_id)
            if seen is not None:
                seen.append(status)
            first: list[Chunk | StreamEnd] = []
            for chunk in peeked:
                if chunk.seq == last + 1:
                    last = chunk.seq
                    first.append(chunk)
            yield first  # at once, possibly empty: the stream exists
            # Now that notifications are live: the status and the log again, for what the
            # peek may have missed (an append or the end before the subscription was live).
            status = await self.backend.status(stream_id)
            async for page in self._catch_up(stream_id, last):
                last = page[-1].seq
                yield list(page)
            last_yield = time.monotonic()
            # A stream gone meanwhile is handled as missing below (the backend lost it).
            state: StreamState | None = status.state if status is not None else None
            missing_since: float | None = None
            quiet = _QuietReader(listener)
            self._readers.add(quiet)
            try:
                while state is None or not state.is_terminal:
                    note = await listener.receive()
                    if isinstance(note, Idle):
                        if heartbeat is not None and time.monotonic() - last_yield >= heartbeat:
                            yield []
                            last_yield = time.monotonic()
                        try:
                            state = await self._interrupt_if_dead(stream_id)
                        except BackendUnavailableError:
                            continue  # unreachable is no evidence that the stream is gone
                        if state is not None:
                            missing_since = None
                        elif missing_since is None:
                            missing_since = time.monotonic()
                        elif time.monotonic() - missing_since > 2 * self.lease_ttl:
                            # Not written again by its producer within two lease periods.
                            yield [StreamEnd(StreamState.INTERRUPTED, DATA_LOST, last + 1, 0)]
                            return
                        continue
                    quiet.heard = True
                    if isinstance(note, Ended):
                        # Trust the backend, not the channel (a message can be forged).
                        status = await self._status_quietly(stream_id)
                        state = status.state if status is not None else None
                    elif isinstance(note, Appended) and note.chunks[0].seq <= last + 1:
                        fresh: list[Chunk | StreamEnd] = []
                        for chunk in note.chunks:
                            if chunk.seq == last + 1:
                                last = chunk.seq
                                fresh.append(chunk)
                        if fresh:
                            yield fresh
                            last_yield = time.monotonic()
                    else:
                        # Lagged, or a gap before this batch: the log has what was missed
                        # (and, since notifications were dropped, maybe the end).
                        async for page in self._catch_up(stream_id, last):
                            last = page[-1].seq
                            yield list(page)
                        last_yield = time.monotonic()
                        state = await self._check_producer(stream_id)
            finally:
                self._readers.discard(quiet)
            # The state is terminal, so the log is final: deliver whatever is still unseen.
            tail: list[Chunk | StreamEnd] = []
            async for page in self._catch_up(stream_id, last):
                last = page[-1].seq
                if tail:
                    yield tail
                tail = list(page)
            final = await self.backend.status(stream_id)
            if final is None:
                tail.append(StreamEnd(StreamState.INTERRUPTED, DATA_LOST, last + 1, 0))
            else:
                end = StreamEnd(final.state, final.error, final.chunk_count, final.char_count)
                tail.append(end)
            yield tail

    async def _listen_and_peek(
        self, stack: AsyncExitStack, stream_id: str, after: int
    ) -> tuple[Listener, StreamStatus | None, list[Chunk]]:
        """Subscribe to the stream's notifications (entered on ``stack``) and, at the same
        time, read its status and first page of the log after ``after``.

        Concurrent, so a reader in another process gets its first batch after one round
        trip instead of three (subscribe, status, read: each waits its turn in a busy event
        loop). The peek may precede the subscription, so the caller reads both again once
        it is live; that second look is off the path to the first byte.
        """
        if self._appends_inline:  # an in-process backend answers at once: nothing to overlap
            subscribed = await stack.enter_async_context(self.backend.listen(stream_id))
            status = await self.backend.status(stream_id)
            page = await self.backend.read(stream_id, after=after, limit=_READ_PAGE)
            return subscribed, status, page
        peeked: dict[str, Any] = {}
        failures: list[Exception] = []

        async def peek(name: str, call: Callable[[], Awaitable[object]]) -> None:
            try:
                peeked[name] = await call()
            except Exception as exc:
                failures.append(exc)

        listener: Listener | None = None
        async with anyio.create_task_group() as peeks:
            peeks.start_soon(peek, "status", partial(self.backend.status, stream_id))
            peeks.start_soon(
                peek, "page", partial(self.backend.read, stream_id, after=after, limit=_READ_PAGE)
            )
            try:
                listener = await stack.enter_async_context(self.backend.listen(stream_id))
            except Exception as exc:
                failures.insert(0, exc)
        if failures:
            raise failures[0]
        assert listener is not None
        return listener, peeked["status"], peeked["page"]

    async def _catch_up(self, stream_id: str, after: int) -> AsyncIterator[list[Chunk]]:
        """Pages of the log after ``after``, each continuing the previous one exactly."""
        while True:
            batch = await self.backend.read(stream_id, after=after, limit=_READ_PAGE)
            page: list[Chunk] = []
            for chunk in batch:
                if chunk.seq == after + 1:
                    after = chunk.seq
                    page.append(chunk)
            if page:
                yield page
            if len(batch) < _READ_PAGE or not page:
                return

    def produces(self, stream_id: str) -> bool:
        """Whether this engine runs the stream's producer right now: started here, and its
        end (``on_end`` included) not done yet. Such a stream's producer is alive by
        definition, so a sweep for dead producers can skip it without asking the backend."""
        return stream_id in self._local

    async def check_producer(self, stream_id: str) -> StreamState | None:
        """If the stream is active but its producer's lease has lapsed (its process died),
        record ``interrupted`` now. Returns the stream's state afterwards, or None if there
        is no such stream. Readers do this by themselves when they hear nothing for a while;
        call it to notice dead producers of streams nobody is reading.
        """
        self._require_open(for_reading=True)
        _validate_id(stream_id)
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

    async def _check_producer(self, stream_id: str) -> StreamState | None:
        """An idle reader's check: if the producer's lease lapsed, record ``interrupted``.

        Returns the state, or None while the stream is missing (a backend that lost it, the
        producer will write it again within a lease period; after that it is ``interrupted``)
        or unreachable.
        """
        try:
            return await self._interrupt_if_dead(stream_id)
        except BackendUnavailableError:
            return None
