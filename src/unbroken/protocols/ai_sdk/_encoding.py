"""What both AI SDK encoders share: decoding stored events, merging replays, ending streams.

Both are `StreamEncoder`s over streams whose chunks are one UI event each (compact JSON):
a pure transform from engine items to wire text. They are fed in batches; consecutive deltas
of one part inside a batch may be merged into one frame, so a catch-up (which arrives as
large batches) replays in few frames while live chunks (batches of one) go out as they come.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from unbroken._models import Chunk, StreamEnd, StreamState
from unbroken.exceptions import ProtocolError
from unbroken.protocols._encoder import StreamEncoder
from unbroken.protocols.ai_sdk._chunks import UIEvent, decode_event

__all__ = ["ERROR_TEXT", "INTERRUPTED_TEXT", "TERMINAL_TYPES", "UIEventStreamEncoder"]

logger = logging.getLogger("unbroken")

#: Chunk types after which nothing needs to be synthesized for the stream's end.
TERMINAL_TYPES = frozenset({"finish", "error", "abort"})
ERROR_TEXT = "the answer could not be completed"
INTERRUPTED_TEXT = "the answer was interrupted"
# A transient data part sent just before the error of an interrupted stream.
STATE_MARKER = "data-unbroken-state"

Item = TypeVar("Item")
#: A wire item waiting to be written: (seq, item, its stored JSON if it can go out as is).
_Pending = tuple[int, Item, str | None]


class UIEventStreamEncoder(StreamEncoder, Generic[Item]):
    """A `StreamEncoder` for streams of UI events, in one AI SDK protocol whose wire items
    are ``Item``. One encoder per response; not reusable."""

    def __init__(self, *, merge: bool = True) -> None:
        super().__init__()
        self.merge = merge
        self._last_type: str | None = None

    # -- public ------------------------------------------------------------------------

    def seen(self, chunk: Chunk) -> None:
        """Tell the encoder about a chunk the client already has (the one at ``after``),
        so it knows whether the stream's own terminal event was delivered."""
        event = self._decode(chunk)
        if event is not None:
            self._observe(event)

    def encode(self, items: Iterable[Chunk | StreamEnd]) -> str:
        """Wire text for a batch of engine items (a `StreamEnd` must come last)."""
        out: list[str] = []
        pending: list[_Pending[Item]] = []
        for item in items:
            if self.finished:
                raise RuntimeError("this encoder already wrote the end of the stream")
            if isinstance(item, StreamEnd):
                out.extend(self._format_pending(p) for p in self._merged(pending))
                pending = []
                out.append(self.end(item))
                continue
            event = self._decode(item)
            if event is None:
                continue
            self._observe(event)
            wires = self._translate(event)
            if len(wires) == 1:
                # The stored JSON may go out as it is (no second encoding) if fitting changed
                # nothing; a merge makes a new item, which is encoded.
                pending.append((item.seq, wires[0], self._as_stored(event, wires[0], item.data)))
            else:
                pending.extend((item.seq, wire, None) for wire in wires)
        out.extend(self._format_pending(p) for p in self._merged(pending))
        return "".join(out)

    def end(self, end: StreamEnd) -> str:
        """The stream's end: a synthesized terminal event unless the stream sent its own,
        then the protocol's end marker."""
        if self.finished:
            raise RuntimeError("this encoder already wrote the end of the stream")
        self.finished = True
        synthesized: list[Item] = []
        if self._last_type not in TERMINAL_TYPES:
            if end.state is StreamState.CANCELLED:
                synthesized = self._translate({"type": "abort", "reason": "cancelled"})
            elif end.state is StreamState.ERROR:
                synthesized = self._translate(
                    {"type": "error", "errorText": end.error or ERROR_TEXT}
                )
            elif end.state is StreamState.INTERRUPTED:
                # An error to every client; the transient marker lets a page tell "the server
                # lost the generation" from an error without parsing the message.
                synthesized = self._translate(
                    {"type": STATE_MARKER, "data": {"state": "interrupted"}, "transient": True}
                ) + self._translate({"type": "error", "errorText": end.error or INTERRUPTED_TEXT})
            else:
                synthesized = self._translate({"type": "finish", "finishReason": "stop"})
        return "".join(self._format(None, wire) for wire in synthesized) + self._close()

    def fail(self, message: str) -> str:
        """End the response in error when the stream itself cannot be read any more."""
        self._last_type = None
        return self.end(StreamEnd(StreamState.ERROR, message, 0, 0))

    # -- per protocol ------------------------------------------------------------------

    @abstractmethod
    def _translate(self, event: UIEvent) -> list[Item]:
        """The wire items for one event (none when the client must not get it)."""

    @abstractmethod
    def _format(self, seq: int | None, wire: Item) -> str:
        """One wire item as text; ``seq`` is the last stored chunk it carries (None when it
        was synthesized)."""

    @abstractmethod
    def _merge_key(self, wire: Item) -> Any:
        """Items with equal, non-None keys that follow each other may be merged."""

    @abstractmethod
    def _merge_pair(self, first: Item, second: Item) -> Item:
        """One item equivalent to ``first`` then ``second`` for the client."""

    def _close(self) -> str:
        return ""

    def _as_stored(self, event: UIEvent, wire: Item, data: str) -> str | None:
        """``data`` (the stored JSON of ``event``) if ``wire`` can be written as that text,
        else None. Protocols whose items are not the event itself never can."""
        return None

    def _format_stored(self, seq: int, data: str) -> str:
        """An item whose wire form is the stored JSON ``data`` (see `_as_stored`)."""
        raise NotImplementedError

    def _observe(self, event: UIEvent) -> None:
        self._last_type = event["type"]

    # -- helpers -----------------------------------------------------------------------

    def _decode(self, chunk: Chunk) -> UIEvent | None:
        try:
            return decode_event(chunk.data)
        except ProtocolError:
            # A stream holding something else must not break the client: skip and log.
            logger.warning("skipping chunk %d: not a UI message chunk", chunk.seq)
            return None

    def _format_pending(self, pending: _Pending[Item]) -> str:
        seq, wire, stored = pending
        return self._format(seq, wire) if stored is None else self._format_stored(seq, stored)

    def _merged(self, pending: list[_Pending[Item]]) -> list[_Pending[Item]]:
        if not self.merge or len(pending) < 2:
            return pending
        out: list[_Pending[Item]] = []
        for seq, wire, stored in pending:
            if out:
                key = self._merge_key(wire)
                if key is not None and key == self._merge_key(out[-1][1]):
                    # The merged frame carries the seq of its LAST chunk: Last-Event-ID stays
                    # exact, a resume from it sends nothing twice.
                    out[-1] = (seq, self._merge_pair(out[-1][1], wire), None)
                    continue
            out.append((seq, wire, stored))
        return out
