"""`unbroken.integrations.anthropic`: the real ``anthropic`` client against a local server
speaking the Messages SSE format."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from anthropic import AsyncAnthropic

from tests.integrations._fake_providers import FakeProviders
from tests.integrations.conftest import serve
from tests.integrations.test_openai import UI_HISTORY
from unbroken.integrations.anthropic import message_chunks, system_prompt, to_anthropic_messages

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[FakeProviders, str]]:
    fake = FakeProviders()
    with serve(fake) as url:
        yield fake, url


@pytest.fixture
async def client(provider: tuple[FakeProviders, str]) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(api_key="sk-test", base_url=provider[1], max_retries=0) as client:
        yield client


def _stream(client: AsyncAnthropic, prompt: str) -> Any:
    messages: Any = [{"role": "user", "content": prompt}]
    return client.messages.stream(model="claude-test", max_tokens=100, messages=messages)


def _create(client: AsyncAnthropic, prompt: str) -> Any:
    messages: Any = [{"role": "user", "content": prompt}]
    return client.messages.create(
        model="claude-test", max_tokens=100, messages=messages, stream=True
    )


async def _all(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


START = [{"type": "start", "messageId": "msg_1"}, {"type": "start-step"}]


async def test_thinking_and_text(client: AsyncAnthropic) -> None:
    chunks = await _all(message_chunks(_stream(client, "hi"), message_id="msg_1"))
    assert chunks == [
        *START,
        {"type": "reasoning-start", "id": "reasoning-1"},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "Let me "},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "think."},
        {"type": "reasoning-end", "id": "reasoning-1"},
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "Hello"},
        {"type": "text-delta", "id": "text-2", "delta": ", "},
        {"type": "text-delta", "id": "text-2", "delta": "world"},
        {"type": "text-delta", "id": "text-2", "delta": "!"},
        {"type": "text-end", "id": "text-2"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    ]


async def test_tool_use_with_streamed_input(client: AsyncAnthropic) -> None:
    chunks = await _all(message_chunks(_stream(client, "tool"), message_id="msg_1"))
    assert chunks == [
        *START,
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Checking."},
        {"type": "text-end", "id": "text-1"},
        {"type": "tool-input-start", "toolCallId": "toolu_1", "toolName": "get_weather"},
        {"type": "tool-input-delta", "toolCallId": "toolu_1", "inputTextDelta": '{"city": '},
        {"type": "tool-input-delta", "toolCallId": "toolu_1", "inputTextDelta": '"Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "toolu_1",
            "toolName": "get_weather",
            "input": {"city": "Paris"},
        },
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
    ]


async def test_every_form_of_the_stream_gives_the_same_chunks(client: AsyncAnthropic) -> None:
    """The stream manager, the awaited stream and the call not yet awaited."""
    expected = await _all(message_chunks(_stream(client, "tool"), message_id="m"))
    assert await _all(message_chunks(await _create(client, "tool"), message_id="m")) == expected
    assert await _all(message_chunks(_create(client, "tool"), message_id="m")) == expected


async def test_failures_end_in_a_safe_error(client: AsyncAnthropic) -> None:
    refused = await _all(message_chunks(_stream(client, "fail"), message_id="msg_1"))
    assert refused == [
        *START,
        {"type": "error", "errorText": "the model endpoint answered HTTP 529"},
    ]
    broken = await _all(message_chunks(_create(client, "broken"), message_id="msg_1"))
    assert broken[-3:] == [
        {"type": "text-delta", "id": "text-1", "delta": "Hello"},
        {"type": "text-end", "id": "text-1"},
        {
            "type": "error",
            "errorText": "the model endpoint failed while answering (overloaded_error)",
        },
    ]
    async with AsyncAnthropic(api_key="x", base_url="http://127.0.0.1:9", max_retries=0) as gone:
        unreachable = await _all(message_chunks(_stream(gone, "hi")))
    assert unreachable[-1] == {
        "type": "error",
        "errorText": "the model endpoint could not be reached",
    }


@pytest.mark.parametrize("form", ["manager", "stream"])
async def test_a_stop_closes_the_provider_connection(
    client: AsyncAnthropic, provider: tuple[FakeProviders, str], form: str
) -> None:
    fake = provider[0]
    fake.client_left.clear()
    before = fake.disconnects
    source = _stream(client, "slow") if form == "manager" else _create(client, "slow")
    chunks = message_chunks(source)
    three = anyio.Event()

    async def consume() -> None:
        seen = 0
        async for chunk in chunks:
            seen += chunk["type"] == "text-delta"
            if seen == 3:
                three.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await three.wait()
            tg.cancel_scope.cancel()  # as the engine does on a stop
    assert await anyio.to_thread.run_sync(fake.client_left.wait, 5)
    assert fake.disconnects == before + 1


def test_ui_messages_as_anthropic_messages() -> None:
    assert system_prompt(UI_HISTORY) == "be brief"
    assert to_anthropic_messages(UI_HISTORY) == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp": 20}'}
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "20 degrees."}]},
        {"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}]},
    ]
