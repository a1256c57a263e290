"""Fixtures that run the engine conformance suite on every backend and both async libraries.

A test that uses ``make_engine`` (or ``engine``) runs once per entry of `ENGINE_RUNS`, with ids
such as ``memory-asyncio``, ``plain-trio`` or ``redis-asyncio``:

- ``memory``: `unbroken.MemoryBackend` (appends inline, listeners that can be poked);
- ``redis``: `unbroken.backends.redis.RedisBackend` on real Redis (gathered appends);
- ``plain``: `tests.engine._plain_backend.PlainBackend`, written only against the ABC (no
  capability, listeners without ``poke``): the engine's plain write and read paths.

``make_engine(**options)`` opens another `StreamEngine` over the *same* store: for memory and
plain the same backend object, for Redis a new `RedisBackend` (its own connections, as another
process would have) under this test's key prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from tests._services import delete_redis_keys
from tests.engine._plain_backend import PlainBackend
from unbroken import MemoryBackend, StreamEngine
from unbroken.backends.base import Backend

EngineFactory = Callable[..., Any]

#: The async libraries AnyIO offers; the engine claims to run on both.
ASYNC_LIBRARIES = ("asyncio", "trio")
#: Backends of the conformance suite, by test id.
BACKENDS = ("memory", "redis", "plain")
#: (backend, async library) pairs the suite runs. Not redis on trio: redis-py's client is
#: written for asyncio (it needs asyncio's event loop), so that pair cannot run at all.
ENGINE_RUNS = [
    (backend, library)
    for backend in BACKENDS
    for library in ASYNC_LIBRARIES
    if (backend, library) != ("redis", "trio")
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise every test that needs a backend over `ENGINE_RUNS`."""
    if "backend_kind" in metafunc.fixturenames:
        metafunc.parametrize(
            ("backend_kind", "anyio_backend"),
            [
                pytest.param(
                    backend,
                    library,
                    id=f"{backend}-{library}",
                    marks=[pytest.mark.redis] if backend == "redis" else [],
                )
                for backend, library in ENGINE_RUNS
            ],
        )


@pytest.fixture
async def backend_factory(
    backend_kind: str, request: pytest.FixtureRequest, key_prefix: str
) -> AsyncIterator[Callable[[], Backend]]:
    """Makes the backend one more engine uses: the shared in-process store, or for Redis a
    new backend over the same keys."""
    if backend_kind in ("memory", "plain"):
        shared: Backend = (
            MemoryBackend(reader_buffer=64) if backend_kind == "memory" else PlainBackend()
        )
        async with shared:
            yield lambda: shared
        return
    from unbroken.backends.redis import RedisBackend

    url: str = request.getfixturevalue("redis_url")
    try:
        yield lambda: RedisBackend(url, key_prefix=key_prefix, reader_buffer=64)
    finally:
        await delete_redis_keys(url, key_prefix)


@pytest.fixture
async def make_engine(
    backend_factory: Callable[[], Backend], backend_kind: str
) -> AsyncIterator[EngineFactory]:
    async with AsyncExitStack() as stack:

        async def make(**options: Any) -> StreamEngine:
            options.setdefault("lease_ttl", 0.6)
            options.setdefault("drain_timeout", 2.0)
            engine = StreamEngine(
                backend_factory(), owns_backend=backend_kind == "redis", **options
            )
            return await stack.enter_async_context(engine)

        yield make


@pytest.fixture
async def engine(make_engine: EngineFactory) -> StreamEngine:
    return await make_engine()  # type: ignore[no-any-return]
