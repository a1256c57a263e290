"""A stream produced in this process: its chunks, who writes them, and what wakes its readers."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from unbroken._models import Chunk, ChunkLog, StreamEnd, StreamState
from unbroken._wakeups import EventWakeups, Wakeups
from unbroken.backends.base import StreamTimes
from unbroken.exceptions import InvalidStreamIdError, StreamSourceError

__all__ = [
    "CORRUPT",
    "DATA_LOST",
    "PRODUCER_LOST",
    "SHUTDOWN",
    "SOURCE_FAILED",
    "TOO_LARGE",
    "LocalStream",
    "Writer",
    "safe_message",
    "validate_id",
]

# Public, safe messages recorded for readers; the real cause goes to the log.
SOURCE_FAILED = "the answer could not be completed because its source failed"
PRODUCER_LOST = "the stream's producer stopped unexpectedly"
SHUTDOWN = "the server shut down before the stream was complete"
TOO_LARGE = "the stream exceeded its size limit"
CORRUPT = "the stream's data in the storage backend is unreadable"
DATA_LOST = "the stream's data was lost by the storage backend"


def validate_id(stream_id: str) -> str:
    """``stream_id`` if it is a usable id (1-256 printable characters, no braces)."""
    if (
        not isinstance(stream_id, str)
        or not 1 <= len(stream_id) <= 256
        or "{" in stream_id
        or "}" in stream_id
        or not stream_id.isprintable()
    ):
        raise InvalidStreamIdError(stream_id)
    return stream_id


def safe_message(exc: BaseException) -> str:
    """What readers are told of a source's failure (its own words only if it chose them)."""
    if isinstance(exc, StreamSourceError):
        return str(exc) or SOURCE_FAILED
    return SOURCE_FAILED


class Writer(enum.Enum):
    """Who writes a stream's chunks to the backend right now. There is at most one: a second
    write at the same time would repeat the first one's chunks."""

    NOBODY = "nobody"
    GATHERED = "gathered"  # the engine's gathered appends: one call for many streams
    OWN_TASK = "own task"  # the stream's own writer task, which retries and resyncs
    END = "end"  # the producer, recording the stream's end: it writes what is left


@dataclass(eq=False)
class LocalStream:
    """A stream produced in this process.

    Local readers are served from ``log``. They see only what the backend acknowledged
    (``durable``), so what they see is what every other reader will see, except while the
    backend is unreachable (``degraded``): then they see everything ("fail open"), and the
    backend gets it all once it is back.
    """

    stream_id: str
    token: str
    times: StreamTimes
    new_wakeups: Callable[[], Wakeups] = EventWakeups
    log: ChunkLog = field(default_factory=ChunkLog)
    durable: int = 0  # chunks the backend has acknowledged
    degraded: bool = False  # the backend is unreachable: readers see all of the log
    lost: bool = False  # the backend forgot the stream: claim it again before writing
    # Its last gathered append failed: its own writer task writes it (retrying, resyncing)
    # until it has caught up, then the gathered appends take it back.
    failed: bool = False
    writer: Writer = Writer.NOBODY
    state: StreamState = StreamState.ACTIVE
    error: str | None = None
    stop_state: StreamState | None = None
    stop_error: str | None = None
    source_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ended: anyio.Event = field(default_factory=anyio.Event)
    # The producer's helpers (the stop watcher, the writer task once one is needed); None
    # once the source is done, from when the end writes what is left.
    helpers: TaskGroup | None = None
    has_writer_task: bool = False
    ending: bool = False  # the source is done: its end is being recorded
    quiet: bool = False  # no reader was woken since the engine's last liveness tick
    lease_fresh: bool = True  # an append renewed the lease since the last tick
    readers: Wakeups = field(init=False)  # what local readers wait on
    work: Wakeups = field(init=False)  # what the idle writer task waits on
    written: Wakeups = field(init=False)  # woken whenever a write of it ends

    def __post_init__(self) -> None:
        self.readers = self.new_wakeups()
        self.work = self.new_wakeups()
        self.written = self.new_wakeups()

    @property
    def visible(self) -> int:
        """How many chunks local readers may see."""
        return len(self.log) if self.degraded else self.durable

    @property
    def unwritten(self) -> bool:
        """Whether the backend lacks some of its chunks."""
        return self.lost or self.durable < len(self.log)

    @property
    def writes_alone(self) -> bool:
        """Whether only its own writer task may write it now: it needs retries, a resync or
        a new claim, which the gathered appends do not do."""
        return self.lost or self.degraded or self.failed

    def take_write(self, writer: Writer) -> bool:
        """Become the stream's writer if nobody is; False if somebody is."""
        if self.writer is not Writer.NOBODY:
            return False
        self.writer = writer
        return True

    def release_write(self) -> None:
        """The write in progress is over (whatever its outcome)."""
        self.writer = Writer.NOBODY
        self.written.set()

    def wake_readers(self) -> None:
        self.quiet = False
        self.readers.set()

    def add(self, data: str) -> Chunk:
        chunk = self.log.add(data)
        if self.degraded:
            self.wake_readers()
        return chunk

    def acknowledged(self, count: int, *, lease_renewed: bool = True) -> None:
        """The backend took the next ``count`` chunks (and renewed the lease, unless
        ``lease_renewed`` is False)."""
        self.durable += count
        if lease_renewed:
            self.lease_fresh = True
        if self.degraded and self.durable == len(self.log):
            self.degraded = False
        self.wake_readers()

    def stop(self, state: StreamState, error: str | None = None) -> None:
        """Stop the source; the first reason wins (cancel, shutdown, lost lease, ...)."""
        if self.stop_state is None:
            self.stop_state, self.stop_error = state, error
        self.source_scope.cancel()

    def end(self) -> StreamEnd:
        return StreamEnd(self.state, self.error, self.visible, self.log.offset_at(self.visible))
