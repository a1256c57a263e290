"""The chat service on a Redis Cluster (three masters, a replica each, started by the test),
two workers, ``REDIS_URL=redis+cluster://…``: the randomised refresh torture passes (every
answer ends ``done``, whole, with no gap or duplicate, for every client and in the store).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import anyio
import pytest

from tests.faults._harness import Deployment, new_browser
from tests.faults._servers import cluster_with_replicas
from tests.faults.test_torture import Outcome, torture_one

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(150), pytest.mark.postgres]

ANSWERS = int(os.environ.get("UNBROKEN_CLUSTER_ANSWERS", "100"))


async def test_torture_on_a_cluster(private_database_url: str, tmp_path: Path) -> None:
    with cluster_with_replicas(3, node_timeout_ms=1000) as cluster:
        deployment = Deployment(
            tmp_path,
            database_url=private_database_url,
            redis_url=cluster.url,
            prefix="cluster",
            env={"UNBROKEN_LEASE_TTL": "5.0", "UNBROKEN_DEMO_TOKENS_PER_SECOND": "800"},
            migrated=True,
        )
        try:
            instances = await deployment.start(2)
            assert "found:   redis cluster with 3 masters" in instances[0].log()
            run_seed = random.SystemRandom().randrange(2**32)
            print(f"cluster torture seed {run_seed}")
            outcomes: list[Outcome] = []
            limiter = anyio.CapacityLimiter(10)
            browsers = [new_browser() for _ in range(3)]
            try:
                for browser in browsers:
                    assert (await browser.get(f"{instances[0].url}/api/chats")).status_code == 200

                async def run(index: int) -> None:
                    async with limiter:
                        try:
                            browser = browsers[index % len(browsers)]
                            outcomes.append(await torture_one(index, run_seed, browser, instances))
                        except (TimeoutError, AssertionError) as exc:
                            outcomes.append(Outcome("?", 0, f"#{index}: {str(exc)[:300]}"))

                async with anyio.create_task_group() as tg:
                    for index in range(ANSWERS):
                        tg.start_soon(run, index)
            finally:
                for browser in browsers:
                    await browser.aclose()
            problems = [o.problem for o in outcomes if o.problem]
            assert len(outcomes) == ANSWERS
            assert not problems, f"seed {run_seed}: " + "\n".join(problems[:10])
            assert all(p.alive for p in instances)
            assert not deployment.crashes(), deployment.crashes()
        finally:
            deployment.close()
            print(deployment.logs())
