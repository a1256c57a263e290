"""`create_app`: the reference chat service as a FastAPI application.

The lifespan owns everything long-lived, opened in this order and closed in reverse: the
SQL store (migrated on start), the model client, then the stream engine. So on shutdown the
engine drains running generations first, while the model and the store they need are still
open, and every answer that ends during shutdown is still stored.
"""

from __future__ import annotations

import gc
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
from unbroken.asgi import SHUTDOWN_STATE_KEY
from unbroken.chat import _wire
from unbroken.chat._signals import on_exit_signal
from unbroken.chat.answers import sweep_forever
from unbroken.chat.auth import SessionCookieMiddleware, Sessions
from unbroken.chat.deps import Services
from unbroken.chat.errors import BodyLimitMiddleware, install_error_handlers
from unbroken.chat.generation import Generator
from unbroken.chat.metrics import ChatMetrics
from unbroken.chat.models import make_model
from unbroken.chat.routes import router
from unbroken.chat.settings import Settings, mask_url
from unbroken.chat.store import Store

__all__ = ["app_from_env", "create_app", "describe_backend", "make_backend"]

logger = logging.getLogger("unbroken.chat")

MEMORY_NOTE = (
    "REDIS_URL is not set: streams live in this process's memory; resumption works within "
    "this one process (set REDIS_URL to share streams between workers and instances)"
)


def make_backend(settings: Settings) -> Backend:
    """RedisBackend when ``REDIS_URL`` is set, else the in-process MemoryBackend."""
    if settings.redis_url:
        return _wire.redis_backend(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            write_gather=settings.redis_write_gather,
        )
    return MemoryBackend()


def describe_backend(settings: Settings) -> str:
    if settings.redis_url:
        return f"redis {mask_url(settings.redis_url)} (prefix {settings.redis_key_prefix!r})"
    return "memory (this process only)"


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
            if not settings.redis_url:
                logger.warning(MEMORY_NOTE)
            engine = await stack.enter_async_context(
                StreamEngine(
                    make_backend(settings),
                    lease_ttl=settings.lease_ttl,
                    retention=settings.retention,
                    drain_timeout=settings.drain_timeout,
                )
            )
            services = Services(
                settings=settings,
                store=store,
                engine=engine,
                model=model,
                metrics=metrics,
                sessions=Sessions(secret),
                generator=Generator(store=store, engine=engine, model=model, metrics=metrics),
            )
            app.state.services = services
            shutdown = anyio.Event()
            on_exit_signal(shutdown.set)
            async with anyio.create_task_group() as background:
                if settings.sweep_interval > 0:
                    background.start_soon(sweep_forever, services, settings.sweep_interval)
                _freeze_startup_heap()
                yield {SHUTDOWN_STATE_KEY: shutdown}
                background.cancel_scope.cancel()

    app = FastAPI(
        title="unbroken chat",
        version=unbroken.__version__,
        summary="The reference chat service of unbroken: resumable AI SDK chat streams.",
        lifespan=lifespan,
        # A trailing slash is a 404 with the JSON error body, not a redirect.
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    # The last one added runs first: the body limit applies before anything reads the body.
    app.add_middleware(SessionCookieMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    return app


_heap_frozen = False
#: A full collection at most once per this many second-generation ones (Python's default:
#: 10). See `_freeze_startup_heap`.
FULL_COLLECTION_EVERY = 100


def _freeze_startup_heap() -> None:
    """Once per process, once started: move everything allocated so far (the modules and
    objects of FastAPI, SQLAlchemy, pydantic, …: most of the heap) out of the garbage
    collector's reach. They live as long as the process anyway, and without this every full
    collection scans them all, pausing every stream in the process for tens of milliseconds.

    Then make full collections ten times rarer. Each live answer holds ~400 tracked objects
    (its tasks, coroutines, cancel scopes, the request's middleware stack), so a full
    collection takes as long as there are answers running (60–150 ms at 250–400 answers on
    the benchmark machine) and pauses all of them; at Python's default pace one came every
    few seconds, often enough to set the p99 delivery delay. The cyclic garbage of finished
    answers now waits longer to be freed: memory for speed, bounded by that pace.
    """
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory unbroken.chat.app:app_from_env`` (what the CLI runs)."""
    return create_app(Settings.from_env())
