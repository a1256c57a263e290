"""Two workers (two uvicorn processes) sharing one Redis key prefix: a resume, a stop and a
dead producer's report on the worker that did not start the answer; the pointers' own
compare-and-set on real Redis."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from tests._services import delete_redis_keys
from tests._util import uid
from tests.chat._client import post_v5, read_v5, resume_v5, v5_body
from tests.integrations._app import TEXT
from tests.integrations.conftest import Worker
from unbroken.fastapi import RedisChatPointers, Replaced

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

WATCHDOG = 30.0


@pytest.fixture
def workers(
    redis_url: str, key_prefix: str, start_worker: Callable[[dict[str, str]], Worker]
) -> Iterator[tuple[Worker, Worker]]:
    env = {
        "ROUTER_TEST_REDIS_URL": redis_url,
        "ROUTER_TEST_PREFIX": key_prefix,
        "ROUTER_TEST_DELAY": "0.02",
        "ROUTER_TEST_LEASE_TTL": "0.6",
    }
    yield start_worker(env), start_worker(env)
    asyncio.run(delete_redis_keys(redis_url, key_prefix))


@pytest.fixture
async def clients(
    workers: tuple[Worker, Worker],
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    a, b = workers
    timeout = httpx.Timeout(20.0)
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=timeout) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=timeout) as on_b,
    ):
        yield on_a, on_b


async def finished_on(client: httpx.AsyncClient, chat_id: str) -> list[dict[str, Any]]:
    with anyio.fail_after(WATCHDOG):
        while True:
            found = [f for f in (await client.get("/finished")).json() if f["chatId"] == chat_id]
            if found:
                return found
            await anyio.sleep(0.05)


async def test_resume_and_stop_on_the_other_worker(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    on_a, on_b = clients
    chat_id = uid()
    with anyio.fail_after(WATCHDOG):
        cut = await post_v5(on_a, v5_body(chat_id, "u1", "hello"), stop_after=6)
        assert cut.last_id is not None
        rest = await resume_v5(on_b, chat_id, last_event_id=cut.last_id)
        assert cut.text() + rest.text() == TEXT
        assert rest.done

        # A second message, produced on A, stopped from B.
        async with on_a.stream("POST", "/api/chat", json=v5_body(chat_id, "u2", "more")) as post:
            stream_id = post.headers["x-unbroken-stream-id"]
            await read_v5(post, stop_after=5)
            stop = await on_b.post(f"/api/chat/{chat_id}/stop")
            tail = await read_v5(post)
    assert stop.json()["streamId"] == stream_id and stop.json()["stopped"] is True
    assert tail.types()[-1] == "abort"
    reported = await finished_on(on_a, chat_id)
    with anyio.fail_after(WATCHDOG):
        while len(reported) < 2:
            reported = await finished_on(on_a, chat_id)
    assert [r["state"] for r in reported] == ["done", "cancelled"]
    assert all(r["hasTurn"] for r in reported)
    assert await (await on_b.get("/finished")).aread() == b"[]"  # A reported its own


@pytest.mark.slow
async def test_a_dead_workers_answer_is_reported_by_the_other(
    workers: tuple[Worker, Worker], clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    on_a, on_b = clients
    chat_id = uid()
    with anyio.fail_after(WATCHDOG):
        cut = await post_v5(on_a, v5_body(chat_id, "u1", "hello"), stop_after=6)
        workers[0].process.send_signal(signal.SIGKILL)
        workers[0].process.wait()
        rest = await resume_v5(on_b, chat_id, last_event_id=cut.last_id)
    assert rest.events[-1]["type"] == "error"  # interrupted, once the lease lapsed
    (reported,) = await finished_on(on_b, chat_id)
    assert reported["state"] == "interrupted" and reported["hasTurn"] is False
    assert reported["message"]["id"] == cut.message_id
    assert TEXT.startswith(reported["message"]["parts"][-1]["text"])
    # Reported once: a later resume does not report it again.
    assert (await resume_v5(on_b, chat_id)).events[-1]["type"] == "error"
    await anyio.sleep(0.3)
    assert len(await finished_on(on_b, chat_id)) == 1


async def test_redis_pointers_compare_and_set(redis_url: str, key_prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    pointers = RedisChatPointers(client=client, key_prefix=key_prefix)
    try:
        assert await pointers.get("c1") is None
        common = {"owner": "alice", "user_message_id": "u1", "ttl": 60.0}
        assert await pointers.replace("c1", expected=None, stream_id="s1", **common) is (
            Replaced.SET
        )
        assert await pointers.replace("c1", expected=None, stream_id="s2", **common) is (
            Replaced.MOVED
        )
        foreign = {**common, "owner": "bob"}
        assert await pointers.replace("c1", expected="s1", stream_id="s2", **foreign) is (
            Replaced.FOREIGN
        )
        pointer = await pointers.get("c1")
        assert pointer is not None and (pointer.owner, pointer.stream_id) == ("alice", "s1")
        assert await pointers.claim_finish("c1", "s1") is True
        assert await pointers.claim_finish("c1", "s1") is False
        assert await pointers.claim_finish("c1", "s0") is True  # an older answer
        assert await pointers.release("c1", "s0") is False
        assert await pointers.release("c1", "s1") is True
        pointer = await pointers.get("c1")
        assert pointer is not None and (pointer.owner, pointer.stream_id) == ("alice", None)
        assert 0 < await client.pttl(f"{{{key_prefix}:chat:c1}}:active") <= 60_000
    finally:
        await client.aclose()
        await delete_redis_keys(redis_url, key_prefix)


async def test_a_server_shutting_down_ends_open_streams_at_once(
    start_worker: Callable[[dict[str, str]], Worker],
) -> None:
    """With ``chat.lifespan``, the server's shutdown signal ends open answer streams within an
    engine tick, without a terminal event (the client resumes elsewhere), instead of holding
    the server until the answer is over."""
    worker = start_worker({"ROUTER_TEST_DELAY": "0.5", "ROUTER_TEST_LEASE_TTL": "0.6"})
    body = v5_body(uid(), uid("m"), "hello")
    async with httpx.AsyncClient(base_url=worker.url, timeout=httpx.Timeout(20.0)) as client:
        with anyio.fail_after(WATCHDOG):
            async with client.stream("POST", "/api/chat", json=body) as response:
                assert response.status_code == 200
                received = ""
                lines = response.aiter_lines()
                while "text-delta" not in received:
                    received += await anext(lines) + "\n"
                worker.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(5):  # the answer itself would take 20 s more
                    async for line in lines:
                        received += line + "\n"
    assert '"type":"finish"' not in received and "[DONE]" not in received
    assert received.count("text-delta") < 10
