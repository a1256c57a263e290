"""The two ASGI apps `system_bench.py` runs under uvicorn (benchmark-only; not the product).

- ``product_app``: the reference chat service exactly as ``unbroken chat`` serves it
  (`create_app(Settings.from_env())`, `tuned_for_serving`), except that its demo model is
  `StampedDemoModel`.
- ``plain_app``: the baseline, plain streaming with no engine: ``POST /api/chat`` runs the
  same demo model through the same `ui_chunks` and the same v5 `UIMessageStreamEncoder`, and
  writes each chunk straight to the response. No store, no engine, no resume; a client that
  leaves stops the generation.
- ``stored_plain_app``: the second baseline, the chat service with resumability taken out:
  the same app, authentication and SQL (`Store.start_answer` to begin an answer,
  ``finalize_message`` to store it), but ``POST /api/chat`` streams the model's chunks
  straight to the response, as ``plain_app`` does. What a chat service that stores its
  conversations but cannot resume them would do; the product's cost over it is the cost of
  resumability alone.
- ``floor_app``: the floor of a resume route, used by `peers_bench.py`: a route that
  answers one event at once, through uvicorn and FastAPI with nothing else.

`StampedDemoModel` is the demo model plus one line per answer appended to the file named by
``UNBROKEN_BENCH_STAMPS``: ``<prompt>\\t<loop time when the model started>``. The demo model
emits token ``k`` at ``started + k / tokens_per_second`` (a fixed schedule), and the loop
clock is CLOCK_MONOTONIC in every process of this machine, so the load generator knows when
each chunk it receives was produced and can measure the delay added on the way.

Run by ``uvicorn --factory --app-dir benchmarks system_apps:product_app`` (or
``:plain_app``) with the chat service's environment variables.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response, StreamingResponse

from unbroken import Chunk, StreamEnd, StreamState
from unbroken.chat import app as chat_app
from unbroken.chat.deps import CurrentIdentity, CurrentServices, Services
from unbroken.chat.events import ProducedAnswer, ui_chunks
from unbroken.chat.models import ChatModel, ModelEvent, message_text
from unbroken.chat.models import make_model as product_make_model
from unbroken.chat.models.demo import DemoModel
from unbroken.chat.settings import Settings
from unbroken.chat.store import Started, StreamRecord
from unbroken.cli import tuned_for_serving
from unbroken.exceptions import ProtocolError
from unbroken.protocols.ai_sdk import (
    UIMessageStreamEncoder,
    encode_event,
    generate_id,
    parse_chat_request,
)

__all__ = ["StampedDemoModel", "plain_app", "plain_frames", "product_app", "stored_plain_app"]

STAMPS_ENV = "UNBROKEN_BENCH_STAMPS"
GC_LOG_ENV = "UNBROKEN_BENCH_GC_LOG"


def _log_gc_pauses() -> None:
    """Append ``<generation>\t<pause ms>`` for every garbage collection of 1 ms or more to
    the file named by ``UNBROKEN_BENCH_GC_LOG`` (the benchmark reports the pauses: a full
    collection stops every stream in the process at once)."""
    path = os.environ.get(GC_LOG_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause = (time.perf_counter() - started[0]) * 1000
        if pause >= 1.0:
            os.write(fd, f"{info['generation']}\t{pause:.2f}\n".encode())

    gc.callbacks.append(on_gc)


class StampedDemoModel(DemoModel):
    """The demo model, recording when each answer's token schedule starts."""

    def __init__(self, *, tokens_per_second: float, stamps_path: str | None) -> None:
        super().__init__(tokens_per_second=tokens_per_second)
        # O_APPEND: each line is one write(2), so several workers can share the file.
        self._fd = (
            os.open(stamps_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if stamps_path
            else None
        )

    async def stream(self, messages: Sequence[dict[str, Any]]) -> AsyncIterator[ModelEvent]:
        prompt = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
        inner = super().stream(messages)
        try:
            # The demo model reads time.monotonic() on its first step, which runs right
            # after this line in the same step of the event loop: microseconds apart.
            started = time.monotonic()
            if self._fd is not None:
                os.write(self._fd, f"{prompt}\t{started!r}\n".encode())
            async for event in inner:
                yield event
        finally:
            await inner.aclose()

    async def aclose(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _model(settings: Settings) -> ChatModel:
    if settings.model != "demo":
        return product_make_model(settings)
    return StampedDemoModel(
        tokens_per_second=settings.demo_tokens_per_second,
        stamps_path=os.environ.get(STAMPS_ENV),
    )


def product_app() -> FastAPI:
    """The chat service as the CLI runs it (`unbroken.cli.serving_app`: the app, tuned for
    serving), with the stamped demo model."""
    chat_app.make_model = _model  # type: ignore[assignment]  # the one change, see above
    _log_gc_pauses()
    return tuned_for_serving(chat_app.create_app(Settings.from_env()))


async def plain_frames(message_id: str, events: AsyncIterator[ModelEvent]) -> AsyncIterator[str]:
    """Plain streaming: the model's events through `ui_chunks`, `encode_event` and a v5
    encoder, one SSE frame per chunk, with no engine in between (what the baseline sends)."""
    encoder = UIMessageStreamEncoder()
    seq = offset = 0
    async for event in ui_chunks(message_id, events):
        data = encode_event(event)
        yield encoder.encode([Chunk(seq, data, offset)])
        seq += 1
        offset += len(data)
    yield encoder.encode([StreamEnd(StreamState.DONE, None, seq, offset)])


def stored_plain_app() -> FastAPI:
    """The chat service with plain streaming instead of the engine (see the module doc)."""
    app = product_app()

    async def post_chat(
        request: Request, services: CurrentServices, identity: CurrentIdentity
    ) -> Response:
        chat_request = parse_chat_request(await request.body())
        user_message = chat_request.last_user_message
        if user_message is None:
            return JSONResponse({"error": {"code": "invalid_request"}}, 400)
        begun = await services.store.start_answer(
            chat_request.chat_id,
            identity.user.id,
            title="bench",
            message_id=user_message["id"],
            parts=user_message.get("parts", []),
        )
        if not isinstance(begun, Started):
            return JSONResponse({"error": {"code": "conflict"}}, 409)
        history = [message.to_ui_message() for message in begun.history]
        frames = _stored_frames(services, begun.record, history)
        return StreamingResponse(frames, headers=UIMessageStreamEncoder.headers)

    # Ahead of the product's own POST /api/chat, which it shadows.
    app.router.routes.insert(0, APIRoute("/api/chat", post_chat, methods=["POST"]))
    return app


async def _stored_frames(
    services: Services, record: StreamRecord, history: list[dict[str, Any]]
) -> AsyncIterator[str]:
    """`plain_frames` of the answer, then (or when the client leaves) the answer stored, as
    the product's producer stores it: assembled as its events come (`ProducedAnswer`)."""
    encoder = UIMessageStreamEncoder()
    produced = ProducedAnswer(record)
    added = 0  # events given to `produced`: all of them are in the stored answer
    state = StreamState.CANCELLED
    seq = offset = 0
    try:
        async for event in ui_chunks(record.message_id, services.model.stream(history)):
            data = encode_event(event)
            produced.add(event, data)
            added += 1
            yield encoder.encode([Chunk(seq, data, offset)])
            seq += 1
            offset += len(data)
        state = StreamState.DONE
        yield encoder.encode([StreamEnd(state, None, seq, offset)])
    finally:
        with anyio.CancelScope(shield=True):
            answer = produced.as_logged(added)
            await services.answers.finalize(record, state, None, answer=answer)


def plain_app() -> FastAPI:
    """Plain streaming of the same model through the same encoder: no engine."""
    settings = Settings.from_env()
    model = _model(settings)
    _log_gc_pauses()
    app = FastAPI(title="plain streaming baseline")

    @app.post("/api/chat")
    async def post_chat(request: Request) -> Response:
        try:
            chat_request = parse_chat_request(await request.body())
        except ProtocolError as exc:
            return JSONResponse({"error": {"code": "invalid_request", "message": str(exc)}}, 400)
        history = [dict(m) for m in chat_request.messages]
        frames = plain_frames(generate_id(), model.stream(history))
        return StreamingResponse(frames, headers=UIMessageStreamEncoder.headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def floor_app() -> FastAPI:
    """The floor of any resume route on this server stack: ``GET /api/chat/{id}/stream``
    answers one UI message stream event at once, with no authentication, database, engine
    or Redis: what a request and its response cost in uvicorn and FastAPI alone. With
    ``REDIS_URL``, ``GET /api/chat/{id}/stream?redis=1`` first reads one key there (a GET
    through redis-py, on a connection kept open): the floor of a route that must read the
    stream from Redis before it answers."""
    from redis.asyncio import Redis

    app = FastAPI(title="HTTP floor")
    first_event = 'data: {"type":"start"}\n\n'
    url = os.environ.get("REDIS_URL")
    client = Redis.from_url(url) if url else None

    @app.get("/api/chat/{chat_id}/stream")
    async def resume(chat_id: str, redis: int = 0) -> Response:
        if redis and client is not None:
            await client.get(f"unbroken-floor:{chat_id}")

        async def frames() -> AsyncIterator[str]:
            yield first_event

        return StreamingResponse(frames(), headers=UIMessageStreamEncoder.headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
