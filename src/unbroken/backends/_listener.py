"""A bounded notification queue shared by the backends' listeners."""

from __future__ import annotations

from collections import deque

from unbroken._wakeups import wakeups_factory
from unbroken.backends.base import Idle, Lagged, Listener, Notification


class QueueListener(Listener):
    """Holds at most ``capacity`` notifications; on overflow drops them all and says `Lagged`.

    Dropping is safe because a lagging reader re-reads the log: the log, not this queue, is
    the source of truth, so a slow reader costs bounded memory and loses nothing.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("listener capacity must be at least 1")
        self._capacity = capacity
        self._items: deque[Notification] = deque()
        self._lagged = False
        # Made for the loop it is created on, where its receiver runs (a listener is made
        # by `listen`): under asyncio, a wait per notification makes only a future.
        self._wakeup = wakeups_factory()()

    def push(self, note: Notification) -> None:
        """Queue a notification without blocking (called by the backend's dispatcher)."""
        if isinstance(note, Lagged) or len(self._items) >= self._capacity:
            self._items.clear()
            self._lagged = True
        else:
            self._items.append(note)
        self._wakeup.set()

    def poke(self) -> None:
        """Queue an `Idle` for the receiver (counted like any notification)."""
        self.push(Idle())

    async def receive(self) -> Notification:
        while True:
            if self._lagged:
                self._lagged = False
                return Lagged()
            if self._items:
                return self._items.popleft()
            await self._wakeup.wait()
