"""Security headers on every page and API answer, streams and errors included; the session
cookie is ``Secure`` over HTTPS, and a forwarded scheme is not taken from the request."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from tests.chat._client import new_client, v5_body
from tests.chat.conftest import Server
from unbroken.chat.app import create_app
from unbroken.chat.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def chat_config() -> str:
    return "memory-sqlite"


@pytest.fixture
async def client(start_server: Callable[..., Server]) -> AsyncIterator[httpx.AsyncClient]:
    server = start_server(max_body_bytes=4096)
    async with new_client(server.url) as client:
        yield client


def assert_secured(response: httpx.Response, *, docs: bool = False) -> None:
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    policy = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy, where
    assert "script-src 'self';" in policy and "object-src 'none'" in policy, where
    assert ("'unsafe-inline'" in policy) == docs, where
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("referrer-policy") == "same-origin", where
    assert response.headers.get("x-frame-options") == "DENY", where


async def test_every_kind_of_answer_has_the_headers(client: httpx.AsyncClient) -> None:
    chat_id = uuid.uuid4().hex
    async with client.stream("POST", "/api/chat", json=v5_body(chat_id, "m1", "hi")) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert_secured(stream)
    for response in (
        await client.get("/"),
        await client.get(f"/chat/{chat_id}"),
        await client.get("/api/chats"),
        await client.get(f"/api/chats/{chat_id}"),
        await client.get("/api/chats/missing"),
        await client.get(f"/api/chat/{chat_id}/stream"),
        await client.post("/api/chat", content=b"not json"),
        await client.post("/api/chat", content=b"x" * 5000),  # 413
        await client.put("/api/chat"),  # 405
        await client.get("/nope"),
        await client.get("/static/style.css"),
        await client.get("/healthz"),
        await client.get("/metrics"),
        await client.get("/openapi.json"),
    ):
        assert_secured(response)
    assert_secured(await client.get("/docs"), docs=True)
    assert_secured(await client.get("/redoc"), docs=True)
    page = await client.get("/")
    assert 'http-equiv="Content-Security-Policy"' not in page.text  # the header says it all


async def test_the_session_cookie_is_secure_over_https(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://chat.test") as tls:
            cookie = (await tls.get("/api/chats")).headers["set-cookie"]
            assert "; Secure" in cookie and "HttpOnly" in cookie
        async with httpx.AsyncClient(transport=transport, base_url="http://chat.test") as plain:
            # The app never believes a client's own claim of HTTPS: only a server configured
            # to trust a proxy turns X-Forwarded-Proto into the request's scheme.
            response = await plain.get("/api/chats", headers={"X-Forwarded-Proto": "https"})
            assert "Secure" not in response.headers["set-cookie"]
