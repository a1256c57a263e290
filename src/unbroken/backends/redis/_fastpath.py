"""What one backend knows of the streams it appends to, so most appends need no script.

An append through the script (``_lua/_append.lua``) checks everything: the stream is active,
the token owns it, the chunks continue its log. Between two such appends, a stream this
backend appends to can stop accepting its chunks in two ways only:

- it ends (``finish.lua``: done or error by its producer, cancelled by anyone's stop,
  interrupted by anyone once the lease lapsed). ``finish.lua`` seals the log (its last id
  set to the largest there is), so any later XADD to it fails.
- it starts a new life under the same id (``claim.lua``), which takes the meta key to have
  expired first. Every checked write (a claim, an append through the script, a renewal)
  sets the meta's TTL to the active TTL, so nobody can claim it again within that time
  after such a write was sent.

So while the last checked write is recent (`VALIDITY` of the shorter of the lease and the
active TTL), an append of the next chunks may be a plain ``XADD NOMKSTREAM`` with the
entry id of its last chunk and a ``PUBLISH``: a refused XADD (sealed log, or an id at or
below the log's last one) or a missing log (no reply id) sends the append through the
script after all, which answers as it always did. Its PUBLISH went out all the same, after
the XADD: for an ended stream after its end notification (readers stop there), for a
missing one with the chunks its producer then writes again.

A restarted server, or a replica promoted in a failover, may hold a shorter log than this
backend knows of, and an XADD there would leave a hole. Each known stream keeps the
pipeliner's connection generation of its last checked write, and plain appends are fenced
with it: sent only on connections already connected then (see `Pipeliner.generation`).
In a cluster, plain appends go to their slot's primary on connections seen before (see
`Pipeliner.generation`), without following redirections: a slot that moved or a node that
failed over sends the append through the script, which redis-py routes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Known", "KnownStreams"]

#: The share of the shorter of the lease and active TTLs for which a checked write lets
#: appends go without the script. The engine renews each lease every third of it, so an
#: active stream's writes are checked again well before.
VALIDITY = 2 / 3
_FIRST_SWEEP = 1024


@dataclass(slots=True)
class Known:
    """One stream as its last checked write left it, and what was appended since."""

    token: str
    next_seq: int  # the seq the next append starts at
    next_byte: int  # the log's length in UTF-8 bytes
    valid_until: float  # time.monotonic(): no plain appends from then on
    fence: int  # the pipeliner's connection generation when that write was queued
    has_log: bool  # the log exists (NOMKSTREAM adds nothing to a missing one)


class KnownStreams:
    """The streams this backend may append to without the script, bounded: streams whose
    validity ran out are forgotten as new ones come."""

    def __init__(self) -> None:
        self._streams: dict[str, Known] = {}
        self._sweep_at = _FIRST_SWEEP  # forget the stale ones when it holds this many

    def __len__(self) -> int:
        return len(self._streams)

    def usable(
        self, stream_id: str, token: str, first_seq: int, now: float, generation: int
    ) -> Known | None:
        """The stream's state if an append by ``token`` from ``first_seq`` may go without
        the script at monotonic time ``now``."""
        known = self._streams.get(stream_id)
        if (
            known is None
            or not known.has_log
            or known.token != token
            or known.next_seq != first_seq
            or known.fence != generation
            or now >= known.valid_until
        ):
            return None
        return known

    def checked(
        self,
        stream_id: str,
        token: str,
        *,
        sent: float,
        lifetime: float,
        fence: int,
        next_seq: int | None = None,
        next_byte: int | None = None,
    ) -> None:
        """A checked write queued at monotonic time ``sent`` found the stream active and
        owned by ``token``, and set its meta to live ``lifetime`` seconds (the shorter of
        its lease and active TTLs); with ``next_seq`` and ``next_byte`` after an append
        that left the log that long. A renewal of a stream not known here adds nothing
        (its log's length is not known)."""
        valid_until = sent + lifetime * VALIDITY
        known = self._streams.get(stream_id)
        if next_seq is None or next_byte is None:
            if known is not None and known.token == token:
                known.valid_until, known.fence = valid_until, fence
            return
        if known is None or known.token != token:
            self._add(stream_id, Known(token, next_seq, next_byte, valid_until, fence, True))
            return
        known.next_seq, known.next_byte = next_seq, next_byte
        known.valid_until, known.fence = valid_until, fence
        known.has_log = known.has_log or next_seq > 0

    def claimed(
        self, stream_id: str, token: str, *, sent: float, lifetime: float, fence: int
    ) -> None:
        """A claim queued at ``sent`` created the stream: no log yet, so its first append
        goes through the script (which creates the log)."""
        valid_until = sent + lifetime * VALIDITY
        self._add(stream_id, Known(token, 0, 0, valid_until, fence, False))

    def appended(self, known: Known, chunks: int, size: int) -> None:
        """A plain append of ``chunks`` chunks, ``size`` bytes, was added to the log."""
        known.next_seq += chunks
        known.next_byte += size

    def forget(self, stream_id: str) -> None:
        """The next append of the stream goes through the script (it ended, or something
        went differently than expected)."""
        self._streams.pop(stream_id, None)

    def _add(self, stream_id: str, known: Known) -> None:
        self._streams[stream_id] = known
        if len(self._streams) >= self._sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        """Forget the streams no plain append may use any more: those that stopped
        appending without ending here (an end forgets its stream at once). The next sweep
        waits until the dict doubled, so sweeps cost O(1) per addition."""
        now = time.monotonic()
        self._streams = {
            stream_id: known
            for stream_id, known in self._streams.items()
            if known.valid_until > now
        }
        self._sweep_at = max(_FIRST_SWEEP, 2 * len(self._streams))
