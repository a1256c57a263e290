"""The app the router tests serve: `ResumableChat` over a slow, deterministic answer.

Started in a thread (`create_app`) or as its own uvicorn process (``app``, configured by the
environment: ``ROUTER_TEST_REDIS_URL`` + ``ROUTER_TEST_PREFIX`` for a Redis backend,
``ROUTER_TEST_DELAY`` seconds between words, ``ROUTER_TEST_LEASE_TTL``).

The owner is the ``x-user`` header (none without it). ``GET /finished`` lists what this
process's ``on_finish`` received, so a test can see which worker reported which end.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, Request

from unbroken import Backend, StreamEngine, StreamSourceError
from unbroken.fastapi import ChatTurn, FinishedAnswer, ResumableChat
from unbroken.protocols.ai_sdk import UIEvent, UIMessageStreamBuilder

WORDS = [f"w{index}" for index in range(40)]
TEXT = " ".join(WORDS)


def question(turn: ChatTurn) -> str:
    message = turn.user_message or {}
    return "".join(p.get("text", "") for p in message.get("parts", []) if p.get("type") == "text")


def make_answer(delay: float) -> Any:
    async def answer(turn: ChatTurn) -> AsyncIterator[list[UIEvent]]:
        asked = question(turn)
        b = UIMessageStreamBuilder()
        yield b.start(metadata={"asked": asked})
        if "tool" in asked:
            yield b.tool_input_start("call-1", "lookup")
            yield b.tool_input_delta("call-1", '{"q":"x"}')
            yield b.tool_call("call-1", "lookup", {"q": "x"})
            yield b.tool_result("call-1", {"found": True})
        for index, word in enumerate(WORDS):
            await anyio.sleep(delay)
            if index == 5 and "fail" in asked:
                raise StreamSourceError("the model is tired")
            if index == 5 and "crash" in asked:
                raise RuntimeError("secret internal detail")
            yield b.text(word if index == 0 else " " + word)
        yield b.finish(finish_reason="stop")

    return answer


def user_of(request: Request) -> str | None:
    return request.headers.get("x-user")


def create_app(
    backend: Backend | None = None,
    *,
    delay: float = 0.01,
    lease_ttl: float = 1.0,
    resume_window: float = 15.0,
) -> FastAPI:
    finished: list[dict[str, Any]] = []

    async def on_finish(end: FinishedAnswer) -> None:
        finished.append(
            {
                "chatId": end.chat_id,
                "owner": end.owner,
                "streamId": end.stream_id,
                "state": end.state.value,
                "error": end.error,
                "message": end.message,
                "hasTurn": end.turn is not None,
                "pid": os.getpid(),
            }
        )

    chat = ResumableChat(
        make_answer(delay),
        engine=StreamEngine(backend, lease_ttl=lease_ttl, drain_timeout=1.0),
        owner=user_of,
        on_finish=on_finish,
        resume_window=resume_window,
    )
    app = FastAPI(lifespan=chat.lifespan)
    app.include_router(chat.router)

    @app.get("/finished")
    async def list_finished() -> list[dict[str, Any]]:
        return finished

    return app


def _from_env() -> FastAPI:
    backend: Backend | None = None
    url = os.environ.get("ROUTER_TEST_REDIS_URL")
    if url:
        from unbroken.backends.redis import RedisBackend

        backend = RedisBackend(url, key_prefix=os.environ["ROUTER_TEST_PREFIX"])
    return create_app(
        backend,
        delay=float(os.environ.get("ROUTER_TEST_DELAY", "0.01")),
        lease_ttl=float(os.environ.get("ROUTER_TEST_LEASE_TTL", "1.0")),
    )


app = _from_env() if os.environ.get("ROUTER_TEST_APP") else None
