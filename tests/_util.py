"""Small helpers that many test modules share: fresh ids, and reading server-sent events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

__all__ = ["SseEvent", "SseParser", "uid"]


def uid(prefix: str = "c") -> str:
    """A fresh id that no other test (or other run on a shared service) uses."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One complete server-sent event: its ``id:`` if it had one, its ``data:`` lines joined."""

    id: int | None
    data: str


class SseParser:
    """Turns the lines of an SSE body into events, as an ``EventSource`` does.

    Feed it lines without their line ends (what httpx's ``aiter_lines`` yields). Comment
    lines (``:`` …, the keep-alives) are skipped, ``data:`` lines are joined with newlines,
    and an event counts only once the blank line that ends it arrives, so an event cut off
    by a dropped connection is never reported.
    """

    __slots__ = ("_data", "_id")

    def __init__(self) -> None:
        self._id: int | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        """Take one line; returns the event it completes, if it completes one."""
        if line.startswith(":"):
            return None
        if line.startswith("id:"):
            self._id = int(line[3:].strip())
        elif line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        elif line == "" and self._data:
            event = SseEvent(self._id, "\n".join(self._data))
            self._id, self._data = None, []
            return event
        return None
