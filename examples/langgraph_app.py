"""A resumable AI SDK chat backend whose answers come from a LangGraph agent.

Run from the repository root (``pip install 'unbroken[langchain,chat]' langchain-openai``)::

    OPENAI_API_KEY=sk-... uvicorn examples.langgraph_app:app

It serves ``POST /api/chat``, ``GET /api/chat/{id}/stream`` (resume, ai 5+),
``GET /api/chat?chatId=`` (resume, ai 4) and ``POST /api/chat/{id}/stop`` for ``useChat({
resume: true })``. The graph is a model node and a tool node (``get_weather``) in a loop;
its ``astream_events`` become the answer.

Environment: ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` (any OpenAI-compatible Chat
Completions server), ``UNBROKEN_EXAMPLE_MODEL`` (default ``gpt-4o-mini``; ``test`` answers
offline with a scripted model, without langchain-openai), ``REDIS_URL`` (share answers
between workers; memory otherwise).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import anyio
from fastapi import FastAPI
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, AnyMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

from unbroken import Backend
from unbroken.fastapi import ChatTurn, ResumableChat
from unbroken.integrations.langchain import event_chunks, to_messages

ANSWER = "In Paris it is sunny and 21 °C today , a fine day ."


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 21 °C in {city}"


class _ScriptedModel(GenericFakeChatModel):
    """Offline: calls the tool first, then answers word by word (paced, so a client can be
    cut mid-answer and resume)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    async def _astream(
        self, messages: Any, *args: Any, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        if messages[-1].type != "tool":
            call = {"name": "get_weather", "args": '{"city": "Paris"}', "id": "c1", "index": 0}
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[call]))
            return
        for word in ANSWER.split():
            await anyio.sleep(0.03)
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))


def make_model() -> BaseChatModel:
    name = os.environ.get("UNBROKEN_EXAMPLE_MODEL", "gpt-4o-mini")
    if name == "test":
        return _ScriptedModel(messages=iter(()))
    from langchain_openai import ChatOpenAI  # reads OPENAI_BASE_URL / OPENAI_API_KEY

    return ChatOpenAI(model=name, streaming=True)


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


model = make_model().bind_tools([get_weather])


async def call_model(state: State) -> dict[str, list[AIMessage]]:
    return {"messages": [await model.ainvoke(state["messages"])]}


builder = StateGraph(State)
builder.add_node("model", call_model)
builder.add_node("tools", ToolNode([get_weather]))
builder.add_edge(START, "model")
builder.add_conditional_edges("model", tools_condition)
builder.add_edge("tools", "model")
graph = builder.compile()


def answer(turn: ChatTurn) -> AsyncIterator[dict[str, Any]]:
    # Return the adapter's generator itself: a stop closes it, which cancels the graph run.
    events = graph.astream_events({"messages": to_messages(turn.messages)}, version="v2")
    return event_chunks(events, message_id=turn.message_id)


def make_backend() -> Backend | None:
    url = os.environ.get("REDIS_URL")
    if not url:
        return None
    from unbroken.backends.redis import RedisBackend

    return RedisBackend(url)


chat = ResumableChat(answer, backend=make_backend())
app = FastAPI(lifespan=chat.lifespan)
app.include_router(chat.router)
