"""The AI SDK chat routes: answer, resume (v4 and v5+), stop.

Ownership is checked on every route; another user's chat answers exactly like a missing one
(404). Generation runs in the engine, so none of these responses owns an answer: they only
read it, and a client that goes away costs nothing but its connection.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from unbroken import StreamState
from unbroken.asgi import resume_after
from unbroken.chat.answers import seconds_since
from unbroken.chat.api_models import StopResult
from unbroken.chat.auth import Credentials, unknown_key
from unbroken.chat.bodies import json_object, load_json
from unbroken.chat.deps import (
    CurrentCredentials,
    CurrentIdentity,
    CurrentServices,
    Services,
    check_chat_id,
)
from unbroken.chat.errors import ApiError, not_found
from unbroken.chat.store import Chat, StreamRecord
from unbroken.exceptions import (
    BackendUnavailableError,
    InvalidStreamIdError,
    StreamNotFoundError,
    UnbrokenError,
)
from unbroken.protocols.ai_sdk import (
    DATA_STREAM_HEADERS,
    DataStreamResponse,
    UIMessageStreamResponse,
    append_message_response,
    parse_chat_request,
    ui_message_to_v4,
)

__all__ = ["router"]

logger = logging.getLogger("unbroken.chat")
router = APIRouter(tags=["chat"])

_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The answer as it is generated: an AI SDK 5+ UI message stream "
        "(server-sent events, each with an `id:` to resume after) for a body with `trigger`, "
        "else an AI SDK 4 data stream.",
        "content": {"text/event-stream": {}, "text/plain": {}},
    },
}


def _v5_stream(services: Services, stream_id: str, *, after: int) -> UIMessageStreamResponse:
    """The stream as a UI message stream (AI SDK v5+), from sequence number ``after``; it
    opens its reader when it runs."""
    flush = services.settings.flush_interval
    return UIMessageStreamResponse(services.engine, stream_id, after=after, flush_interval=flush)


def _v4_stream(services: Services, stream_id: str) -> DataStreamResponse:
    """The whole stream as an AI SDK v4 data stream; it opens its reader when it runs."""
    flush = services.settings.flush_interval
    return DataStreamResponse(services.engine, stream_id, after=-1, flush_interval=flush)


def _empty_data_stream() -> Response:
    """v4 "nothing to resume": 200 with an empty body (the v4 client cannot take a 204)."""
    return Response(b"", headers=dict(DATA_STREAM_HEADERS))


@router.post(
    "/api/chat",
    summary="Send a message and stream the answer",
    responses=_STREAM_RESPONSES,
)
async def post_chat(
    request: Request, services: CurrentServices, identity: CurrentIdentity
) -> Response:
    """Store the user's message, start the answer and stream it.

    The chat is created on first use, owned by the caller. The answer is generated on the
    server whatever happens to this connection: resume it after a cut (`GET
    /api/chat/{chat_id}/stream`), stop it with `POST /api/chat/{chat_id}/stop`. A body whose
    last message is already stored replaces it and drops every later message (an edit, a
    regenerate). Sending the same message again while its answer runs returns that answer.
    """
    chat_request = parse_chat_request(load_json(await request.body()))
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
    record, attached = await services.answers.begin(
        chat_request.chat_id,
        identity.user.id,
        user_message,
        trigger=chat_request.trigger,
        guest=identity.is_guest,
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
    },
)
async def resume_v4(
    services: CurrentServices,
    identity: CurrentIdentity,
    chat_id: Annotated[str | None, Query(alias="chatId")] = None,
) -> Response:
    """For ``useChat().experimental_resume()`` (AI SDK 4): the answer being generated, from
    its start; an answer that ended in the last seconds as one ``append-message`` part; else
    an empty body."""
    if not chat_id:
        raise ApiError(400, "invalid_request", "the chatId query parameter is required")
    check_chat_id(chat_id, field="chatId")
    live = services.answers.producing(chat_id, identity.user.id)
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
    # Running, as the response's reader finds it: no status round trip of its own (see
    # resume_v5). Anything else takes the slow path.
    response = _v4_stream(services, recent.id)
    try:
        await response.open()
    except (StreamNotFoundError, InvalidStreamIdError):
        return await _resume_v4_slowly(services, chat, recent)
    except BackendUnavailableError:
        raise  # the app's 503: try again shortly
    except UnbrokenError:
        return response  # it tries again when it runs, and reports the failure in its body
    if response.reader.state.is_terminal:
        await response.aclose()
        return await _resume_v4_slowly(services, chat, recent)
    services.metrics.resumes.labels("v4", "live").inc()
    return response


async def _resume_v4_slowly(services: Services, chat: Chat, recent: StreamRecord) -> Response:
    """A v4 resume whose latest stream is not simply running: one begun moments ago and not
    claimed yet, one just ended (replayed until its answer is stored), an orphan to store,
    an answer already stored, or nothing."""
    answers = services.answers
    status = await answers.status(recent)
    if status is not None and (
        status.state is StreamState.ACTIVE
        or (chat.active_stream_id == recent.id and not await answers.orphaned(recent))
    ):
        # Running, or just finished and not stored yet: the stream itself is the answer.
        services.metrics.resumes.labels("v4", "live" if not status.is_terminal else "replay").inc()
        return _v4_stream(services, recent.id)
    chat = await answers.repair(chat)
    last = await services.store.last_message(chat.id)
    if (
        last is not None
        and last.role == "assistant"
        and seconds_since(last.finished_at) <= services.settings.resume_window
    ):
        services.metrics.resumes.labels("v4", "append-message").inc()
        created = last.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message = ui_message_to_v4(last.to_ui_message(), created_at=created)
        return append_message_response(message)
    return _empty_data_stream()


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
    },
)
async def resume_v5(
    chat_id: str,
    request: Request,
    services: CurrentServices,
    caller: CurrentCredentials,
    after: Annotated[
        str | None, Query(description="Resume after this event id (or send Last-Event-ID).")
    ] = None,
) -> Response:
    """For ``useChat({resume: true})`` and ``resumeStream()`` (AI SDK 5 and later): the answer
    being generated, after the given event id (without one: from its start), then live until
    it ends. An answer that ended in the last seconds is replayed; otherwise 204."""
    check_chat_id(chat_id, status=404)
    position = resume_after(request)
    found = await _chat_and_active_stream(services, caller, chat_id)
    if isinstance(found, StreamRecord):  # this process generates the answer
        services.metrics.resumes.labels("v5", "live").inc()
        return _v5_stream(services, found.id, after=position)
    if found is None:
        raise not_found()
    chat, record = found
    if record is None:
        return await _resume_v5_slowly(services, chat, None, position)
    # The chat's running (or just ended) answer, as the response's reader finds it: no
    # round trip of the route's own to ask first (it would be one more, in a busy event
    # loop, on the way to the first byte). Anything else takes the slow path.
    response = _v5_stream(services, record.id, after=position)
    try:
        await response.open()
    except (StreamNotFoundError, InvalidStreamIdError):
        return await _resume_v5_slowly(services, chat, record, position)
    except BackendUnavailableError:
        raise  # the app's 503: try again shortly
    except UnbrokenError:
        return response  # it tries again when it runs, and reports the failure in its body
    reader = response.reader
    if reader.state.is_terminal and seconds_since(reader.finished_at) > (
        services.settings.resume_window
    ):
        await response.aclose()
        return await _resume_v5_slowly(services, chat, record, position)
    services.metrics.resumes.labels("v5", _resume_kind(reader.state)).inc()
    return response


async def _chat_and_active_stream(
    services: Services, caller: Credentials, chat_id: str
) -> StreamRecord | tuple[Chat, StreamRecord | None] | None:
    """In at most one query: the answer this process generates in the caller's chat
    ``chat_id`` (for a guest, from memory: no query at all), else the chat and its active
    stream, or None when the caller has no such chat. An API key is checked in that same
    query (the 401 of `unknown_key` if the database does not know it)."""
    answers, store = services.answers, services.store
    if caller.guest is not None:
        user_id = caller.guest.user.id
        live = answers.producing(chat_id, user_id)
        if live is not None:
            return live
        return await store.get_chat_and_active_stream(chat_id, user_id)
    assert caller.api_key is not None
    keyed = await store.chat_for_api_key(caller.api_key, chat_id)
    if keyed is None:
        raise unknown_key()
    live = answers.producing(chat_id, keyed.user.id)
    if live is not None:
        return live
    return (keyed.chat, keyed.active) if keyed.chat is not None else None


async def _resume_v5_slowly(
    services: Services, chat: Chat, record: StreamRecord | None, position: int
) -> Response:
    """A resume whose active stream is not simply there to read: one begun moments ago and
    not claimed yet, one whose producer died, an answer already stored, or nothing."""
    window = services.settings.resume_window
    if record is not None:
        status = await services.answers.status(record)
        if status is not None and (
            not status.is_terminal or seconds_since(status.finished_at) <= window
        ):
            services.metrics.resumes.labels("v5", _resume_kind(status.state)).inc()
            return _v5_stream(services, record.id, after=position)
    chat = await services.answers.repair(chat)
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
    responses={200: {"model": StopResult}},
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
        wanted = json_object(load_json(body))
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
    await services.answers.status(record)  # a stop right after the POST: let it claim
    state = await services.answers.stop(record)
    stopped = state is StreamState.CANCELLED
    services.metrics.stops.labels("stopped" if stopped else "finished").inc()
    result.update(
        stopped=stopped,
        streamId=record.id,
        messageId=record.message_id,
        state=state.value if state is not None else None,
    )
    return JSONResponse(result)
