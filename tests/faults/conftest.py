"""Fixtures of the fault-injection suite: `Deployment` (chat service processes, torn down
after each test, their logs printed: pytest shows them when the test fails).

One database goes with one stream backend, as in production: every instance sweeps the
database for answers whose stream is gone, so an instance looking at another Redis (or
another key prefix) than the one the database's streams live in would store them as lost.
So the deployments on the shared Redis share one database and one key prefix for the whole
run; a test with a Redis of its own gets a database of its own (`private_database_url`).
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._services import delete_redis_keys
from tests.chat.conftest import temporary_postgres_database
from tests.faults._harness import ChatProcess, Deployment, cli_command


@pytest.fixture(scope="session")
def faults_database_url() -> Iterator[str]:
    """A database of its own for this run of the suite, migrated (dropped at the end)."""
    with temporary_postgres_database() as url:
        asyncio.run(migrate(url))
        yield url


@pytest.fixture
def private_database_url() -> Iterator[str]:
    """A migrated database for one test (for a deployment with a Redis of its own)."""
    with temporary_postgres_database() as url:
        asyncio.run(migrate(url))
        yield url


@pytest.fixture(scope="session")
def faults_prefix(redis_url: str) -> Iterator[str]:
    """The key prefix of this run on the shared Redis (its keys are deleted at the end)."""
    prefix = f"unbroken-faults-{uuid.uuid4().hex[:12]}"
    yield prefix
    asyncio.run(delete_redis_keys(redis_url, prefix))


async def migrate(database_url: str) -> None:
    from unbroken.chat.store import Store

    async with Store.from_url(database_url) as store:
        await store.upgrade()


@pytest.fixture
def deployment(
    faults_database_url: str, redis_url: str, faults_prefix: str, tmp_path: Path
) -> Iterator[Deployment]:
    """Chat instances sharing PostgreSQL and the shared Redis (this run's prefix).

    Defaults for speed: a 1 s lease (readers see a dead producer within ~1.7 s) and a demo
    model at 100 tokens/s; tests override them through `Deployment.start`.
    """
    found = Deployment(
        tmp_path,
        database_url=faults_database_url,
        redis_url=redis_url,
        prefix=faults_prefix,
        env={"UNBROKEN_LEASE_TTL": "1.0", "UNBROKEN_DEMO_TOKENS_PER_SECOND": "100"},
        migrated=True,
    )
    try:
        yield found
    finally:
        found.close()
        print(found.logs())


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
    faults_database_url: str,
    redis_url: str,
    faults_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    """A chat instance (Redis + PostgreSQL) shared by the bad-input tests: answers stream
    fast (2000 tokens/s), bodies above 16 KiB are refused."""
    found = Deployment(
        tmp_path_factory.mktemp("api"),
        database_url=faults_database_url,
        redis_url=redis_url,
        prefix=faults_prefix,
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
