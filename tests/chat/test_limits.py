"""Per-user answer limits: a 429 with ``Retry-After`` and a JSON error, answered before
anything is stored or sent to the model; on PostgreSQL + Redis the limit holds across two
workers of one deployment."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.chat._client import new_client, post_v5, v5_body
from tests.chat.conftest import Server
from unbroken.chat.store import Store

pytestmark = pytest.mark.anyio


async def api_key(server: Server) -> str:
    async with Store.from_url(server.settings.database_url) as store:
        user = await store.create_user(kind="user", name="limited")
        key, _ = await store.create_api_key(user.id)
    return key


def started(metrics: str) -> float:
    """Answers this worker started (its streams_started counter, every protocol)."""
    found = re.findall(r"^unbroken_chat_streams_started_total\{[^}]*\} (\S+)$", metrics, re.M)
    return sum(float(value) for value in found)


async def assert_refused(client: httpx.AsyncClient, code: str) -> int:
    chat_id = uuid.uuid4().hex
    response = await client.post("/api/chat", json=v5_body(chat_id, "m1", "one more"))
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == code
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    # Refused before anything was stored (or generated).
    assert (await client.get(f"/api/chats/{chat_id}")).status_code == 404
    return retry_after


async def test_running_answers_are_limited_per_user(
    chat_config: str, start_server: Callable[..., Server]
) -> None:
    """Two answers run (one on each worker with Redis); a third is refused on both workers,
    and nothing reached the model; once one is stopped, the next starts."""
    workers = 2 if chat_config == "redis-postgres" else 1
    servers = [
        start_server(
            max_concurrent_answers=2,
            answers_per_minute=0,
            demo_tokens_per_second=40,
            drain_timeout=0.2,  # the answers still running at the end need no drain
        )
        for _ in range(workers)
    ]
    headers = {"Authorization": f"Bearer {await api_key(servers[0])}"}
    clients = [new_client(server.url, headers=headers) for server in servers]
    try:
        running = []
        for index in range(2):
            chat_id = uuid.uuid4().hex
            client = clients[index % workers]
            got = await post_v5(client, v5_body(chat_id, "m1", "a long answer"), stop_after=3)
            assert got.status == 200
            running.append((client, chat_id))
        for client in clients:
            await assert_refused(client, "too_many_answers")
        total = sum([started((await client.get("/metrics")).text) for client in clients])
        assert total == 2  # the refused ones never reached the model
        # Another user is not affected.
        async with new_client(servers[-1].url) as guest:
            got = await post_v5(guest, v5_body(uuid.uuid4().hex, "m1", "mine"), stop_after=3)
            assert got.status == 200
        # A stopped answer frees its slot at once, whichever worker is asked next.
        client, chat_id = running[0]
        assert (await client.post(f"/api/chat/{chat_id}/stop")).json()["stopped"] is True
        got = await post_v5(clients[-1], v5_body(uuid.uuid4().hex, "m1", "now"), stop_after=3)
        assert got.status == 200
    finally:
        for client in clients:
            await client.aclose()


async def test_answers_per_minute_are_limited(start_server: Callable[..., Server]) -> None:
    server = start_server(max_concurrent_answers=0, answers_per_minute=3)
    async with new_client(server.url) as client:
        for _ in range(3):
            got = await post_v5(client, v5_body(uuid.uuid4().hex, "m1", "quick"))
            assert got.status == 200 and got.done
        retry_after = await assert_refused(client, "rate_limited")
        assert retry_after >= 55  # the first of the three started just now
        assert started((await client.get("/metrics")).text) == 3
