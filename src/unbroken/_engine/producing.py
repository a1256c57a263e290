"""Producers: claim a stream, copy its source into it, hear a stop, record the end.

A producer runs in the engine's task group, never in a request's, so a client that leaves
stops nothing. Its helpers (the stop watcher, and a writer task if one is needed) run in a
small task group of its own that ends with the source.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterable, Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from unbroken._engine.flushing import Backoff, status_quietly
from unbroken._engine.local import (
    PRODUCER_LOST,
    SHUTDOWN,
    TOO_LARGE,
    LocalStream,
    safe_message,
)
from unbroken._engine.writing import Writes
from unbroken._models import StreamEnd, StreamState
from unbroken._wakeups import EventWakeups, Wakeups
from unbroken.backends.base import Backend, Ended, StreamTimes
from unbroken.exceptions import (
    BackendError,
    BackendUnavailableError,
    StreamExistsError,
    StreamSourceError,
)

__all__ = ["OnEnd", "Producers"]

logger = logging.getLogger("unbroken")

OnEnd = Callable[[StreamEnd], Awaitable[None]]


class Producers:
    """The streams this engine produces, by id, and the tasks that produce them."""

    def __init__(
        self, backend: Backend, writes: Writes, *, max_chunks: int, max_chars: int
    ) -> None:
        self.backend = backend
        self.writes = writes
        self.max_chunks = max_chunks
        self.max_chars = max_chars
        self.streams: dict[str, LocalStream] = {}
        self.new_wakeups: Callable[[], Wakeups] = EventWakeups

    async def start(
        self,
        task_group: TaskGroup,
        stream_id: str,
        source: AsyncIterable[str],
        times: StreamTimes,
        on_end: OnEnd | None,
    ) -> None:
        """Claim ``stream_id`` and run ``source`` into it in ``task_group``."""
        if stream_id in self.streams:
            raise StreamExistsError(stream_id)
        local = LocalStream(stream_id, secrets.token_hex(16), times, self.new_wakeups)
        try:
            claimed = await self.backend.claim(
                stream_id, token=local.token, times=local.times, now=time.time()
            )
        except BackendUnavailableError:
            # Fail open: the caller's own readers are served from memory right away, and the
            # claim is made once the backend is back (a loser of that claim then stops).
            logger.warning("backend unreachable: stream %r starts from memory", stream_id)
            claimed = local.lost = local.degraded = True
        if not claimed:
            raise StreamExistsError(stream_id)
        self.streams[stream_id] = local
        task_group.start_soon(self._produce, local, source, on_end, name=f"unbroken:{stream_id}")

    async def drain(self, deadline: float) -> None:
        """Let producers finish for up to ``deadline`` seconds, then interrupt and record
        the rest."""
        with anyio.move_on_after(deadline):
            for local in list(self.streams.values()):
                await local.ended.wait()
        for local in list(self.streams.values()):
            local.stop(StreamState.INTERRUPTED, SHUTDOWN)
        # Each producer records its end within a bounded time (``backend_retry``).
        for local in list(self.streams.values()):
            await local.ended.wait()

    async def _produce(
        self, local: LocalStream, source: AsyncIterable[str], on_end: OnEnd | None
    ) -> None:
        try:
            async with anyio.create_task_group() as helpers:
                local.helpers = helpers
                try:
                    self.writes.begin(local)
                    helpers.start_soon(self._watch_for_stop, local)
                    state, error = await self._pump(local, source)
                finally:
                    # From now on its end writes what is left (no writer task may start).
                    local.ending, local.helpers = True, None
                helpers.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await self.writes.end(local, state, error)
        except Exception:
            # A bug of ours must not take down the engine and every other stream with it.
            logger.exception("producer of stream %r failed", local.stream_id)
            local.state, local.error = StreamState.INTERRUPTED, PRODUCER_LOST
            local.wake_readers()
        try:
            if on_end is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await on_end(local.end())
                    except Exception:
                        logger.exception("on_end callback of stream %r failed", local.stream_id)
        finally:
            self.streams.pop(local.stream_id, None)
            local.ended.set()

    async def _pump(
        self, local: LocalStream, source: AsyncIterable[str]
    ) -> tuple[StreamState, str | None]:
        """Copy the source into the stream; returns the terminal state it calls for."""
        iterator = aiter(source)
        state, error = StreamState.DONE, None
        try:
            with local.source_scope:
                async for data in iterator:
                    if not isinstance(data, str):
                        raise TypeError(f"stream sources yield str, got {type(data).__name__}")
                    if not data:
                        continue
                    if (
                        len(local.log) >= self.max_chunks
                        or local.log.char_count + len(data) > self.max_chars
                    ):
                        state, error = StreamState.ERROR, TOO_LARGE
                        break
                    self.writes.added(local, local.add(data))
        except StreamSourceError as exc:
            # A failure the source described (a model that could not answer): one line says
            # it; the traceback is for debugging only.
            logger.warning("source of stream %r failed: %s", local.stream_id, exc)
            logger.debug("source of stream %r failed", local.stream_id, exc_info=True)
            state, error = StreamState.ERROR, safe_message(exc)
        except Exception as exc:
            logger.exception("source of stream %r failed", local.stream_id)
            state, error = StreamState.ERROR, safe_message(exc)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with anyio.move_on_after(5, shield=True):
                    try:
                        await aclose()
                    except Exception:
                        logger.exception("closing the source of %r failed", local.stream_id)
        if local.stop_state is not None:
            state, error = local.stop_state, local.stop_error
        return state, error

    async def _watch_for_stop(self, local: LocalStream) -> None:
        """Stop the producer within milliseconds when another process ends the stream."""
        backoff = Backoff()
        while True:
            try:
                async with self.backend.listen(local.stream_id, ends_only=True) as listener:
                    backoff.reset()
                    while True:
                        note = await listener.receive()
                        # Trust the backend, not the channel (a message can be forged).
                        if (
                            isinstance(note, Ended)
                            and (status := await status_quietly(self.backend, local.stream_id))
                            and status.is_terminal
                        ):
                            local.stop(status.state)
                            return
            except BackendError:
                await backoff.wait()
