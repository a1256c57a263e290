"""Server-Sent Events framing (WHATWG HTML, "Server-sent events", event stream format)."""

from __future__ import annotations

import re

__all__ = ["sse_comment", "sse_event"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_event(data: str, *, id: str | None = None, event: str | None = None) -> str:
    """One SSE event. Each line of ``data`` becomes its own ``data:`` field, so the client
    gets ``data`` back exactly, except that a CR or CRLF line break arrives as LF (SSE has
    no way to carry a CR). ``id`` sets the client's Last-Event-ID."""
    lines: list[str] = []
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError("an SSE event id cannot contain newlines or NUL")
        lines.append(f"id: {id}")
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("an SSE event name cannot contain newlines")
        lines.append(f"event: {event}")
    if "\n" in data or "\r" in data:
        # A client ends a line at CRLF, LF or a lone CR: each must start a new field here,
        # or the rest of the line would be read as a field of its own.
        lines.extend(f"data: {line}" if line else "data:" for line in _LINE_BREAK.split(data))
    else:  # one line, as every JSON event: once per chunk, so no split
        lines.append(f"data: {data}")
    return "\n".join(lines) + "\n\n"


def sse_comment(text: str = "") -> str:
    """A comment line (ignored by clients; keeps idle connections and proxies alive)."""
    return "".join(f": {line}\n" if line else ":\n" for line in _LINE_BREAK.split(text)) + "\n"
