"""`ChunkLog`: a sealed (packed) log reads exactly as it did while growing; the chunks it
reads are made by `new_chunk`, which must make what `Chunk` makes."""

from __future__ import annotations

import dataclasses
import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unbroken._models import Chunk, ChunkLog, new_chunk


class SmallSegments(ChunkLog):
    """Segments of 3 chunks, so short logs cross several segment boundaries."""

    __slots__ = ()
    SEGMENT = 3


TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=()),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    ),
    max_size=5,
)


def every_read(log: ChunkLog, count: int) -> dict[tuple[int, int], list[Chunk]]:
    return {
        (start, stop): log.chunks(start, stop)
        for start in range(-1, count + 2)
        for stop in range(start - 1, count + 3)
    }


@settings(max_examples=150, deadline=None)
@given(st.lists(TEXT, max_size=14))
def test_a_sealed_log_reads_as_it_did_growing(datas: list[str]) -> None:
    log = SmallSegments()
    added = [log.add(data) for data in datas]
    reads, ends = every_read(log, len(datas)), [log.offset_at(s) for s in range(len(datas) + 2)]
    log.seal()
    assert every_read(log, len(datas)) == reads
    assert [log.offset_at(s) for s in range(len(datas) + 2)] == ends
    assert log.chunks(0, len(datas)) == added
    assert len(log) == len(datas) and log.char_count == sum(map(len, datas))


def test_offsets_that_do_not_follow_from_the_lengths_are_kept() -> None:
    """The engine's logs always start at 0 and run on; a log appended with other offsets
    still reads them back."""
    log = SmallSegments()
    chunks = [Chunk(seq, f"c{seq}", 100 + 10 * seq) for seq in range(7)]
    for chunk in chunks:
        log.append(chunk)
    log.seal()
    assert log.chunks(0, 7) == chunks
    assert [log.offset_at(seq) for seq in range(7)] == [c.offset for c in chunks]


def test_a_long_sealed_log_reads_a_few_chunks_from_one_segment() -> None:
    log = ChunkLog()
    for seq in range(10_000):
        log.add(f'{{"type":"text-delta","id":"text-1","delta":" w{seq}"}}')
    expected = log.chunks(5_120, 5_124)
    log.seal()
    assert len(log._segments) == -(-10_000 // ChunkLog.SEGMENT)
    gc.collect()
    assert not gc.is_tracked(log._segments)
    assert log.chunks(5_120, 5_124) == expected
    assert log.chunks(9_999, 20_000) == [
        Chunk(9_999, '{"type":"text-delta","id":"text-1","delta":" w9999"}', log.offset_at(9_999))
    ]
    assert log.offset_at(10_000) == log.char_count


def test_an_empty_log_seals() -> None:
    log = ChunkLog()
    log.seal()
    assert (len(log), log.chunks(0, 10), log.offset_at(0)) == (0, [], 0)
    with pytest.raises(ValueError, match="sealed"):
        log.add("late")


def test_new_chunk_makes_what_chunk_makes() -> None:
    made, built = new_chunk(3, "abc", 7), Chunk(3, "abc", 7)
    assert type(made) is Chunk
    assert (made, hash(made), repr(made)) == (built, hash(built), repr(built))
    assert made.end_offset == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.seq = 4  # type: ignore[misc]
