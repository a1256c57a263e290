"""Plain Server-Sent Events for text streams: what a browser's ``EventSource`` reads.

Each chunk is one event whose ``id`` is the chunk's sequence number and whose ``data`` is
the chunk's text (a multi-line text in several ``data:`` lines, which the client joins back),
so a client that reconnects sends ``Last-Event-ID`` and gets exactly what it missed::

    id: 0
    data: Hello

    id: 1
    data: , world

    event: end
    data: {"state":"done","error":null,"chunks":2}

The ``end`` event has no id: a client that reconnects after it still resumes after the last
chunk, and gets only the ``end`` again. ``EventSource`` reconnects whenever a response ends,
so a page closes it on ``end``. A stream that cannot be read any more ends with
``event: failure`` and ``{"message": ...}`` instead (not ``error``: ``EventSource`` reports
its own connection errors under that name).
"""

from __future__ import annotations

from collections.abc import Iterable

from unbroken._json import compact_json
from unbroken._models import Chunk, StreamEnd
from unbroken._sse import sse_comment, sse_event
from unbroken.protocols._encoder import StreamEncoder

__all__ = ["SSE_HEADERS", "SSEEncoder"]

SSE_HEADERS: dict[str, str] = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class SSEEncoder(StreamEncoder):
    """A text stream's engine items -> SSE events (``id: <seq>``, the text as ``data:``).

    The text comes back exactly, except that a CR or CRLF line break arrives as LF: SSE has
    no way to carry a CR.
    """

    headers = SSE_HEADERS

    def encode(self, items: Iterable[Chunk | StreamEnd]) -> str:
        out: list[str] = []
        for item in items:
            if self.finished:
                raise RuntimeError("this encoder already wrote the end of the stream")
            if isinstance(item, StreamEnd):
                self.finished = True
                ending = {
                    "state": item.state.value,
                    "error": item.error,
                    "chunks": item.chunk_count,
                }
                out.append(sse_event(compact_json(ending), event="end"))
            else:
                out.append(sse_event(item.data, id=str(item.seq)))
        return "".join(out)

    def keepalive(self) -> str:
        return sse_comment("keep-alive")

    def fail(self, message: str) -> str:
        if self.finished:
            raise RuntimeError("this encoder already wrote the end of the stream")
        self.finished = True
        return sse_event(compact_json({"message": message}), event="failure")
