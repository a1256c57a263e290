"""An active stream's TTLs: set by every checked write (a claim, an append through the
script, a lease renewal), not by the plain appends between them.

So a stream whose producer died has its keys expire one active TTL after the producer's
last checked write; the engine makes one at least every third of the lease (the first
append after each liveness tick renews the lease, or the tick renews it itself).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests._services import delete_redis_keys
from unbroken._models import Chunk, StreamState
from unbroken.backends.base import Append, StreamTimes
from unbroken.backends.redis import RedisBackend
from unbroken.backends.redis._keys import stream_keys

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(30)]

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


async def test_checked_writes_set_the_ttls_and_plain_appends_leave_them(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    keys = stream_keys(backend.key_prefix, "s")
    seq = 0

    async def append(*, renew_lease: bool) -> None:
        nonlocal seq
        chunk = [Chunk(seq, "x", seq)]
        append = Append("s", "tok", chunk, TIMES, time.time(), renew_lease=renew_lease)
        assert await backend.append_many([append]) == [StreamState.ACTIVE]
        seq += 1

    async def ttls() -> tuple[int, int]:
        return await raw.pttl(keys.meta), await raw.pttl(keys.log)

    async def age_keys() -> None:  # as if 10 s had passed
        await raw.pexpire(keys.meta, 50_000)
        await raw.pexpire(keys.log, 50_000)
        await raw.pexpire(keys.lease, 2_000)

    assert await backend.claim("s", token="tok", times=TIMES, now=1000.0)
    await append(renew_lease=False)  # the first append goes through the script: sets them
    assert all(59_000 < ttl <= 60_000 for ttl in await ttls())
    await age_keys()
    await append(renew_lease=False)  # a plain append: left as they are, the lease too
    await append(renew_lease=False)
    assert all(49_000 < ttl <= 50_000 for ttl in await ttls())
    assert await raw.pttl(keys.lease) <= 2_000
    await append(renew_lease=True)  # through the script, renewing the lease: set again
    assert all(59_000 < ttl <= 60_000 for ttl in await ttls())
    assert 4_000 < await raw.pttl(keys.lease) <= 5_000
    await age_keys()
    assert await backend.renew_lease("s", token="tok", times=TIMES, now=0) is StreamState.ACTIVE
    assert all(59_000 < ttl <= 60_000 for ttl in await ttls())
    assert 4_000 < await raw.pttl(keys.lease) <= 5_000
    status = await backend.status("s")
    assert status is not None and status.chunk_count == 4 and status.char_count == 4
