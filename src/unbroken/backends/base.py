"""The contract every storage backend keeps.

A backend stores, per stream id: the chunk log (sequence numbers 0, 1, 2, … with no holes),
a metadata record (state, counts, times, error), and a producer lease. It also delivers live
notifications to listeners. The engine (`unbroken.StreamEngine`) is the only caller; it
decides *what* to write, the backend makes each write atomic and visible to every process
that shares it.

Every method that changes a stream is atomic with respect to every other method, across all
processes sharing the backend. Once a stream is terminal its log never changes again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from unbroken._models import Chunk, ChunkLog, StreamState, StreamStatus
from unbroken.exceptions import BackendError, CorruptStreamError

__all__ = [
    "Append",
    "Appended",
    "Backend",
    "Ended",
    "GatheredAppends",
    "Idle",
    "InlineAppends",
    "Lagged",
    "Listener",
    "Notification",
    "PacksEndedLogs",
    "ReadsWithStatus",
    "Renewal",
    "StreamTimes",
    "require_consecutive",
]


@dataclass(frozen=True, slots=True)
class StreamTimes:
    """Time-to-live settings for one stream, in seconds.

    ``lease``: how long the producer's lease lives without renewal.
    ``active``: sliding TTL of all the stream's data while active, set again by every lease
    renewal and every write the backend checks (a claim, an append through its checks); the
    engine makes one at least every ``lease / 3``, so an abandoned stream's data expires
    about ``active`` after its producer stopped.
    ``retention``: how long the stream is kept once it is terminal.
    """

    lease: float
    active: float
    retention: float


def require_consecutive(stream_id: str, chunks: Sequence[Chunk], first: int) -> None:
    """Raise `CorruptStreamError` unless ``chunks`` have the sequence numbers ``first``,
    ``first + 1``, … (what every backend's `append` requires of its caller)."""
    for index, chunk in enumerate(chunks):
        if chunk.seq != first + index:
            raise CorruptStreamError(
                f"stream {stream_id!r}: chunks to append are not consecutive at seq {chunk.seq}"
            )


@dataclass(frozen=True, slots=True)
class Append:
    """One stream's part of `GatheredAppends.append_many`: the arguments of one
    `Backend.append`."""

    stream_id: str
    token: str
    chunks: Sequence[Chunk]
    times: StreamTimes
    now: float
    #: Whether this append must renew the producer's lease too. The engine renews it with
    #: one append per liveness tick rather than with every one; a backend may renew it with
    #: every append anyway.
    renew_lease: bool = True


@dataclass(frozen=True, slots=True)
class Renewal:
    """One stream's part of `GatheredAppends.renew_many`: the arguments of one
    `Backend.renew_lease`."""

    stream_id: str
    token: str
    times: StreamTimes
    now: float


@dataclass(frozen=True, slots=True)
class Appended:
    """Live notification: these chunks (consecutive sequence numbers) were appended."""

    chunks: tuple[Chunk, ...]


@dataclass(frozen=True, slots=True)
class Ended:
    """Live notification: the stream reached a terminal state; its log is final."""

    state: StreamState


@dataclass(frozen=True, slots=True)
class Lagged:
    """Live notification: this listener's buffer overflowed and notifications were dropped.

    The listener reads what it missed from the log; nothing is lost, only delivered late.
    """


@dataclass(frozen=True, slots=True)
class Idle:
    """Not from the backend: the engine's reminder that a reader has heard nothing for a
    while (see `Listener.poke`), so it should check that the producer is still alive."""


Notification = Appended | Ended | Lagged | Idle


class Listener(ABC):
    """Live notifications for one stream, for one reader. Bounded: overflow yields `Lagged`."""

    @abstractmethod
    async def receive(self) -> Notification:
        """Wait for the next notification (at most one `Lagged` in a row)."""

    def poke(self) -> None:  # noqa: B027 - optional
        """Optional: queue an `Idle` for the receiver, without blocking.

        The engine's one liveness timer pokes readers that heard nothing for a while, so no
        reader arms a timeout around each ``receive()``. The reader of a listener that does
        not override this waits with a timeout of one liveness tick instead.
        """

    @classmethod
    def pokeable(cls) -> bool:
        """Whether this listener class overrides `poke`."""
        return cls.poke is not Listener.poke


class Backend(ABC):
    """Storage and live notification for streams. Use as ``async with backend:``.

    The contract is the abstract methods below. A backend may also offer a capability that
    makes the engine's writes cheaper: `InlineAppends` or `GatheredAppends`.
    """

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (connections, background tasks). Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Idempotent."""

    @abstractmethod
    async def claim(self, stream_id: str, *, token: str, times: StreamTimes, now: float) -> bool:
        """Create the stream as ``active`` owned by ``token`` with a fresh lease.

        Returns False, changing nothing, if the id exists in any state.
        """

    @abstractmethod
    async def append(
        self, stream_id: str, *, token: str, chunks: Sequence[Chunk], times: StreamTimes, now: float
    ) -> StreamState | None:
        """Append ``chunks`` (whose ``seq`` continue the log exactly) and notify listeners.

        Appends only while the stream is ``active`` and owned by ``token`` and the first
        ``seq`` equals the log length; refreshes the lease and the sliding TTL. Returns
        ``ACTIVE`` on success, the terminal state if the stream ended (nothing appended),
        ``INTERRUPTED`` if another token owns the active stream (this producer lost it), or
        None if the stream does not exist (nothing appended).
        Raises `CorruptStreamError` if ``seq`` does not continue the log.
        """

    @abstractmethod
    async def renew_lease(
        self, stream_id: str, *, token: str, times: StreamTimes, now: float
    ) -> StreamState | None:
        """Extend the producer's lease and the sliding TTL if ``token`` owns the active stream.

        Returns the stream's state (``ACTIVE`` means renewed), ``INTERRUPTED`` if another
        token owns the active stream (nothing renewed), or None if it does not exist.
        """

    @abstractmethod
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
        """Move an ``active`` stream to the terminal ``state`` and notify listeners.

        ``token`` None finishes whoever owns it (stop from any process); otherwise only the
        owner may finish. With ``only_if_lease_expired`` it happens only if the producer's
        lease has lapsed (how a dead producer is detected). Keeps the data for
        ``times.retention``. Returns the state the stream is in afterwards (the earlier
        terminal state if it was already terminal: first terminal state wins), or None if the
        stream does not exist.
        """

    @abstractmethod
    async def status(self, stream_id: str) -> StreamStatus | None:
        """The stream's metadata, or None if it does not exist."""

    @abstractmethod
    async def read(self, stream_id: str, *, after: int, limit: int) -> list[Chunk]:
        """Up to ``limit`` chunks with ``seq > after`` from the log, in order."""

    @abstractmethod
    def listen(
        self, stream_id: str, *, ends_only: bool = False
    ) -> AbstractAsyncContextManager[Listener]:
        """Subscribe to the stream's live notifications.

        When the context is entered the subscription is in place: every change after that
        moment is notified (or `Lagged` is signalled). With ``ends_only`` only `Ended` is
        delivered: what a producer needs to hear a stop from another process, without
        receiving its own chunks back.
        """


class InlineAppends(ABC):
    """Capability of an in-process backend: an append completes without waiting.

    The engine then appends each chunk in the producer's own task as the source yields it,
    with no writer task and no task switch per chunk.
    """

    @abstractmethod
    def append_nowait(
        self, stream_id: str, *, token: str, chunks: Sequence[Chunk], times: StreamTimes, now: float
    ) -> StreamState | None:
        """`Backend.append`, done before returning."""


class GatheredAppends(ABC):
    """Capability of a backend whose round trips cost more than the work in them: many
    streams' appends, and lease renewals, in one call.

    The engine then gathers the new chunks of all its streams for ``append_gather`` seconds
    and writes them with one `append_many` from one task, instead of a writer task and a
    call per stream. This is the only place chunks wait for company.
    """

    #: Seconds the engine gathers chunks before one `append_many` (0: as soon as it can).
    append_gather: float = 0.0

    @abstractmethod
    async def append_many(
        self, appends: Sequence[Append]
    ) -> list[StreamState | BackendError | None]:
        """`Backend.append` for several streams (each at most once), in one round trip:
        each stream's outcome in order, what `append` would return or the `BackendError` it
        would raise. One failing append does not stop the others."""

    @abstractmethod
    async def renew_many(
        self, renewals: Sequence[Renewal]
    ) -> list[StreamState | BackendError | None]:
        """`Backend.renew_lease` for several streams, in one round trip (the engine renews
        every lease due at a liveness tick with one call, however many streams it runs):
        each stream's outcome in order, as for `append_many`."""


class ReadsWithStatus(ABC):
    """Capability of a backend whose round trips cost more than the work in them: a
    reader's look at a stream (its status and the log after a point) in one call.

    Without it the engine makes the two calls at once from two tasks; with it, one call
    from the reader's own task (a resume's first chunk waits for this look).
    """

    @abstractmethod
    async def look(
        self, stream_id: str, *, after: int, limit: int
    ) -> tuple[StreamStatus | None, list[Chunk]]:
        """`Backend.status` and `Backend.read` in one round trip. The read may see the log
        as it was just before or just after the status was taken, as two calls made at the
        same time would; the status's error is raised first if both fail."""


class PacksEndedLogs(ABC):
    """Capability of a backend that keeps an ended stream's log in a compact form (its
    chunks joined and compressed: `unbroken._packing`), built from the producer's own copy
    of the log, so the log need not be read back to be packed.

    The engine calls `pack_ended` once the producer recorded its stream's end, with every
    chunk of the log durable. Readers see the same chunks before and after.
    """

    @abstractmethod
    async def pack_ended(self, stream_id: str, *, token: str, log: ChunkLog) -> bool:
        """Replace the log of the ended stream with ``log`` packed, if the stream is ended,
        is ``token``'s and holds exactly the chunks of ``log``; otherwise leave it as it is.
        Returns whether it was replaced. Never needed for correctness: the engine ignores a
        failure."""
