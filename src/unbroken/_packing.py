"""A finished stream's chunks in one compact blob: their data joined and zlib-compressed,
with each chunk's length, so a stream kept for its retention costs about its compressed text.

Layout of a blob (version 1)::

    version (1 byte) | zlib( count (8 bytes LE) | width (1 byte) | lengths | text )

``lengths`` are the chunks' lengths in code points, ``width`` bytes each (1, 2, 4 or 8,
the smallest that holds the longest), little-endian; ``text`` is the chunks' data joined and
encoded as UTF-8 with lone surrogates passed through, so any ``str`` comes back exactly.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from itertools import accumulate, pairwise

__all__ = ["pack", "unpack", "unpack_joined"]

_VERSION = 1
# A blob is packed once and unpacked on every read of it: the fastest level costs little
# size on streams of small repeated events (see benchmarks/retention_bench.py).
_LEVEL = 1
_HEADER = struct.Struct("<QB")
# array type codes by item width; "L"/"Q" are not both 8 bytes everywhere, so pick by size.
_TYPECODES = {array(code).itemsize: code for code in "QLIHB"}
_WIDTHS = (1, 2, 4, 8)
_BIG_ENDIAN = sys.byteorder == "big"


def pack(datas: Sequence[str]) -> bytes:
    """Chunks' data, joined and zlib-compressed with their lengths (code points), in one
    self-describing blob (a version byte first)."""
    lengths = list(map(len, datas))
    longest = max(lengths, default=0)
    width = next(w for w in _WIDTHS if longest < 1 << (8 * w))
    sizes = array(_TYPECODES[width], lengths)
    if _BIG_ENDIAN:
        sizes.byteswap()
    text = "".join(datas).encode("utf-8", "surrogatepass")
    payload = b"".join((_HEADER.pack(len(lengths), width), sizes.tobytes(), text))
    return bytes((_VERSION,)) + zlib.compress(payload, _LEVEL)


def unpack(blob: bytes) -> list[str]:
    """The chunks' data again; ValueError (never another exception) if blob is not one."""
    text, bounds = unpack_joined(blob)
    return [text[a:b] for a, b in pairwise(bounds)]


def unpack_joined(blob: bytes) -> tuple[str, list[int]]:
    """The chunks' data joined, and where each starts and ends: chunk ``i`` is
    ``text[bounds[i]:bounds[i + 1]]``. For reading a few chunks of a blob without making a
    string of every one; ValueError if blob is not one."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError("not a packed log: expected bytes")
    view = memoryview(blob)
    if len(view) < 1 or view[0] != _VERSION:
        raise ValueError("not a packed log: unknown version")
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(view[1:])
    except zlib.error as exc:
        raise ValueError(f"not a packed log: {exc}") from None
    if not inflater.eof or inflater.unused_data:
        raise ValueError("not a packed log: truncated or trailing data")
    if len(payload) < _HEADER.size:
        raise ValueError("not a packed log: no header")
    count, width = _HEADER.unpack_from(payload)
    code = _TYPECODES.get(width)
    start = _HEADER.size
    end = start + count * width
    if code is None or end > len(payload):
        raise ValueError("not a packed log: bad lengths")
    sizes = array(code)
    sizes.frombytes(payload[start:end])
    if _BIG_ENDIAN:
        sizes.byteswap()
    try:
        text = payload[end:].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ValueError("not a packed log: bad text") from None
    bounds = list(accumulate(sizes, initial=0))
    if bounds[-1] != len(text):
        raise ValueError("not a packed log: lengths do not match the text")
    return text, bounds
