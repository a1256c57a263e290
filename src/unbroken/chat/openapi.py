"""The chat service's OpenAPI document and its two readers, Swagger UI (``/docs``) and ReDoc
(``/redoc``), served from the installed ``fastapi-offline`` package: no CDN, so they work
on an offline machine too.

FastAPI builds the document from the routes (their success models are in
`unbroken.chat.api_models`); `describe` adds what it cannot know: the request bodies the
routes parse themselves, how callers authenticate (an API key as a Bearer token, or the
browser's session cookie), and every error each route really answers, in the JSON error
shape. FastAPI's generic ``422`` is left out: this service answers ``400`` for a request
it cannot take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from unbroken.chat.api_models import ApiErrorBody, ChatRequest, RenameRequest, StopRequest

__all__ = ["DOCS_ASSETS", "DOCS_PATHS", "describe", "install_docs"]

#: Where the Swagger UI and ReDoc files are served.
DOCS_ASSETS = "/docs-assets"
#: The pages that show the document (they need a looser content security policy).
DOCS_PATHS = ("/docs", "/redoc")

_ERROR_TEXT = {
    400: "The request is malformed: invalid JSON, a missing or wrong field, a bad id.",
    401: "An `Authorization` header that is not a known API key.",
    403: "A browser request from another site (its `Origin` is not this service's).",
    404: "No such chat, or not yours: the two look the same.",
    409: "Another answer is being started in this chat at this moment; try again.",
    413: "The request body is larger than `UNBROKEN_MAX_BODY_BYTES`.",
    429: "Too many answers: the caller has `UNBROKEN_MAX_CONCURRENT_ANSWERS` answers "
    "running, or started `UNBROKEN_ANSWERS_PER_MINUTE` in the last minute. `Retry-After` "
    "says when to try again; nothing was stored or generated.",
    503: "The stream store (Redis) cannot be reached right now; try again shortly.",
}
#: The errors each operation answers (besides its successes).
_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/api/chat"): (400, 401, 403, 404, 409, 413, 429, 503),
    ("get", "/api/chat"): (400, 401, 404, 503),
    ("get", "/api/chat/{chat_id}/stream"): (400, 401, 404, 503),
    ("post", "/api/chat/{chat_id}/stop"): (400, 401, 403, 404, 413, 503),
    ("get", "/api/chats"): (400, 401),
    ("get", "/api/chats/{chat_id}"): (401, 404, 503),
    ("patch", "/api/chats/{chat_id}"): (400, 401, 403, 404, 413),
    ("delete", "/api/chats/{chat_id}"): (401, 403, 404, 503),
    ("get", "/metrics"): (401,),
}
_BODIES = {
    ("post", "/api/chat"): ("ChatRequest", True),
    ("post", "/api/chat/{chat_id}/stop"): ("StopRequest", False),
    ("patch", "/api/chats/{chat_id}"): ("RenameRequest", True),
}
_SECURITY_SCHEMES = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `unbroken users create-key`.",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "unbroken_session",
        "description": "The browser's guest session: the first response to a browser sets it.",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`UNBROKEN_METRICS_TOKEN`, when it is set.",
    },
}
_CHAT_ID = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}$",
    "description": "The chat's id.",
}
_AFTER = {
    "anyOf": [{"type": "integer", "minimum": -1}, {"type": "null"}],
    "description": "Resume after this event id (what the last `id:` line said); -1 or "
    "absent: from the start.",
}
_PARAMETERS: dict[str, dict[str, Any]] = {"chat_id": _CHAT_ID, "chatId": _CHAT_ID, "after": _AFTER}
#: The operations that answer with a stream (or text), not JSON.
_STREAMS = {
    ("post", "/api/chat"),
    ("get", "/api/chat"),
    ("get", "/api/chat/{chat_id}/stream"),
    ("get", "/metrics"),
}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": -1},
    "description": "What `EventSource` sends on reconnect; wins over `after`.",
}


def describe(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app`` (built once, then cached on the app)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("ValidationError", "HTTPValidationError"):
        schemas.pop(name, None)
    _, defs = models_json_schema(
        [
            (model, "validation")
            for model in (ChatRequest, StopRequest, RenameRequest, ApiErrorBody)
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas.update(defs["$defs"])
    components["securitySchemes"] = _SECURITY_SCHEMES
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            _describe_operation(method, path, operation)
    app.openapi_schema = document
    return document


def _describe_operation(method: str, path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)
    for status in _ERRORS.get((method, path), ()):
        entry: dict[str, Any] = {
            "description": _ERROR_TEXT[status],
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ApiErrorBody"}}
            },
        }
        if status == 429:
            entry["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}
            }
        responses.setdefault(str(status), entry)
    if (method, path) in _BODIES:
        name, required = _BODIES[(method, path)]
        operation["requestBody"] = {
            "required": required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    for parameter in operation.get("parameters", []):
        schema = _PARAMETERS.get(parameter["name"])
        if schema is not None:
            parameter["schema"] = schema
            parameter["description"] = schema["description"]
        if parameter["name"] == "chatId":
            parameter["required"] = True
    if (method, path) in _STREAMS:
        # The default JSON body FastAPI documents for a route: these answer with a stream.
        responses["200"].get("content", {}).pop("application/json", None)
    if path == "/api/chat/{chat_id}/stream":
        operation.setdefault("parameters", []).append(_LAST_EVENT_ID)
    if path.startswith("/api/"):
        operation["security"] = [{"apiKey": []}, {"session": []}, {}]
    elif path == "/metrics":
        operation["security"] = [{"metricsToken": []}, {}]
    else:
        operation["security"] = []


_SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} · API</title>
  <link rel="icon" href="{assets}/favicon.png">
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script src="/static/js/docs.js"></script>
</body>
</html>
"""
_REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} · API</title>
  <link rel="icon" href="{assets}/favicon.png">
</head>
<body>
  <redoc spec-url="/openapi.json"></redoc>
  <script src="{assets}/redoc.standalone.js"></script>
</body>
</html>
"""


def install_docs(app: FastAPI) -> None:
    """Serve the document at ``/openapi.json``, Swagger UI at ``/docs`` and ReDoc at
    ``/redoc``, with their files from the installed ``fastapi-offline`` package."""
    import fastapi_offline

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    app.openapi = lambda: describe(app)  # type: ignore[method-assign]
    swagger = _SWAGGER_PAGE.format(title=app.title, assets=DOCS_ASSETS)
    redoc = _REDOC_PAGE.format(title=app.title, assets=DOCS_ASSETS)

    async def swagger_page(_: Request) -> HTMLResponse:
        return HTMLResponse(swagger)

    async def redoc_page(_: Request) -> HTMLResponse:
        return HTMLResponse(redoc)

    app.add_route("/docs", swagger_page, include_in_schema=False)
    app.add_route("/redoc", redoc_page, include_in_schema=False)
