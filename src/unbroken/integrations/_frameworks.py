"""What the pydantic-ai, LangChain and OpenAI Agents adapters share: ending a framework's
stream when the answer ends, even when it was stopped."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

__all__ = ["CLOSE_TIMEOUT", "close_shielded", "logger"]

logger = logging.getLogger("unbroken.integrations")

#: How long closing a framework's run may take once the answer is stopped: the close runs
#: shielded from the stop, so it needs a bound of its own.
CLOSE_TIMEOUT = 5.0


async def close_shielded(close: Callable[[], Awaitable[Any]] | None) -> None:
    """Await ``close()`` shielded from cancellation (a stop must not cut the run's cleanup
    short), within `CLOSE_TIMEOUT`; a failure to close is logged, never raised."""
    if close is None:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
        try:
            await close()
        except Exception:
            logger.debug("closing a framework's stream failed", exc_info=True)
