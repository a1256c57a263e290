"""What the pydantic-ai, LangChain and OpenAI Agents adapter tests share: running an adapter's
chunks in a real engine and stopping them, and an example app answering the real ``ai@5``."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from tests._services import uvicorn_process
from tests.conformance._node import NodeUnavailable, find_toolchain
from unbroken import MemoryBackend, StreamEnd, StreamEngine
from unbroken.protocols.ai_sdk import UIEvent, ui_events_to_chunks

#: The offline answer every example's test model gives, after its ``get_weather`` call.
EXAMPLE_ANSWER = "In Paris it is sunny and 21 °C today , a fine day . "
EXAMPLE_TOOL_OUTPUT = "sunny and 21 °C in Paris"


async def collect(source: AsyncIterable[UIEvent]) -> list[UIEvent]:
    """Every chunk of ``source``, with a watchdog."""
    with anyio.fail_after(20):
        return [chunk async for chunk in source]


async def stop_in_engine(source: AsyncIterable[UIEvent], running: anyio.Event) -> StreamEnd:
    """Run ``source`` as a stream in a real engine, stop it once ``running`` is set, and
    return how the stream ended."""
    async with StreamEngine(MemoryBackend()) as engine:
        await engine.start("answer", ui_events_to_chunks(source))
        with anyio.fail_after(10):
            await running.wait()
            await engine.cancel("answer")
            return await engine.wait("answer")


@contextmanager
def example_server(module: str) -> Iterator[str]:
    """``uvicorn examples.<module>:app`` with the offline test model; yields the base URL."""
    env = {"UNBROKEN_EXAMPLE_MODEL": "test", "REDIS_URL": ""}
    with uvicorn_process(f"examples.{module}:app", env) as (url, _):
        yield url


def cut_and_resume_with_ai5(module: str) -> dict[str, Any]:
    """The real ``ai@5`` ``Chat`` against the example: the answer is cut once it shows text,
    then resumed (``common/chat.mjs``, scenario ``cutAbort``)."""
    try:
        toolchain = find_toolchain()
    except NodeUnavailable as exc:
        pytest.skip(str(exc))
    clients = toolchain.install(["ai5"])["ai5"]
    with example_server(module) as url:
        config = {"api": f"{url}/api/chat", "chats": {"cutAbort": "chat-1"}, "userText": "hi"}
        result: dict[str, Any] = toolchain.run("chat.mjs", clients, config)["cutAbort"]
    return result


def assert_resumed_exactly(result: dict[str, Any]) -> None:
    """One user message and one complete assistant message, the partial one's id kept:
    the tool call with its output, then the whole answer's text once."""
    assert result["error"] is None, result
    assert result["cutCount"] >= 1
    user, assistant = result["messages"]
    assert user["role"] == "user"
    assert assistant["id"] == result["partial"]["id"]
    parts = [p for p in assistant["parts"] if p["type"] != "step-start"]
    tool, text = parts
    assert tool["type"] == "tool-get_weather"
    assert tool["state"] == "output-available"
    assert tool["input"] == {"city": "Paris"}
    assert tool["output"] == EXAMPLE_TOOL_OUTPUT
    assert text["type"] == "text"
    assert text["text"] == EXAMPLE_ANSWER
    assert text["state"] == "done"
    # The cut really came mid-answer: the partial message had only part of the text.
    partial_text = "".join(p.get("text", "") for p in result["partial"]["parts"])
    assert 0 < len(partial_text) < len(EXAMPLE_ANSWER)
