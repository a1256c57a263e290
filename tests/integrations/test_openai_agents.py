"""The OpenAI Agents SDK adapter, with the SDK's own offline model (``agents.testing.
ScriptedModel``) and real function tools; a stop through a real engine; the example against
the real ``ai@5``."""

from __future__ import annotations

import anyio
import pytest

pytest.importorskip("agents", reason="needs the 'openai-agents' extra")

from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call

from tests.integrations._frameworks import (
    assert_resumed_exactly,
    collect,
    cut_and_resume_with_ai5,
    stop_in_engine,
)
from unbroken import StreamState
from unbroken.integrations.openai_agents import run_chunks, to_input_items

pytestmark = pytest.mark.anyio

set_tracing_disabled(True)


@function_tool
async def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


async def test_tool_call_and_text() -> None:
    model = ScriptedModel(
        [
            [function_call("weather", {"city": "Paris"}, call_id="call-1")],
            [assistant_message("It is sunny.")],
        ]
    )
    agent = Agent(name="a", model=model, tools=[weather])
    chunks = await collect(run_chunks(Runner.run_streamed(agent, "weather?"), message_id="m1"))
    assert chunks == [
        {"type": "start", "messageId": "m1"},
        {"type": "start-step"},
        {"type": "tool-input-start", "toolCallId": "call-1", "toolName": "weather"},
        {"type": "tool-input-delta", "toolCallId": "call-1", "inputTextDelta": '{"city":"Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call-1",
            "toolName": "weather",
            "input": {"city": "Paris"},
        },
        {"type": "tool-output-available", "toolCallId": "call-1", "output": "sunny in Paris"},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "It is sunny."},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    ]


async def test_a_model_error_ends_with_a_safe_message() -> None:
    model = ScriptedModel([ModelStep.raise_error(RuntimeError("secret detail"))])
    chunks = await collect(run_chunks(Runner.run_streamed(Agent(name="a", model=model), "hi")))
    assert chunks[-1] == {"type": "error", "errorText": "the agent failed while answering"}
    assert "secret" not in repr(chunks)


async def test_too_many_turns_ends_with_a_safe_message() -> None:
    call = [function_call("weather", {"city": "Paris"}, call_id="call-1")]
    agent = Agent(name="a", model=ScriptedModel([call, call]), tools=[weather])
    chunks = await collect(run_chunks(Runner.run_streamed(agent, "hi", max_turns=1)))
    assert chunks[-1] == {"type": "error", "errorText": "the agent took more turns than it may"}


async def test_a_stop_cancels_the_running_tool() -> None:
    running, cancelled = anyio.Event(), anyio.Event()

    @function_tool
    async def wait(city: str) -> str:
        """Waits forever."""
        running.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return "never"  # pragma: no cover

    model = ScriptedModel([[function_call("wait", {"city": "Paris"}, call_id="call-1")]])
    agent = Agent(name="a", model=model, tools=[wait])
    end = await stop_in_engine(run_chunks(Runner.run_streamed(agent, "go")), running)
    assert end.state is StreamState.CANCELLED
    with anyio.fail_after(5):
        await cancelled.wait()


def test_ui_messages_become_input_items() -> None:
    items = to_input_items(
        [
            {"role": "user", "parts": [{"type": "text", "text": "weather?"}]},
            {
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
                    {"type": "text", "text": "It is sunny."},
                ],
            },
        ]
    )
    assert items == [
        {"role": "user", "content": "weather?"},
        {
            "type": "function_call",
            "call_id": "call-1",
            "name": "weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call-1", "output": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]


@pytest.mark.node
@pytest.mark.slow
def test_the_example_resumes_a_cut_answer_with_ai5() -> None:
    assert_resumed_exactly(cut_and_resume_with_ai5("openai_agents_app"))
