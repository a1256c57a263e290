"""The HTTP surface: errors are JSON with the right status (never a 500 for bad input),
identity and access, limits, health, metrics, the OpenAPI document, the page."""

from __future__ import annotations

import base64
import inspect
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.chat._client import new_client, post_v5, v5_body
from tests.chat.conftest import Server

pytestmark = pytest.mark.anyio


@pytest.fixture
def chat_config() -> str:
    return "memory-sqlite"  # the HTTP surface does not depend on the backends


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with new_client(server.url) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"not json", 400),
        (b"[]", 400),
        (b'{"messages": []}', 400),  # no chat id
        (b'{"id": "../etc", "messages": []}', 400),  # invalid id
        (b'{"id": "c1", "messages": "x"}', 400),
        (b'{"id": "c1", "trigger": "nope", "messages": []}', 400),
        (b'{"id": "c1", "trigger": "submit-message", "messages": [{"id": "m", "role": "x"}]}', 400),
        (b'{"id": "c1", "trigger": "submit-message", "messages": []}', 400),  # nothing to answer
        (b'{"id": "c1", "messages": [{"id": "m1", "role": "assistant", "content": "hi"}]}', 400),
        (b'{"id": "c1", "messages": [{"id": "m1", "role": "user", "content": 5}]}', 400),
        (  # continuing an assistant message (client-side tool results) is not supported
            b'{"id": "c1", "trigger": "submit-message", "messages": ['
            b'{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]},'
            b'{"id": "m2", "role": "assistant", "parts": [{"type": "text", "text": "yo"}]}]}',
            400,
        ),
        # Things a database could not store: NaN, NUL, lone surrogates, absurd nesting.
        (b'{"id": "c1", "messages": [{"id": "m1", "role": "user", "content": NaN}]}', 400),
        (b'{"id": "c1", "messages": [{"id": "m1", "role": "user", "content": "a\\u0000"}]}', 400),
        (b'{"id": "c1", "messages": [{"id": "m1", "role": "user", "content": "\\ud800"}]}', 400),
        (b'{"id": "c1", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
        (b"\xff\xfe not utf-8", 400),
    ],
)
async def test_bad_chat_bodies_are_400(client: httpx.AsyncClient, body: bytes, status: int) -> None:
    response = await client.post(
        "/api/chat", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, status)


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")
    assert_error(await client.get("/api/chats/x/y/z"), 404, "not_found")
    assert_error(await client.put("/api/chat"), 405, "method_not_allowed")
    assert_error(await client.get("/api/chat/c1/stop"), 405, "method_not_allowed")


async def test_invalid_ids_and_parameters(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/chats/" + "x" * 200), 404, "not_found")
    assert_error(await client.get("/api/chat/a%20b/stream"), 404, "not_found")
    assert_error(await client.get("/api/chat", params={"chatId": "a b"}), 400, "invalid_request")
    assert_error(await client.get("/api/chat"), 400, "invalid_request")
    # A malformed resume offset on an existing chat is the client's error, not ours.
    chat_id = uuid.uuid4().hex
    await post_v5(client, v5_body(chat_id, "m1", "hi"))
    response = await client.get(f"/api/chat/{chat_id}/stream", params={"after": "abc"})
    assert_error(response, 400)
    response = await client.get(f"/api/chat/{chat_id}/stream", headers={"Last-Event-ID": "-7"})
    assert_error(response, 400)
    assert_error(await client.post(f"/api/chat/{chat_id}/stop", content=b"{"), 400)
    assert_error(await client.post(f"/api/chat/{chat_id}/stop", content=b"[1]"), 400)


async def test_request_bodies_are_limited(start_server: Callable[..., Server]) -> None:
    server = start_server(max_body_bytes=4096)
    async with new_client(server.url) as client:
        big = b'{"id": "c1", "messages": [], "pad": "' + b"x" * 5000 + b'"}'
        assert_error(await client.post("/api/chat", content=big), 413, "payload_too_large")

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(10):
                yield b"x" * 1000

        assert_error(await client.post("/api/chat", content=chunked()), 413, "payload_too_large")
        # A body under the limit still works.
        got = await post_v5(client, v5_body(uuid.uuid4().hex, "m1", "small"), stop_after=2)
        assert got.status == 200


async def test_a_guest_session_is_issued_once(client: httpx.AsyncClient) -> None:
    first = await client.get("/api/chats")
    assert first.status_code == 200 and first.json() == {"chats": [], "nextCursor": None}
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("unbroken_session=")
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http here; set over https
    second = await client.get("/api/chats")
    assert "set-cookie" not in second.headers  # the same guest
    # A tampered cookie is ignored: a new guest, who sees none of the old one's chats.
    chat_id = uuid.uuid4().hex
    await post_v5(client, v5_body(chat_id, "m1", "hi"), stop_after=2)
    value = client.cookies["unbroken_session"]
    async with new_client(str(client.base_url)) as forger:
        forger.cookies.set("unbroken_session", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
        response = await forger.get(f"/api/chats/{chat_id}")
        assert_error(response, 404, "not_found")
        assert "set-cookie" in response.headers


async def test_cookie_posts_from_another_origin_are_refused(
    client: httpx.AsyncClient, server: Server
) -> None:
    chat_id = uuid.uuid4().hex
    await post_v5(client, v5_body(chat_id, "m1", "hi"), stop_after=2)
    evil = {"Origin": "https://evil.example"}
    assert_error(
        await client.post("/api/chat", json=v5_body(chat_id, "m2", "x"), headers=evil), 403
    )
    assert_error(await client.post(f"/api/chat/{chat_id}/stop", headers=evil), 403)
    assert_error(await client.delete(f"/api/chats/{chat_id}", headers={"Origin": "null"}), 403)
    # The page's own origin is fine.
    own = {"Origin": server.url}
    response = await client.post(f"/api/chat/{chat_id}/stop", headers=own)
    assert response.status_code == 200


async def test_allowed_origins_behind_a_proxy(start_server: Callable[..., Server]) -> None:
    server = start_server(allowed_origins=("https://chat.example",))
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        await post_v5(client, v5_body(chat_id, "m1", "hi"), stop_after=2)
        proxied = {"Origin": "https://chat.example"}
        assert (await client.post(f"/api/chat/{chat_id}/stop", headers=proxied)).status_code == 200
        other = {"Origin": "https://other.example"}
        assert_error(await client.post(f"/api/chat/{chat_id}/stop", headers=other), 403)


async def test_api_keys(client: httpx.AsyncClient, server: Server) -> None:
    from unbroken.chat.store import Store

    async with Store.from_url(server.settings.database_url) as store:
        user = await store.create_user(kind="user", name="bot")
        key, _ = await store.create_api_key(user.id)
    headers = {"Authorization": f"Bearer {key}", "Origin": "https://anywhere.example"}
    async with new_client(server.url, headers=headers) as bot:
        chat_id = uuid.uuid4().hex
        got = await post_v5(bot, v5_body(chat_id, "m1", "from a script"), stop_after=3)
        assert got.status == 200  # no Origin check for key-authenticated calls
        listed = (await bot.get("/api/chats")).json()["chats"]
        assert [c["id"] for c in listed] == [chat_id]
        assert "set-cookie" not in (await bot.get("/api/chats")).headers
    # Not the browser guest's chat.
    assert_error(await client.get(f"/api/chats/{chat_id}"), 404)
    for value in ("Bearer nope", "Basic abc", "Bearer", "Bearer " + "x" * 300):
        async with new_client(server.url, headers={"Authorization": value}) as bad:
            response = await bad.get("/api/chats")
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"


async def test_chats_list_read_and_delete(start_server: Callable[..., Server]) -> None:
    server = start_server(demo_tokens_per_second=100)  # the second answer is still running
    async with new_client(server.url) as client:
        await _list_read_and_delete(client)


async def _list_read_and_delete(client: httpx.AsyncClient) -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    await post_v5(client, v5_body(first, "m1", "The first chat's title"), stop_after=3)
    assert (await client.post(f"/api/chat/{first}/stop")).json()["stopped"] is True
    await post_v5(client, v5_body(second, "m1", "Second"), stop_after=3)
    listed = (await client.get("/api/chats")).json()["chats"]
    assert [c["id"] for c in listed] == [second, first]  # most recently updated first
    assert listed[1]["title"] == "The first chat's title"
    detail = (await client.get(f"/api/chats/{second}")).json()
    assert detail["activeStream"]["messageId"].startswith("msg_")
    assert detail["activeStream"]["state"] == "active"
    assert [m["role"] for m in detail["messages"]] == ["user"]
    # Deleting a chat stops its answer and removes everything.
    response = await client.delete(f"/api/chats/{second}")
    assert response.status_code == 204
    assert_error(await client.get(f"/api/chats/{second}"), 404)
    assert_error(await client.delete(f"/api/chats/{second}"), 404)
    assert [c["id"] for c in (await client.get("/api/chats")).json()["chats"]] == [first]


async def test_the_chats_list_comes_in_pages(client: httpx.AsyncClient) -> None:
    for text in ("one", "two", "three"):
        chat_id = uuid.uuid4().hex
        await post_v5(client, v5_body(chat_id, "m1", text), stop_after=2)
        assert (await client.post(f"/api/chat/{chat_id}/stop")).status_code == 200
    with anyio.fail_after(10):  # every answer stored: the order no longer changes
        while True:
            whole = (await client.get("/api/chats")).json()
            if all(chat["activeStreamId"] is None for chat in whole["chats"]):
                break
            await anyio.sleep(0.05)
    assert whole["nextCursor"] is None and len(whole["chats"]) == 3
    for size in (1, 2):
        listed, cursor = [], None
        for _ in range(4):
            params = {"limit": str(size)} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/api/chats", params=params)).json()
            listed += page["chats"]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert listed == whole["chats"], size
    for limit in ("0", "101", "-1", "1.5", "abc", "1e2"):
        response = await client.get("/api/chats", params={"limit": limit})
        assert_error(response, 400, "invalid_request")

    def b64(raw: str) -> str:
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    for cursor in (
        "x",
        "!!!",
        "a" * 600,
        b64("[1, 2]"),
        b64('"ab"'),
        b64('{"a": 1, "b": 2}'),
        b64("[" * 5000),
        b64('["2026-01-01T00:00:00", "c1"]'),  # no time zone: not one of ours
        b64('["2026-01-01T00:00:00+00:00", 7]'),
    ):
        response = await client.get("/api/chats", params={"cursor": cursor})
        assert_error(response, 400, "invalid_request")
        assert "cursor" in response.json()["error"]["message"]


async def test_health_metrics_openapi_and_page(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok", "streams": "memory", "model": "demo"}

    await post_v5(client, v5_body(uuid.uuid4().hex, "m1", "count me"))
    await client.get(f"/api/chat/{uuid.uuid4().hex}/stream")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in (
        "unbroken_chat_active_streams",
        "unbroken_chat_streams_started_total",
        "unbroken_chat_stream_outcomes_total",
        "unbroken_chat_chunks_total",
        "unbroken_chat_resumes_total",
        "unbroken_chat_generation_seconds_bucket",
        "unbroken_chat_first_chunk_seconds_bucket",
    ):
        assert name in text, name

    document = (await client.get("/openapi.json")).json()
    for path in (
        "/api/chat",
        "/api/chat/{chat_id}/stream",
        "/api/chat/{chat_id}/stop",
        "/api/chats",
        "/api/chats/{chat_id}",
        "/healthz",
        "/metrics",
    ):
        assert path in document["paths"], path

    async with new_client(str(client.base_url)) as browser:
        page = await browser.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "set-cookie" in page.headers  # the page's API calls need the session
    assert (await client.get("/chat/abc")).status_code == 200
    assert_error(await client.get("/static/missing.js"), 404)


def test_no_route_runs_in_the_thread_pool(tmp_path: Path) -> None:
    """Every endpoint and dependency of the API is a coroutine function: FastAPI runs a
    plain ``def`` one in its thread pool, a round trip through a worker thread on every
    request, which under load adds milliseconds to each resume."""
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    from unbroken.chat.app import create_app
    from unbroken.chat.settings import Settings

    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"))
    synchronous: list[str] = []

    def visit(dependant: Dependant, where: str) -> None:
        call = dependant.call
        if call is not None and not inspect.iscoroutinefunction(call):
            synchronous.append(f"{where}: {getattr(call, '__qualname__', call)}")
        for sub in dependant.dependencies:
            visit(sub, where)

    def api_routes(routes: list[Any]) -> list[APIRoute]:
        found: list[APIRoute] = []
        for route in routes:
            if isinstance(route, APIRoute):
                found.append(route)
            # Included routers (FastAPI >= 0.120 keeps them as such) and mounts.
            router = getattr(route, "original_router", route)
            found += api_routes(getattr(router, "routes", None) or [])
        return found

    routes = api_routes(app.routes)
    assert {"/api/chat", "/api/chat/{chat_id}/stream", "/healthz"} <= {r.path for r in routes}
    for route in routes:
        visit(route.dependant, route.path)
    assert synchronous == []


async def test_a_client_that_hangs_up_before_its_body_arrives_costs_nothing(
    client: httpx.AsyncClient, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A POST cut off mid-body (a closed tab, a dropped connection) is no server error: no
    traceback, no 500, nothing stored; the next request is served as ever."""
    await client.get("/api/chats")  # a guest session
    cookie = client.cookies["unbroken_session"]
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(v5_body(uuid.uuid4().hex, "m1", "never sent whole")).encode()
    caplog.clear()
    for _ in range(3):
        head = (
            f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Cookie: unbroken_session={cookie}\r\nContent-Length: {len(body) + 100}\r\n\r\n"
        )
        async with await anyio.connect_tcp(host, int(port)) as connection:
            await connection.send(head.encode() + body[: len(body) // 2])
            await anyio.sleep(0.2)  # the route is reading the body by now
    await anyio.sleep(0.3)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert (await client.get("/api/chats")).json() == {"chats": [], "nextCursor": None}
