"""`ResumableChat`: the AI SDK chat routes over one engine, for any FastAPI app."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Unpack

import anyio
from anyio.abc import TaskGroup
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from unbroken import Backend, MemoryBackend, StreamEngine, StreamState
from unbroken._signals import on_exit_signal
from unbroken.asgi import SHUTDOWN_STATE_KEY, EngineStreamResponse, ResponseOptions, resume_after
from unbroken.exceptions import (
    EngineClosedError,
    InvalidStreamIdError,
    ProtocolError,
    StreamNotFoundError,
    UnbrokenError,
)
from unbroken.integrations._router.answers import (
    AnswerFunction,
    Answers,
    ChatTurn,
    OnFinish,
)
from unbroken.integrations._router.errors import ApiError, GuardedRoute, not_found, read_body
from unbroken.integrations._router.pointers import (
    ChatPointer,
    ChatPointers,
    MemoryChatPointers,
    Replaced,
)
from unbroken.protocols.ai_sdk import (
    DATA_STREAM_HEADERS,
    ClientTarget,
    DataStreamResponse,
    UIMessageStreamResponse,
    append_message_response,
    generate_id,
    is_valid_id,
    parse_chat_request,
)

__all__ = ["STREAM_ID_HEADER", "ResumableChat"]

logger = logging.getLogger("unbroken")
# How long a stop waits for the claim of an answer that was just posted.
_CLAIM_GRACE, _CLAIM_POLL = 2.0, 0.02

Owner = Callable[..., Any]

_MAX_BODY = 4 * 1024 * 1024
#: The response header naming the stream an answer is read from.
STREAM_ID_HEADER = "x-unbroken-stream-id"


def _no_owner() -> None:
    return None


def _check_chat_id(chat_id: str, *, field: str = "chat id") -> None:
    if not is_valid_id(chat_id):
        raise ApiError(
            400,
            "invalid_request",
            f"the {field} must be 1-128 letters, digits or '._:~-', starting with a letter "
            "or digit",
        )


def _empty_data_stream() -> Response:
    """v4 "nothing to resume": 200 with an empty body (the v4 client cannot take a 204)."""
    return Response(b"", headers=dict(DATA_STREAM_HEADERS))


class ResumableChat:
    """The AI SDK chat routes, with answers that survive refreshes, cuts and other workers.

    See `unbroken.fastapi` for the routes, the arguments and what each end looks like.
    """

    def __init__(
        self,
        answer: AnswerFunction,
        *,
        backend: Backend | None = None,
        engine: StreamEngine | None = None,
        pointers: ChatPointers | None = None,
        owner: Owner | None = None,
        on_finish: OnFinish | None = None,
        prefix: str = "/api",
        resume_window: float = 15.0,
        target: str = "5.0.0",
        max_body_bytes: int = _MAX_BODY,
        **response_options: Unpack[ResponseOptions],
    ) -> None:
        if backend is not None and engine is not None:
            raise ValueError("pass either backend or engine, not both")
        if resume_window < 0:
            raise ValueError("resume_window must be >= 0")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        self.engine = engine if engine is not None else StreamEngine(backend or MemoryBackend())
        self.pointers = pointers if pointers is not None else _pointers_for(self.engine.backend)
        self.answer = answer
        self.on_finish = on_finish
        self.prefix = prefix.rstrip("/")
        self.resume_window = resume_window
        self.target = ClientTarget.parse(target)
        self.max_body_bytes = max_body_bytes
        self.response_options = response_options
        self._answers = Answers(self.engine, self.pointers, answer, on_finish)
        self._background: TaskGroup | None = None
        self.router = self._make_router(owner or _no_owner)

    # -- lifecycle ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ResumableChat]:
        """Run the chat's engine (and its pointers) for the block: put it in the app's own
        lifespan. On exit, running answers get the engine's ``drain_timeout`` to finish,
        then end ``interrupted`` (and are reported to ``on_finish``)."""
        async with self.pointers, self.engine, anyio.create_task_group() as background:
            self._background = background
            try:
                yield self
            finally:
                self._background = None
                background.cancel_scope.cancel()

    def lifespan(self, app: FastAPI) -> AbstractAsyncContextManager[dict[str, Any]]:
        """``FastAPI(lifespan=chat.lifespan)``: `running` as a lifespan of its own. It also
        hears the server's shutdown signal, so open answer streams end at once (without a
        terminal event: clients resume on another instance) instead of holding the server
        until its graceful timeout. In a lifespan of your own, do the same by yielding
        ``{unbroken.asgi.SHUTDOWN_STATE_KEY: event}`` and setting the event on shutdown."""
        return self._lifespan()

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[dict[str, Any]]:
        shutdown = anyio.Event()
        on_exit_signal(shutdown.set)
        async with self.running():
            yield {SHUTDOWN_STATE_KEY: shutdown}

    # -- routes ------------------------------------------------------------------------

    def _make_router(self, owner: Owner) -> APIRouter:
        router = APIRouter(route_class=GuardedRoute, tags=["chat"])
        # A default, not an Annotated alias: annotations here are strings that FastAPI
        # resolves in this module's globals, where a local alias does not exist.
        owner_id = Depends(owner)

        async def post_chat(request: Request, who: Any = owner_id) -> Response:
            """Start the answer to the chat's newest message and stream it (a v5+ body with
            ``trigger`` gets a UI message stream, a v4 body a data stream)."""
            return await self._post(request, _owner_id(who))

        async def resume_v5(
            chat_id: str,
            request: Request,
            who: Any = owner_id,
            after: Annotated[str | None, Query(description="Resume after this event id.")] = None,
        ) -> Response:
            """Resume the chat's answer (AI SDK v5+): everything after ``Last-Event-ID`` (or
            ``?after=``), then live; 204 when there is nothing to resume."""
            return await self._resume_v5(chat_id, request, _owner_id(who))

        async def resume_v4(
            who: Any = owner_id, chat_id: Annotated[str | None, Query(alias="chatId")] = None
        ) -> Response:
            """Resume the chat's answer (AI SDK v4): the running answer, the finished one as
            an ``append-message`` line within the resume window, or an empty body."""
            return await self._resume_v4(chat_id, _owner_id(who))

        async def stop_chat(chat_id: str, request: Request, who: Any = owner_id) -> JSONResponse:
            """Stop the chat's running answer, wherever it runs. Idempotent; an optional
            body ``{"streamId": ...}`` stops only that answer."""
            return await self._stop(chat_id, request, _owner_id(who))

        base = self.prefix + "/chat"
        router.add_api_route(base, post_chat, methods=["POST"], summary="Send a message")
        router.add_api_route(
            base + "/{chat_id}/stream", resume_v5, methods=["GET"], summary="Resume (AI SDK v5+)"
        )
        router.add_api_route(base, resume_v4, methods=["GET"], summary="Resume (AI SDK v4)")
        router.add_api_route(
            base + "/{chat_id}/stop", stop_chat, methods=["POST"], summary="Stop the answer"
        )
        return router

    def _target(self, request: Request) -> ClientTarget:
        raw = request.query_params.get("target")
        if raw is None:
            return self.target
        try:
            return ClientTarget.parse(raw)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from exc

    def _options(self, stream_id: str) -> ResponseOptions:
        """The response options, with the header that names the answer's stream (for a
        stop that must not cancel a newer answer)."""
        headers = {**(self.response_options.get("headers") or {}), STREAM_ID_HEADER: stream_id}
        return {**self.response_options, "headers": headers}

    def _v5(self, stream_id: str, after: int, target: ClientTarget) -> UIMessageStreamResponse:
        options = self._options(stream_id)
        return UIMessageStreamResponse(
            self.engine, stream_id, after=after, target=target, **options
        )

    def _v4(self, stream_id: str) -> DataStreamResponse:
        return DataStreamResponse(self.engine, stream_id, after=-1, **self._options(stream_id))

    async def _pointer(self, chat_id: str, owner: str) -> ChatPointer | None:
        """The chat's pointer if the chat is ``owner``'s (None for a foreign one too)."""
        pointer = await self.pointers.get(chat_id)
        if pointer is None or pointer.owner != owner:
            return None
        return pointer

    async def _post(self, request: Request, owner: str) -> Response:
        self._require_running()
        body = await read_body(request, self.max_body_bytes)
        chat_request = parse_chat_request(body)
        target = self._target(request)
        if not chat_request.messages:
            raise ApiError(400, "invalid_request", "the request has no message to answer")
        chat_id = chat_request.chat_id
        last_id = chat_request.messages[-1]["id"]
        pointer = await self.pointers.get(chat_id)
        if pointer is not None and pointer.owner != owner:
            raise not_found()
        expected = pointer.stream_id if pointer is not None else None
        if pointer is not None and expected is not None:
            attached = await self._settle_previous(
                chat_id, pointer, expected, chat_request.trigger, last_id
            )
            if attached:
                if chat_request.protocol == "v4":
                    return self._v4(expected)
                return self._v5(expected, -1, target)
        turn = ChatTurn(
            chat_id=chat_id,
            messages=chat_request.messages,
            owner=owner or None,
            message_id=generate_id("msg-"),
            stream_id=generate_id("s-"),
            trigger=chat_request.trigger,
            protocol=chat_request.protocol,
            extra=chat_request.extra,
        )
        replaced = await self.pointers.replace(
            chat_id,
            owner=owner,
            expected=expected,
            stream_id=turn.stream_id,
            user_message_id=last_id,
            ttl=self.engine.retention,
        )
        if replaced is Replaced.FOREIGN:
            raise not_found()
        if replaced is Replaced.MOVED:
            raise ApiError(409, "conflict", "another answer is starting in this chat; try again")
        try:
            await self._answers.start(turn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self.pointers.release(chat_id, turn.stream_id)
                except UnbrokenError:
                    logger.warning("could not release chat %r after a failed start", chat_id)
            raise
        if chat_request.protocol == "v4":
            return self._v4(turn.stream_id)
        return self._v5(turn.stream_id, -1, target)

    async def _settle_previous(
        self, chat_id: str, pointer: ChatPointer, stream_id: str, trigger: str, message_id: str
    ) -> bool:
        """Make way for a new answer in the chat: True to attach to the running one instead
        (the client sent the same message again), else the previous answer is ended (a
        running one is stopped; a dead producer's is reported)."""
        status = await self.engine.status(stream_id)
        if status is not None and not status.is_terminal:
            if trigger == "submit-message" and pointer.user_message_id == message_id:
                if not self.engine.produces(stream_id):
                    state = await self.engine.check_producer(stream_id)
                    if state is StreamState.ACTIVE:
                        return True
                else:
                    return True
            else:
                # A dead producer is recorded as such first, so its answer is reported.
                if self.engine.produces(stream_id) or (
                    await self.engine.check_producer(stream_id) is StreamState.ACTIVE
                ):
                    await self.engine.cancel(stream_id)
            status = await self.engine.status(stream_id)
        state, finished_at = (status.state, status.finished_at) if status else (None, None)
        if self._answers.orphaned(pointer, state, finished_at):
            await self._answers.report_orphan(chat_id, pointer)
        return False

    def _ended_long_ago(self, finished_at: float | None) -> bool:
        if self.resume_window == 0 or finished_at is None:
            return True
        return time.time() - finished_at > self.resume_window

    async def _open(self, response: EngineStreamResponse) -> EngineStreamResponse | None:
        """The response with its reader open, or None if its stream is gone."""
        try:
            return await response.open()
        except (StreamNotFoundError, InvalidStreamIdError):
            return None

    async def _resume_v5(self, chat_id: str, request: Request, owner: str) -> Response:
        self._require_running()
        _check_chat_id(chat_id)
        after = resume_after(request)
        target = self._target(request)
        pointer = await self._pointer(chat_id, owner)
        if pointer is None or pointer.stream_id is None:
            return Response(status_code=204)
        response = await self._open(self._v5(pointer.stream_id, after, target))
        if response is None:
            return Response(status_code=204)
        reader = response.reader
        if reader.state.is_terminal:
            self._maybe_report(chat_id, pointer, reader.state, reader.finished_at)
            if self._ended_long_ago(reader.finished_at):
                await response.aclose()
                return Response(status_code=204)
            return response
        return self._watched(chat_id, pointer, response)

    def _watched(
        self, chat_id: str, pointer: ChatPointer, response: EngineStreamResponse
    ) -> Response:
        """``response``, and once it has run, a look at how its stream ended: a reader in
        another process is often the first to learn that the producer died."""
        stream_id = pointer.stream_id
        if self._answers.on_finish is None or stream_id is None:
            return response
        if self.engine.produces(stream_id):
            return response  # its own producer reports it

        async def after_it_ran() -> None:
            if response.outcome != "end":
                return
            status = await self.engine.status(stream_id)
            if status is not None:
                self._maybe_report(chat_id, pointer, status.state, status.finished_at)

        return _ThenRun(response, after_it_ran)

    def _maybe_report(
        self, chat_id: str, pointer: ChatPointer, state: StreamState, finished_at: float | None
    ) -> None:
        """Report a dead producer's answer in the background (a resume does not wait)."""
        if self._background is not None and self._answers.orphaned(pointer, state, finished_at):
            self._background.start_soon(self._answers.report_orphan, chat_id, pointer)

    async def _resume_v4(self, chat_id: str | None, owner: str) -> Response:
        self._require_running()
        if not chat_id:
            raise ApiError(400, "invalid_request", "the chatId query parameter is required")
        _check_chat_id(chat_id, field="chatId")
        pointer = await self._pointer(chat_id, owner)
        if pointer is None or pointer.stream_id is None:
            return _empty_data_stream()
        stream_id = pointer.stream_id
        response = await self._open(self._v4(stream_id))
        if response is None:
            return _empty_data_stream()
        reader = response.reader
        if not reader.state.is_terminal:
            return self._watched(chat_id, pointer, response)
        await response.aclose()
        self._maybe_report(chat_id, pointer, reader.state, reader.finished_at)
        if self._ended_long_ago(reader.finished_at):
            return _empty_data_stream()
        return await self._append_message(stream_id)

    async def _append_message(self, stream_id: str) -> Response:
        """The finished answer as one v4 ``append-message`` line."""
        status = await self.engine.status(stream_id)
        logged = await self._answers.logged(stream_id)
        if status is None or logged is None:
            return _empty_data_stream()
        message = logged[0]
        created = dt.datetime.fromtimestamp(status.created_at, dt.UTC)
        message["createdAt"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return append_message_response(message)

    async def _stop(self, chat_id: str, request: Request, owner: str) -> JSONResponse:
        self._require_running()
        _check_chat_id(chat_id)
        wanted = await self._stop_body(request)
        pointer = await self._pointer(chat_id, owner)
        if pointer is None:
            raise not_found()
        result: dict[str, Any] = {"chatId": chat_id, "stopped": False, "streamId": None}
        result["state"] = None
        stream_id = pointer.stream_id
        if stream_id is None or wanted not in (None, stream_id):
            return JSONResponse(result)  # nothing running, or a stale stop of an older answer
        state = await self._cancel_once_claimed(stream_id)
        result.update(
            stopped=state is StreamState.CANCELLED,
            streamId=stream_id,
            state=state.value if state is not None else None,
        )
        return JSONResponse(result)

    async def _cancel_once_claimed(self, stream_id: str) -> StreamState | None:
        """Cancel the stream; one that is not claimed yet (the pointer is set just before the
        engine claims the stream, so a stop right after a POST can come first) is waited for,
        up to `_CLAIM_GRACE` seconds."""
        for _ in range(round(_CLAIM_GRACE / _CLAIM_POLL)):
            state = await self.engine.cancel(stream_id)
            if state is not None:
                return state
            # The claim may come from any process: polling is the one way to see it.
            await anyio.sleep(_CLAIM_POLL)
        return None

    async def _stop_body(self, request: Request) -> str | None:
        body = await read_body(request, self.max_body_bytes)
        if not body.strip():
            return None
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            raise ApiError(400, "invalid_request", "the request body is not valid JSON") from None
        if not isinstance(value, Mapping):
            raise ApiError(400, "invalid_request", "the request body must be a JSON object")
        wanted = value.get("streamId")
        if wanted is not None and not isinstance(wanted, str):
            raise ApiError(400, "invalid_request", "'streamId' must be a string")
        return wanted

    def _require_running(self) -> None:
        if self._background is None:
            raise EngineClosedError("the chat is not running")


class _ThenRun(Response):
    """Sends ``response``, then runs ``then`` (errors logged: the response is sent)."""

    def __init__(self, response: Response, then: Callable[[], Awaitable[None]]) -> None:
        self.response = response
        self.then = then
        self.status_code = response.status_code
        self.background = None
        self.raw_headers = response.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.response(scope, receive, send)
        try:
            await self.then()
        except Exception:
            logger.exception("checking how a resumed stream ended failed")


def _owner_id(value: Any) -> str:
    """The owner dependency's value as the id kept with each chat ("" for None)."""
    return "" if value is None else str(value)


def _pointers_for(backend: Backend) -> ChatPointers:
    """Pointers that live where ``backend`` keeps its streams."""
    if isinstance(backend, MemoryBackend):
        return MemoryChatPointers()
    redis_module = sys.modules.get("unbroken.backends.redis")
    if redis_module is not None and isinstance(backend, redis_module.RedisBackend):
        from unbroken.integrations._router.redis_pointers import RedisChatPointers

        return RedisChatPointers(backend)
    raise ValueError(
        f"no chat pointers for a {type(backend).__name__}: pass pointers=... (a ChatPointers "
        "that every process sharing the backend shares)"
    )
