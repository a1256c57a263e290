"""Fixtures the Redis backend's tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from unbroken.backends.redis import RedisBackend


@pytest.fixture
async def other(redis_url: str, key_prefix: str) -> AsyncIterator[RedisBackend]:
    """A second backend on the same data: another process, as far as Redis can tell."""
    async with RedisBackend(redis_url, key_prefix=key_prefix) as opened:
        yield opened


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the same Redis, to look at or tamper with the keys directly."""
    client = aioredis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
