"""Every Redis key, channel and field name the Redis backend uses, in one place.

Per stream, with the hash tag ``{<prefix>:<stream id>}`` so Redis Cluster keeps all of
them in one slot (one Lua script may touch them all, and sharded pub/sub lands on the
node that owns the data)::

    {<prefix>:<id>}:meta     hash    state, token, counts, times, error   (see META_*); the
                             counts are final once the stream ended, and may lag behind
                             the log while it is active
    {<prefix>:<id>}:log      stream  one entry per append, of consecutive chunks: entry id
                             ``0-<last seq + 1>``, fields o (the first chunk's offset),
                             n + d (their lengths and data) and b (the first chunk's byte
                             offset), or o + z once the stream ended (them packed: see
                             LOG_*); so its last entry says how long the stream is. Sealed
                             when the stream ends (its last id set to the largest there is,
                             so nothing can be added to it)
    {<prefix>:<id>}:lease    string  the producer's token, with a PX expiry
    {<prefix>:<id>}:events   channel compact JSON notifications (see NOTE_*): appends, end
    {<prefix>:<id>}:ends     channel the end notification only (for ``listen(ends_only=True)``,
                             so a producer does not receive its own chunks back)

The suffixes are chosen so that no suffix ends another one: two different stream ids can
therefore never produce the same key, even if an id contains ``}`` or ``:``.

**Placement groups** (``RedisBackend(placement_separator=...)``): an id holding the
separator is split at its first one into a group and the rest, and the hash tag is the
group's: ``{<prefix>:<group>}<separator><rest>:meta`` and so on. Every stream of a group
then lives in one slot, on one Cluster master (a worker that names its streams after
itself sends each write window's pipeline to one master, not to all of them). Stream ids
hold no braces, so the first ``}`` ends the group, and the separator (never ``:``) after it
keeps these keys apart from those of ids without it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

__all__ = [
    "LEGACY_DATA",
    "LEGACY_OFFSET",
    "LOG_BYTE_OFFSET",
    "LOG_DATA",
    "LOG_LENGTHS",
    "LOG_OFFSET",
    "LOG_PACKED",
    "META_BYTES",
    "META_CHARS",
    "META_CHUNKS",
    "META_CREATED",
    "META_ERROR",
    "META_FINISHED",
    "META_STATE",
    "META_TOKEN",
    "META_UPDATED",
    "NOTE_APPENDED",
    "NOTE_ENDED",
    "StreamKeys",
    "check_separator",
    "log_entry_id",
    "log_entry_seq",
    "stream_keys",
]

# Fields of the metadata hash (the Lua scripts use the same literal names).
META_STATE = "state"
META_TOKEN = "token"
META_CHUNKS = "chunks"
META_CHARS = "chars"
META_BYTES = "bytes"
META_CREATED = "created"
META_UPDATED = "updated"
META_FINISHED = "finished"
META_ERROR = "error"

# Fields of one log entry: the chunks of one append, or of a packed ended log.
LOG_OFFSET = "o"  # the character offset of its first chunk
LOG_LENGTHS = "n"  # each chunk's length in characters, comma-separated
LOG_DATA = "d"  # the chunks' data, joined
LOG_BYTE_OFFSET = "b"  # the byte offset (UTF-8) of its first chunk, with n and d
LOG_PACKED = "z"  # instead of n and d once the stream ended: `unbroken._packing.pack`
# An entry of one chunk, as unbroken wrote them before entries held several (still read).
LEGACY_DATA = "data"
LEGACY_OFFSET = "offset"

# Notification payloads: {"a": [[seq, offset, data], ...]} and {"e": "<terminal state>"}.
NOTE_APPENDED = "a"
NOTE_ENDED = "e"


@dataclass(frozen=True, slots=True)
class StreamKeys:
    """The keys and the notification channel of one stream."""

    meta: str
    log: str
    lease: str
    channel: str
    ends_channel: str

    @property
    def script_keys(self) -> list[str]:
        """The KEYS every Lua script receives, in this order: meta, log, lease."""
        return [self.meta, self.log, self.lease]


# Asked for on every append and read: a busy stream's names are made once, not each time.
@functools.lru_cache(maxsize=4096)
def stream_keys(prefix: str, stream_id: str, separator: str | None = None) -> StreamKeys:
    """The keys of ``stream_id`` under ``prefix``, all sharing one Cluster hash tag: the
    stream's own, or its placement group's if ``separator`` is in the id."""
    group, split, rest = stream_id.partition(separator) if separator else (stream_id, "", "")
    name = "{" + prefix + ":" + group + "}" + split + rest
    return StreamKeys(
        meta=f"{name}:meta",
        log=f"{name}:log",
        lease=f"{name}:lease",
        channel=f"{name}:events",
        ends_channel=f"{name}:ends",
    )


def check_separator(separator: str | None) -> None:
    """ValueError unless ``separator`` is None or one printable character that may split an
    id into a placement group and the rest (not a brace, not ``:``)."""
    if separator is not None and (
        len(separator) != 1 or separator in "{}:" or not separator.isprintable()
    ):
        raise ValueError("placement_separator must be one printable character, not {, } or :")


def log_entry_id(seq: int) -> str:
    """The Redis Stream entry id of the entry whose last chunk is ``seq``: ``0-<seq + 1>``
    (``0-0`` is not allowed). XRANGE from ``log_entry_id(n)`` starts at the entry holding
    chunk ``n``."""
    return f"0-{seq + 1}"


def log_entry_seq(entry_id: str) -> int:
    """The sequence number of an entry's last chunk; ValueError if the id is not ours."""
    millis, sep, counter = entry_id.partition("-")
    digits = counter.isascii() and counter.isdigit()
    if millis != "0" or not sep or not digits or counter.startswith("0"):
        raise ValueError(f"not a chunk entry id: {entry_id!r}")
    return int(counter) - 1
