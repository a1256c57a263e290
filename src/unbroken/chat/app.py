"""`create_app`: the reference chat service as a FastAPI application.

The lifespan owns everything long-lived, opened in this order and closed in reverse: the
SQL store (migrated on start), the model client, then the stream engine. So on shutdown the
engine drains running generations first, while the model and the store they need are still
open, and every answer that ends during shutdown is still stored.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

import unbroken
from unbroken import Backend, MemoryBackend, StreamEngine
from unbroken._signals import on_exit_signal
from unbroken.asgi import SHUTDOWN_STATE_KEY
from unbroken.chat.answers import Answers
from unbroken.chat.auth import SessionCookieMiddleware, Sessions
from unbroken.chat.deps import Services
from unbroken.chat.errors import BodyLimitMiddleware, install_error_handlers
from unbroken.chat.limits import make_limits
from unbroken.chat.metrics import ChatMetrics
from unbroken.chat.models import make_model
from unbroken.chat.openapi import DOCS_PATHS, install_docs
from unbroken.chat.routes import router
from unbroken.chat.security import SecurityHeadersMiddleware
from unbroken.chat.settings import Settings
from unbroken.chat.store import STREAM_GROUP_SEPARATOR, Store

__all__ = ["app_from_env", "create_app", "describe_backend", "found_backend", "make_backend"]

logger = logging.getLogger("unbroken.chat")

MEMORY_NOTE = (
    "REDIS_URL is not set: streams live in this process's memory; resumption works within "
    "this one process (set REDIS_URL to share streams between workers and instances)"
)


def make_backend(settings: Settings) -> Backend:
    """RedisBackend when ``REDIS_URL`` is set, else the in-process MemoryBackend."""
    if settings.redis_url:
        # Imported here: the redis extra is needed only when REDIS_URL is set.
        from unbroken.backends.redis import RedisBackend

        return RedisBackend(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            write_gather=settings.redis_write_gather,
            # Set whatever UNBROKEN_REDIS_PLACEMENT says, so that workers of either setting
            # find each other's streams.
            placement_separator=STREAM_GROUP_SEPARATOR,
        )
    return MemoryBackend()


def describe_backend(settings: Settings) -> str:
    """Where streams live, for the startup banner: what ``REDIS_URL`` names (one server, a
    cluster, a Sentinel service), without its password."""
    if settings.redis_url:
        from unbroken.backends.redis._url import parse_redis_url

        named = parse_redis_url(settings.redis_url).describe()
        return f"{named} (prefix {settings.redis_key_prefix!r})"
    return "memory (this process only)"


async def found_backend(backend: Backend) -> str | None:
    """What a Redis backend finds at start (standalone, a cluster with N masters, a Sentinel
    service at its master's address), for the log; None for another backend."""
    describe = getattr(backend, "describe", None)
    return await describe() if describe is not None else None


def create_app(settings: Settings | None = None) -> FastAPI:
    """The chat service. ``settings`` default to `Settings.from_env`.

    Each app has its own metrics registry, engine and store, so one process can run many
    (tests do).
    """
    settings = settings if settings is not None else Settings.from_env()
    settings.validate()
    metrics = ChatMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            store = Store.from_url(settings.database_url)
            stack.push_async_callback(store.close)
            if settings.migrate_on_start and await store.upgrade():
                logger.info("database migrated to the latest schema")
            secret = settings.secret_key or await store.get_or_create_config(
                "session_secret", secrets.token_urlsafe(32)
            )
            model = make_model(settings)
            stack.push_async_callback(model.aclose)
            limits = make_limits(
                redis_url=settings.redis_url,
                key_prefix=settings.redis_key_prefix,
                concurrent=settings.max_concurrent_answers,
                per_minute=settings.answers_per_minute,
            )
            stack.push_async_callback(limits.aclose)
            if not settings.redis_url:
                logger.warning(MEMORY_NOTE)
            backend = make_backend(settings)
            engine = await stack.enter_async_context(
                StreamEngine(
                    backend,
                    lease_ttl=settings.lease_ttl,
                    retention=settings.retention,
                    drain_timeout=settings.drain_timeout,
                )
            )
            if settings.redis_url:
                logger.info("streams: %s", await found_backend(backend))
            services = Services(
                settings=settings,
                store=store,
                engine=engine,
                model=model,
                metrics=metrics,
                sessions=Sessions(secret),
                answers=Answers(
                    settings=settings,
                    store=store,
                    engine=engine,
                    model=model,
                    metrics=metrics,
                    limits=limits,
                ),
            )
            app.state.services = services
            shutdown = anyio.Event()
            on_exit_signal(shutdown.set)
            async with anyio.create_task_group() as background:
                if settings.sweep_interval > 0:
                    background.start_soon(services.answers.sweep_forever, settings.sweep_interval)
                background.start_soon(limits.run)
                yield {SHUTDOWN_STATE_KEY: shutdown}
                background.cancel_scope.cancel()

    app = FastAPI(
        title="unbroken chat",
        version=unbroken.__version__,
        summary="The reference chat service of unbroken: resumable AI SDK chat streams.",
        lifespan=lifespan,
        # A trailing slash is a 404 with the JSON error body, not a redirect.
        redirect_slashes=False,
        docs_url=None,  # served by install_docs, from local files
        redoc_url=None,
    )
    install_docs(app)
    install_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    # The last one added runs first: the body limit applies before anything reads the body,
    # and every response, its 413 included, gets the security headers.
    app.add_middleware(SessionCookieMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=DOCS_PATHS)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory unbroken.chat.app:app_from_env``: the app for the
    environment's settings (the CLI serves it, tuned for serving: see `unbroken.cli`)."""
    return create_app(Settings.from_env())
