"""A stream producer in its own process, for the cross-process tests.

Usage: python -m tests.engine._producer_process REDIS_URL PREFIX STREAM_ID CHUNKS DELAY [ACTION]

ACTION ``produce`` (default) starts the stream, prints ``started`` and then ``end <state>``;
``start-existing`` tries to start an id that exists and prints ``exists`` when refused.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import anyio

from unbroken import StreamEngine, StreamExistsError
from unbroken.backends.redis import RedisBackend


async def ticks(count: int, delay: float) -> AsyncIterator[str]:
    for i in range(count):
        await anyio.sleep(delay)
        yield f"tick {i}\n"


async def main(
    url: str, prefix: str, stream_id: str, count: int, delay: float, action: str
) -> None:
    async with StreamEngine(RedisBackend(url, key_prefix=prefix), lease_ttl=0.6) as engine:
        try:
            await engine.start(stream_id, ticks(count, delay))
        except StreamExistsError:
            print("exists", flush=True)
            return
        assert action == "produce"
        print("started", flush=True)
        end = await engine.wait(stream_id)
        print(f"end {end.state}", flush=True)


if __name__ == "__main__":
    url, prefix, stream_id, count, delay, *rest = sys.argv[1:]
    anyio.run(
        main, url, prefix, stream_id, int(count), float(delay), rest[0] if rest else "produce"
    )
