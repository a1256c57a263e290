"""How a stream's new chunks reach the backend: inline, gathered, or by its own writer task.

The backend's capabilities decide the usual way (see `unbroken.backends.base`):

- `InlineAppends` (in-process): each chunk is appended in the producer's own task as the
  source yields it. No task switch per chunk.
- `GatheredAppends`: the engine gathers the new chunks of all streams for
  ``append_gather`` seconds and writes them with one `append_many` (two engine tasks take
  turns): one round trip for many streams, and more streams per round trip when those are
  slow.
- neither: each stream's own writer task writes whatever came while its last write was on
  its way, so round trips fall below one per chunk under load.

Whatever the usual way, a stream that needs retries, a resync or a new claim (the backend
is unreachable, lost the stream or failed its gathered append) is written by its own writer
task (`flushing.flush`) until it has caught up. `LocalStream.writer` says who writes a
stream at any moment; nobody else touches its chunks meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import TaskGroup

from unbroken._asyncio import on_asyncio
from unbroken._engine.flushing import WRITE_BATCH, apply_append, flush, record_end
from unbroken._engine.local import PRODUCER_LOST, LocalStream, Writer
from unbroken._models import Chunk, StreamState
from unbroken._wakeups import EventWakeups, Wakeups
from unbroken.backends.base import Append, Backend, GatheredAppends, InlineAppends, Renewal
from unbroken.exceptions import BackendError, UnbrokenError

__all__ = ["Writes"]

logger = logging.getLogger("unbroken")

#: Tasks writing gathered appends, each waiting for its own append while the next gathers.
_APPENDERS = 2


class Writes:
    """The write path of one engine's streams (see the module docstring)."""

    def __init__(self, backend: Backend, *, backend_retry: float) -> None:
        self.backend = backend
        self.backend_retry = backend_retry
        self.inline = backend if isinstance(backend, InlineAppends) else None
        # An in-process backend needs no gathering even if it could gather.
        self.gathered = (
            backend if isinstance(backend, GatheredAppends) and self.inline is None else None
        )
        # Streams with chunks for the next gathered append, each with its newest chunk if
        # the producer just added it (None: read them from its log).
        self._dirty: dict[str, tuple[LocalStream, Chunk | None]] = {}
        self._dirty_since = 0.0  # when the first of them came (time.monotonic())
        self._dirty_wakeup: Wakeups = EventWakeups()
        # One appender gathers at a time (a flag, not a lock: an uncontended anyio lock
        # still yields to the event loop, once per append).
        self._gatherer_busy = False
        self._gatherer_free: Wakeups = EventWakeups()
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep

    def open(self, task_group: TaskGroup, new_wakeups: Callable[[], Wakeups]) -> None:
        """Start the gathered appends' task in the engine's task group, if they are used."""
        self._dirty_wakeup = new_wakeups()
        self._gatherer_free = new_wakeups()
        # asyncio's own sleep where it runs: anyio's looks the async library up each time.
        self._sleep = asyncio.sleep if on_asyncio() else anyio.sleep
        if self.gathered is not None:
            for _ in range(_APPENDERS):
                task_group.start_soon(self._gather_appends, name="unbroken:appends")

    # -- the producer's calls ------------------------------------------------------------

    def begin(self, local: LocalStream) -> None:
        """The producer started; a stream claimed while the backend was unreachable has
        everything still to write."""
        if local.unwritten:
            self.wake_writer(local)

    def added(self, local: LocalStream, chunk: Chunk) -> None:
        """The source yielded ``chunk``: have it written the usual way."""
        if self.inline is not None:
            self._append_inline(local, chunk)
        elif self.gathered is not None:
            self._append_later(local, chunk)
        else:
            self.wake_writer(local)

    async def end(self, local: LocalStream, state: StreamState, error: str | None) -> None:
        """Write what is left and record the terminal state, once any gathered append of
        the stream's chunks is back. Call after the producer's helpers are gone."""
        if state is StreamState.DONE or state is StreamState.ERROR:
            # Chunks waiting for the gathered appends go with them, sharing their round
            # trip, rather than in a call of their own; a stream that needs retries is left
            # to the end's own writing.
            while self._gathering(local):
                await local.written.wait()
        while not local.take_write(Writer.END):
            await local.written.wait()
        try:
            await record_end(self.backend, local, state, error, retry_for=self.backend_retry)
        finally:
            local.release_write()

    async def renew_leases(self, due: Sequence[LocalStream]) -> None:
        """Renew the producers' leases of streams no append renewed lately: with gathered
        appends in one call for all of them (no task per stream, however many are due)."""
        if self.gathered is not None:
            now = time.time()
            renewals = [Renewal(local.stream_id, local.token, local.times, now) for local in due]
            try:
                outcomes = await self.gathered.renew_many(renewals)
            except BackendError as exc:
                logger.debug("renewing %d leases failed: %s", len(due), exc)
                return
            for local, outcome in zip(due, outcomes, strict=True):
                self._renewed(local, outcome)
            return
        async with anyio.create_task_group() as renewals_group:
            for local in due:
                renewals_group.start_soon(self._renew_lease, local)

    async def _renew_lease(self, local: LocalStream) -> None:
        state: StreamState | BackendError | None
        try:
            state = await self.backend.renew_lease(
                local.stream_id, token=local.token, times=local.times, now=time.time()
            )
        except BackendError as exc:
            state = exc
        self._renewed(local, state)

    def _renewed(self, local: LocalStream, outcome: StreamState | BackendError | None) -> None:
        """Apply the outcome of a lease renewal."""
        if isinstance(outcome, BackendError):
            # Unreachable: try again next time. Corrupt: the next write will say so.
            logger.debug("lease renewal of %r failed: %s", local.stream_id, outcome)
        elif outcome is None:
            local.lost = True
            self.wake_writer(local)
        elif outcome.is_terminal:
            local.stop(outcome, PRODUCER_LOST if outcome is StreamState.INTERRUPTED else None)

    # -- inline ------------------------------------------------------------------------

    def _append_inline(self, local: LocalStream, chunk: Chunk) -> None:
        """Append the chunk just added without a task switch. Anything unusual (a write in
        progress, a lost or degraded stream, an error) is left to the writer task."""
        assert self.inline is not None
        if local.writer is not Writer.NOBODY or local.writes_alone or local.durable != chunk.seq:
            self.wake_writer(local)
            return
        try:
            result = self.inline.append_nowait(
                local.stream_id,
                token=local.token,
                chunks=(chunk,),
                times=local.times,
                now=time.time(),
            )
        except BackendError:
            self.wake_writer(local)  # it retries, resynchronises or gives up, as for any write
            return
        apply_append(local, 1, result)
        if result is None:
            self.wake_writer(local)  # the backend forgot the stream: the writer claims it again

    # -- the stream's own writer -------------------------------------------------------

    def wake_writer(self, local: LocalStream) -> None:
        """Have the stream's own writer look at it, starting its task the first time: most
        streams never need one (their chunks are appended inline or gathered)."""
        if not local.has_writer_task and local.helpers is not None:
            local.has_writer_task = True
            local.helpers.start_soon(self._write_loop, local)
        local.work.set()

    def _writes_alone(self, local: LocalStream) -> bool:
        return self.gathered is None or local.writes_alone

    async def _write_loop(self, local: LocalStream) -> None:
        """The stream's own writer. With gathered appends it writes only what they leave to
        it: a stream the backend forgot, one it cannot reach, one whose append failed."""
        while True:
            if local.unwritten and self._writes_alone(local) and local.take_write(Writer.OWN_TASK):
                try:
                    upto = len(local.log) if self.gathered is not None else None
                    if not await flush(self.backend, local, upto):
                        # The stream ended or another producer owns it: the producer is
                        # being stopped, and there is nothing left to write. (Writing again
                        # would get the same answer, and from an in-process backend without
                        # ever yielding: a loop that starves every other task.)
                        return
                    local.failed = False
                finally:
                    local.release_write()
                self._hand_over(local)  # what came meanwhile
            else:
                await local.work.wait()

    def _hand_over(self, local: LocalStream) -> None:
        """After a write: the stream's chunks still unwritten go to whoever writes them now,
        its own writer or the next gathered appends."""
        if not local.unwritten:
            return
        if self._writes_alone(local):
            self.wake_writer(local)
        else:
            self._append_later(local)

    # -- gathered ----------------------------------------------------------------------

    def _gathering(self, local: LocalStream) -> bool:
        """Whether the gathered appends are about to write the stream, or writing it."""
        return local.writer is Writer.GATHERED or (
            local.stream_id in self._dirty and local.unwritten and not local.writes_alone
        )

    def _append_later(self, local: LocalStream, newest: Chunk | None = None) -> None:
        """Have the stream's new chunks written with the next gathered appends (``newest``:
        the chunk the producer just added, if that is why)."""
        if not self._dirty:
            self._dirty_since = time.monotonic()
        self._dirty[local.stream_id] = (local, newest)
        self._dirty_wakeup.set()

    async def _gather_appends(self) -> None:
        """One of the `_APPENDERS`: once a stream has new chunks, wait for company until
        they have waited ``append_gather`` seconds, then append the new chunks of every
        stream with some with one `GatheredAppends.append_many`. One appender gathers at a
        time; while it waits for its append to come back, the other gathers the next one.

        So no task is started per append, and at most `_APPENDERS` appends are in flight:
        while the backend (or this process) is slower than that, the appends carry more
        streams instead of piling up, which spreads their fixed cost (the call, its
        pipeline, its socket write) over more chunks exactly when this process has the least
        time to spare. The second appender keeps the other streams flowing while one append
        waits on a connection that died (until the driver's timeout)."""
        assert self.gathered is not None
        gather = self.gathered.append_gather
        while True:
            while self._gatherer_busy:
                await self._gatherer_free.wait()
            self._gatherer_busy = True
            try:
                while not self._dirty:
                    await self._dirty_wakeup.wait()
                # Company for the first chunk waiting, for at most `gather` since it came:
                # chunks that waited for both appends in flight to come back leave at once.
                wait = self._dirty_since + gather - time.monotonic()
                if wait > 0:
                    await self._sleep(wait)
                group = self._take_dirty()
            finally:
                self._gatherer_busy = False
                self._gatherer_free.set()
            if group:
                await self._append_group(group)

    def _take_dirty(self) -> list[tuple[LocalStream, list[Chunk]]]:
        """The streams to append now, each with its chunks not yet durable, their writes
        taken; the others are left to whoever writes them."""
        dirty, self._dirty = self._dirty, {}
        group: list[tuple[LocalStream, list[Chunk]]] = []
        for local, newest in dirty.values():
            if local.writer is not Writer.NOBODY or not local.unwritten:
                continue  # whoever writes it now looks again when done
            if local.writes_alone:
                self.wake_writer(local)
                continue
            local.take_write(Writer.GATHERED)
            if newest is not None and newest.seq == local.durable == len(local.log) - 1:
                chunks = [newest]  # the usual case at a model's pace: no need to rebuild it
            else:
                chunks = local.log.chunks(local.durable, local.durable + WRITE_BATCH)
            group.append((local, chunks))
        return group

    async def _append_group(self, group: list[tuple[LocalStream, list[Chunk]]]) -> None:
        assert self.gathered is not None
        now = time.time()
        # One append per liveness tick renews the lease: the tick renews it itself for a
        # stream that had none renew it since the last tick (see `Liveness`).
        appends = [
            Append(local.stream_id, local.token, chunks, local.times, now, not local.lease_fresh)
            for local, chunks in group
        ]
        outcomes: Sequence[StreamState | BackendError | None] = ()
        try:
            outcomes = await self.gathered.append_many(appends)
        except Exception as exc:
            # The streams' own writers retry; a bug of ours must not end the engine.
            if not isinstance(exc, UnbrokenError):
                logger.exception("appending %d streams together failed", len(group))
        finally:
            for local, _ in group:
                local.release_write()
        if len(outcomes) != len(group):
            outcomes = [BackendError("the append did not complete")] * len(group)
        for (local, chunks), append, outcome in zip(group, appends, outcomes, strict=True):
            if isinstance(outcome, BackendError):
                local.failed = True  # its writer retries, resyncs or gives up
            elif not apply_append(local, len(chunks), outcome, lease_renewed=append.renew_lease):
                continue
            self._hand_over(local)
