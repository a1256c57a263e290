"""A resumable AI SDK chat backend whose answers come from a pydantic-ai agent.

Run from the repository root (``pip install 'unbroken[pydantic-ai,chat]'``)::

    OPENAI_API_KEY=sk-... uvicorn examples.pydantic_ai_app:app

It serves ``POST /api/chat``, ``GET /api/chat/{id}/stream`` (resume, ai 5+),
``GET /api/chat?chatId=`` (resume, ai 4) and ``POST /api/chat/{id}/stop`` for ``useChat({
resume: true })``. The agent has one tool, ``get_weather``.

Environment: ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` (any OpenAI-compatible Chat
Completions server), ``UNBROKEN_EXAMPLE_MODEL`` (default ``gpt-4o-mini``; ``test`` answers
offline with a scripted model), ``REDIS_URL`` (share answers between workers; memory
otherwise).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from unbroken import Backend
from unbroken.fastapi import ChatTurn, ResumableChat
from unbroken.integrations.pydantic_ai import agent_chunks, to_model_messages

ANSWER = "In Paris it is sunny and 21 °C today , a fine day ."


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 21 °C in {city}"


async def _scripted(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
    # Offline: call the tool first, then answer word by word (paced, so a client can be
    # cut mid-answer and resume).
    if len(messages) == 1:
        call = DeltaToolCall(name="get_weather", json_args='{"city": "Paris"}', tool_call_id="c1")
        yield {0: call}
        return
    for word in ANSWER.split():
        await anyio.sleep(0.03)
        yield word + " "


def make_model() -> Model | str:
    name = os.environ.get("UNBROKEN_EXAMPLE_MODEL", "gpt-4o-mini")
    if name == "test":
        return FunctionModel(stream_function=_scripted)
    from pydantic_ai.models.openai import OpenAIChatModel  # reads OPENAI_BASE_URL / _API_KEY

    return OpenAIChatModel(name)


agent = Agent(make_model(), tools=[get_weather], instructions="Answer briefly.")


def answer(turn: ChatTurn) -> AsyncIterator[dict[str, Any]]:
    # Return the adapter's generator itself: a stop closes it, which cancels the agent run.
    history = to_model_messages(turn.messages)  # the new question is the last message
    return agent_chunks(agent, message_history=history, message_id=turn.message_id)


def make_backend() -> Backend | None:
    url = os.environ.get("REDIS_URL")
    if not url:
        return None
    from unbroken.backends.redis import RedisBackend

    return RedisBackend(url)


chat = ResumableChat(answer, backend=make_backend())
app = FastAPI(lifespan=chat.lifespan)
app.include_router(chat.router)
