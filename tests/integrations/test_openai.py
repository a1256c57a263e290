"""`unbroken.integrations.openai`: the real ``openai`` client against a local server speaking
the Chat Completions and Responses SSE formats."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from openai import AsyncOpenAI

from tests.integrations._fake_providers import FakeProviders
from tests.integrations.conftest import serve
from unbroken.integrations.openai import (
    chat_completion_chunks,
    responses_chunks,
    to_chat_messages,
    to_responses_input,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[FakeProviders, str]]:
    fake = FakeProviders()
    with serve(fake) as url:
        yield fake, f"{url}/v1"


@pytest.fixture
async def client(provider: tuple[FakeProviders, str]) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(api_key="sk-test", base_url=provider[1], max_retries=0) as client:
        yield client


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def _all(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


def _chat(client: AsyncOpenAI, prompt: str) -> Any:
    return client.chat.completions.create(model="fake-model", messages=_user(prompt), stream=True)


def _responses(client: AsyncOpenAI, prompt: str) -> Any:
    return client.responses.create(model="fake-model", input=prompt, stream=True)


START = [{"type": "start", "messageId": "msg_1"}, {"type": "start-step"}]


async def test_chat_completion_text_and_reasoning(client: AsyncOpenAI) -> None:
    chunks = await _all(chat_completion_chunks(_chat(client, "hi"), message_id="msg_1"))
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


async def test_chat_completion_tool_call(client: AsyncOpenAI) -> None:
    chunks = await _all(chat_completion_chunks(_chat(client, "tool"), message_id="msg_1"))
    assert chunks == [
        *START,
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Checking."},
        {"type": "text-end", "id": "text-1"},
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "get_weather"},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"city": '},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '"Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call_1",
            "toolName": "get_weather",
            "input": {"city": "Paris"},
        },
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
    ]


async def test_every_form_of_the_stream_gives_the_same_chunks(client: AsyncOpenAI) -> None:
    """The awaited stream, the call not yet awaited, and the SDK's stream manager."""
    expected = await _all(chat_completion_chunks(_chat(client, "tool"), message_id="m"))
    awaited = await _chat(client, "tool")
    assert await _all(chat_completion_chunks(awaited, message_id="m")) == expected
    manager = client.chat.completions.stream(model="fake-model", messages=_user("tool"))
    assert await _all(chat_completion_chunks(manager, message_id="m")) == expected


async def test_chat_completion_failures_end_in_a_safe_error(client: AsyncOpenAI) -> None:
    refused = await _all(chat_completion_chunks(_chat(client, "fail"), message_id="msg_1"))
    assert refused == [
        *START,
        {"type": "error", "errorText": "the model endpoint answered HTTP 400"},
    ]
    broken = await _all(chat_completion_chunks(_chat(client, "broken"), message_id="msg_1"))
    assert broken[-3:] == [
        {"type": "text-delta", "id": "text-1", "delta": "Hel"},
        {"type": "text-end", "id": "text-1"},
        {"type": "error", "errorText": "the model endpoint failed while answering (server_error)"},
    ]
    async with AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9/v1", max_retries=0) as gone:
        unreachable = await _all(chat_completion_chunks(_chat(gone, "hi")))
    assert unreachable[-1] == {
        "type": "error",
        "errorText": "the model endpoint could not be reached",
    }


@pytest.mark.parametrize("how", ["aclose", "cancel"])
@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_stop_closes_the_provider_connection(
    client: AsyncOpenAI, provider: tuple[FakeProviders, str], api: str, how: str
) -> None:
    fake = provider[0]
    fake.client_left.clear()
    before = fake.disconnects
    adapter = chat_completion_chunks if api == "chat" else responses_chunks
    request = _chat(client, "slow") if api == "chat" else _responses(client, "slow")
    chunks = adapter(request)
    if how == "aclose":  # the engine closes the source at its yield
        seen = 0
        async for chunk in chunks:
            seen += chunk["type"] == "text-delta"
            if seen == 3:
                break
        await chunks.aclose()  # type: ignore[attr-defined]
    else:  # the engine cancels the source while it waits for the provider
        await _cancel_after_three_deltas(chunks)
    assert await anyio.to_thread.run_sync(fake.client_left.wait, 5)
    assert fake.disconnects == before + 1


async def _cancel_after_three_deltas(chunks: AsyncIterator[dict[str, Any]]) -> None:
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
            tg.cancel_scope.cancel()


async def test_responses_text_and_reasoning(client: AsyncOpenAI) -> None:
    chunks = await _all(responses_chunks(_responses(client, "hi"), message_id="msg_1"))
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


async def test_responses_function_call(client: AsyncOpenAI) -> None:
    chunks = await _all(responses_chunks(_responses(client, "tool"), message_id="msg_1"))
    assert chunks == [
        *START,
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Checking."},
        {"type": "text-end", "id": "text-1"},
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "get_weather"},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"city": '},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '"Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call_1",
            "toolName": "get_weather",
            "input": {"city": "Paris"},
        },
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
    ]
    manager = client.responses.stream(model="fake-model", input="tool")
    assert await _all(responses_chunks(manager, message_id="msg_1")) == chunks


async def test_responses_failures_end_in_a_safe_error(client: AsyncOpenAI) -> None:
    refused = await _all(responses_chunks(_responses(client, "fail"), message_id="msg_1"))
    assert refused == [
        *START,
        {"type": "error", "errorText": "the model endpoint answered HTTP 400"},
    ]
    failed = await _all(responses_chunks(_responses(client, "broken"), message_id="msg_1"))
    assert failed[-3:] == [
        {"type": "text-delta", "id": "text-2", "delta": "Hello"},
        {"type": "text-end", "id": "text-2"},
        {"type": "error", "errorText": "the model endpoint failed while answering (server_error)"},
    ]


UI_HISTORY: list[dict[str, Any]] = [
    {"id": "s", "role": "system", "parts": [{"type": "text", "text": "be brief"}]},
    {"id": "u", "role": "user", "parts": [{"type": "text", "text": "weather?"}]},
    {
        "id": "a",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "hidden"},
            {"type": "text", "text": "Checking."},
            {
                "type": "tool-get_weather",
                "toolCallId": "call_1",
                "state": "output-available",
                "input": {"city": "Paris"},
                "output": {"temp": 20},
            },
            {"type": "tool-other", "toolCallId": "call_2", "state": "input-available"},
            {"type": "step-start"},
            {"type": "text", "text": "20 degrees."},
        ],
    },
    {"id": "v4", "role": "user", "content": "and tomorrow?"},
]


def test_ui_messages_as_chat_messages() -> None:
    assert to_chat_messages(UI_HISTORY) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'},
        {"role": "assistant", "content": "20 degrees."},
        {"role": "user", "content": "and tomorrow?"},
    ]


def test_ui_messages_as_responses_input() -> None:
    assert to_responses_input(UI_HISTORY) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Checking."},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 20}'},
        {"role": "assistant", "content": "20 degrees."},
        {"role": "user", "content": "and tomorrow?"},
    ]


@pytest.mark.parametrize("package", ["openai", "anthropic"])
def test_a_missing_sdk_names_the_extra_to_install(package: str) -> None:
    code = (
        f"import sys; sys.modules[{package!r}] = None\n"
        "from unbroken.exceptions import MissingDependencyError\n"
        "try:\n"
        f"    import unbroken.integrations.{package}\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == (
        f"{package!r} is not installed; install it with: pip install 'unbroken[{package}]'"
    )
