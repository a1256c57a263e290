"""The Redis log's entries as chunks: the usual one-chunk entry is read by a shortcut, which
must give the same chunks as the general reading and reject what it rejects, from the
reply as Redis sent it (the backend's own connections) or as redis-py's stream callback
turns it into dicts (a cluster's pipelines)."""

from __future__ import annotations

from typing import Any

import pytest

from unbroken import CorruptStreamError
from unbroken.backends.redis._codec import parse_log


def entry(last: int, offset: int, *datas: str) -> tuple[bytes, dict[bytes, bytes]]:
    """An entry as a client that does not decode responses returns it."""
    lengths = ",".join(str(len(data)) for data in datas)
    fields = {b"o": str(offset).encode(), b"n": lengths.encode(), b"d": "".join(datas).encode()}
    return f"0-{last + 1}".encode(), fields


def as_sent(entries: list[tuple[Any, dict[Any, Any]]]) -> list[list[Any]]:
    """Entries as Redis sends them: ``[id, [name, value, ...]]``."""
    return [
        [entry_id, [x for pair in fields.items() for x in pair]] for entry_id, fields in entries
    ]


def test_one_chunk_entries_read_as_the_general_reading_does() -> None:
    texts = ["Hello", ", ", "wörld", "", "\U0001f600 ok", "\ud800"]  # a lone surrogate too
    entries, offset = [], 0
    for seq, data in enumerate(texts):
        fields = {b"o": str(offset).encode(), b"n": str(len(data)).encode()}
        fields[b"d"] = data.encode("utf-8", "surrogatepass")
        entries.append((f"0-{seq + 1}".encode(), fields))
        offset += len(data)
    entries.append(entry(7, offset, "ab", "c"))  # two chunks in one entry: no shortcut
    general = [(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in entries]
    for after in (-1, 0, 3, 6):
        assert parse_log("s", entries, after, 100) == parse_log("s", general, after, 100)
        assert parse_log("s", as_sent(entries), after, 100) == parse_log("s", general, after, 100)
        assert parse_log("s", as_sent(general), after, 100) == parse_log("s", general, after, 100)
    chunks = parse_log("s", entries, -1, 100)
    assert [chunk.data for chunk in chunks] == [*texts, "ab", "c"]
    assert [chunk.seq for chunk in chunks] == list(range(8))
    assert chunks[4].offset == len("Hello, wörld")
    assert parse_log("s", entries, 1, 2) == chunks[2:4]


def test_runs_of_one_chunk_entries_around_longer_entries_read_whole() -> None:
    """One-chunk entries before, between and after entries of several chunks, read from
    any position with any limit, give what the general reading gives: every chunk once, in
    order, none past the limit."""
    entries, offset, seq = [], 0, 0
    for size in [1, 1, 3, 1, 1, 1, 2, 2, 1]:
        datas = [f"<{seq + i}>" for i in range(size)]
        entries.append(entry(seq + size - 1, offset, *datas))
        offset += sum(len(data) for data in datas)
        seq += size
    general = [(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in entries]
    everything = parse_log("s", general, -1, 100)
    assert [chunk.data for chunk in everything] == [f"<{n}>" for n in range(seq)]
    for after in range(-1, seq):
        for limit in (1, 2, 3, 5, 100):
            wanted = everything[after + 1 : after + 1 + limit]
            assert parse_log("s", entries, after, limit) == wanted
            assert parse_log("s", as_sent(entries), after, limit) == wanted


@pytest.mark.parametrize(
    "fields",
    [
        {b"o": b"0", b"n": b"4", b"d": b"abc"},  # the length does not match the data
        {b"o": b"-1", b"n": b"3", b"d": b"abc"},
        {b"o": b"1" * 19, b"n": b"3", b"d": b"abc"},
        {b"o": b"0", b"n": b"3", b"d": b"\xff\xfeX"},  # not UTF-8
        {b"o": b"0", b"d": b"abc"},
    ],
)
def test_a_broken_one_chunk_entry_is_corrupt(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(CorruptStreamError, match="log entry"):
        parse_log("s", [(b"0-1", fields)], -1, 10)


@pytest.mark.parametrize("entry_id", [b"0-01", b"0-0", b"1-1", b"0-x", b"0-\xd9\xa3", b"0-"])
def test_an_entry_id_that_is_not_ours_is_corrupt(entry_id: Any) -> None:
    with pytest.raises(CorruptStreamError, match="log entry"):
        parse_log("s", [(entry_id, {b"o": b"0", b"n": b"1", b"d": b"a"})], -1, 10)


def test_a_gap_between_one_chunk_entries_is_corrupt() -> None:
    with pytest.raises(CorruptStreamError, match="where 1 belongs"):
        parse_log("s", [entry(0, 0, "a"), entry(2, 2, "c")], -1, 10)


def test_the_reply_as_sent_reads_whatever_the_order_of_its_fields() -> None:
    written = [entry(seq, seq, "xyz"[seq]) for seq in range(3)]
    for _entry_id, fields in written:
        fields[b"b"] = fields[b"o"]  # as every writer adds it, after the data
    reordered = [(i, dict(reversed(list(f.items())))) for i, f in written]
    chunks = parse_log("s", written, -1, 10)
    assert [chunk.data for chunk in chunks] == ["x", "y", "z"]
    assert parse_log("s", as_sent(written), -1, 10) == chunks
    assert parse_log("s", as_sent(reordered), -1, 10) == chunks


@pytest.mark.parametrize(
    "fields",
    [
        [b"o", b"0", b"n", b"4", b"d", b"abc", b"b", b"0"],  # the length does not match
        [b"o", b"0", b"n", b"3", b"d", b"\xff\xfeX", b"b", b"0"],  # not UTF-8
        [b"o", b"0", b"n", b"1", b"d"],  # a name without its value
        [b"o", b"0", b"n", b"1", b"d", b"a", b"b"],
        b"o0n1da",  # not a list of fields at all
        None,
    ],
)
def test_a_broken_entry_as_sent_is_corrupt(fields: Any) -> None:
    with pytest.raises(CorruptStreamError, match="log entry"):
        parse_log("s", [[b"0-1", fields]], -1, 10)
