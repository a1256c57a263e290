"""The value types every layer shares: states, chunks, stream ends and statuses."""

from __future__ import annotations

import enum
from array import array
from dataclasses import dataclass
from itertools import accumulate

from unbroken._packing import pack, unpack_joined

__all__ = ["Chunk", "ChunkLog", "StreamEnd", "StreamState", "StreamStatus", "new_chunk"]


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


# For the reads that make one `Chunk` per chunk read (a catch-up makes thousands): the frozen
# dataclass's __init__ sets each field through object.__setattr__, by name; the slots' own
# setters do the same for less.
_new_object = object.__new__
_set_seq, _set_data, _set_offset = (
    Chunk.__dict__[field].__set__ for field in ("seq", "data", "offset")
)


def new_chunk(seq: int, data: str, offset: int) -> Chunk:
    """``Chunk(seq, data, offset)``, made faster."""
    chunk: Chunk = _new_object(Chunk)
    _set_seq(chunk, seq)
    _set_data(chunk, data)
    _set_offset(chunk, offset)
    return chunk


class ChunkLog:
    """A stream's chunks held in memory as strings and an array of start offsets, not as
    `Chunk` objects: a log lives as long as its stream, and objects the garbage collector
    tracks would make every full collection (which pauses every stream of the process)
    longer with each chunk. Strings and arrays are not tracked; the list of strings is, until
    `seal` packs the chunks.

    A sealed log (a finished stream, kept for its retention) holds its chunks packed
    (`unbroken._packing`) in segments of `SEGMENT` chunks, and one start offset per segment:
    each chunk's offset follows from the lengths of those before it in its segment. A read
    unpacks only the segments it touches."""

    SEGMENT = 256  # chunks per packed segment: what a read of one chunk unpacks at most

    __slots__ = ("_count", "_growing", "_offsets", "_segments", "_starts", "char_count")

    def __init__(self) -> None:
        self._growing: list[str] | None = []
        # Every chunk's offset while growing; once sealed, only if some chunk's offset was
        # not the characters before it (never so for the engine's logs), else empty.
        self._offsets = array("q")
        self._segments: tuple[bytes, ...] = ()
        self._starts = array("q")  # once sealed: the offset of each segment's first chunk
        self._count = 0
        self.char_count = 0  # characters in all chunks

    def __len__(self) -> int:
        return self._count

    def seal(self) -> None:
        """No chunk comes after this: pack the chunks.

        Packed, a kept answer costs about its compressed text instead of a string object per
        chunk, and nothing in it is traversed by the garbage collector's full collections,
        which pause every stream of the process and would grow with every kept answer."""
        datas = self._growing
        if datas is None:
            return
        size = self.SEGMENT
        self._segments = tuple(pack(datas[at : at + size]) for at in range(0, len(datas), size))
        derived = array("q", accumulate(map(len, datas), initial=0))
        del derived[-1]
        if self._offsets == derived:  # each offset follows from the lengths before it
            self._starts = derived[::size]
            self._offsets = array("q")
        self._growing = None

    def append(self, chunk: Chunk) -> None:
        if self._growing is None:
            raise ValueError("the log is sealed: its stream has ended")
        self._growing.append(chunk.data)
        self._offsets.append(chunk.offset)
        self._count += 1
        self.char_count += len(chunk.data)

    def add(self, data: str) -> Chunk:
        """Append ``data`` as the next chunk (its offset: the characters before it)."""
        chunk = Chunk(self._count, data, self.char_count)
        self.append(chunk)
        return chunk

    def chunks(self, start: int, stop: int) -> list[Chunk]:
        """The chunks with ``start <= seq < stop`` that exist."""
        start, stop = max(start, 0), min(stop, self._count)
        growing = self._growing
        if growing is not None:
            offsets = self._offsets
            return [new_chunk(seq, growing[seq], offsets[seq]) for seq in range(start, stop)]
        found: list[Chunk] = []
        size = self.SEGMENT
        for index in range(start // size, (stop - 1) // size + 1 if stop > start else 0):
            text, bounds = unpack_joined(self._segments[index])
            first = index * size
            low, high = max(start - first, 0), min(stop - first, size)
            if not self._offsets:
                base = self._starts[index]
                found += [
                    new_chunk(first + i, text[bounds[i] : bounds[i + 1]], base + bounds[i])
                    for i in range(low, high)
                ]
            else:
                offsets = self._offsets
                found += [
                    new_chunk(first + i, text[bounds[i] : bounds[i + 1]], offsets[first + i])
                    for i in range(low, high)
                ]
        return found

    def offset_at(self, seq: int) -> int:
        """Where chunk ``seq`` starts; past the last chunk, the end of the text."""
        if seq >= self._count:
            return self.char_count
        if self._offsets:  # growing, or offsets that do not follow from the lengths
            return self._offsets[seq]
        index, within = divmod(seq, self.SEGMENT)
        if within == 0:
            return self._starts[index]
        return self._starts[index] + unpack_joined(self._segments[index])[1][within]


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
