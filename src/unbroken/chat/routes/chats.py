"""The caller's chats: list, read (messages and the running answer), rename, delete."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from unbroken.chat.api_models import MAX_TITLE, PAGE_MAX, ChatDetail, ChatList, ChatSummary
from unbroken.chat.bodies import json_object, load_json
from unbroken.chat.deps import CurrentIdentity, CurrentServices, check_chat_id
from unbroken.chat.errors import ApiError, not_found
from unbroken.chat.store import Chat, ChatPosition, Message

__all__ = ["router"]

router = APIRouter(tags=["chats"])

_PAGE_SIZE = re.compile(r"[0-9]{1,4}")
_CURSOR_MAX = 512  # far longer than any cursor `_cursor` makes


def _iso(moment: Any) -> str | None:
    if moment is None:
        return None
    return str(moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def chat_json(chat: Chat) -> dict[str, Any]:
    return {
        "id": chat.id,
        "title": chat.title,
        "visibility": chat.visibility,
        "activeStreamId": chat.active_stream_id,
        "createdAt": _iso(chat.created_at),
        "updatedAt": _iso(chat.updated_at),
    }


def message_json(message: Message) -> dict[str, Any]:
    """An AI SDK v5 ``UIMessage`` plus the service's bookkeeping fields."""
    out = message.to_ui_message()
    out.update(
        status=message.status,
        createdAt=_iso(message.created_at),
        finishedAt=_iso(message.finished_at),
    )
    if message.error is not None:
        out["error"] = message.error
    return out


@router.get("/api/chats", summary="List my chats", responses={200: {"model": ChatList}})
async def list_chats(
    services: CurrentServices,
    identity: CurrentIdentity,
    limit: Annotated[
        str | None, Query(description=f"Chats per page, 1-{PAGE_MAX} (default {PAGE_MAX}).")
    ] = None,
    cursor: Annotated[
        str | None, Query(description="The `nextCursor` of the page before: the next page.")
    ] = None,
) -> JSONResponse:
    """The caller's chats, most recently updated first, a page at a time: ``nextCursor``
    (null on the last page) asks for the next one. A chat updated while you page through
    moves to the front, so it may be left out of the pages after that."""
    size = _page_size(limit)
    after = None if cursor is None else _position(cursor)
    listed = await services.store.list_chats(identity.user.id, limit=size + 1, after=after)
    page = listed[:size]
    more = len(listed) > size
    return JSONResponse(
        {
            "chats": [chat_json(chat) for chat in page],
            "nextCursor": _cursor(page[-1].position) if more else None,
        }
    )


def _page_size(raw: str | None) -> int:
    digits = (raw or "").strip()
    if not digits:
        return PAGE_MAX
    if not _PAGE_SIZE.fullmatch(digits) or not 1 <= int(digits) <= PAGE_MAX:
        raise ApiError(400, "invalid_request", f"'limit' must be an integer from 1 to {PAGE_MAX}")
    return int(digits)


def _cursor(position: ChatPosition) -> str:
    """The position as an opaque cursor (base64url of its JSON, unpadded)."""
    raw = json.dumps([position.updated_at.isoformat(), position.chat_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _position(cursor: str) -> ChatPosition:
    """A cursor `_cursor` made, read back; 400 for anything else."""
    try:
        if len(cursor) > _CURSOR_MAX:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, chat_id = json.loads(raw)
        updated_at = datetime.fromisoformat(moment)
        if not isinstance(chat_id, str) or updated_at.tzinfo is None:
            raise ValueError("not a cursor")
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
        raise ApiError(
            400, "invalid_request", "'cursor' must be a nextCursor this service gave"
        ) from None
    # The database compares times as stored: in UTC.
    return ChatPosition(updated_at.astimezone(UTC), chat_id)


@router.get("/api/chats/{chat_id}", summary="Read a chat", responses={200: {"model": ChatDetail}})
async def get_chat(
    chat_id: str, services: CurrentServices, identity: CurrentIdentity
) -> JSONResponse:
    """The chat, its stored messages, and the answer being generated if there is one.

    An answer still being generated is not among ``messages`` (resume the stream to get
    it): ``activeStream`` names it, with the ``messageId`` it will have.
    """
    check_chat_id(chat_id, status=404)
    chat = await services.store.get_chat(chat_id, identity.user.id)
    if chat is None:
        raise not_found()
    chat = await services.answers.repair(chat)
    messages = await services.store.list_messages(chat.id)
    active: dict[str, Any] | None = None
    if chat.active_stream_id is not None:
        record = await services.store.get_stream(chat.active_stream_id)
        status = await services.engine.status(chat.active_stream_id)
        if record is not None:
            active = {
                "id": record.id,
                "messageId": record.message_id,
                "state": status.state.value if status is not None else None,
                "createdAt": _iso(record.created_at),
            }
    body = chat_json(chat)
    body.update(messages=[message_json(m) for m in messages], activeStream=active)
    return JSONResponse(body)


@router.patch(
    "/api/chats/{chat_id}", summary="Rename a chat", responses={200: {"model": ChatSummary}}
)
async def rename_chat(
    chat_id: str, request: Request, services: CurrentServices, identity: CurrentIdentity
) -> JSONResponse:
    """Give the chat a new title (``{"title": …}``, spaces collapsed, at most 200 characters)."""
    check_chat_id(chat_id, status=404)
    title = json_object(load_json(await request.body())).get("title")
    if not isinstance(title, str) or not title.strip():
        raise ApiError(400, "invalid_request", "'title' must be a string with some text")
    title = " ".join(title.split())
    if len(title) > MAX_TITLE:
        raise ApiError(400, "invalid_request", f"'title' must be at most {MAX_TITLE} characters")
    chat = await services.store.rename_chat(chat_id, identity.user.id, title)
    if chat is None:
        raise not_found()
    return JSONResponse(chat_json(chat))


@router.delete("/api/chats/{chat_id}", summary="Delete a chat", status_code=204)
async def delete_chat(
    chat_id: str, services: CurrentServices, identity: CurrentIdentity
) -> Response:
    """Stop its running answer (if any), then delete the chat with its messages and streams."""
    check_chat_id(chat_id, status=404)
    chat = await services.store.get_chat(chat_id, identity.user.id)
    if chat is None:
        raise not_found()
    if chat.active_stream_id is not None:
        record = await services.store.get_stream(chat.active_stream_id)
        if record is not None:
            await services.answers.stop(record)
    if not await services.store.delete_chat(chat_id, identity.user.id):
        raise not_found()
    return Response(status_code=204)
