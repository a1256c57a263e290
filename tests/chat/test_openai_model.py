"""The OpenAI-compatible model path, against a local server speaking chat.completion.chunk SSE."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import anyio
import pytest

from tests.chat._client import new_client, post_v4, post_v5, read_v5, v4_body, v5_body
from tests.chat._fake_openai import FakeOpenAI
from tests.chat.conftest import Server, serve_asgi
from tests.chat.test_resume import settled_chat

pytestmark = pytest.mark.anyio


@pytest.fixture
def chat_config() -> str:
    return "memory-sqlite"


@pytest.fixture
def fake() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve_asgi(fake.app) as (url, _):
        yield fake, f"{url}/v1"


@pytest.fixture
def server(start_server: Callable[..., Server], fake: tuple[FakeOpenAI, str]) -> Server:
    return start_server(model="fake-model", openai_base_url=fake[1], openai_api_key="sk-test")


async def test_text_and_reasoning_stream_and_history_is_sent(
    server: Server, fake: tuple[FakeOpenAI, str]
) -> None:
    requests = fake[0].requests
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        got = await post_v5(client, v5_body(chat_id, "m1", "hi there"))
        assert got.done
        assert got.text("reasoning") == "Let me think."
        assert got.text() == "Hello, world!"
        assert got.types()[-1] == "finish"
        chat = await settled_chat(client, chat_id)
        answer = chat["messages"][-1]
        assert answer["status"] == "done"
        assert [p["type"] for p in answer["parts"] if p["type"] in ("reasoning", "text")] == [
            "reasoning",
            "text",
        ]
        # The second turn sends the whole conversation.
        body = v5_body(chat_id, "m2", "and again")
        await post_v5(client, body)
        assert requests[-1]["model"] == "fake-model" and requests[-1]["stream"] is True
        assert requests[-1]["messages"] == [
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "Hello, world!"},
            {"role": "user", "content": "and again"},
        ]


async def test_the_system_prompt_comes_first_and_is_not_stored(
    start_server: Callable[..., Server], fake: tuple[FakeOpenAI, str]
) -> None:
    prompt = "You answer in French.\nAlways."
    server = start_server(
        model="fake-model", openai_base_url=fake[1], openai_api_key="sk-test", system_prompt=prompt
    )
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        assert (await post_v5(client, v5_body(chat_id, "m1", "hi there"))).done
        assert fake[0].requests[-1]["messages"] == [
            {"role": "system", "content": prompt},
            {"role": "user", "content": "hi there"},
        ]
        chat = await settled_chat(client, chat_id)
        assert [message["role"] for message in chat["messages"]] == ["user", "assistant"]
        await post_v5(client, v5_body(chat_id, "m2", "and again"))
        sent = fake[0].requests[-1]["messages"]
        assert [message["role"] for message in sent] == ["system", "user", "assistant", "user"]


async def test_tool_calls_stream_in_both_protocols(server: Server) -> None:
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        got = await post_v5(client, v5_body(chat_id, "m1", "tool"))
        types = got.types()
        assert types.index("tool-input-start") < types.index("tool-input-available")
        deltas = "".join(e["inputTextDelta"] for e in got.events if e["type"] == "tool-input-delta")
        assert json.loads(deltas) == {"city": "Paris"}
        available = next(e for e in got.events if e["type"] == "tool-input-available")
        assert available["toolName"] == "get_weather" and available["input"] == {"city": "Paris"}
        chat = await settled_chat(client, chat_id)
        tool_parts = [p for p in chat["messages"][-1]["parts"] if p["type"] == "tool-get_weather"]
        assert tool_parts and tool_parts[0]["input"] == {"city": "Paris"}

        v4 = await post_v4(client, v4_body(uuid.uuid4().hex, "m1", "tool"))
        codes = v4.codes()
        assert "b" in codes and "9" in codes
        call = next(value for code, value in v4.lines if code == "9")
        assert call == {
            "toolCallId": "call_1",
            "toolName": "get_weather",
            "args": {"city": "Paris"},
        }


async def test_provider_errors_end_the_answer_in_error(server: Server) -> None:
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        got = await post_v5(client, v5_body(chat_id, "m1", "fail"))
        assert got.types()[-1] == "error"
        assert got.events[-1]["errorText"] == "the model endpoint answered HTTP 400"
        chat = await settled_chat(client, chat_id)
        answer = chat["messages"][-1]
        assert answer["status"] == "error"
        assert answer["error"] == "the model endpoint answered HTTP 400"


async def test_stopping_an_openai_answer(server: Server) -> None:
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        async with client.stream("POST", "/api/chat", json=v5_body(chat_id, "m1", "slow")) as r:
            head = await read_v5(r, stop_after=10)
            with anyio.fail_after(5):
                stop = await client.post(f"/api/chat/{chat_id}/stop")
            assert stop.json()["stopped"] is True
            rest = await read_v5(r)
        assert rest.types()[-1] == "abort"
        chat = await settled_chat(client, chat_id)
        answer = chat["messages"][-1]
        assert answer["status"] == "stopped"
        assert answer["parts"][-1]["text"] == head.text() + rest.text()
