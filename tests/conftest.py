from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests._services import redis_url as find_redis_url


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """asyncio, unless a suite parametrises it (the engine conformance suite also runs on
    trio: see tests/engine/conftest.py)."""
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: REDIS_URL, else the local server, else an embedded one."""
    with find_redis_url() as url:
        yield url


@pytest.fixture
def key_prefix() -> str:
    """A prefix no other test run (or other user of the shared Redis) uses."""
    return f"unbroken-test-{uuid.uuid4().hex[:12]}"
