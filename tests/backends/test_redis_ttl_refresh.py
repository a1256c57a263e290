"""The append script sets an active stream's TTLs once per period, not on every append."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests._services import delete_redis_keys
from unbroken._models import Chunk, StreamState
from unbroken.backends.base import StreamTimes
from unbroken.backends.redis import RedisBackend
from unbroken.backends.redis._keys import stream_keys

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(30)]

# Active TTL 60 s: the period is 5 % of it, 3 s of the producer's clock.
TIMES = StreamTimes(lease=5.0, active=60.0, retention=120.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend(redis_url: str, key_prefix: str) -> AsyncIterator[RedisBackend]:
    try:
        async with RedisBackend(redis_url, key_prefix=key_prefix) as opened:
            yield opened
    finally:
        await delete_redis_keys(redis_url, key_prefix)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_ttls_slide_once_per_period(backend: RedisBackend, raw: aioredis.Redis) -> None:
    keys = stream_keys(backend.key_prefix, "s")
    seq = 0

    async def append_at(now: float) -> None:
        nonlocal seq
        chunk = [Chunk(seq, "x", seq)]
        state = await backend.append("s", token="tok", chunks=chunk, times=TIMES, now=now)
        assert state is StreamState.ACTIVE
        seq += 1

    async def ttls() -> tuple[int, int]:
        return await raw.pttl(keys.meta), await raw.pttl(keys.log)

    assert await backend.claim("s", token="tok", times=TIMES, now=1000.0)
    await append_at(1000.0)  # the first append sets them
    assert all(59_000 < ttl <= 60_000 for ttl in await ttls())
    await raw.pexpire(keys.meta, 50_000)  # as if some time had passed
    await raw.pexpire(keys.log, 50_000)
    await append_at(1002.0)  # within the period: left as they are
    assert all(49_000 < ttl <= 50_000 for ttl in await ttls())
    assert 4_000 < await raw.pttl(keys.lease) <= 5_000  # the lease, on every append
    await append_at(1003.0)  # one period after the last refresh: set again
    assert all(59_000 < ttl <= 60_000 for ttl in await ttls())
    await raw.pexpire(keys.meta, 50_000)
    await raw.pexpire(keys.log, 50_000)
    await append_at(900.0)  # a clock behind the last refresh's: set again at once
    assert all(59_000 < ttl <= 60_000 for ttl in await ttls())
    status = await backend.status("s")
    assert status is not None and status.chunk_count == 4 and status.char_count == 4
