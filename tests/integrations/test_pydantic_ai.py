"""The pydantic-ai adapter, with pydantic-ai's own offline models (FunctionModel, TestModel)
and real tools; a stop through a real engine; the example against the real ``ai@5``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

pytest.importorskip("pydantic_ai", reason="needs the 'pydantic-ai' extra")

from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaThinkingPart, DeltaToolCall, FunctionModel
from pydantic_ai.models.test import TestModel

from tests.integrations._frameworks import (
    assert_resumed_exactly,
    collect,
    cut_and_resume_with_ai5,
    stop_in_engine,
)
from unbroken import StreamSourceError, StreamState
from unbroken.integrations.pydantic_ai import agent_chunks, event_chunks, to_model_messages

pytestmark = pytest.mark.anyio


async def thinks_calls_then_answers(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[Any]:
    if len(messages) == 1:
        yield {0: DeltaThinkingPart(content="Let me ")}
        yield {0: DeltaThinkingPart(content="check.")}
        yield {1: DeltaToolCall(name="weather", json_args='{"city": ', tool_call_id="call-1")}
        yield {1: DeltaToolCall(json_args='"Paris"}')}
    else:
        yield "It is "
        yield "sunny."


def weather_agent() -> Agent[None, str]:
    agent = Agent(FunctionModel(stream_function=thinks_calls_then_answers))

    @agent.tool_plain
    async def weather(city: str) -> str:
        return f"sunny in {city}"

    return agent


async def test_reasoning_tool_call_and_text() -> None:
    chunks = await collect(agent_chunks(weather_agent(), "weather?", message_id="m1"))
    assert chunks == [
        {"type": "start", "messageId": "m1"},
        {"type": "start-step"},
        {"type": "reasoning-start", "id": "reasoning-1"},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "Let me "},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "check."},
        {"type": "reasoning-end", "id": "reasoning-1"},
        {"type": "tool-input-start", "toolCallId": "call-1", "toolName": "weather"},
        {"type": "tool-input-delta", "toolCallId": "call-1", "inputTextDelta": '{"city": '},
        {"type": "tool-input-delta", "toolCallId": "call-1", "inputTextDelta": '"Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call-1",
            "toolName": "weather",
            "input": {"city": "Paris"},
        },
        {"type": "tool-output-available", "toolCallId": "call-1", "output": "sunny in Paris"},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "It is "},
        {"type": "text-delta", "id": "text-2", "delta": "sunny."},
        {"type": "text-end", "id": "text-2"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    ]


async def test_test_model_with_a_tool_and_run_stream_events() -> None:
    agent = Agent(TestModel(custom_output_text="Done."))

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        return a + b

    async with agent.run_stream_events("add") as events:
        chunks = await collect(event_chunks(events))
    types = [chunk["type"] for chunk in chunks]
    assert types[:2] == ["start", "start-step"]
    assert {
        "type": "tool-output-available",
        "toolCallId": "pyd_ai_tool_call_id__add",
        "output": 0,
    } in chunks
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    assert text == "Done."
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}


async def test_a_failing_tool_is_a_tool_output_error() -> None:
    async def calls_once(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        if len(messages) == 1:
            yield {0: DeltaToolCall(name="boom", json_args="{}", tool_call_id="call-1")}
        else:
            yield "Sorry."

    agent = Agent(FunctionModel(stream_function=calls_once))

    @agent.tool_plain
    def boom() -> str:
        from pydantic_ai import ModelRetry

        raise ModelRetry("the service is down")

    chunks = await collect(agent_chunks(agent, "go"))
    errors = [c for c in chunks if c["type"] == "tool-output-error"]
    assert len(errors) == 1
    assert errors[0]["toolCallId"] == "call-1"
    assert "the service is down" in errors[0]["errorText"]
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}


async def test_a_model_error_ends_with_a_safe_message() -> None:
    async def fails(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "Hel"
        raise ModelHTTPError(503, "fake-model", body={"error": "secret detail"})

    chunks = await collect(agent_chunks(Agent(FunctionModel(stream_function=fails)), "hi"))
    assert chunks[-3:] == [
        {"type": "text-delta", "id": "text-1", "delta": "Hel"},
        {"type": "text-end", "id": "text-1"},
        {"type": "error", "errorText": "the model endpoint answered HTTP 503"},
    ]
    assert "secret" not in repr(chunks)


async def test_a_stream_source_error_keeps_its_words() -> None:
    async def fails(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        raise StreamSourceError("the model is tired")
        yield ""  # pragma: no cover

    chunks = await collect(agent_chunks(Agent(FunctionModel(stream_function=fails)), "hi"))
    assert chunks[-1] == {"type": "error", "errorText": "the model is tired"}


async def test_a_stop_cancels_the_running_tool() -> None:
    running, cancelled = anyio.Event(), anyio.Event()

    async def calls(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        yield {0: DeltaToolCall(name="wait", json_args="{}", tool_call_id="call-1")}

    agent = Agent(FunctionModel(stream_function=calls))

    @agent.tool_plain
    async def wait() -> str:
        running.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return "never"  # pragma: no cover

    end = await stop_in_engine(agent_chunks(agent, "go"), running)
    assert end.state is StreamState.CANCELLED
    with anyio.fail_after(5):
        await cancelled.wait()


def test_ui_messages_become_the_message_history() -> None:
    history = to_model_messages(
        [
            {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "weather?"}]},
            {
                "id": "m1",
                "role": "assistant",
                "parts": [
                    {"type": "step-start"},
                    {
                        "type": "tool-weather",
                        "toolCallId": "call-1",
                        "state": "output-available",
                        "input": {"city": "Paris"},
                        "output": "sunny",
                    },
                    {"type": "step-start"},
                    {"type": "text", "text": "It is sunny.", "state": "done"},
                ],
            },
        ]
    )
    request, call, result, answer = history
    assert isinstance(request, ModelRequest)
    assert isinstance(call, ModelResponse)
    assert call.parts == [ToolCallPart("weather", {"city": "Paris"}, tool_call_id="call-1")]
    assert isinstance(result, ModelRequest)
    assert result.parts[0].content == "sunny"
    assert isinstance(answer, ModelResponse)
    assert answer.parts == [TextPart("It is sunny.")]
    with pytest.raises(ValueError, match="not AI SDK UI messages"):
        to_model_messages([{"role": "robot"}])


@pytest.mark.node
@pytest.mark.slow
def test_the_example_resumes_a_cut_answer_with_ai5() -> None:
    assert_resumed_exactly(cut_and_resume_with_ai5("pydantic_ai_app"))
