"""Timestamps of a chat worker's resumes, for `chat_resume_profile.py` (not a benchmark).

Run a worker as ``python benchmarks/_chat_probe.py chat --port N ...`` (the ``unbroken``
command's arguments) with ``PROBE_OUT`` set: every ``GET /api/chat/{id}/stream`` request that
carries an ``x-probe`` header gets its moments recorded (``time.monotonic``, the clock the
client's is too): the request's bytes received, the ASGI app called, identify, the route's
first step, the database lookup, the reader's opening, the response's head and first body.
The garbage collector's pauses are recorded too. All of it is written to ``PROBE_OUT.<pid>.json``
when the worker exits.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import gc
import inspect
import json
import os
import sys
import time
from typing import Any

_now = time.monotonic
_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "probe", default=None
)
_requests: list[dict[str, Any]] = []
_gc_pauses: list[tuple[float, float, int]] = []  # (start, seconds, generation)


def _stamp(name: str) -> None:
    record = _current.get()
    if record is not None and name not in record:
        record[name] = _now()


def _timed(owner: Any, attribute: str, name: str) -> None:
    """Wrap the coroutine function ``owner.attribute`` so its start and end are stamped."""
    original = getattr(owner, attribute)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        _stamp(f"{name}_start")
        try:
            return await original(*args, **kwargs)
        finally:
            _stamp(f"{name}_end")

    setattr(owner, attribute, wrapper)


def _timed_sync(owner: Any, attribute: str, name: str) -> None:
    """Wrap the function ``owner.attribute`` so its start and end are stamped."""
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _stamp(f"{name}_start")
        try:
            return original(*args, **kwargs)
        finally:
            _stamp(f"{name}_end")

    setattr(owner, attribute, wrapper)


def _on_gc(phase: str, info: dict[str, Any], started: list[float] = [0.0]) -> None:  # noqa: B006
    if phase == "start":
        started[0] = _now()
    else:
        _gc_pauses.append((started[0], _now() - started[0], int(info["generation"])))


class _Probe:
    """The outermost ASGI app: stamps what the server and the response do."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        probe = dict(scope.get("headers", [])).get(b"x-probe")
        if probe is None:
            await self.app(scope, receive, send)
            return
        record: dict[str, Any] = {"id": probe.decode(), "recv": scope.get("probe.recv")}
        record["app"] = _now()
        _requests.append(record)
        token = _current.set(record)

        async def stamped_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                record["head"] = _now()
            elif message["type"] == "http.response.body" and "body1" not in record:
                record["body1"] = _now()
            await send(message)
            if message["type"] == "http.response.start":
                record["head_sent"] = _now()

        try:
            await self.app(scope, receive, stamped_send)
        finally:
            _current.reset(token)


def _stamp_sql(store_class: Any) -> None:
    """Stamp the pool checkout, the statement and the check-in of each store's queries."""
    from sqlalchemy import event

    initialize = store_class.__init__

    def stamped_init(self: Any, *args: Any, **kwargs: Any) -> None:
        initialize(self, *args, **kwargs)
        engine = self.sql_engine
        event.listen(engine, "before_cursor_execute", lambda *_: _stamp("sql_execute"))
        event.listen(engine, "after_cursor_execute", lambda *_: _stamp("sql_executed"))
        event.listen(engine.pool, "checkout", lambda *_: _stamp("sql_checkout"))
        event.listen(engine.pool, "checkin", lambda *_: _stamp("sql_checkin"))

    store_class.__init__ = stamped_init


def _stamp_redis() -> None:
    """Stamp a request's first Redis call through the pipeliner and its first pub/sub
    subscription (where a reader's opening waits), if the backend has them."""
    try:
        from unbroken.backends.redis import _pipeliner, _pubsub
    except ImportError:
        return
    _timed(_pipeliner.Pipeliner, "call", "redis_call")
    _timed(_pipeliner.Pipeliner, "call_many", "redis_call_many")
    for name in dir(_pubsub):
        owner = getattr(_pubsub, name)
        subscribe = vars(owner).get("subscribe") if isinstance(owner, type) else None
        if subscribe is not None and inspect.iscoroutinefunction(subscribe):
            _timed(owner, "subscribe", "redis_subscribe")


def _install() -> None:
    from uvicorn.protocols.http import httptools_impl

    protocol = httptools_impl.HttpToolsProtocol
    data_received, headers_complete = protocol.data_received, protocol.on_headers_complete

    def stamped_data_received(self: Any, data: bytes) -> None:
        self._probe_recv = _now()
        data_received(self, data)

    def stamped_headers_complete(self: Any) -> None:
        self.scope["probe.recv"] = getattr(self, "_probe_recv", None)
        headers_complete(self)

    protocol.data_received = stamped_data_received  # type: ignore[method-assign]
    protocol.on_headers_complete = stamped_headers_complete  # type: ignore[method-assign]

    import unbroken.cli
    from unbroken import asgi
    from unbroken.chat import deps, store

    _timed(deps, "identify", "identify")
    if hasattr(deps, "credentials"):  # a route that checks the key in its own query
        _timed_sync(deps, "credentials", "identify")
        _timed(store.Store, "chat_for_api_key", "db")
    _timed(store.Store, "get_chat_and_active_stream", "db")
    _timed(asgi.EngineStreamResponse, "open", "open")
    _stamp_redis()
    _stamp_sql(store.Store)
    serving_app = unbroken.cli.serving_app
    unbroken.cli.serving_app = lambda: _Probe(serving_app())  # type: ignore[assignment]
    gc.callbacks.append(_on_gc)

    def dump() -> None:
        with open(f"{os.environ['PROBE_OUT']}.{os.getpid()}.json", "w") as out:
            json.dump({"requests": _requests, "gc": _gc_pauses}, out)

    atexit.register(dump)


if __name__ == "__main__":
    _install()
    from unbroken.cli import main

    sys.argv[0] = "unbroken"
    sys.exit(main())
