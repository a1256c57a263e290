"""Wake-ups: what a task with nothing to do waits on until there is something.

A local reader waits for its stream's next chunk, an idle writer for the next write, the
gathered appends for a stream with chunks, a backend's listener for the next notification.
Each keeps one wake-up per purpose and reuses it, so waiting makes nothing per chunk beyond
what the event loop needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Protocol

import anyio

from unbroken._asyncio import on_asyncio

__all__ = ["EventWakeups", "LoopWakeups", "Wakeups", "wakeups_factory"]


class Wakeups(Protocol):
    """Wakes every task waiting in `wait`, and starts over."""

    def set(self) -> None: ...

    async def wait(self) -> None:
        """Call only after finding nothing to do, with no await between the look and this."""


class LoopWakeups:
    """`Wakeups` on the running asyncio loop: a bare future per wait and nothing else.

    An `asyncio.Event` binds itself to the loop under a global lock on first use and an
    `anyio.Event` looks the async library up on every creation; a hot path that waits once
    per chunk avoids both.
    """

    __slots__ = ("_loop", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        waiters = self._waiters
        if waiters:
            # set_result only schedules the waiters: none of them runs (or waits again)
            # before the list is cleared.
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            waiters.clear()

    async def wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter


class EventWakeups:
    """`Wakeups` for any async library: an event made when a task is about to wait, set
    and dropped by the next `set`."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def set(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


def wakeups_factory() -> Callable[[], Wakeups]:
    """Wake-ups for the running event loop's library."""
    if on_asyncio():
        return partial(LoopWakeups, asyncio.get_running_loop())
    return EventWakeups
