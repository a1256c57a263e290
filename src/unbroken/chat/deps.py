"""What every route needs, built once per app in the lifespan and found on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from unbroken import StreamEngine
from unbroken.chat.answers import Answers
from unbroken.chat.auth import Credentials, Identity, Sessions, credentials, identify
from unbroken.chat.errors import ApiError
from unbroken.chat.metrics import ChatMetrics
from unbroken.chat.models import ChatModel
from unbroken.chat.settings import Settings
from unbroken.chat.store import Store
from unbroken.protocols.ai_sdk import is_valid_id

__all__ = [
    "CurrentCredentials",
    "CurrentIdentity",
    "CurrentServices",
    "Services",
    "check_chat_id",
    "get_credentials",
    "get_identity",
    "get_services",
]


def check_chat_id(value: str, *, status: int = 400, field: str = "chat id") -> str:
    """``value`` if it is a well-formed id (the same rule as for POST bodies, see
    `unbroken.protocols.ai_sdk.is_valid_id`); else a 400 (query) or 404 (path: no chat can
    have that id)."""
    if not is_valid_id(value):
        if status == 404:
            raise ApiError(404, "not_found", "chat not found")
        raise ApiError(
            400,
            "invalid_request",
            f"invalid {field}: 1-128 letters, digits or '._:~-', starting with a letter or digit",
        )
    return value


@dataclass(frozen=True, slots=True)
class Services:
    """The app's long-lived parts; `answers` runs every answer's lifecycle."""

    settings: Settings
    store: Store
    engine: StreamEngine
    model: ChatModel
    metrics: ChatMetrics
    sessions: Sessions
    answers: Answers


async def get_services(request: Request) -> Services:
    # async, though it never awaits: FastAPI runs a plain `def` dependency in its thread
    # pool, a round trip through a worker thread on every request that a busy server adds
    # to every resume's first byte.
    services: Services = request.app.state.services
    return services


CurrentServices = Annotated[Services, Depends(get_services)]


async def get_identity(request: Request, services: CurrentServices) -> Identity:
    return await identify(
        request,
        services.store,
        services.sessions,
        allowed_origins=services.settings.allowed_origins,
    )


CurrentIdentity = Annotated[Identity, Depends(get_identity)]


async def get_credentials(request: Request, services: CurrentServices) -> Credentials:
    """For a route that checks an API key itself, in a query of its own (see
    `unbroken.chat.auth.credentials`)."""
    return credentials(
        request, services.sessions, allowed_origins=services.settings.allowed_origins
    )


CurrentCredentials = Annotated[Credentials, Depends(get_credentials)]
