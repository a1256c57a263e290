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

__all__ = ["router"]

logger = logging.getLogger("unbroken.chat")
router = APIRouter()


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
    """200 when the database answers (within 2 s), else 503."""
    ok = False
    with anyio.move_on_after(2):
        try:
            await services.store.ping()
            ok = True
        except Exception as exc:
            logger.warning("health check: database unreachable: %s", exc)
    body = {
        "status": "ok" if ok else "unavailable",
        "database": "ok" if ok else "unreachable",
        "streams": "redis" if services.settings.redis_url else "memory",
        "model": services.model.name,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


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
