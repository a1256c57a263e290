"""What the pydantic-ai, LangChain and OpenAI Agents adapters share: ending a framework's
stream when the answer ends, even when it was stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ["CLOSE_TIMEOUT", "close_shielded", "iterate_apart", "logger"]

T = TypeVar("T")
_END: Any = object()

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


async def iterate_apart(stream: AsyncIterable[T]) -> AsyncGenerator[T, None]:
    """``stream``'s items, pulled in an asyncio task of its own that a stop cancels once.

    asyncio frameworks (LangGraph) clean up after a cancellation by awaiting: cancelling its
    running tools, then waiting for them. Inside a cancelled anyio scope the cancellation is
    delivered again at every await, which cuts that cleanup short and leaves the tools
    running. A task cancelled once, asyncio's way, cleans up as the framework expects. It is
    always awaited before this generator ends, so it never outlives its caller.
    """
    items: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue(maxsize=1)

    async def pull() -> None:
        try:
            async for item in stream:
                await items.put((item, None))
        except Exception as exc:
            await items.put((_END, exc))
        else:
            await items.put((_END, None))

    task = asyncio.get_running_loop().create_task(pull())
    try:
        while True:
            item, error = await items.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        task.cancel()  # a no-op once it is done
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            await asyncio.wait({task})
