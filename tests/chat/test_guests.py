"""Guests without rows: a session cookie costs nothing until its guest writes.

Crawlers, uptime checks and visitors who only look get a signed cookie and leave no row; a
guest is stored once, with its first chat, however many answers and tabs follow.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import anyio
import httpx
import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import func, select

from tests.chat._client import new_client, post_v5, v5_body
from tests.chat.conftest import Server
from unbroken.chat.auth import COOKIE_MAX_AGE, Sessions
from unbroken.chat.store import Store
from unbroken.chat.store.tables import users

pytestmark = pytest.mark.anyio


async def count_users(server: Server) -> int:
    async with Store.from_url(server.settings.database_url) as store:
        return int(await store._scalar(select(func.count()).select_from(users)))


async def test_cookieless_visits_store_no_user(server: Server) -> None:
    before = await count_users(server)
    paths = ["/", f"/chat/{uuid.uuid4().hex}", "/api/chats"]
    cookies = set()
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        for index in range(200):
            client.cookies.clear()  # every request is a first visit
            response = await client.get(paths[index % len(paths)])
            assert response.status_code == 200, response.text
            cookies.add(response.cookies["unbroken_session"])
    assert len(cookies) == 200  # each got a session of its own
    assert await count_users(server) == before


async def test_a_guest_is_stored_once_with_its_first_chat(server: Server) -> None:
    before = await count_users(server)
    async with new_client(server.url) as guest:
        assert (await guest.get("/")).status_code == 200
        assert (await guest.get("/api/chats")).json() == {"chats": [], "nextCursor": None}
        assert "set-cookie" not in (await guest.get("/api/chats")).headers
        assert await count_users(server) == before
        # Two first posts at once (two tabs): one row.
        first, second = uuid.uuid4().hex, uuid.uuid4().hex
        async with anyio.create_task_group() as tg:
            for chat_id in (first, second):
                tg.start_soon(post_v5, guest, v5_body(chat_id, "m1", "hello"))
        await post_v5(guest, v5_body(first, "m2", "and again"))
        assert await count_users(server) == before + 1
        listed = (await guest.get("/api/chats")).json()["chats"]
        assert {chat["id"] for chat in listed} == {first, second}
    # Looking at someone else's chat stores nobody either.
    async with new_client(server.url) as stranger:
        assert (await stranger.get(f"/api/chats/{first}")).status_code == 404
        assert (await stranger.post(f"/api/chat/{first}/stop")).status_code == 404
    assert await count_users(server) == before + 1


async def test_a_returning_guests_cookie_is_renewed(
    start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cookie a day old or more is signed again when its guest comes back, so a guest who
    keeps visiting never reaches the cookie's end of life (and the loss of its chats)."""
    secret = "a-secret-for-the-renewal-test"
    server = start_server(secret_key=secret)
    sessions = Sessions(secret)
    chat_id = uuid.uuid4().hex
    async with new_client(server.url) as guest:
        await post_v5(guest, v5_body(chat_id, "m1", "hello"))
        guest_id = sessions.verify(guest.cookies["unbroken_session"])
    assert guest_id is not None
    two_days_ago = int(time.time()) - 2 * 24 * 3600
    with monkeypatch.context() as patched:
        patched.setattr(TimestampSigner, "get_timestamp", lambda self: two_days_ago)
        stale = sessions.sign(guest_id)
    async with new_client(server.url, cookies={"unbroken_session": stale}) as back:
        response = await back.get("/api/chats")
        assert [chat["id"] for chat in response.json()["chats"]] == [chat_id]
        fresh = response.cookies["unbroken_session"]
        assert fresh != stale and sessions.verify(fresh) == guest_id
        assert f"Max-Age={COOKIE_MAX_AGE}" in response.headers["set-cookie"]
    async with new_client(server.url, cookies={"unbroken_session": fresh}) as renewed:
        response = await renewed.get("/api/chats")
        assert [chat["id"] for chat in response.json()["chats"]] == [chat_id]
        assert "set-cookie" not in response.headers  # a fresh cookie is kept as it is
