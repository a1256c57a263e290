"""The value types every layer shares: states, chunks, stream ends and statuses."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Chunk", "StreamEnd", "StreamState", "StreamStatus"]


class StreamState(enum.StrEnum):
    """Where a stream is in its life. Every stream ends in one of the four terminal states."""

    ACTIVE = "active"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        return self is not StreamState.ACTIVE


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a stream.

    ``seq`` counts chunks from 0; ``offset`` is the character (code point) offset of the first
    character of ``data`` in the whole stream's text.
    """

    seq: int
    data: str
    offset: int

    @property
    def end_offset(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item every reader receives: how the stream ended.

    ``error`` is a message safe to show to users (set for ``error`` and ``interrupted``).
    """

    state: StreamState
    error: str | None
    chunk_count: int
    char_count: int


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """A snapshot of a stream's metadata. Times are Unix timestamps in seconds."""

    stream_id: str
    state: StreamState
    chunk_count: int
    char_count: int
    byte_count: int
    created_at: float
    updated_at: float
    finished_at: float | None
    error: str | None

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal
