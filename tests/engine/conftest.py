"""Fixtures that run the engine conformance suite against every backend.

``make_engine(**options)`` opens another `StreamEngine` over the *same* store: for memory the
same `MemoryBackend` object, for Redis a new `RedisBackend` (its own connections, as another
process would have) under this test's key prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from unbroken import MemoryBackend, StreamEngine
from unbroken.backends.base import Backend

EngineFactory = Callable[..., Any]


async def delete_keys(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend_factory(
    backend_kind: str, request: pytest.FixtureRequest, key_prefix: str
) -> AsyncIterator[Callable[..., Backend]]:
    if backend_kind == "memory":
        shared = MemoryBackend(reader_buffer=64)

        def make_memory(**options: Any) -> Backend:
            return MemoryBackend(**options) if options else shared

        yield make_memory
        return
    from unbroken.backends.redis import RedisBackend

    url: str = request.getfixturevalue("redis_url")

    def make_redis(**options: Any) -> Backend:
        options.setdefault("reader_buffer", 64)
        return RedisBackend(url, key_prefix=key_prefix, **options)

    try:
        yield make_redis
    finally:
        await delete_keys(url, key_prefix)


@pytest.fixture
async def make_engine(
    backend_factory: Callable[..., Backend], backend_kind: str
) -> AsyncIterator[EngineFactory]:
    async with AsyncExitStack() as stack:
        if backend_kind == "memory":
            await stack.enter_async_context(backend_factory())

        async def make(
            *, backend_options: dict[str, Any] | None = None, **options: Any
        ) -> StreamEngine:
            backend = backend_factory(**(backend_options or {}))
            options.setdefault("lease_ttl", 0.6)
            options.setdefault("drain_timeout", 2.0)
            engine = StreamEngine(
                backend, owns_backend=backend_kind != "memory" or bool(backend_options), **options
            )
            return await stack.enter_async_context(engine)

        yield make


@pytest.fixture
async def engine(make_engine: EngineFactory) -> StreamEngine:
    return await make_engine()  # type: ignore[no-any-return]
