"""The value types every layer shares: states, chunks, stream ends and statuses."""

from __future__ import annotations

import enum
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Chunk", "ChunkLog", "StreamEnd", "StreamState", "StreamStatus"]


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


class ChunkLog:
    """A stream's chunks held in memory as strings and an array of start offsets, not as
    `Chunk` objects: a log lives as long as its stream, and objects the garbage collector
    tracks would make every full collection (which pauses every stream of the process)
    longer with each chunk. Strings and arrays are not tracked; the list of strings is, until
    `seal` turns it into a tuple."""

    __slots__ = ("_data", "_growing", "_offsets", "char_count")

    def __init__(self) -> None:
        self._growing: list[str] | None = []
        self._data: Sequence[str] = self._growing
        self._offsets = array("q")
        self.char_count = 0  # characters in all chunks

    def __len__(self) -> int:
        return len(self._data)

    def seal(self) -> None:
        """No chunk comes after this: keep the strings in a tuple.

        The garbage collector stops tracking a tuple of strings, while a list is traversed,
        string by string, by every full collection for as long as the log is kept (a
        finished stream, for its retention): full collections pause every stream of the
        process, and would grow with every kept answer."""
        if self._growing is not None:
            self._data = tuple(self._growing)
            self._growing = None

    def append(self, chunk: Chunk) -> None:
        if self._growing is None:
            raise ValueError("the log is sealed: its stream has ended")
        self._growing.append(chunk.data)
        self._offsets.append(chunk.offset)
        self.char_count += len(chunk.data)

    def add(self, data: str) -> Chunk:
        """Append ``data`` as the next chunk (its offset: the characters before it)."""
        chunk = Chunk(len(self._data), data, self.char_count)
        self.append(chunk)
        return chunk

    def chunks(self, start: int, stop: int) -> list[Chunk]:
        """The chunks with ``start <= seq < stop`` that exist."""
        data, offsets = self._data, self._offsets
        return [Chunk(seq, data[seq], offsets[seq]) for seq in range(start, min(stop, len(data)))]

    def offset_at(self, seq: int) -> int:
        """Where chunk ``seq`` starts; past the last chunk, the end of the text."""
        return self._offsets[seq] if seq < len(self._data) else self.char_count


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
