"""Sentinel failover in the middle of answers, with the newest writes lost.

A primary, one replica and three sentinels, started by the test; the chat service's two
workers reach them through ``REDIS_URL=redis+sentinel://…/<service>/0``. The replica
replicates through a fault proxy, which the test stalls while answers stream: the primary
acknowledges writes the replica never gets (asynchronous replication, made certain). Then the
primary is killed (SIGKILL) and the sentinels promote the replica.

What must hold (docs/backends.md, "Failover"): the asking clients keep receiving from their
workers' memory; readers on the other worker are cut or refused meanwhile and resume from
their offsets once the new primary is found; each producer finds its stream shorter than it
was told and writes the missing chunks again (nothing doubled: readers keep one copy of each
sequence number); every answer ends ``done`` and is stored whole; resumes work on both
workers afterwards; no worker logs an unhandled error.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests._util import uid
from tests.chat._client import expected_answer, v5_body
from tests.faults._harness import (
    Deployment,
    V5Transcript,
    check_v5_transcript,
    new_browser,
    post_v5_into,
    resume_v5_into,
    settled_chat,
    stored_text,
    wait_until,
)
from tests.faults._proxy import FaultProxy
from tests.faults._servers import sentinel_set

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.postgres,
]

ANSWERS = 4  # half asked on each worker, each followed from the other one
LOST_WRITES_FOR = 0.4  # seconds the replica is stalled before the primary dies


async def follow(browser: httpx.AsyncClient, url: str, chat_id: str, seen: V5Transcript) -> int:
    """Read the answer like the page does: reconnect from the last event id until the end;
    returns how many times the connection was cut or refused."""
    cuts = 0
    while not seen.done:
        try:
            ended = await resume_v5_into(browser, url, chat_id, seen)
        except (AssertionError, httpx.TransportError):
            ended = False  # 503 or refused while no primary is known
        if ended is None:  # 204: nothing to resume any more; the stored message tells
            return cuts
        if not ended:
            cuts += 1
            await anyio.sleep(0.2)
    return cuts


async def test_sentinel_failover_mid_answer(private_database_url: str, tmp_path: Path) -> None:
    proxies: list[FaultProxy] = []

    def through_proxy(primary_port: int) -> int:
        proxy = FaultProxy(primary_port)
        proxy.start()
        proxies.append(proxy)
        return proxy.port

    t0 = time.monotonic()

    def step(what: str) -> None:
        print(f"[{time.monotonic() - t0:6.2f}s] {what}")

    with sentinel_set(replicas=1, replicate_from=through_proxy) as redis:
        [replication] = proxies
        deployment = Deployment(
            tmp_path,
            database_url=private_database_url,
            redis_url=redis.url,
            prefix="sentinel",
            # The lease outlives the failover (detection + election + promotion), so the
            # producers keep their streams; see test_partition for a lease that lapses.
            env={"UNBROKEN_LEASE_TTL": "6.0", "UNBROKEN_DEMO_TOKENS_PER_SECOND": "90"},
            migrated=True,
        )
        try:
            workers = await deployment.start(2)
            step("workers started")
            logs = "\n".join(w.log() for w in workers)
            assert "found:   redis sentinel service 'unbroken-primary' at master" in logs, logs
            await run_failover(deployment, redis, replication, step)
        finally:
            deployment.close()
            print(deployment.logs())
            for proxy in proxies:
                proxy.close()


async def run_failover(deployment: Deployment, redis, replication: FaultProxy, step) -> None:  # type: ignore[no-untyped-def]
    workers = deployment.instances
    chats = [(uid(), f"sentinel failover answer {n}") for n in range(ANSWERS)]
    asked = [V5Transcript() for _ in chats]
    followed = [V5Transcript() for _ in chats]
    async with new_browser() as browser:
        assert (await browser.get(f"{workers[0].url}/api/chats")).status_code == 200
        with anyio.fail_after(75):
            async with anyio.create_task_group() as tg:
                for n, (chat_id, prompt) in enumerate(chats):
                    body = v5_body(chat_id, uid("m"), prompt)
                    tg.start_soon(post_v5_into, browser, workers[n % 2].url, body, asked[n])
                for transcript in asked:
                    await wait_until(
                        lambda t=transcript: len(t.text()) > 40, within=20, what="text"
                    )
                for n, (chat_id, _) in enumerate(chats):
                    tg.start_soon(follow, browser, workers[(n + 1) % 2].url, chat_id, followed[n])
                await wait_until(
                    lambda: all(len(f.events) > 5 for f in followed), within=20, what="followers"
                )
                old_primary = redis.master_port()
                replication.stall()
                await anyio.sleep(LOST_WRITES_FOR)  # acknowledged by the primary only
                redis.primary.kill()
                step("replication stalled, then the primary killed")
                new_primary = await anyio.to_thread.run_sync(
                    redis.wait_master_other_than, old_primary
                )
                step(f"promoted 127.0.0.1:{new_primary}")
                assert new_primary == redis.replicas[0].port
        step("every answer and follower ended")
        for (chat_id, prompt), mine, theirs in zip(chats, asked, followed, strict=True):
            reasoning, text = expected_answer(prompt)
            check_v5_transcript(mine, reasoning, text, complete=True)
            check_v5_transcript(theirs, reasoning, text, complete=True)
            for worker in workers:  # a resume from the start, on each worker
                replay = V5Transcript()
                if await resume_v5_into(browser, worker.url, chat_id, replay, from_start=True):
                    check_v5_transcript(replay, reasoning, text, complete=True)
            answer = (await settled_chat(browser, workers[0].url, chat_id, within=20))["messages"][
                -1
            ]
            assert (answer["status"], stored_text(answer)) == ("done", text), answer["status"]
        rewritten = [w.name for w in workers if "writing them again" in w.log()]
        assert rewritten, "no producer found its stream shorter: the stall lost no write"
        for worker in workers:  # new answers start and stream on the new primary
            again = V5Transcript()
            prompt = f"after the failover on {worker.name}"
            body = v5_body(uid(), uid("m"), prompt)
            await post_v5_into(browser, worker.url, body, again, stop_after=20)
            check_v5_transcript(again, *expected_answer(prompt), complete=False)
    assert all(w.alive for w in workers)
    assert not deployment.crashes(), deployment.crashes()
