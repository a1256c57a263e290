"""Each chat's pointer to its latest answer's stream, and who the chat belongs to.

A chat has many answers, one stream each (a stream id is never reused), and at most one
answer running. The pointer says which stream is the chat's latest, so a resume knows what
to read and a stop what to cancel; it also keeps the chat's owner (the first one to use it).
Every change is a compare-and-set, so two requests racing in two processes cannot both
start an answer, and a stale writer never clears a newer pointer.

The stream the pointer names may be running, ended, or gone (past its retention): the
router decides what that means by asking the engine. The pointer itself expires with the
stream's retention, refreshed each time it is set.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from enum import Enum
from types import TracebackType
from typing import Self

__all__ = ["ChatPointer", "ChatPointers", "MemoryChatPointers", "Replaced"]


@dataclass(frozen=True, slots=True)
class ChatPointer:
    """A chat's record: its ``owner`` ("" for requests without one), the stream of its latest
    answer (None once released), the id of the message that answer replies to, and whether
    the answer's end was handed to ``on_finish`` already (``finished``)."""

    owner: str
    stream_id: str | None
    user_message_id: str | None = None
    finished: bool = False


class Replaced(Enum):
    """What `ChatPointers.replace` did."""

    SET = "set"  #: the pointer now names the new stream
    MOVED = "moved"  #: the pointer did not name the expected stream: nothing changed
    FOREIGN = "foreign"  #: the chat belongs to another owner: nothing changed


class ChatPointers(ABC):
    """Where each chat's pointer lives; shared by every process that shares the streams.

    Use as ``async with pointers:`` (the router does it in its lifespan).
    """

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources. Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Idempotent."""

    @abstractmethod
    async def get(self, chat_id: str) -> ChatPointer | None:
        """The chat's pointer, or None if the chat is unknown (or its pointer expired)."""

    @abstractmethod
    async def replace(
        self,
        chat_id: str,
        *,
        owner: str,
        expected: str | None,
        stream_id: str,
        user_message_id: str | None,
        ttl: float,
    ) -> Replaced:
        """Point the chat at ``stream_id`` if it still points at ``expected`` (None: at no
        stream) and belongs to ``owner`` (or to nobody yet: it is ``owner``'s from now on).
        Resets ``finished``; the pointer expires ``ttl`` seconds later."""

    @abstractmethod
    async def release(self, chat_id: str, stream_id: str) -> bool:
        """Point the chat at no stream, only if it still points at ``stream_id``. Keeps the
        owner. Returns whether it changed anything."""

    @abstractmethod
    async def claim_finish(self, chat_id: str, stream_id: str) -> bool:
        """Whether the caller should report ``stream_id``'s end to ``on_finish``: True once
        for the stream the chat points at (the first caller marks it ``finished``), and
        always for any other stream (an older answer, reported by its producer only)."""


class MemoryChatPointers(ChatPointers):
    """Pointers in this process's memory: for a `MemoryBackend` (one process)."""

    #: How many pointers may be set between two sweeps of the expired ones.
    sweep_every = 1000

    def __init__(self) -> None:
        self._pointers: dict[str, tuple[ChatPointer, float]] = {}
        self._sets_since_sweep = 0

    def _live(self, chat_id: str) -> ChatPointer | None:
        entry = self._pointers.get(chat_id)
        if entry is None:
            return None
        pointer, expires_at = entry
        if expires_at <= time.time():
            del self._pointers[chat_id]
            return None
        return pointer

    def _store(self, chat_id: str, pointer: ChatPointer, expires_at: float) -> None:
        self._pointers[chat_id] = (pointer, expires_at)

    def _sweep(self) -> None:
        # Expired pointers nobody asks for again would otherwise stay for good.
        self._sets_since_sweep += 1
        if self._sets_since_sweep >= self.sweep_every:
            self._sets_since_sweep = 0
            now = time.time()
            for chat_id in [key for key, (_, exp) in self._pointers.items() if exp <= now]:
                del self._pointers[chat_id]

    async def get(self, chat_id: str) -> ChatPointer | None:
        return self._live(chat_id)

    async def replace(
        self,
        chat_id: str,
        *,
        owner: str,
        expected: str | None,
        stream_id: str,
        user_message_id: str | None,
        ttl: float,
    ) -> Replaced:
        current = self._live(chat_id)
        if current is not None and current.owner != owner:
            return Replaced.FOREIGN
        if (current.stream_id if current is not None else None) != expected:
            return Replaced.MOVED
        self._sweep()
        pointer = ChatPointer(owner, stream_id, user_message_id, finished=False)
        self._store(chat_id, pointer, time.time() + ttl)
        return Replaced.SET

    async def release(self, chat_id: str, stream_id: str) -> bool:
        current = self._live(chat_id)
        if current is None or current.stream_id != stream_id:
            return False
        released = replace(current, stream_id=None, user_message_id=None)
        self._store(chat_id, released, self._pointers[chat_id][1])
        return True

    async def claim_finish(self, chat_id: str, stream_id: str) -> bool:
        current = self._live(chat_id)
        if current is None or current.stream_id != stream_id:
            return True
        if current.finished:
            return False
        self._store(chat_id, replace(current, finished=True), self._pointers[chat_id][1])
        return True
