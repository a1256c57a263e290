"""`pack`/`unpack`: any chunks come back exactly, and anything else is a ValueError."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unbroken._packing import pack, unpack

# Every code point a Python str may hold; surrogates drawn often (they are rare otherwise).
ANY_TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=()),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    )
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ANY_TEXT, max_size=40))
def test_any_chunks_round_trip(datas: list[str]) -> None:
    assert unpack(pack(datas)) == datas


@pytest.mark.parametrize(
    "datas",
    [
        [],
        [""],
        ["", "", ""],
        ["\ud800", "\udc00", "\ud83d\ude00", "😀"],  # lone and paired surrogates, an emoji
        ["\x00", "a\x00b"],
        ["x" * 70_000, "y"],  # a length wider than two bytes
        [f'data: {{"type":"text-delta","delta":"w{i}"}}\n\n' for i in range(1000)],
    ],
    ids=["empty", "one-empty", "empties", "surrogates", "nul", "wide-length", "events"],
)
def test_edge_cases_round_trip(datas: list[str]) -> None:
    blob = pack(datas)
    assert blob[0] == 1  # the version byte
    back = unpack(blob)
    assert back == datas and all(type(d) is str for d in back)


def test_repeated_events_compress() -> None:
    datas = [f'data: {{"type":"text-delta","id":"t","delta":" w{i % 50}"}}\n\n' for i in range(430)]
    assert len(pack(datas)) * 4 < sum(map(len, datas))


def _blob(payload: bytes) -> bytes:
    return b"\x01" + zlib.compress(payload)


GOOD = pack(["ab", "c", ""])
CORRUPT = {
    "empty": b"",
    "unknown-version": b"\x02" + GOOD[1:],
    "no-zlib": b"\x01not zlib at all",
    "truncated": GOOD[:-3],
    "trailing": GOOD + b"\x00",
    "flipped": GOOD[:5] + bytes([GOOD[5] ^ 0xFF]) + GOOD[6:],
    "no-header": _blob(b"\x01"),
    "bad-width": _blob(struct.pack("<QB", 1, 3) + b"\x01\x00\x00a"),
    "lengths-past-end": _blob(struct.pack("<QB", 10, 1) + b"\x01"),
    "huge-count": _blob(struct.pack("<QB", 2**64 - 1, 8)),
    "lengths-too-long": _blob(struct.pack("<QB", 1, 1) + b"\x05abc"),
    "lengths-too-short": _blob(struct.pack("<QB", 1, 1) + b"\x01abc"),
    "bad-utf8": _blob(struct.pack("<QB", 1, 1) + b"\x01\xff"),
}


@pytest.mark.parametrize("blob", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_blobs_are_value_errors(blob: bytes) -> None:
    with pytest.raises(ValueError, match="not a packed log"):
        unpack(blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_chunks_or_value_errors(blob: bytes) -> None:
    try:
        back = unpack(blob)
    except ValueError:
        return
    assert unpack(pack(back)) == back


@settings(max_examples=200, deadline=None)
@given(st.lists(ANY_TEXT, max_size=10), st.data())
def test_damaged_blobs_never_raise_anything_but_value_error(
    datas: list[str], data: st.DataObject
) -> None:
    blob = bytearray(pack(datas))
    at = data.draw(st.integers(0, len(blob) - 1))
    blob[at] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(ValueError):
        unpack(bytes(blob))
