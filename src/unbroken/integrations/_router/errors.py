"""The router's HTTP errors: every bad input is a 4xx JSON error on its own routes.

The routes use `GuardedRoute`, which turns what a request can cause into
``{"error": {"code", "message"}}`` responses (`unbroken.asgi.error_response`) without
exception handlers on the app: the app needs to add nothing, and its own handlers and
error format stay as they are for its other routes. An `HTTPException` raised by the app's
owner dependency (a 401, say) is the app's and passes through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from unbroken.asgi import error_response, unavailable_response
from unbroken.exceptions import (
    BackendUnavailableError,
    EngineClosedError,
    InvalidStreamIdError,
    ProtocolError,
)

__all__ = ["ApiError", "GuardedRoute", "not_found", "read_body"]

logger = logging.getLogger("unbroken")


class ApiError(Exception):
    """Raise from a route to answer ``status`` with a JSON error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found() -> ApiError:
    """The one answer for a missing chat and another owner's chat alike."""
    return ApiError(404, "not_found", "chat not found")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(item) for item in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "the request is invalid"


class GuardedRoute(APIRoute):
    """An `APIRoute` whose errors are JSON 4xx/503 responses, not the app's 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.message)
            except RequestValidationError as exc:
                return error_response(400, "invalid_request", _validation_message(exc))
            except ProtocolError as exc:
                return error_response(400, "invalid_request", str(exc))
            except InvalidStreamIdError:
                return error_response(400, "invalid_request", "the id is not valid")
            except BackendUnavailableError as exc:
                logger.warning("chat route: the stream backend is unreachable: %s", exc)
                return unavailable_response()
            except EngineClosedError:
                response = error_response(
                    503,
                    "unavailable",
                    "the chat is not running: use 'chat.lifespan' (or 'async with "
                    "chat.running()') in the app's lifespan",
                )
                response.headers["Retry-After"] = "1"
                return response
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is there to read it

        return guarded


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes; a 413 `ApiError` beyond that (told by
    ``Content-Length`` before reading, or while reading a body sent without one)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_request", "the Content-Length header is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    received = bytearray()
    async for piece in request.stream():
        received += piece
        if len(received) > limit:
            raise _too_large(limit)
    return bytes(received)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is larger than {limit} bytes")
