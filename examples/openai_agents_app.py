"""A resumable AI SDK chat backend whose answers come from an OpenAI Agents SDK agent.

Run from the repository root (``pip install 'unbroken[openai-agents,chat]'``)::

    OPENAI_API_KEY=sk-... uvicorn examples.openai_agents_app:app

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
from agents import (
    Agent,
    Model,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call
from fastapi import FastAPI
from openai import AsyncOpenAI
from openai.types.responses import Response, ResponseCompletedEvent, ResponseTextDeltaEvent

from unbroken import Backend
from unbroken.fastapi import ChatTurn, ResumableChat
from unbroken.integrations.openai_agents import run_chunks, to_input_items

set_tracing_disabled(True)  # no traces are sent to OpenAI from this example


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 21 °C in {city}"


ANSWER = "In Paris it is sunny and 21 °C today , a fine day ."


async def _words(call: ModelCall) -> AsyncIterator[Any]:
    # Offline: the answer word by word (paced, so a client can be cut mid-answer and resume).
    for n, word in enumerate(ANSWER.split()):
        await anyio.sleep(0.03)
        yield ResponseTextDeltaEvent(
            type="response.output_text.delta",
            item_id="answer",
            output_index=0,
            content_index=0,
            delta=word + " ",
            logprobs=[],
            sequence_number=n,
        )
    # The run takes the model's answer from the stream's last event, the completed response.
    response = Response.model_construct(
        id="scripted", status="completed", output=[assistant_message(ANSWER)], usage=None
    )
    yield ResponseCompletedEvent.model_construct(type="response.completed", response=response)


def _scripted(call: ModelCall) -> ModelStep:
    # Offline: call the tool first, then answer.
    last = call.input[-1] if isinstance(call.input, list) else {}
    if last.get("type") != "function_call_output":
        return ModelStep(output=[function_call("get_weather", {"city": "Paris"}, call_id="c1")])
    return ModelStep.stream(_words)


def make_model() -> Model:
    name = os.environ.get("UNBROKEN_EXAMPLE_MODEL", "gpt-4o-mini")
    if name == "test":
        return ScriptedModel([ModelStep.respond(_scripted)] * 10_000)
    # Chat Completions, which every OpenAI-compatible server speaks; reads OPENAI_BASE_URL.
    return OpenAIChatCompletionsModel(model=name, openai_client=AsyncOpenAI())


agent = Agent(
    name="assistant", instructions="Answer briefly.", model=make_model(), tools=[get_weather]
)


def answer(turn: ChatTurn) -> AsyncIterator[dict[str, Any]]:
    # Return the adapter's generator itself: a stop closes it, which cancels the run.
    result = Runner.run_streamed(agent, to_input_items(turn.messages))
    return run_chunks(result, message_id=turn.message_id)


def make_backend() -> Backend | None:
    url = os.environ.get("REDIS_URL")
    if not url:
        return None
    from unbroken.backends.redis import RedisBackend

    return RedisBackend(url)


chat = ResumableChat(answer, backend=make_backend())
app = FastAPI(lifespan=chat.lifespan)
app.include_router(chat.router)
