"""The LangChain / LangGraph adapter, with LangChain's fake chat model (streaming tool calls
too) in a small LangGraph graph with a real ``ToolNode``; a stop through a real engine; the
example against the real ``ai@5``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, TypedDict

import anyio
import pytest

pytest.importorskip("langgraph", reason="needs the 'langchain' extra")

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, AnyMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import BaseTool, tool
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

from tests.integrations._frameworks import (
    assert_resumed_exactly,
    collect,
    cut_and_resume_with_ai5,
    stop_in_engine,
)
from unbroken import StreamState
from unbroken.integrations.langchain import event_chunks, message_chunks, to_messages

pytestmark = pytest.mark.anyio


class ToolCallingFakeModel(GenericFakeChatModel):
    """GenericFakeChatModel that also streams its messages' tool calls, in two pieces each,
    and reasoning from ``additional_kwargs["reasoning_content"]``."""

    def _stream(self, messages: Any, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        message = next(self.messages)
        assert isinstance(message, AIMessage)
        if reasoning := message.additional_kwargs.get("reasoning_content"):
            extra = {"reasoning_content": reasoning}
            chunk = AIMessageChunk(content="", id=message.id, additional_kwargs=extra)
            yield ChatGenerationChunk(message=chunk)
        for call in message.tool_calls:
            args = json.dumps(call["args"])
            for first, piece in ((True, args[:9]), (False, args[9:])):
                chunk = {
                    "name": call["name"] if first else None,
                    "id": call["id"] if first else None,
                    "args": piece,
                    "index": 0,
                }
                message_chunk = AIMessageChunk(content="", id=message.id, tool_call_chunks=[chunk])
                yield ChatGenerationChunk(message=message_chunk)
        for word in str(message.content).split(" ") if message.content else ():
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " ", id=message.id))


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def make_graph(script: list[AIMessage], tools: list[BaseTool]) -> Any:
    model = ToolCallingFakeModel(messages=iter(script))

    async def call_model(state: State) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(State)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition)
    builder.add_edge("tools", "model")
    return builder.compile()


@tool
async def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def weather_script() -> list[AIMessage]:
    call = {"name": "weather", "args": {"city": "Paris"}, "id": "call-1"}
    return [
        AIMessage(
            content="",
            id="ai-1",
            tool_calls=[call],
            additional_kwargs={"reasoning_content": "Let me check."},
        ),
        AIMessage(content="It is sunny.", id="ai-2"),
    ]


EXPECTED = [
    {"type": "start", "messageId": "m1"},
    {"type": "start-step"},
    {"type": "reasoning-start", "id": "reasoning-1"},
    {"type": "reasoning-delta", "id": "reasoning-1", "delta": "Let me check."},
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
    {"type": "text-delta", "id": "text-2", "delta": "It "},
    {"type": "text-delta", "id": "text-2", "delta": "is "},
    {"type": "text-delta", "id": "text-2", "delta": "sunny. "},
    {"type": "text-end", "id": "text-2"},
    {"type": "finish-step"},
    {"type": "finish", "finishReason": "stop"},
]


async def test_astream_events_of_a_graph() -> None:
    graph = make_graph(weather_script(), [weather])
    events = graph.astream_events({"messages": [HumanMessage("weather?")]}, version="v2")
    assert await collect(event_chunks(events, message_id="m1")) == EXPECTED


@pytest.mark.parametrize(
    "options",
    [{}, {"stream_mode": ["messages", "updates"]}, {"subgraphs": True}, {"version": "v2"}],
    ids=["messages", "several-modes", "subgraphs", "v2"],
)
async def test_stream_mode_messages_of_a_graph(options: dict[str, Any]) -> None:
    graph = make_graph(weather_script(), [weather])
    stream = graph.astream(
        {"messages": [HumanMessage("weather?")]}, **{"stream_mode": "messages", **options}
    )
    assert await collect(message_chunks(stream, message_id="m1")) == EXPECTED


async def test_a_failing_tool_is_a_tool_output_error() -> None:
    @tool
    async def broken(city: str) -> str:
        """Always fails."""
        raise ValueError("the service is down")

    call = {"name": "broken", "args": {"city": "Paris"}, "id": "call-1"}
    script = [AIMessage(content="", id="a", tool_calls=[call]), AIMessage(content="Sorry.", id="b")]
    graph = make_graph(script, [broken])
    events = graph.astream_events({"messages": [HumanMessage("go")]}, version="v2")
    chunks = await collect(event_chunks(events))
    (error,) = [c for c in chunks if c["type"] == "tool-output-error"]
    assert error["toolCallId"] == "call-1"
    assert "the service is down" in error["errorText"]  # what the model was told, too
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}


async def test_an_error_ends_with_a_safe_message() -> None:
    async def fails(state: State) -> dict[str, Any]:
        raise RuntimeError("secret detail")

    builder = StateGraph(State)
    builder.add_node("model", fails)
    builder.add_edge(START, "model")
    events = builder.compile().astream_events({"messages": [HumanMessage("hi")]}, version="v2")
    chunks = await collect(event_chunks(events))
    assert chunks[-1] == {
        "type": "error",
        "errorText": "the model or a tool failed while answering",
    }
    assert "secret" not in repr(chunks)


@pytest.mark.parametrize(
    "mode",
    ["events", "messages"],
)
async def test_a_stop_cancels_the_running_tool(mode: str) -> None:
    running, cancelled = anyio.Event(), anyio.Event()

    @tool
    async def wait(city: str) -> str:
        """Waits forever."""
        running.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return "never"  # pragma: no cover

    call = {"name": "wait", "args": {"city": "Paris"}, "id": "call-1"}
    graph = make_graph([AIMessage(content="", id="a", tool_calls=[call])], [wait])
    inputs = {"messages": [HumanMessage("go")]}
    source: AsyncIterator[Any]
    if mode == "events":
        source = event_chunks(graph.astream_events(inputs, version="v2"))
    else:
        source = message_chunks(graph.astream(inputs, stream_mode="messages"))
    end = await stop_in_engine(source, running)
    assert end.state is StreamState.CANCELLED
    with anyio.fail_after(5):
        await cancelled.wait()


def test_ui_messages_become_langchain_messages() -> None:
    messages = to_messages(
        [
            {"role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "parts": [{"type": "text", "text": "weather?"}]},
            {
                "role": "assistant",
                "parts": [
                    {"type": "step-start"},
                    {"type": "reasoning", "text": "hmm"},
                    {
                        "type": "tool-weather",
                        "toolCallId": "call-1",
                        "state": "output-available",
                        "input": {"city": "Paris"},
                        "output": {"sky": "clear"},
                    },
                    {"type": "step-start"},
                    {"type": "text", "text": "It is sunny."},
                ],
            },
        ]
    )
    assert [m.type for m in messages] == ["system", "human", "ai", "tool", "ai"]
    call = messages[2]
    assert isinstance(call, AIMessage)
    assert call.tool_calls[0]["id"] == "call-1"
    assert call.tool_calls[0]["args"] == {"city": "Paris"}
    result = messages[3]
    assert isinstance(result, ToolMessage)
    assert (result.tool_call_id, result.content) == ("call-1", '{"sky": "clear"}')
    assert messages[4].content == "It is sunny."


@pytest.mark.node
@pytest.mark.slow
def test_the_example_resumes_a_cut_answer_with_ai5() -> None:
    assert_resumed_exactly(cut_and_resume_with_ai5("langgraph_app"))
