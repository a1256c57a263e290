"""The AI SDK chat routes: answer, resume (v4 and v5+), stop.

Ownership is checked on every route; another user's chat answers exactly like a missing one
(404). Generation runs in the engine, so none of these responses owns an answer: they only
read it, and a client that goes away costs nothing but its connection.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from unbroken import OpenedStream, StreamState
from unbroken.asgi import Instead
from unbroken.chat import _wire
from unbroken.chat.answers import orphaned, repair, seconds_since, stop_stream, stream_status
from unbroken.chat.deps import CurrentIdentity, CurrentServices, Services, check_chat_id
from unbroken.chat.errors import ApiError, json_object, not_found
from unbroken.chat.models import message_text
from unbroken.chat.store import Chat, Started, StreamRecord

__all__ = ["router"]

logger = logging.getLogger("unbroken.chat")
router = APIRouter(tags=["chat"])

_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The answer: an AI SDK v5+ UI message stream (SSE) for a body with "
        "`trigger`, else an AI SDK v4 data stream.",
        "content": {"text/event-stream": {}, "text/plain": {}},
    },
}
_CHAT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["id"],
                "properties": {
                    "id": {"type": "string", "description": "The chat id (created on first use)."},
                    "messages": {"type": "array", "items": {"type": "object"}},
                    "message": {"type": "object", "description": "Only the new message."},
                    "trigger": {"enum": ["submit-message", "regenerate-message"]},
                    "messageId": {"type": "string"},
                },
            }
        }
    },
}


def _v5_stream(
    services: Services, stream_id: str, *, after: int, instead: Instead | None = None
) -> Response:
    """The stream as a UI message stream (AI SDK v5+), from sequence number ``after``."""
    flush = services.settings.flush_interval
    return _wire.ui_message_stream_response(
        services.engine, stream_id, after=after, flush_interval=flush, instead=instead
    )


def _v4_stream(services: Services, stream_id: str, *, instead: Instead | None = None) -> Response:
    """The whole stream as an AI SDK v4 data stream."""
    flush = services.settings.flush_interval
    return _wire.data_stream_response(
        services.engine, stream_id, after=-1, flush_interval=flush, instead=instead
    )


def _title(text: str) -> str:
    words = " ".join(text.split())
    return (words[:77] + "…" if len(words) > 80 else words) or "New chat"


async def _begin(
    services: Services, chat_id: str, user_id: str, user_message: dict[str, Any], *, trigger: str
) -> tuple[StreamRecord, bool]:
    """Start the answer to ``user_message`` in ``user_id``'s chat ``chat_id`` (created on first
    use), or find the one already being generated.

    Returns (stream, attached). A repeated submit of the message whose answer is running
    attaches to it (a client retry must not pay for a second generation). Any other running
    answer in the chat is stopped first, so its partial answer keeps its place before the new
    message; one whose producer died is stored first (`repair`).
    """
    store = services.store
    title = _title(message_text(user_message))
    for _ in range(5):
        begun = await store.start_answer(
            chat_id,
            user_id,
            title=title,
            message_id=user_message["id"],
            parts=user_message.get("parts", []),
            metadata=user_message.get("metadata"),
        )
        if begun is None:
            raise not_found()
        if isinstance(begun, Started):
            history = [message.to_ui_message() for message in begun.history]
            try:
                await services.generator.start(begun.record, history, owner=user_id)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await store.abandon_generation(begun.record)
                raise
            return begun.record, False
        # The chat has an active stream: attach to it, or end it and ask again.
        chat = await repair(services, begun)
        if chat.active_stream_id is None:
            continue
        active = await store.get_stream(chat.active_stream_id)
        if active is None:
            await store.clear_active_stream(chat.id, chat.active_stream_id)
        elif (
            trigger == "submit-message"
            and active.user_message_id == user_message["id"]
            and await stream_status(services, active) is not None
        ):
            return active, True
        else:
            await stop_stream(services, active)
    raise ApiError(409, "conflict", "another answer is starting in this chat; try again")


@router.post(
    "/api/chat",
    summary="Send a message and stream the answer",
    responses=_STREAM_RESPONSES,
    openapi_extra={"requestBody": _CHAT_BODY},
)
async def post_chat(
    request: Request, services: CurrentServices, identity: CurrentIdentity
) -> Response:
    """Store the user's message, start the answer in the engine and stream it.

    The chat is created on first use, owned by the caller. A v5+ body (with ``trigger``) is
    answered with the UI message stream, a v4 body with the data stream.
    """
    chat_request = _wire.parse_chat_request(_wire.load_json(await request.body()))
    user_message = chat_request.last_user_message
    if user_message is None:
        raise ApiError(400, "invalid_request", "the request has no user message to answer")
    if chat_request.messages[-1] is not user_message:
        # Continuing an assistant message (client-side tool results) would need tools run
        # here; answering the earlier user message instead would drop the newer messages.
        raise ApiError(
            400,
            "invalid_request",
            "the last message must be the user's: continuing an assistant message is not "
            "supported by this service",
        )
    record, attached = await _begin(
        services, chat_request.chat_id, identity.user.id, user_message, trigger=chat_request.trigger
    )
    if attached:
        services.metrics.attaches.inc()
    else:
        services.metrics.streams_started.labels(chat_request.protocol).inc()
    if chat_request.protocol == "v4":
        return _v4_stream(services, record.id)
    return _v5_stream(services, record.id, after=-1)


@router.get(
    "/api/chat",
    summary="Resume the answer of a chat (AI SDK v4)",
    responses={
        200: {
            "description": "The running answer (full replay, then live); the stored answer as "
            "an `append-message` data part if it finished within the resume window; or an "
            "empty body (nothing to resume).",
            "content": {"text/plain": {}},
        },
        404: {"description": "No such chat (or not yours), or the chat has no stream."},
    },
)
async def resume_v4(
    services: CurrentServices,
    identity: CurrentIdentity,
    chat_id: Annotated[str | None, Query(alias="chatId")] = None,
) -> Response:
    """The seed's resume semantics, for ``useChat().experimental_resume()`` (ai 4.x)."""
    if not chat_id:
        raise ApiError(400, "invalid_request", "the chatId query parameter is required")
    check_chat_id(chat_id, field="chatId")
    live = services.generator.producing(chat_id, identity.user.id)
    if live is not None:  # answered from memory: this process generates the answer
        services.metrics.resumes.labels("v4", "live").inc()
        return _v4_stream(services, live.id)
    try:
        streams = await services.store.get_streams_by_chat_id(chat_id, identity.user.id)
    except LookupError:
        raise not_found() from None
    if not streams:
        raise ApiError(404, "not_found", "this chat has no stream")
    chat = await services.store.get_chat(chat_id, identity.user.id)
    if chat is None:
        raise not_found()
    recent = streams[-1]

    async def instead(opened: OpenedStream | None) -> Response | None:
        # Running, as the response's reader found it: no status round trip of our own (see
        # resume_v5). Anything else takes the slow path, as before.
        if opened is None or opened.state.is_terminal:
            return await _resume_v4_slowly(services, chat, recent)
        services.metrics.resumes.labels("v4", "live").inc()
        return None

    return _v4_stream(services, recent.id, instead=instead)


async def _resume_v4_slowly(services: Services, chat: Chat, recent: StreamRecord) -> Response:
    """A v4 resume whose latest stream is not simply running: one begun moments ago and not
    claimed yet, one just ended (replayed until its answer is stored), an orphan to store,
    an answer already stored, or nothing."""
    status = await stream_status(services, recent)
    if status is not None and (
        status.state is StreamState.ACTIVE
        or (chat.active_stream_id == recent.id and not await orphaned(services, recent))
    ):
        # Running, or just finished and not stored yet: the stream itself is the answer.
        services.metrics.resumes.labels("v4", "live" if not status.is_terminal else "replay").inc()
        return _v4_stream(services, recent.id)
    chat = await repair(services, chat)
    last = await services.store.last_message(chat.id)
    if (
        last is not None
        and last.role == "assistant"
        and seconds_since(last.finished_at) <= services.settings.resume_window
    ):
        services.metrics.resumes.labels("v4", "append-message").inc()
        created = last.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message = _wire.ui_message_to_v4(last.to_ui_message(), created_at=created)
        return _wire.append_message_response(message)
    return _wire.empty_data_stream_response()


@router.get(
    "/api/chat/{chat_id}/stream",
    summary="Resume the answer of a chat (AI SDK v5+)",
    responses={
        200: {
            "description": "The answer as a UI message stream: everything after `Last-Event-ID`"
            " / `?after=` (default: a full replay), then live.",
            "content": {"text/event-stream": {}},
        },
        204: {"description": "Nothing to resume."},
        404: {"description": "No such chat (or not yours)."},
    },
)
async def resume_v5(
    chat_id: str,
    request: Request,
    services: CurrentServices,
    identity: CurrentIdentity,
    after: Annotated[
        str | None, Query(description="Resume after this event id (or send Last-Event-ID).")
    ] = None,
) -> Response:
    """For ``useChat({resume: true})`` / ``resumeStream()`` (ai 5, 6, 7)."""
    check_chat_id(chat_id, status=404)
    position = _wire.resume_position(request)
    live = services.generator.producing(chat_id, identity.user.id)
    if live is not None:  # answered from memory: this process generates the answer
        services.metrics.resumes.labels("v5", "live").inc()
        return _v5_stream(services, live.id, after=position)
    found = await services.store.get_chat_and_active_stream(chat_id, identity.user.id)
    if found is None:
        raise not_found()
    chat, record = found
    if record is None:
        return await _resume_v5_slowly(services, chat, None, position)
    window = services.settings.resume_window

    async def instead(opened: OpenedStream | None) -> Response | None:
        # The chat's running answer, as the response's reader found it: no round trip of
        # our own to ask first (it would be one more, in a busy event loop, on the way to
        # the first byte). Anything else takes the slow path, as before.
        if opened is None or (
            opened.state.is_terminal and seconds_since(opened.finished_at) > window
        ):
            return await _resume_v5_slowly(services, chat, record, position)
        services.metrics.resumes.labels("v5", _resume_kind(opened.state)).inc()
        return None

    return _v5_stream(services, record.id, after=position, instead=instead)


async def _resume_v5_slowly(
    services: Services, chat: Chat, record: StreamRecord | None, position: int
) -> Response:
    """A resume whose active stream is not simply there to read: one begun moments ago and
    not claimed yet, one whose producer died, an answer already stored, or nothing."""
    window = services.settings.resume_window
    if record is not None:
        status = await stream_status(services, record)
        if status is not None and (
            not status.is_terminal or seconds_since(status.finished_at) <= window
        ):
            services.metrics.resumes.labels("v5", _resume_kind(status.state)).inc()
            return _v5_stream(services, record.id, after=position)
    chat = await repair(services, chat)
    last = await services.store.last_message(chat.id)
    if (
        last is not None
        and last.role == "assistant"
        and last.stream_id is not None
        and seconds_since(last.finished_at) <= window
        and await services.engine.status(last.stream_id) is not None
    ):
        services.metrics.resumes.labels("v5", "replay").inc()
        return _v5_stream(services, last.stream_id, after=position)
    return Response(status_code=204)


def _resume_kind(state: StreamState) -> str:
    return "replay" if state.is_terminal else "live"


@router.post(
    "/api/chat/{chat_id}/stop",
    summary="Stop the answer being generated",
    responses={404: {"description": "No such chat (or not yours)."}},
)
async def stop_chat(
    chat_id: str, request: Request, services: CurrentServices, identity: CurrentIdentity
) -> JSONResponse:
    """Cancel the chat's running answer wherever it runs and store what was generated so far
    (status ``stopped``). Idempotent: stopping a chat with nothing running changes nothing.

    An optional JSON body ``{"streamId": …}`` or ``{"messageId": …}`` makes the stop apply
    only to that answer, so a stale stop never cancels a newer one.
    """
    check_chat_id(chat_id, status=404)
    body = await request.body()
    wanted: dict[str, Any] = {}
    if body.strip():
        wanted = json_object(_wire.load_json(body))
    chat = await services.store.get_chat(chat_id, identity.user.id)
    if chat is None:
        raise not_found()
    result: dict[str, Any] = {"chatId": chat.id, "stopped": False, "streamId": None, "state": None}
    if chat.active_stream_id is None:
        services.metrics.stops.labels("nothing").inc()
        return JSONResponse(result)
    record = await services.store.get_stream(chat.active_stream_id)
    if record is None:
        await services.store.clear_active_stream(chat.id, chat.active_stream_id)
        return JSONResponse(result)
    if wanted.get("streamId") not in (None, record.id) or wanted.get("messageId") not in (
        None,
        record.message_id,
    ):
        services.metrics.stops.labels("stale").inc()
        return JSONResponse(result)
    await stream_status(services, record)  # a stop right after the POST: let it claim
    state = await stop_stream(services, record)
    stopped = state is StreamState.CANCELLED
    services.metrics.stops.labels("stopped" if stopped else "finished").inc()
    result.update(
        stopped=stopped,
        streamId=record.id,
        messageId=record.message_id,
        state=state.value if state is not None else None,
    )
    return JSONResponse(result)
