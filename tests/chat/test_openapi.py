"""The API description: a valid OpenAPI document with the real bodies, answers, errors and
authentication, read in Swagger UI or ReDoc from files the service serves itself."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from tests.chat._client import new_client, post_v5, v5_body
from tests.chat.conftest import Server
from unbroken.chat.app import create_app
from unbroken.chat.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def chat_config() -> str:
    return "memory-sqlite"


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with new_client(server.url) as client:
        yield client


def document(tmp_path: Path) -> dict[str, Any]:
    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"))
    return app.openapi()


def test_the_document_is_valid_and_says_what_the_service_does(tmp_path: Path) -> None:
    doc = document(tmp_path)
    validate(doc)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    post = doc["paths"]["/api/chat"]["post"]
    assert set(post["responses"]) == {"200", "400", "401", "403", "404", "409", "413", "429", "503"}
    assert "Retry-After" in post["responses"]["429"]["headers"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatRequest"}
    message = doc["components"]["schemas"]["UIMessage"]
    assert {"id", "role", "parts"} <= set(message["required"])
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            where = f"{method} {path}"
            assert "422" not in operation["responses"], where
            assert "security" in operation, where
            text = f"{operation.get('summary', '')} {operation.get('description', '')}"
            assert "seed" not in text and "shared/" not in text, where
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/healthz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ApiErrorBody"}, where


def check(doc: dict[str, Any], name: str, value: Any) -> None:
    """Validate ``value`` against the document's schema ``name``."""
    resolver = {"components": doc["components"], "$ref": f"#/components/schemas/{name}"}
    jsonschema.validate(value, resolver, cls=jsonschema.Draft202012Validator)


async def test_answers_match_their_schemas(client: httpx.AsyncClient, tmp_path: Path) -> None:
    doc = document(tmp_path)
    chat_id = uuid.uuid4().hex
    await post_v5(client, v5_body(chat_id, "m1", "describe me"))
    check(doc, "ChatList", (await client.get("/api/chats")).json())
    check(doc, "ChatDetail", (await client.get(f"/api/chats/{chat_id}")).json())
    check(doc, "StopResult", (await client.post(f"/api/chat/{chat_id}/stop")).json())
    renamed = await client.patch(f"/api/chats/{chat_id}", json={"title": "described"})
    check(doc, "ChatSummary", renamed.json())
    check(doc, "Health", (await client.get("/healthz")).json())
    check(doc, "ApiErrorBody", (await client.get("/api/chats/nope")).json())
    bad = await client.get(f"/api/chat/{chat_id}/stream", params={"after": "x"})
    assert bad.status_code == 400
    check(doc, "ApiErrorBody", bad.json())


async def test_docs_are_served_without_a_cdn(client: httpx.AsyncClient) -> None:
    for page, assets in (
        ("/docs", ["/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"]),
        ("/redoc", ["/docs-assets/redoc.standalone.js"]),
    ):
        response = await client.get(page)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
        assert "http" not in response.text.replace("http-equiv", "")  # nothing from elsewhere
        for asset in assets:
            assert asset in response.text
            got = await client.get(asset)
            assert got.status_code == 200 and len(got.content) > 10_000, asset
    assert (await client.get("/static/js/docs.js")).status_code == 200
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "unbroken chat"
