"""Server-Sent Events framing (WHATWG HTML, "Server-sent events", event stream format)."""

from __future__ import annotations

__all__ = ["sse_comment", "sse_event"]


def sse_event(data: str, *, id: str | None = None, event: str | None = None) -> str:
    """One SSE event. Each line of ``data`` becomes its own ``data:`` field, so the client
    gets ``data`` back exactly; ``id`` sets the client's Last-Event-ID."""
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
        lines.extend(f"data: {line}" for line in data.replace("\r\n", "\n").split("\n"))
    else:  # one line, as every JSON event: once per chunk, so no split
        lines.append(f"data: {data}")
    return "\n".join(lines) + "\n\n"


def sse_comment(text: str = "") -> str:
    """A comment line (ignored by clients; keeps idle connections and proxies alive)."""
    return "".join(f": {line}\n" if line else ":\n" for line in text.split("\n")) + "\n"
