"""What every route needs, built once per app in the lifespan and found on ``app.state``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from unbroken import StreamEngine
from unbroken.chat.auth import Identity, Sessions, identify
from unbroken.chat.errors import ApiError
from unbroken.chat.metrics import ChatMetrics
from unbroken.chat.models import ChatModel
from unbroken.chat.settings import Settings
from unbroken.chat.store import Store

if TYPE_CHECKING:
    from unbroken.chat.generation import Generator

__all__ = [
    "CHAT_ID_PATTERN",
    "CurrentIdentity",
    "CurrentServices",
    "Services",
    "check_chat_id",
    "get_identity",
    "get_services",
]

#: Chat and message ids: what AI SDK clients generate (nanoid-style, UUIDs) and no more.
CHAT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_ID = re.compile(CHAT_ID_PATTERN)


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_chat_id(value: str, *, status: int = 400, field: str = "chat id") -> str:
    """``value`` if it is a well-formed id; else a 400 (body, query) or 404 (path)."""
    if not is_valid_id(value):
        if status == 404:
            raise ApiError(404, "not_found", "chat not found")
        raise ApiError(
            400, "invalid_request", f"invalid {field}: use 1-128 letters, digits, '_' or '-'"
        )
    return value


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: Store
    engine: StreamEngine
    model: ChatModel
    metrics: ChatMetrics
    sessions: Sessions
    generator: Generator


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


CurrentServices = Annotated[Services, Depends(get_services)]


async def get_identity(request: Request, services: CurrentServices) -> Identity:
    return await identify(request, services.store, services.sessions)


CurrentIdentity = Annotated[Identity, Depends(get_identity)]
