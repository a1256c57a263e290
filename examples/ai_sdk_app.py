"""A minimal FastAPI chat backend that the real AI SDK ``useChat`` (v4 and v5+) works against,
with answers that survive refreshes and cut connections.

Run from the repository root::

    uvicorn examples.ai_sdk_app:app            # or: create_app(delay_ms=..., words=...)

Routes (stable; the npm conformance tests rely on them):

``POST /api/chat``
    v5+ body ``{id, messages, trigger, messageId?}`` (or vercel/ai-chatbot's ``{id, message}``)
    -> 200 UI message stream (SSE). v4 body ``{id, messages}`` -> 200 data stream.
    Starts the fake model in the engine (not in the request) and makes it the chat's active
    stream. ``?target=<ai version>`` fits v5 events to that client (default ``5.0.0``).
    Invalid body -> 400 ``{"error": {"code", "message"}}``.
``GET /api/chat/{id}/stream``
    v5+ resume: 200 full replay of the active stream (same ``messageId``), or only what
    follows ``Last-Event-ID`` / ``?after=<seq>``; 204 when the chat has no active stream.
``GET /api/chat?chatId={id}``
    v4 resume: 200 data stream of the active stream; 200 ``append-message`` when the last
    answer finished less than 15 s ago; else (idle or unknown chat) 200 with an empty body:
    the v4 client has no 204 handling. Missing or invalid ``chatId`` -> 400.
``POST /api/chat/{id}/stop``
    Cancel the chat's active stream -> 200 ``{"stopped": true|false}``; unknown chat -> 404.
``GET /api/chat/{id}/messages``
    The stored messages (UI messages) -> 200 ``{"messages": [...], "activeStreamId": ...}``.
``GET /healthz``
    200 ``{"ok": true}``.

The fake model answers with reasoning, a ``getWeather`` tool call (streamed input, then
output), a ``data-weather`` part, text and a source. Environment: ``EXAMPLE_DELAY_MS``
(pause between events in ms, default 40; ``UNBROKEN_EXAMPLE_DELAY`` in seconds wins when
set) and ``EXAMPLE_WORDS`` (answer length in words, default 24).

Chats live in memory; the engine (with a `MemoryBackend`) lives in the app's lifespan. When
a stream ends, in any state, the assembled assistant message is stored and the chat's active
stream is cleared if it is still that stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from unbroken import MemoryBackend, ProtocolError, StreamEnd, StreamEngine, StreamState
from unbroken.asgi import error_response, resume_after
from unbroken.protocols.ai_sdk import (
    DATA_STREAM_HEADERS,
    ChatRequest,
    ClientTarget,
    DataStreamResponse,
    UIEvent,
    UIMessageAssembler,
    UIMessageStreamBuilder,
    UIMessageStreamResponse,
    append_message_response,
    decode_event,
    generate_id,
    is_valid_id,
    parse_chat_request,
    ui_events_to_chunks,
)

__all__ = ["app", "create_app"]

APPEND_MESSAGE_WINDOW = 15.0  # seconds a finished answer is offered to v4 resumes

_ANSWER_TEXT = (
    "In Paris it is sunny and 21 degrees, with a light breeze from the west; a fine day for "
    "a walk along the Seine, and the evening should stay dry and mild until late."
)
_ANSWER = _ANSWER_TEXT.split(" ")


@dataclass
class Chat:
    id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    active_stream_id: str | None = None
    finished_at: float | None = None


async def fake_model(
    message_id: str, question: str, *, delay: float, words: int
) -> AsyncIterator[list[UIEvent]]:
    """A slow, deterministic model: reasoning, a tool call, data, text, a source."""
    b = UIMessageStreamBuilder(message_id)
    yield b.start(metadata={"model": "demo"})
    yield b.start_step()
    for word in f"The user asks: {question!r}. I should check the weather.".split(" "):
        await anyio.sleep(delay)
        yield b.reasoning(word + " ")
    yield b.tool_input_start("call-1", "getWeather")
    for piece in ['{"city":', '"Paris"}']:
        await anyio.sleep(delay)
        yield b.tool_input_delta("call-1", piece)
    yield b.tool_call("call-1", "getWeather", {"city": "Paris"})
    await anyio.sleep(delay)
    weather = {"city": "Paris", "temperature": 21, "condition": "sunny"}
    yield b.tool_result("call-1", weather)
    yield b.data("weather", weather, id="weather-1")
    yield b.start_step()
    for index in range(words):
        await anyio.sleep(delay)
        word = _ANSWER[index % len(_ANSWER)]
        yield b.text(word if index == 0 else " " + word)
    yield b.source_url("https://example.com/weather/paris", title="Paris weather")
    yield b.finish(finish_reason="stop", metadata={"words": words})


def _question(request: ChatRequest) -> str:
    message = request.last_user_message
    if message is None:
        return ""
    return "".join(p.get("text", "") for p in message["parts"] if p.get("type") == "text")


def _delay_seconds() -> float:
    if os.environ.get("UNBROKEN_EXAMPLE_DELAY"):
        return float(os.environ["UNBROKEN_EXAMPLE_DELAY"])
    return float(os.environ.get("EXAMPLE_DELAY_MS", "40")) / 1000


def create_app(*, delay_ms: float | None = None, words: int | None = None) -> FastAPI:
    """The example app. ``delay_ms``/``words`` default to ``EXAMPLE_DELAY_MS``/``EXAMPLE_WORDS``."""
    delay = _delay_seconds() if delay_ms is None else delay_ms / 1000
    answer_words = words if words is not None else int(os.environ.get("EXAMPLE_WORDS", 24))
    chats: dict[str, Chat] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with StreamEngine(MemoryBackend()) as engine:
            app.state.engine = engine
            yield

    app = FastAPI(title="unbroken AI SDK example", lifespan=lifespan)
    app.state.chats = chats

    def engine_of(request: Request) -> StreamEngine:
        engine: StreamEngine = request.app.state.engine
        return engine

    def target_of(request: Request) -> ClientTarget:
        try:
            return ClientTarget.parse(request.query_params.get("target", "5.0.0"))
        except ValueError as exc:
            raise ProtocolError(str(exc)) from exc

    async def store_answer(engine: StreamEngine, chat: Chat, stream_id: str) -> None:
        assembler = UIMessageAssembler(strict=False)
        async for item in engine.read(stream_id):
            if isinstance(item, StreamEnd):
                break
            try:
                assembler.feed(decode_event(item.data))
            except ProtocolError:
                continue
        message = assembler.message
        if message["parts"]:
            chat.messages = [m for m in chat.messages if m.get("id") != message["id"]]
            chat.messages.append(message)
        if chat.active_stream_id == stream_id:  # compare-and-set: a newer stream may own it
            chat.active_stream_id = None
            chat.finished_at = time.time()

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return error_response(400, "invalid_request", str(exc))

    @app.post("/api/chat")
    async def post_chat(request: Request) -> Response:
        engine = engine_of(request)
        body = parse_chat_request(await request.body())
        target = target_of(request) if body.protocol == "v5" else None
        chat = chats.setdefault(body.chat_id, Chat(body.chat_id))
        if len(body.messages) == 1 and chat.messages:
            # vercel/ai-chatbot sends only the new message: append it.
            known = {m["id"] for m in chat.messages}
            chat.messages += [m for m in body.messages if m["id"] not in known]
        else:
            chat.messages = list(body.messages)
        stream_id = generate_id("stream-")
        message_id = generate_id("msg-")

        async def on_end(end: StreamEnd) -> None:
            await store_answer(engine, chat, stream_id)

        source = fake_model(message_id, _question(body), delay=delay, words=answer_words)
        await engine.start(stream_id, ui_events_to_chunks(source), on_end=on_end)
        chat.active_stream_id = stream_id
        if body.protocol == "v4":
            return DataStreamResponse(engine, stream_id)
        return UIMessageStreamResponse(engine, stream_id, target=target or "5.0.0")

    @app.get("/api/chat/{chat_id}/stream")
    async def resume_v5(chat_id: str, request: Request) -> Response:
        after = resume_after(request)
        target = target_of(request)
        chat = chats.get(chat_id)
        if chat is None or chat.active_stream_id is None:
            return Response(status_code=204)
        return UIMessageStreamResponse(
            engine_of(request), chat.active_stream_id, after=after, target=target
        )

    @app.get("/api/chat")
    async def resume_v4(request: Request) -> Response:
        chat_id = request.query_params.get("chatId")
        if not chat_id:
            return error_response(
                400, "missing_chat_id", "the 'chatId' query parameter is required"
            )
        if not is_valid_id(chat_id):
            return error_response(400, "invalid_chat_id", "'chatId' is not a valid chat id")
        after = resume_after(request)
        chat = chats.get(chat_id)
        if chat is None:
            # A chat this server never saw has nothing to resume, like an idle one.
            return Response(b"", status_code=200, headers=DATA_STREAM_HEADERS)
        if chat.active_stream_id is not None:
            return DataStreamResponse(engine_of(request), chat.active_stream_id, after=after)
        recent = chat.finished_at is not None and (
            time.time() - chat.finished_at < APPEND_MESSAGE_WINDOW
        )
        if recent and chat.messages and chat.messages[-1]["role"] == "assistant":
            return append_message_response(chat.messages[-1])
        return Response(b"", status_code=200, headers=DATA_STREAM_HEADERS)

    @app.post("/api/chat/{chat_id}/stop")
    async def stop(chat_id: str, request: Request) -> Response:
        chat = chats.get(chat_id)
        if chat is None:
            return error_response(404, "chat_not_found", "no such chat")
        stream_id = chat.active_stream_id
        if stream_id is None:
            return JSONResponse({"stopped": False})
        state = await engine_of(request).cancel(stream_id)
        return JSONResponse({"stopped": state is StreamState.CANCELLED})

    @app.get("/api/chat/{chat_id}/messages")
    async def messages(chat_id: str) -> Response:
        chat = chats.get(chat_id)
        if chat is None:
            return error_response(404, "chat_not_found", "no such chat")
        return JSONResponse({"messages": chat.messages, "activeStreamId": chat.active_stream_id})

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


app = create_app()
