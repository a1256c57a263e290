"""Whether the running event loop is asyncio's, for the few hot paths that use asyncio's
primitives directly: anyio's equivalents look the async library up on every call, which
costs more per chunk than the work they do."""

from __future__ import annotations

import asyncio

__all__ = ["on_asyncio"]


def on_asyncio() -> bool:
    """True under asyncio (uvloop included); False under another library's loop (trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
