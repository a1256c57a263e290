"""Hear the server's shutdown signal as soon as it arrives.

uvicorn runs the lifespan shutdown only after open connections have closed or its graceful
timeout cancelled them (each then logged with a traceback). Chaining onto its SIGINT/SIGTERM
handlers lets open answer streams end cleanly at the first signal, so clients resume on
another instance while this one drains its producers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType

__all__ = ["on_exit_signal"]

logger = logging.getLogger("unbroken")


def on_exit_signal(callback: Callable[[], None]) -> bool:
    """Call ``callback`` in the running event loop when SIGINT or SIGTERM arrives, then
    let the handler that was installed before (the server's) run as usual.

    Returns False, changing nothing, where signals cannot be hooked: outside the main
    thread (a server run in a thread, as in tests), or when no server handler is installed.
    """
    loop = asyncio.get_running_loop()
    hooked = False
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if not callable(previous) or previous is signal.default_int_handler:
            continue  # not a server's handler: leave the default behaviour alone

        def handler(
            received: int,
            frame: FrameType | None,
            previous: Callable[[int, FrameType | None], object] = previous,
        ) -> None:
            loop.call_soon_threadsafe(callback)
            previous(received, frame)

        try:
            signal.signal(signum, handler)
        except ValueError:  # not the main thread
            return False
        hooked = True
    return hooked
