"""HTTP errors of the chat service: always JSON ``{"error": {"code", "message"}}``.

Every failure a client can cause (bad JSON, a wrong field, an unknown route, a body that is
too large, a chat that is not theirs) gets a 4xx with a stable ``code``; anything else is a
500 with a generic message and the traceback in the server log, never in the response.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unbroken.asgi import error_response, unavailable_response
from unbroken.exceptions import BackendUnavailableError, ProtocolError

__all__ = [
    "ApiError",
    "BodyLimitMiddleware",
    "database_unreachable",
    "install_error_handlers",
    "not_found",
]

logger = logging.getLogger("unbroken.chat")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise from a route to answer ``status`` with a JSON error body."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def not_found(what: str = "chat") -> ApiError:
    """The one answer for "missing" and "not yours" alike, so ids cannot be probed."""
    return ApiError(404, "not_found", f"{what} not found")


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """`unbroken.asgi.error_response`, with the extra headers an error carries."""
    response = error_response(status, code, message)
    if headers:
        response.headers.update(headers)
    return response


def _connect_error_types() -> tuple[type[Exception], ...]:
    """What the driver raises, unwrapped, when it cannot connect (see `database_unreachable`)."""
    try:
        driver = importlib.import_module("asyncpg.exceptions")
    except ImportError:  # pragma: no cover - asyncpg comes with the chat extra
        return (OSError,)
    return (OSError, driver.PostgresError)


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the SQL database cannot be reached right now (connection refused
    or cut, the server shutting down or starting up), not that a statement was wrong: the
    request is worth trying again shortly."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
            return True
        return exc.orig is not None and database_unreachable(exc.orig)
    if isinstance(exc, OSError):
        return True
    # PostgreSQL's SQLSTATE classes 08 (connection exception) and 57P (shutting down,
    # starting up), raised by the driver itself while connecting.
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(("08", "57P"))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(item) for item in error.get("loc", ()) if item != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "the request is invalid"


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception a request can raise to a JSON error response."""

    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.code, exc.message, exc.headers)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route"
        return _error(exc.status_code, code, message.lower(), exc.headers)

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, "invalid_request", _validation_message(exc))

    async def protocol_error(_: Request, exc: Exception) -> Response:
        return error_response(400, "invalid_request", str(exc) or "the request body is invalid")

    async def backend_unavailable(_: Request, exc: Exception) -> Response:
        logger.warning("stream backend unavailable: %s", exc)
        return unavailable_response()

    async def client_gone(request: Request, _: Exception) -> Response:
        # The client hung up before its request body arrived: nothing was read, so nothing
        # was stored or started, and nobody is there to read an answer.
        logger.info(
            "client left during %s %s before its body arrived", request.method, request.url.path
        )
        return Response(status_code=400)

    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "the server failed; the error was logged")

    async def database_error(request: Request, exc: Exception) -> Response:
        if not database_unreachable(exc):
            return await internal_error(request, exc)
        logger.warning("database unavailable: %s", exc)
        response = error_response(
            503, "unavailable", "the database is unavailable; try again shortly"
        )
        response.headers["Retry-After"] = "1"
        return response

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ProtocolError, protocol_error)
    app.add_exception_handler(BackendUnavailableError, backend_unavailable)
    app.add_exception_handler(ClientDisconnect, client_gone)
    handled: tuple[type[Exception], ...] = (DBAPIError, *_connect_error_types())
    for raised in handled:
        app.add_exception_handler(raised, database_error)
    app.add_exception_handler(Exception, internal_error)


class BodyTooLargeError(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", f"the request body exceeds {limit} bytes")


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413.

    A declared ``Content-Length`` over the limit is refused before reading anything; a body
    without one (chunked) is counted as it arrives, and reading past the limit raises
    `BodyTooLargeError` inside the route, which the error handlers turn into the same 413.
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(400, "bad_request", "invalid content-length")(
                        scope, receive, send
                    )
                    return
                if declared > self.limit:
                    exc = BodyTooLargeError(self.limit)
                    response = error_response(exc.status, exc.code, exc.message)
                    response.headers["connection"] = "close"
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLargeError(self.limit)
            return message

        await self.app(scope, limited_receive, send)
