"""Fixtures of the fault-injection suite: a PostgreSQL database of its own for the run, a
Redis key prefix per test, and `Deployment` (chat service processes) torn down after each
test, with their logs printed (pytest shows them when the test fails)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chat.conftest import delete_redis_keys, temporary_postgres_database
from tests.faults._harness import ChatProcess, Deployment, cli_command


@pytest.fixture(scope="session")
def faults_database_url() -> Iterator[str]:
    """A database of its own for this run of the suite, migrated (dropped at the end)."""
    with temporary_postgres_database() as url:
        asyncio.run(migrate(url))
        yield url


async def migrate(database_url: str) -> None:
    from unbroken.chat.store import Store

    async with Store.from_url(database_url) as store:
        await store.upgrade()


@pytest.fixture
def deployment(
    faults_database_url: str, redis_url: str, key_prefix: str, tmp_path: Path
) -> Iterator[Deployment]:
    """Chat instances sharing PostgreSQL and the shared Redis under this test's prefix.

    Defaults for speed: a 1 s lease (readers see a dead producer within ~1.7 s) and a demo
    model at 100 tokens/s; tests override them through `Deployment.start`.
    """
    found = Deployment(
        tmp_path,
        database_url=faults_database_url,
        redis_url=redis_url,
        prefix=key_prefix,
        env={"UNBROKEN_LEASE_TTL": "1.0", "UNBROKEN_DEMO_TOKENS_PER_SECOND": "100"},
        migrated=True,
    )
    try:
        yield found
    finally:
        found.close()
        print(found.logs())
        asyncio.run(delete_redis_keys(redis_url, key_prefix))


@dataclass(frozen=True)
class ApiServer:
    """One chat instance for the bad-input tests, with an API key of a user of its own."""

    url: str
    port: int
    api_key: str
    deployment: Deployment

    @property
    def process(self) -> ChatProcess:
        return self.deployment.instances[0]


MAX_BODY = 16384  # UNBROKEN_MAX_BODY_BYTES of the bad-input instance


@pytest.fixture(scope="session")
def api_server(
    faults_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """A chat instance (Redis + PostgreSQL) shared by the bad-input tests: answers stream
    fast (2000 tokens/s), bodies above 16 KiB are refused."""
    prefix = f"unbroken-faults-api-{uuid.uuid4().hex[:8]}"
    found = Deployment(
        tmp_path_factory.mktemp("api"),
        database_url=faults_database_url,
        redis_url=redis_url,
        prefix=prefix,
        env={
            "UNBROKEN_LEASE_TTL": "1.0",
            "UNBROKEN_DEMO_TOKENS_PER_SECOND": "2000",
            "UNBROKEN_MAX_BODY_BYTES": str(MAX_BODY),
        },
        migrated=True,
    )
    try:
        asyncio.run(found.start(1))
        # An API key made the way an operator makes one: with the CLI.
        made = subprocess.run(
            [*cli_command(), "users", "create-key", "--name", "faults"],
            env=found.environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        process = found.instances[0]
        yield ApiServer(process.url, process.port, made.stdout.strip(), found)
    finally:
        found.close()
        print(found.logs())
        asyncio.run(delete_redis_keys(redis_url, prefix))
