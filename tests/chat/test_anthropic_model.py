"""The ``anthropic:<model>`` path of the chat service, against a local server speaking the
Anthropic Messages SSE format."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import anyio
import pytest

from tests.chat._client import new_client, post_v5, read_v5, v5_body
from tests.chat.conftest import Server, serve_asgi
from tests.chat.test_resume import settled_chat
from tests.integrations._fake_providers import FakeProviders

pytestmark = pytest.mark.anyio


@pytest.fixture
def chat_config() -> str:
    return "memory-sqlite"


@pytest.fixture
def fake() -> Iterator[tuple[FakeProviders, str]]:
    fake = FakeProviders()
    with serve_asgi(fake) as (url, _):
        yield fake, url


@pytest.fixture
def server(start_server: Callable[..., Server], fake: tuple[FakeProviders, str]) -> Server:
    return start_server(
        model="anthropic:claude-test", anthropic_base_url=fake[1], anthropic_api_key="sk-test"
    )


async def test_thinking_text_and_the_history_sent(
    server: Server, fake: tuple[FakeProviders, str]
) -> None:
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        got = await post_v5(client, v5_body(chat_id, "m1", "hi there"))
        assert got.text("reasoning") == "Let me think."
        assert got.text() == "Hello, world!"
        assert got.types()[-1] == "finish"
        chat = await settled_chat(client, chat_id)
        assert chat["messages"][-1]["status"] == "done"
        await post_v5(client, v5_body(chat_id, "m2", "and again"))
        sent = fake[0].requests[-1]
        assert sent["model"] == "claude-test" and sent["stream"] is True
        assert sent["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello, world!"}]},
            {"role": "user", "content": [{"type": "text", "text": "and again"}]},
        ]


async def test_the_system_prompt_is_the_system_parameter(
    start_server: Callable[..., Server], fake: tuple[FakeProviders, str]
) -> None:
    server = start_server(
        model="anthropic:claude-test",
        anthropic_base_url=fake[1],
        anthropic_api_key="sk-test",
        system_prompt="Be brief.",
    )
    async with new_client(server.url) as client:
        await post_v5(client, v5_body(uuid.uuid4().hex, "m1", "hi there"))
        sent = fake[0].requests[-1]
        assert sent["system"] == "Be brief."
        assert sent["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "hi there"}]}
        ]


async def test_tool_use_and_a_provider_error(server: Server) -> None:
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        got = await post_v5(client, v5_body(chat_id, "m1", "tool"))
        deltas = "".join(e["inputTextDelta"] for e in got.events if e["type"] == "tool-input-delta")
        assert json.loads(deltas) == {"city": "Paris"}
        available = next(e for e in got.events if e["type"] == "tool-input-available")
        assert available["toolName"] == "get_weather" and available["input"] == {"city": "Paris"}
        assert got.types()[-1] == "finish"

        failed_chat = uuid.uuid4().hex
        failed = await post_v5(client, v5_body(failed_chat, "m1", "broken"))
        message = "the model endpoint failed while answering (overloaded_error)"
        assert failed.events[-1] == {"type": "error", "errorText": message}
        answer = (await settled_chat(client, failed_chat))["messages"][-1]
        assert answer["status"] == "error" and answer["error"] == message


async def test_a_stop_closes_the_provider_connection(
    server: Server, fake: tuple[FakeProviders, str]
) -> None:
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        async with client.stream("POST", "/api/chat", json=v5_body(chat_id, "m1", "slow")) as r:
            await read_v5(r, stop_after=10)
            with anyio.fail_after(5):
                stop = await client.post(f"/api/chat/{chat_id}/stop")
            assert stop.json()["stopped"] is True
            rest = await read_v5(r)
        assert rest.types()[-1] == "abort"
        assert await anyio.to_thread.run_sync(fake[0].client_left.wait, 5)
        answer = (await settled_chat(client, chat_id))["messages"][-1]
        assert answer["status"] == "stopped"
