"""PostgreSQL restarted in the middle of answers: a server of the test's own (initdb, pg_ctl)
under two chat workers sharing Redis. It is stopped the hard way (``pg_ctl -m immediate``:
every connection cut, no checkpoint) while both answers stream, and started again only once
both have ended, so each answer's end has to be stored while the database is away.

What must hold: the asking clients and the followers on the other worker are served from
the stream (memory, Redis) and end with the whole answer; requests that need the database
meanwhile get a 503 with ``Retry-After`` and the JSON error shape, never a 500; each
producer keeps trying to store its answer and stores it once the database is back (the
stored message is ``done`` and whole); new answers work afterwards; no worker logs an
unhandled error.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests._services import delete_redis_keys
from tests._util import uid
from tests.chat._client import expected_answer, v5_body
from tests.faults._harness import (
    ChatProcess,
    Deployment,
    V5Transcript,
    check_error_body,
    check_v5_transcript,
    new_browser,
    post_v5_into,
    settled_chat,
    stored_text,
    wait_until,
)
from tests.faults._postgres import PostgresServer, postgres_server
from tests.faults.conftest import migrate
from tests.faults.test_sentinel import follow

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(90), pytest.mark.redis]

KEPT_DOWN_AFTER_THE_ENDS = 0.5  # seconds the database stays away after both answers ended


@pytest.fixture
def database() -> Iterator[PostgresServer]:
    """A server of the test's own, migrated."""
    with postgres_server() as server:
        asyncio.run(migrate(server.url))
        yield server


async def test_postgres_restarted_mid_answer(
    database: PostgresServer, redis_url: str, tmp_path: Path
) -> None:
    prefix = f"unbroken-pg-restart-{uuid.uuid4().hex[:8]}"
    deployment = Deployment(
        tmp_path,
        database_url=database.url,
        redis_url=redis_url,
        prefix=prefix,
        # No sweep: the producers themselves must store their answers once it is back.
        env={
            "UNBROKEN_LEASE_TTL": "2.0",
            "UNBROKEN_DEMO_TOKENS_PER_SECOND": "300",
            "UNBROKEN_SWEEP_INTERVAL": "0",
        },
        migrated=True,
    )
    try:
        await deployment.start(2)
        await restart_mid_answer(deployment, database)
    finally:
        deployment.close()
        print(deployment.logs())
        print("===== postgres =====\n" + database.log()[-3000:])
        await delete_redis_keys(redis_url, prefix)


async def restart_mid_answer(deployment: Deployment, database: PostgresServer) -> None:
    workers = deployment.instances
    chats = [(uid(), f"postgres restarted under answer {n}") for n in range(2)]
    asked = [V5Transcript() for _ in chats]
    followed = [V5Transcript() for _ in chats]
    statuses: Counter[int] = Counter()
    async with new_browser() as browser:
        assert (await browser.get(f"{workers[0].url}/api/chats")).status_code == 200
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n, (chat_id, prompt) in enumerate(chats):
                    body = v5_body(chat_id, uid("m"), prompt)
                    tg.start_soon(post_v5_into, browser, workers[n].url, body, asked[n])
                for n, (chat_id, _) in enumerate(chats):
                    await wait_until(lambda t=asked[n]: len(t.text()) > 40, within=20, what="text")
                    tg.start_soon(follow, browser, workers[1 - n].url, chat_id, followed[n])
                await wait_until(
                    lambda: all(len(f.events) > 5 for f in followed), within=20, what="followers"
                )
                await anyio.to_thread.run_sync(database.stop, "immediate")
                assert not all(t.done for t in asked), "the answers ended before the restart"
                ended_at: float | None = None
                while ended_at is None or time.monotonic() < ended_at + KEPT_DOWN_AFTER_THE_ENDS:
                    await poll_readers(browser, workers, [c for c, _ in chats], statuses)
                    if ended_at is None and all(t.done for t in asked):
                        ended_at = time.monotonic()
                await anyio.to_thread.run_sync(database.start)
        print(f"statuses while the database was away: {dict(statuses)}")
        assert set(statuses) <= {200, 204, 503}, statuses
        assert statuses[503], "no request needed the database while it was away"
        for (chat_id, prompt), mine, theirs in zip(chats, asked, followed, strict=True):
            reasoning, text = expected_answer(prompt)
            check_v5_transcript(mine, reasoning, text, complete=True)
            check_v5_transcript(theirs, reasoning, text, complete=True)
            stored = await settled_chat(browser, workers[1].url, chat_id, within=20)
            answer = stored["messages"][-1]
            assert (answer["status"], stored_text(answer)) == ("done", text), answer["status"]
        retried = [w.name for w in workers if "trying again in" in w.log()]
        assert retried, "no producer had to store its answer again: the outage missed the ends"
        for worker in workers:  # new answers once the database is back
            again = V5Transcript()
            prompt = f"after the restart on {worker.name}"
            await post_v5_into(browser, worker.url, v5_body(uid(), uid("m"), prompt), again)
            check_v5_transcript(again, *expected_answer(prompt), complete=True)
    assert all(w.alive for w in workers)
    assert not deployment.crashes(), deployment.crashes()


async def poll_readers(
    browser: httpx.AsyncClient,
    workers: list[ChatProcess],
    chat_ids: list[str],
    statuses: Counter[int],
) -> None:
    """What readers ask for while the database is away, on every worker: the chat, a resume
    (v5 and v4), a new answer. Each is a 200/204 or a 503 with Retry-After, never a 500."""
    for worker in workers:
        for chat_id in chat_ids:
            requests = [
                ("GET", f"/api/chats/{chat_id}", None),
                ("GET", f"/api/chat/{chat_id}/stream", None),
                ("GET", f"/api/chat?chatId={chat_id}", None),
            ]
            for method, path, body in requests:
                await check_request(browser, method, f"{worker.url}{path}", body, statuses)
        body = v5_body(uid(), uid("m"), "while the database is away")
        await check_request(browser, "POST", f"{worker.url}/api/chat", body, statuses)
    await anyio.sleep(0.05)


async def check_request(
    browser: httpx.AsyncClient,
    method: str,
    url: str,
    body: object,
    statuses: Counter[int],
) -> None:
    """Send one request, look at its status (a stream is hung up at once), count it."""
    async with browser.stream(method, url, json=body, timeout=10) as response:
        statuses[response.status_code] += 1
        if response.status_code == 503:
            await response.aread()
            check_error_body(503, response.content, expected=503)
            assert response.headers.get("retry-after"), (url, response.headers)
        assert response.status_code != 500, (method, url, (await response.aread())[:300])
