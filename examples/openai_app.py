"""A resumable AI SDK chat backend whose answers stream straight from the ``openai`` SDK.

Run from the repository root (``pip install 'unbroken[openai,chat]'``)::

    OPENAI_API_KEY=sk-... uvicorn examples.openai_app:app

It serves ``POST /api/chat``, ``GET /api/chat/{id}/stream`` (resume, ai 5+),
``GET /api/chat?chatId=`` (resume, ai 4) and ``POST /api/chat/{id}/stop`` for ``useChat({
resume: true })``. Answers use the Chat Completions API, which every OpenAI-compatible
server speaks (vLLM, Ollama, LM Studio, …); reasoning that such servers send shows as a
reasoning part.

Environment: ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` (read by the SDK), ``UNBROKEN_EXAMPLE_MODEL``
(default ``gpt-4o-mini``), ``REDIS_URL`` (share answers between workers; memory otherwise).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from openai import AsyncOpenAI

from unbroken import Backend
from unbroken.fastapi import ChatTurn, ResumableChat
from unbroken.integrations.openai import chat_completion_chunks, to_chat_messages

MODEL = os.environ.get("UNBROKEN_EXAMPLE_MODEL", "gpt-4o-mini")
# Local servers take any key, but the SDK wants one.
client = AsyncOpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "unused")


def answer(turn: ChatTurn) -> AsyncIterator[dict[str, Any]]:
    # Return the adapter's generator itself: a stop closes it, which closes the request.
    request = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            *to_chat_messages(turn.messages),
        ],
        stream=True,
    )
    return chat_completion_chunks(request, message_id=turn.message_id)


def make_backend() -> Backend | None:
    url = os.environ.get("REDIS_URL")
    if not url:
        return None
    from unbroken.backends.redis import RedisBackend

    return RedisBackend(url)


chat = ResumableChat(answer, backend=make_backend())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with client, chat.running():  # the SDK's connections close with the app
        yield


app = FastAPI(lifespan=lifespan)
app.include_router(chat.router)
