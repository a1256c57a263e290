"""Health, metrics, and the web page."""

from __future__ import annotations

import hmac
import logging

import anyio
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, JSONResponse, Response

from unbroken.chat.api_models import Health
from unbroken.chat.auth import identify
from unbroken.chat.deps import CurrentServices
from unbroken.chat.errors import ApiError
from unbroken.chat.metrics import CONTENT_TYPE_LATEST
from unbroken.exceptions import BackendError

__all__ = ["router"]

logger = logging.getLogger("unbroken.chat")
router = APIRouter()

#: The stream id the health check asks Redis about: no stream has it (stream ids of the
#: service are random), so the answer is one round trip that finds nothing.
_PROBE_STREAM = "unbroken-health-check"


@router.get(
    "/healthz",
    tags=["system"],
    summary="Health check",
    responses={
        200: {"model": Health},
        503: {"model": Health, "description": "The database cannot be reached."},
    },
)
async def healthz(services: CurrentServices) -> JSONResponse:
    """200 when the database answers (within 2 s), else 503. With Redis, ``redis`` says
    whether it answered too; it does not change the status: while Redis is unreachable the
    service goes on (answers stream from each worker's memory and are written to Redis once
    it is back), so a load balancer should keep sending requests, and monitoring should
    look at ``redis``."""
    database_ok = redis_ok = False

    async def check_database() -> None:
        nonlocal database_ok
        try:
            await services.store.ping()
            database_ok = True
        except Exception as exc:
            logger.warning("health check: database unreachable: %s", exc)

    async def check_redis() -> None:
        nonlocal redis_ok
        try:
            await services.engine.status(_PROBE_STREAM)
            redis_ok = True
        except BackendError as exc:
            logger.warning("health check: redis unreachable: %s", exc)

    with anyio.move_on_after(2):
        async with anyio.create_task_group() as checks:
            checks.start_soon(check_database)
            if services.settings.redis_url:
                checks.start_soon(check_redis)
    body = {
        "status": "ok" if database_ok else "unavailable",
        "database": "ok" if database_ok else "unreachable",
        "streams": "redis" if services.settings.redis_url else "memory",
        "model": services.model.name,
    }
    if services.settings.redis_url:
        body["redis"] = "ok" if redis_ok else "unreachable"
    return JSONResponse(body, status_code=200 if database_ok else 503)


@router.get(
    "/metrics",
    tags=["system"],
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}, "description": "The metrics."}},
)
async def metrics(request: Request, services: CurrentServices) -> Response:
    """This process's metrics in the Prometheus text format. With ``UNBROKEN_METRICS_TOKEN``
    set, only for ``Authorization: Bearer <that token>`` (401 otherwise)."""
    token = services.settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise ApiError(
                401,
                "unauthorized",
                "the metrics need 'Authorization: Bearer <metrics token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
@router.get("/chat/{chat_id}", include_in_schema=False)  # the page's own client-side route
async def index(request: Request, services: CurrentServices) -> Response:
    # The page's own API calls need the session; issue it with the page.
    await identify(request, services.store, services.sessions)
    response = FileResponse(services.settings.static_dir / "index.html", media_type="text/html")
    response.headers["cache-control"] = "no-cache"
    return response
