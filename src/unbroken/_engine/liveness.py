"""The engine's liveness tick: every timed check of all its streams, on one timer.

Every ``lease_ttl / 3`` seconds, one task:

- pokes backend readers that heard nothing since the last tick, so they check the
  producer's lease (a dead producer sends nothing, not even an end) and send heartbeats;
- wakes the local readers of quiet streams, so those waiting with a heartbeat see it is due;
- renews the lease of each stream produced here that no append renewed since the last tick
  (the first append after a tick renews it: a stream that streams needs no renewal);
- runs the checks registered with `StreamEngine.on_tick` (e.g. a response's send timeout).

One task and one timer for all of it, instead of some per stream or per reader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import anyio
from anyio.abc import TaskGroup

from unbroken._engine.local import LocalStream
from unbroken._engine.writing import Writes
from unbroken.backends.base import Listener

__all__ = ["Liveness", "QuietReader"]

logger = logging.getLogger("unbroken")


@dataclass(eq=False)
class QuietReader:
    """A backend reader waiting on live notifications; ``heard`` is reset by each tick."""

    listener: Listener
    heard: bool = True


class Liveness:
    """The tick (see the module docstring) over ``streams``, the streams produced here."""

    def __init__(self, interval: float, streams: dict[str, LocalStream], writes: Writes) -> None:
        self.interval = interval
        self._streams = streams
        self._writes = writes
        self.readers: set[QuietReader] = set()
        self._checks: set[Callable[[], None]] = set()

    def on_tick(self, check: Callable[[], None]) -> Callable[[], None]:
        """Call ``check`` on each tick until the function returned is called."""
        self._checks.add(check)
        return partial(self._checks.discard, check)

    async def run(self, task_group: TaskGroup) -> None:
        while True:
            await anyio.sleep(self.interval)
            self._poke_quiet_readers()
            due = self._wake_quiet_streams()
            if due:
                task_group.start_soon(self._renew_leases, due)
            for check in list(self._checks):
                try:
                    check()
                except Exception:
                    logger.exception("a liveness tick check failed")

    def _poke_quiet_readers(self) -> None:
        for reader in list(self.readers):
            if reader.heard:
                reader.heard = False
            else:
                reader.listener.poke()

    def _wake_quiet_streams(self) -> list[LocalStream]:
        """Wake the local readers of quiet streams; returns the streams whose lease is due."""
        due: list[LocalStream] = []
        for local in list(self._streams.values()):
            # Those waiting with a heartbeat see that it is due; the others look, find
            # nothing new and wait again.
            if local.quiet:
                local.wake_readers()
            local.quiet = True
            if local.lease_fresh:
                local.lease_fresh = False
            elif not local.ending:
                due.append(local)
        return due

    async def _renew_leases(self, due: list[LocalStream]) -> None:
        # Given up after one interval: the next tick's renewals are on their way by then.
        with anyio.move_on_after(self.interval):
            await self._writes.renew_leases(due)
