"""A resumable AI SDK chat backend whose answers stream straight from the ``anthropic`` SDK.

Run from the repository root (``pip install 'unbroken[anthropic,chat]'``)::

    ANTHROPIC_API_KEY=sk-ant-... uvicorn examples.anthropic_app:app

It serves ``POST /api/chat``, ``GET /api/chat/{id}/stream`` (resume, ai 5+),
``GET /api/chat?chatId=`` (resume, ai 4) and ``POST /api/chat/{id}/stop`` for ``useChat({
resume: true })``. Claude's extended thinking, when the model sends it, shows as a reasoning
part.

Environment: ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY`` (read by the SDK),
``UNBROKEN_EXAMPLE_MODEL`` (default ``claude-sonnet-4-5``), ``REDIS_URL`` (share answers
between workers; memory otherwise).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anthropic import AsyncAnthropic
from fastapi import FastAPI

from unbroken import Backend
from unbroken.fastapi import ChatTurn, ResumableChat
from unbroken.integrations.anthropic import message_chunks, to_anthropic_messages

MODEL = os.environ.get("UNBROKEN_EXAMPLE_MODEL", "claude-sonnet-4-5")
# Local compatible servers take any key, but the SDK wants one.
client = AsyncAnthropic(api_key=os.environ.get("ANTHROPIC_API_KEY") or "unused")


def answer(turn: ChatTurn) -> AsyncIterator[dict[str, Any]]:
    # Return the adapter's generator itself: a stop closes it, which closes the request.
    request = client.messages.stream(
        model=MODEL,
        max_tokens=1024,
        system="Answer briefly.",
        messages=to_anthropic_messages(turn.messages),
    )
    return message_chunks(request, message_id=turn.message_id)


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
