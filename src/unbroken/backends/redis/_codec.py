"""What goes to Redis and what comes back: text, script arguments, replies, notifications.

Text goes to Redis as UTF-8 bytes encoded here, with "surrogatepass": any Python str
round-trips exactly, and a caller-owned client's encoding settings cannot interfere. Replies
are read whether or not that client decodes responses.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from redis.crc import key_slot

from unbroken._json import compact_json
from unbroken._models import Chunk, ChunkLog, StreamState, StreamStatus, new_chunk
from unbroken._packing import pack, unpack
from unbroken.backends.base import Append, Appended, Ended, Notification, require_consecutive
from unbroken.backends.redis import _keys
from unbroken.backends.redis._errors import corrupt
from unbroken.backends.redis._keys import StreamKeys, log_entry_id, log_entry_seq

__all__ = [
    "ENTRY_CHUNKS",
    "PackedAppend",
    "append_args",
    "append_many_command",
    "encode",
    "ended_payload",
    "fast_append_commands",
    "ms",
    "pack_args",
    "parse_appended",
    "parse_log",
    "parse_notification",
    "parse_state",
    "parse_status",
    "renewal_calls",
    "script_calls",
    "text",
]

_MAX_TTL_MS = 10 * 365 * 24 * 3600 * 1000  # TTLs are capped (Redis rejects overflowing ones)
_INT = re.compile(r"[0-9]{1,18}")

# At most this many streams, and (unless one stream has more) chunks, per append_many.lua
# call: Redis runs nothing else while a script runs, so one call must stay short however
# many streams the engine gathered.
_STREAMS_PER_CALL = 100
_CHUNKS_PER_CALL = 1000
# At most this many chunks in one log entry: a read of a few chunks decodes one entry.
ENTRY_CHUNKS = 256

_OFFSET = _keys.LOG_OFFSET.encode()
_LENGTHS = _keys.LOG_LENGTHS.encode()
_DATA = _keys.LOG_DATA.encode()
_PACKED = _keys.LOG_PACKED.encode()
_BYTE_OFFSET = _keys.LOG_BYTE_OFFSET.encode()
_LEGACY_DATA = _keys.LEGACY_DATA.encode()
_LEGACY_OFFSET = _keys.LEGACY_OFFSET.encode()


# -- values ---------------------------------------------------------------------------------


def encode(value: str) -> bytes:
    """``value`` as the bytes Redis stores (any str, lone surrogates included)."""
    return value.encode("utf-8", "surrogatepass")


def text(value: object) -> str:
    """A reply value as str, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _count(value: object) -> int:
    digits = text(value)
    if not _INT.fullmatch(digits):
        raise ValueError(f"not a non-negative integer: {digits!r}")
    return int(digits)


def _timestamp(value: object) -> float:
    number = float(text(value))
    if not math.isfinite(number):
        raise ValueError(f"not a finite time: {number!r}")
    return number


def ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (0 would delete the key at once)."""
    if not math.isfinite(seconds) or seconds * 1000 >= _MAX_TTL_MS:
        return _MAX_TTL_MS
    return max(1, math.ceil(seconds * 1000))


# -- writes ---------------------------------------------------------------------------------


def _appended_payload(chunks: Sequence[Chunk]) -> bytes:
    rows = [[chunk.seq, chunk.offset, chunk.data] for chunk in chunks]
    return encode(compact_json({_keys.NOTE_APPENDED: rows}))


def ended_payload(state: StreamState) -> bytes:
    """The notification `finish.lua` publishes when the stream ends in ``state``."""
    return encode(compact_json({_keys.NOTE_ENDED: state.value}))


def _entries(chunks: Sequence[Chunk]) -> list[bytes | int | str]:
    """The log entries of an append, ``ENTRY_CHUNKS`` chunks at most each, flattened as
    ``append_to`` takes them: entry id, offset, lengths, data."""
    args: list[bytes | int | str] = []
    for start in range(0, len(chunks), ENTRY_CHUNKS):
        part = chunks[start : start + ENTRY_CHUNKS]
        datas = [chunk.data for chunk in part]
        args += [
            log_entry_id(part[-1].seq),
            part[0].offset,
            ",".join([str(len(data)) for data in datas]),
            encode("".join(datas)),
        ]
    return args


def append_args(append: Append, keys: StreamKeys, *, sharded: bool) -> list[str | bytes | int]:
    """The arguments of ``append_to`` (``_lua/_append.lua``) for one stream's append.

    Raises `CorruptStreamError` (before anything is sent) unless the chunks are consecutive.
    """
    chunks = append.chunks
    first = chunks[0].seq if chunks else 0
    require_consecutive(append.stream_id, chunks, first)
    args: list[str | bytes | int] = [
        encode(append.token),
        repr(float(append.now)),
        ms(append.times.lease) if append.renew_lease else 0,
        ms(append.times.active),
        first,
        len(chunks),
        sum(len(chunk.data) for chunk in chunks),
        "1" if sharded else "0",
        keys.channel,
        _appended_payload(chunks) if chunks else b"",
    ]
    args += _entries(chunks)
    return args


def fast_append_commands(
    append: Append, keys: StreamKeys, byte_offset: int, *, sharded: bool
) -> tuple[tuple[Any, ...], tuple[Any, ...], int]:
    """The plain commands of an append of at most ``ENTRY_CHUNKS`` consecutive chunks that
    continue the log at ``byte_offset``: its entry's XADD (NOMKSTREAM: into an existing log
    only), the notification's PUBLISH (SPUBLISH if ``sharded``), and the append's bytes."""
    chunks = append.chunks
    datas = [chunk.data for chunk in chunks]
    data = encode("".join(datas))
    xadd = (
        "XADD",
        keys.log,
        "NOMKSTREAM",
        log_entry_id(chunks[-1].seq),
        _keys.LOG_OFFSET,
        chunks[0].offset,
        _keys.LOG_LENGTHS,
        ",".join([str(len(text)) for text in datas]),
        _keys.LOG_DATA,
        data,
        _keys.LOG_BYTE_OFFSET,
        byte_offset,
    )
    publish = ("SPUBLISH" if sharded else "PUBLISH", keys.channel, _appended_payload(chunks))
    return xadd, publish, len(data)


def pack_args(token: str, log: ChunkLog) -> list[str | bytes | int]:
    """The arguments of ``pack.lua``: the whole log, packed ``ENTRY_CHUNKS`` chunks an entry.

    In base64: a caller's client that decodes responses could not read the bytes back."""
    args: list[str | bytes | int] = [encode(token), len(log), log.char_count]
    for start in range(0, len(log), ENTRY_CHUNKS):
        part = log.chunks(start, start + ENTRY_CHUNKS)
        packed = base64.b64encode(pack([chunk.data for chunk in part]))
        args += [log_entry_id(part[-1].seq), part[0].offset, packed]
    return args


_Item = TypeVar("_Item")


class PackedAppend(NamedTuple):
    """One stream's append, ready for ``append_many.lua``; ``place``: its index in the batch."""

    place: int
    stream_id: str
    keys: StreamKeys
    args: list[str | bytes | int]
    chunks: int


def script_calls(appends: list[PackedAppend], *, by_slot: bool = False) -> list[list[PackedAppend]]:
    """``appends`` in order, cut into append_many.lua calls of bounded size; ``by_slot``
    (Redis Cluster): each call holds streams of one hash slot only (one script may touch
    the keys of one slot only), such as the streams of a placement group."""
    calls: list[list[PackedAppend]] = []
    for group in _by_slot([append.keys for append in appends], appends, by_slot):
        call: list[PackedAppend] = []
        chunks = 0
        for append in group:
            full = len(call) == _STREAMS_PER_CALL or chunks + append.chunks > _CHUNKS_PER_CALL
            if call and full:
                calls.append(call)
                call, chunks = [], 0
            call.append(append)
            chunks += append.chunks
        if call:
            calls.append(call)
    return calls


def renewal_calls(keys: Sequence[StreamKeys], *, by_slot: bool = False) -> list[list[int]]:
    """The positions of the renewals of streams ``keys`` cut into renew_many.lua calls of
    bounded size (of one hash slot each, ``by_slot``)."""
    step = _STREAMS_PER_CALL
    return [
        group[at : at + step]
        for group in _by_slot(keys, list(range(len(keys))), by_slot)
        for at in range(0, len(group), step)
    ]


def _by_slot(keys: Sequence[StreamKeys], items: list[_Item], by_slot: bool) -> list[list[_Item]]:
    """``items`` (one per stream ``keys``), in order, in groups of one hash slot each if
    ``by_slot``, else all in one group."""
    if not by_slot:
        return [items] if items else []
    groups: dict[int, list[_Item]] = {}
    for stream_keys, item in zip(keys, items, strict=True):
        groups.setdefault(key_slot(stream_keys.meta.encode()), []).append(item)
    return list(groups.values())


def append_many_command(appends: Sequence[PackedAppend]) -> tuple[Any, ...]:
    """The arguments of one ``append_many.lua`` call: every stream's keys, then each
    stream's argument count and arguments."""
    keys = [key for append in appends for key in append.keys.script_keys]
    args: list[str | bytes | int] = []
    for append in appends:
        args.append(len(append.args))
        args += append.args
    return (len(keys), *keys, *args)


# -- replies --------------------------------------------------------------------------------


def parse_appended(stream_id: str, reply: object) -> tuple[StreamState | None, int | None]:
    """An append script's reply: the stream's state (None: no such stream), and the log's
    byte count after the append when it was appended (the reply is that count)."""
    if isinstance(reply, int) and not isinstance(reply, bool) and reply >= 0:
        return StreamState.ACTIVE, reply
    return parse_state(stream_id, reply), None


def parse_state(stream_id: str, reply: object) -> StreamState | None:
    """A script's reply: the stream's state, or None (no such stream)."""
    if reply is None:
        return None
    try:
        return StreamState(text(reply))
    except ValueError:
        corrupt(stream_id, f"unexpected script reply {reply!r}")


def parse_status(stream_id: str, raw: Mapping[Any, Any], last: object = None) -> StreamStatus:
    """The metadata hash (HGETALL) as a `StreamStatus`; for an active stream, the counts
    are those of its log (``last``: XREVRANGE's reply for the log's last entry) when its
    last entry carries them (see `log_counts`), else the hash's."""
    try:
        fields = {text(key): value for key, value in raw.items()}
        finished = fields.get(_keys.META_FINISHED)
        error = fields.get(_keys.META_ERROR)
        state = StreamState(text(fields[_keys.META_STATE]))
        counts = log_counts(stream_id, last) if state is StreamState.ACTIVE else None
        if counts is None:
            counts = (
                _count(fields[_keys.META_CHUNKS]),
                _count(fields[_keys.META_CHARS]),
                _count(fields[_keys.META_BYTES]),
            )
        return StreamStatus(
            stream_id=stream_id,
            state=state,
            chunk_count=counts[0],
            char_count=counts[1],
            byte_count=counts[2],
            created_at=_timestamp(fields[_keys.META_CREATED]),
            updated_at=_timestamp(fields[_keys.META_UPDATED]),
            finished_at=None if finished is None else _timestamp(finished),
            error=None if error is None else text(error),
        )
    except (KeyError, ValueError) as exc:
        corrupt(stream_id, f"metadata: {exc!r}")


def log_counts(stream_id: str, last: object) -> tuple[int, int, int] | None:
    """(chunks, chars, bytes) of a log from its last entry (``last``: XREVRANGE's reply for
    it): the entry's last seq + 1, its char offset plus its chunks' lengths, its byte offset
    plus its data's length. None for an empty or missing log, or a last entry of an earlier
    layout (without a byte offset: its writer kept the meta's counts current instead)."""
    if not isinstance(last, list):
        corrupt(stream_id, f"log: {last!r}")
    if not last:
        return None
    try:
        entry_id, fields = last[0]
        fields = _fields(fields)
        seq = log_entry_seq(text(entry_id))
        byte_offset = _field(fields, _BYTE_OFFSET)
        if byte_offset is None or _field(fields, _LENGTHS) is None:
            return None
        data = _field(fields, _DATA)
        size = len(data) if isinstance(data, bytes) else len(encode(text(data)))
        lengths = [_count(length) for length in text(_field(fields, _LENGTHS)).split(",")]
        chars = _count(_field(fields, _OFFSET)) + sum(lengths)
        return seq + 1, chars, _count(byte_offset) + size
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        corrupt(stream_id, f"log entry: {exc!r}")


def _fields(fields: object) -> Mapping[Any, Any]:
    """An entry's fields as a mapping, from the reply as Redis sent it (a flat list of names
    and values: the backend's own connections skip redis-py's stream callback, see
    `_pipeliner`) or as that callback made it (a dict: a cluster's pipelines)."""
    if isinstance(fields, list):
        if len(fields) % 2:
            raise ValueError("an entry with a field name and no value")
        names_values = iter(fields)
        return dict(zip(names_values, names_values, strict=True))
    if isinstance(fields, Mapping):
        return fields
    raise TypeError(f"entry fields are a {type(fields).__name__}")


def _field(fields: Mapping[Any, Any], name: bytes) -> Any:
    """An entry's field, whether the client decodes responses or not (None if absent)."""
    value = fields.get(name)
    return fields.get(name.decode()) if value is None else value


def _entry_chunks(fields: Mapping[Any, Any], last: int) -> tuple[int, int, list[str]]:
    """One log entry as (the first chunk's seq, its offset, every chunk's data)."""
    packed = _field(fields, _PACKED)
    if packed is not None:
        datas = unpack(base64.b64decode(packed, validate=True))
        offset = _count(_field(fields, _OFFSET))
    else:
        lengths = _field(fields, _LENGTHS)
        if lengths is None:  # a one-chunk entry in the earlier layout
            datas = [text(_field(fields, _LEGACY_DATA))]
            offset = _count(_field(fields, _LEGACY_OFFSET))
        else:
            joined = text(_field(fields, _DATA))
            offset = _count(_field(fields, _OFFSET))
            datas = []
            at = 0
            for length in text(lengths).split(","):
                end = at + int(length)
                if end < at:
                    raise ValueError(f"negative chunk length {length!r}")
                datas.append(joined[at:end])
                at = end
            if at != len(joined):
                raise ValueError("chunk lengths do not add up to the entry's data")
    if not datas:
        raise ValueError("an entry without chunks")
    return last - len(datas) + 1, offset, datas


def _usual_run(entries: list[Any], start: int, seq: int, room: int, chunks: list[Chunk]) -> int:
    """Read the usual entries from ``entries[start]`` on into ``chunks``, faster than
    `_entry_chunks` reads them (a catch-up decodes one such entry per chunk a model
    streamed); returns how many it read, at most ``room``. The usual entry holds one chunk,
    the next one wanted (``seq``, then ``seq + 1``, ...), in the current layout, from a
    client that does not decode responses, its fields in the order every writer adds them
    (``o n d b``) if they are the reply as sent. The run stops at any other entry, which
    `_entry_chunks` reads (or rejects)."""
    taken = 0
    for index in range(start, min(len(entries), start + room)):
        entry = entries[index]
        if (type(entry) is not list and type(entry) is not tuple) or len(entry) != 2:
            break
        entry_id, fields = entry
        if entry_id != log_entry_id(seq + taken).encode():
            break
        if type(fields) is list:
            if len(fields) != 8:
                break
            name_o, offset, name_n, lengths, name_d, data, name_b, _ = fields
            if name_o != _OFFSET or name_n != _LENGTHS or name_d != _DATA or name_b != _BYTE_OFFSET:
                break
        elif type(fields) is dict:
            lengths, data, offset = fields.get(_LENGTHS), fields.get(_DATA), fields.get(_OFFSET)
        else:
            break
        if not (type(lengths) is bytes and type(data) is bytes and type(offset) is bytes):
            break
        # The checks of `_count`: digits only (so one length: no comma), at most 18 of them.
        if not (lengths.isdigit() and offset.isdigit() and len(offset) <= 18):
            break
        chunk = data.decode("utf-8", "surrogatepass")
        if len(chunk) != int(lengths):
            raise ValueError("chunk lengths do not add up to the entry's data")
        chunks.append(new_chunk(seq + taken, chunk, int(offset)))
        taken += 1
    return taken


def parse_log(stream_id: str, entries: object, after: int, limit: int) -> list[Chunk]:
    """XRANGE entries as chunks: the first ``limit`` with seq > ``after``. The entries must
    hold exactly seq after+1, after+2, ... (the first one may start earlier)."""
    if not isinstance(entries, list):
        corrupt(stream_id, "log reply is not a list")
    chunks: list[Chunk] = []
    expected = after + 1
    index = 0
    while index < len(entries) and len(chunks) < limit:
        try:
            taken = _usual_run(entries, index, expected, limit - len(chunks), chunks)
            index += taken
            expected += taken
            if taken or index == len(entries) or len(chunks) == limit:
                continue
            entry_id, fields = entries[index]
            index += 1
            first, offset, datas = _entry_chunks(_fields(fields), log_entry_seq(text(entry_id)))
        except (KeyError, ValueError, TypeError, AttributeError, zlib.error) as exc:
            corrupt(stream_id, f"log entry: {exc!r}")
        if first > expected or (chunks and first != expected) or first < 0:
            corrupt(stream_id, f"log has seq {first} where {expected} belongs")
        for position, data in enumerate(datas):
            seq = first + position
            if seq >= expected:
                chunks.append(new_chunk(seq, data, offset))
                if len(chunks) == limit:
                    return chunks
                expected = seq + 1
            offset += len(data)
    return chunks


# -- notifications --------------------------------------------------------------------------


# `json.loads` without its look for whitespace around the value, which the payloads never
# have (one with whitespace is not ours: raw_decode refuses what starts with it).
_decode_json = json.JSONDecoder().raw_decode


def parse_notification(raw: object) -> Notification:
    """A notification payload as published by the scripts; ValueError if it is not one."""
    payload = text(raw)
    note, end = _decode_json(payload)
    if end != len(payload):
        raise ValueError("data after the JSON value")
    if not isinstance(note, dict) or len(note) != 1:
        raise ValueError("not a one-key object")
    if _keys.NOTE_ENDED in note:
        state = StreamState(note[_keys.NOTE_ENDED])
        if not state.is_terminal:
            raise ValueError("an end notification with a non-terminal state")
        return Ended(state)
    rows = note.get(_keys.NOTE_APPENDED)
    if not isinstance(rows, list) or not rows:
        raise ValueError("no chunks")
    chunks: list[Chunk] = []
    expected = 0  # the seq the next row must have (any, for the first)
    for row in rows:
        # What JSON decodes has exactly these types: `type(...) is int` refuses true, false.
        if type(row) is not list or len(row) != 3:
            raise ValueError("a chunk is not [seq, offset, data]")
        seq, offset, data = row
        if not (type(seq) is int and type(offset) is int and type(data) is str):
            raise ValueError("a chunk has bad types")
        if seq < 0 or offset < 0:
            raise ValueError("a chunk has a negative seq or offset")
        if chunks and seq != expected:
            raise ValueError("chunk sequence numbers are not consecutive")
        expected = seq + 1
        chunks.append(new_chunk(seq, data, offset))
    return Appended(tuple(chunks))
