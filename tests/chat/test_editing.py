"""What a person does to a conversation besides asking: edit a message and send it again,
regenerate the last answer, rename the chat; and the titles chats get."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from tests.chat._client import expected_answer, new_client, post_v5, v5_body
from tests.chat.conftest import Server
from unbroken.chat.answers import title_of

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with new_client(server.url) as client:
        yield client


def user(message_id: str, text: str) -> dict[str, Any]:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def text_of(message: dict[str, Any]) -> str:
    return "".join(part.get("text", "") for part in message["parts"] if part["type"] == "text")


async def stored(client: httpx.AsyncClient, chat_id: str) -> list[dict[str, Any]]:
    """The chat's messages once its answer is stored (the client sees its end first)."""
    with anyio.fail_after(10):
        while True:
            chat = (await client.get(f"/api/chats/{chat_id}")).json()
            if chat["activeStream"] is None:
                messages: list[dict[str, Any]] = chat["messages"]
                return messages
            await anyio.sleep(0.02)


async def test_edit_and_resend_replaces_the_later_messages(client: httpx.AsyncClient) -> None:
    chat_id = uuid.uuid4().hex
    await post_v5(client, v5_body(chat_id, "m1", "first question"))
    first_answer = (await stored(client, chat_id))[1]
    body = {
        "id": chat_id,
        "trigger": "submit-message",
        "messages": [user("m1", "first question"), first_answer, user("m2", "second question")],
    }
    await post_v5(client, body)
    assert [m["id"] for m in await stored(client, chat_id)][:3] == ["m1", first_answer["id"], "m2"]

    # Edit the first message (the AI SDK's sendMessage({text, messageId})): the client sends
    # the history up to it, with its new text; everything after it is replaced.
    edited = {"id": chat_id, "trigger": "submit-message", "messageId": "m1"}
    got = await post_v5(client, {**edited, "messages": [user("m1", "an edited question")]})
    assert got.done and got.text() == expected_answer("an edited question")[1]
    messages = await stored(client, chat_id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert text_of(messages[0]) == "an edited question"
    assert messages[1]["id"] == got.message_id != first_answer["id"]


async def test_regenerate_replaces_the_last_answer(client: httpx.AsyncClient) -> None:
    chat_id = uuid.uuid4().hex
    await post_v5(client, v5_body(chat_id, "m1", "once more"))
    before = await stored(client, chat_id)
    body = {
        "id": chat_id,
        "trigger": "regenerate-message",
        "messageId": before[1]["id"],
        "messages": [user("m1", "once more")],
    }
    got = await post_v5(client, body)
    assert got.done
    after = await stored(client, chat_id)
    assert [m["id"] for m in after] == ["m1", got.message_id]
    assert got.message_id != before[1]["id"] and after[1]["status"] == "done"


async def test_rename(client: httpx.AsyncClient, server: Server) -> None:
    chat_id = uuid.uuid4().hex
    await post_v5(client, v5_body(chat_id, "m1", "# **Streams**, explained\nand more"))
    listed = (await client.get("/api/chats")).json()["chats"]
    assert listed[0]["title"] == "Streams, explained"  # the first line, without markup
    response = await client.patch(f"/api/chats/{chat_id}", json={"title": "  My   streams "})
    assert response.status_code == 200 and response.json()["title"] == "My streams"
    assert (await client.get(f"/api/chats/{chat_id}")).json()["title"] == "My streams"
    for bad in ({"title": ""}, {"title": "   "}, {"title": 5}, {}, {"title": "x" * 201}):
        response = await client.patch(f"/api/chats/{chat_id}", json=bad)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert (await client.patch(f"/api/chats/{chat_id}", content=b"[")).status_code == 400
    evil = {"Origin": "https://evil.example"}
    response = await client.patch(f"/api/chats/{chat_id}", json={"title": "x"}, headers=evil)
    assert response.status_code == 403
    async with new_client(server.url) as stranger:
        response = await stranger.patch(f"/api/chats/{chat_id}", json={"title": "mine"})
        assert response.status_code == 404
    assert (await client.patch("/api/chats/missing", json={"title": "x"})).status_code == 404


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Tell me about streams\nin two lines", "Tell me about streams"),
        ("\n\n  ## A *heading*  \n", "A *heading*"),
        ("```python\nprint(1)\n```", "print(1)"),
        ("> a quote with [a link](https://example.com) and `code`", "a quote with a link and code"),
        ("   ", "New chat"),
        (
            "Explain how resumable streams survive a page refresh and a crashed worker please",
            "Explain how resumable streams survive a page refresh and a…",
        ),
        ("x" * 100, "x" * 59 + "…"),
    ],
)
def test_titles(text: str, title: str) -> None:
    assert title_of(text) == title
    assert len(title_of(text)) <= 60
