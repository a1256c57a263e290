"""The chat service on a Redis Cluster (three masters, a replica each, started by the tests),
two workers, ``REDIS_URL=redis+cluster://…``.

- The randomised refresh torture passes (every answer ends ``done``, whole, with no gap or
  duplicate, for every client and in the store), with streams placed by their own ids and
  with each worker's streams placed on one master (``UNBROKEN_REDIS_PLACEMENT=worker``).
- A master killed (SIGKILL) while answers stream and are resumed: its replica is promoted.
  Meanwhile requests that need that master's slots get a 503 with Retry-After, and the
  clients try again as real ones do; producers keep their streams from memory (the lease
  outlives the failover) and write what they could not once the replica is promoted. Every
  answer still ends ``done`` and whole for every client and in the store, and none is left
  in progress. (Writes the dead master acknowledged but never replicated are the Sentinel
  test's subject, tests/faults/test_sentinel.py; docs/backends.md says what is lost when
  that happens to an answer's end.)
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis

from tests.faults._harness import ChatProcess, Deployment, new_browser
from tests.faults._servers import ClusterSet, RedisNode, cluster_with_replicas
from tests.faults.test_torture import Outcome, torture_one

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120), pytest.mark.postgres]

ANSWERS = int(os.environ.get("UNBROKEN_CLUSTER_ANSWERS", "100"))
FAILOVER_ANSWERS = 36  # answers of the failover test, most of them in flight at the kill
FAILOVER_LEASE = 8.0  # seconds (UNBROKEN_LEASE_TTL of the failover test's workers)
NODE_TIMEOUT_MS = 1000  # a master unreachable this long is failed over by its replica


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSet]:
    """One cluster for the module; the failover test, last, kills one of its masters."""
    with cluster_with_replicas(3, node_timeout_ms=NODE_TIMEOUT_MS) as found:
        yield found


async def run_torture(
    instances: list[ChatProcess],
    answers: int,
    *,
    concurrency: int,
    retry_unavailable: bool = False,
) -> tuple[int, list[Outcome]]:
    """``answers`` torture answers over three browsers; (the seed, each answer's outcome)."""
    run_seed = random.SystemRandom().randrange(2**32)
    print(f"cluster torture seed {run_seed}")
    outcomes: list[Outcome] = []
    limiter = anyio.CapacityLimiter(concurrency)
    browsers = [new_browser() for _ in range(3)]
    try:
        for browser in browsers:
            assert (await browser.get(f"{instances[0].url}/api/chats")).status_code == 200

        async def run(index: int) -> None:
            async with limiter:
                try:
                    browser = browsers[index % len(browsers)]
                    outcomes.append(
                        await torture_one(
                            index, run_seed, browser, instances, retry_unavailable=retry_unavailable
                        )
                    )
                except (TimeoutError, AssertionError) as exc:
                    outcomes.append(Outcome("?", 0, f"#{index}: {str(exc)[:300]}"))

        async with anyio.create_task_group() as tg:
            for index in range(answers):
                tg.start_soon(run, index)
    finally:
        for browser in browsers:
            await browser.aclose()
    assert len(outcomes) == answers
    return run_seed, outcomes


def cluster_deployment(
    cluster: ClusterSet, database_url: str, workdir: Path, prefix: str
) -> Deployment:
    return Deployment(
        workdir,
        database_url=database_url,
        redis_url=cluster.url,
        prefix=prefix,
        env={"UNBROKEN_LEASE_TTL": "5.0", "UNBROKEN_DEMO_TOKENS_PER_SECOND": "800"},
        migrated=True,
    )


@pytest.mark.parametrize("placement", ["stream", "worker"])
async def test_torture_on_a_cluster(
    cluster: ClusterSet, private_database_url: str, tmp_path: Path, placement: str
) -> None:
    # Placed by worker, each worker's streams live on one master, the other's reads and
    # stops of them included.
    prefix = f"cluster-{placement}"
    deployment = cluster_deployment(cluster, private_database_url, tmp_path, prefix)
    try:
        instances = await deployment.start(2, UNBROKEN_REDIS_PLACEMENT=placement)
        assert "found:   redis cluster with 3 masters" in instances[0].log()
        run_seed, outcomes = await run_torture(instances, ANSWERS, concurrency=10)
        problems = [o.problem for o in outcomes if o.problem]
        assert not problems, f"seed {run_seed}: " + "\n".join(problems[:10])
        assert all(p.alive for p in instances)
        assert not deployment.crashes(), deployment.crashes()
        # The streams kept for their retention: grouped by worker, or each by its own id.
        grouped = await anyio.to_thread.run_sync(grouped_streams, cluster, prefix)
        assert (grouped > 0) is (placement == "worker")
    finally:
        deployment.close()
        print(deployment.logs())


def grouped_streams(cluster: ClusterSet, prefix: str) -> int:
    """How many streams of ``prefix`` live under a placement group (``{prefix:group}/id``)."""
    count = 0
    for master in cluster.masters:
        with master.client() as client:
            count += sum(1 for _ in client.scan_iter(match=f"{{{prefix}:*}}/*:meta"))
    return count


async def test_master_killed_mid_answer(
    cluster: ClusterSet, private_database_url: str, tmp_path: Path
) -> None:
    prefix = "cluster-failover"
    deployment = cluster_deployment(cluster, private_database_url, tmp_path, prefix)
    try:
        # The lease must outlive the failover as the other worker sees it: the node timeout,
        # the election, the clients finding the new master, and the lease renewals the dead
        # master took with it (see docs/backends.md, "Redis Cluster").
        instances = await deployment.start(
            2, UNBROKEN_DEMO_TOKENS_PER_SECOND="300", UNBROKEN_LEASE_TTL=str(FAILOVER_LEASE)
        )
        killed: list[str] = []

        async def kill_a_busy_master() -> None:
            # Once answers are in flight: the master holding the most running streams. Looked
            # for until one is running, not once after a fixed wait: on a loaded machine the
            # first answers may start late, or the first wave may sit between two answers.
            await anyio.sleep(1.5)
            found = (0, 0)
            with anyio.move_on_after(20):
                while True:
                    found = await anyio.to_thread.run_sync(busiest_master, cluster, prefix)
                    if found[1] > 0:
                        break
                    await anyio.sleep(0.05)
            victim, running = found
            assert running > 0, "no answer was running on any master"
            started = time.monotonic()
            cluster.masters[victim].kill()
            replica = cluster.replicas[cluster.masters[victim].port]
            await anyio.to_thread.run_sync(wait_promoted, replica)
            killed.append(
                f"master {victim} killed with {running} running answer(s); its replica "
                f"promoted {time.monotonic() - started:.1f} s later"
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_a_busy_master)
            run_seed, outcomes = await run_torture(
                instances, FAILOVER_ANSWERS, concurrency=12, retry_unavailable=True
            )
        print(killed[0], f"; {sum(o.retried for o in outcomes)} requests answered 503, retried")
        problems = [o.problem for o in outcomes if o.problem]
        assert not problems, f"seed {run_seed}: " + "\n".join(problems[:10])
        assert all(p.alive for p in instances)
        assert not deployment.crashes(), deployment.crashes()
    finally:
        deployment.close()
        print(deployment.logs())


def busiest_master(cluster: ClusterSet, prefix: str) -> tuple[int, int]:
    """(index of the master with the most running streams of ``prefix``, how many): a
    running stream has a lease key."""
    counts = []
    for master in cluster.masters:
        with master.client() as client:
            counts.append(sum(1 for _ in client.scan_iter(match=f"{{{prefix}:*}}:lease")))
    busiest = max(range(len(counts)), key=counts.__getitem__)
    return busiest, counts[busiest]


def wait_promoted(replica_node: RedisNode, within: float = 20.0) -> None:
    """Until the replica reports itself a master."""
    deadline = time.monotonic() + within
    while True:
        try:
            with replica_node.client() as client:
                if client.info("replication").get("role") == "master":
                    return
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"the replica was not promoted within {within:g} s"
        time.sleep(0.05)
