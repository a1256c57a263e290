"""The npm ``resumable-stream`` API in Python naming, for porting the seed pattern.

::

    async with create_resumable_stream_context(key_prefix="my-app") as ctx:
        stream = await ctx.resumable_stream(stream_id, lambda: make_text_stream())
        if stream is None:
            ...  # the stream is already finished
        async for text in stream:
            ...

Differences from the npm package, all in the direction of its known flaws:

- Streams are kept in the backend (Redis when ``REDIS_URL``/``KV_URL`` is set, else in this
  process's memory, with a log line instead of the npm package's exception), not in the
  producer's memory: a dead producer ends readers with ``interrupted`` instead of hanging.
- ``create_new_resumable_stream`` refuses an id that exists (`StreamExistsError`) instead of
  starting a second producer under it.
- ``skip_characters`` counts UTF-16 code units like JavaScript's ``string.length`` (an emoji
  counts 2). A count that ends inside a surrogate pair skips the whole character (Python
  strings cannot hold half of one). A count beyond what is buffered keeps skipping live text,
  so it never yields duplicates.
- ``resume_existing_stream`` returns None both for an unknown id (npm: ``undefined``) and a
  finished one (npm: ``null``); `has_existing_stream` tells them apart.
- Any terminal state (done, error, cancelled, interrupted) counts as ``"DONE"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from types import TracebackType
from typing import Any, Literal, Self

from unbroken._engine import StreamEngine
from unbroken._models import Chunk, StreamEnd, StreamState
from unbroken.backends.base import Backend
from unbroken.backends.memory import MemoryBackend
from unbroken.exceptions import StreamExistsError

__all__ = ["ResumableStreamContext", "create_resumable_stream_context", "utf16_skip"]

logger = logging.getLogger("unbroken.compat")

MakeStream = Callable[[], AsyncIterable[str]]


def create_resumable_stream_context(
    *,
    key_prefix: str | None = None,
    redis_url: str | None = None,
    engine: StreamEngine | None = None,
    **engine_options: Any,
) -> ResumableStreamContext:
    """Build a context like the npm ``createResumableStreamContext``.

    The Redis URL is ``redis_url``, else ``REDIS_URL``, else ``KV_URL``: one server
    (``redis://``, ``rediss://``), ``redis+cluster://h:p,h:p`` or
    ``redis+sentinel://h:p,h:p/<service>[/db]``; a URL that cannot work raises `ValueError`
    here. Without one, streams
    live in this process's memory (resumption then works within this process only). Keys use
    ``key_prefix`` (default ``"resumable-stream"``) + ``":rs"`` like the npm package. Pass
    ``engine`` to use an engine you manage yourself. Use the context as ``async with``.
    """
    if engine is not None:
        return ResumableStreamContext(engine, owns_engine=False)
    url = redis_url or os.environ.get("REDIS_URL") or os.environ.get("KV_URL")
    backend: Backend
    if url:
        from unbroken.backends.redis import RedisBackend

        backend = RedisBackend(url, key_prefix=f"{key_prefix or 'resumable-stream'}:rs")
    else:
        logger.warning(
            "REDIS_URL is not set: resumable streams are kept in this process's memory and "
            "can only be resumed by this process"
        )
        backend = MemoryBackend()
    return ResumableStreamContext(StreamEngine(backend, **engine_options), owns_engine=True)


def utf16_skip(text: str, units: int) -> tuple[str, int]:
    """Drop ``units`` UTF-16 code units from the front of ``text``.

    Returns the rest and how many units are still to skip (if ``text`` was too short).
    """
    index = 0
    while units > 0 and index < len(text):
        units -= 2 if ord(text[index]) > 0xFFFF else 1
        index += 1
    return text[index:], max(units, 0)


class ResumableStreamContext:
    """Create-or-resume text streams by id, like the npm package's context."""

    def __init__(self, engine: StreamEngine, *, owns_engine: bool) -> None:
        self.engine = engine
        self._owns_engine = owns_engine

    async def __aenter__(self) -> Self:
        if self._owns_engine:
            await self.engine.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_engine:
            await self.engine.__aexit__(exc_type, exc, tb)

    async def resumable_stream(
        self, stream_id: str, make_stream: MakeStream, skip_characters: int | None = None
    ) -> AsyncIterator[str] | None:
        """Become the producer (calling ``make_stream``) or resume; None if already done."""
        try:
            await self.engine.start(stream_id, _deferred(make_stream))
        except StreamExistsError:
            return await self.resume_existing_stream(stream_id, skip_characters)
        return self._text(stream_id, skip_characters, catch_up_below=0)

    async def create_new_resumable_stream(
        self, stream_id: str, make_stream: MakeStream, skip_characters: int | None = None
    ) -> AsyncIterator[str]:
        """Always become the producer; raises `StreamExistsError` if the id is taken."""
        await self.engine.start(stream_id, _deferred(make_stream))
        return self._text(stream_id, skip_characters, catch_up_below=0)

    async def resume_existing_stream(
        self, stream_id: str, skip_characters: int | None = None
    ) -> AsyncIterator[str] | None:
        """Resume an active stream: one catch-up chunk, then live chunks.

        None if the stream is unknown or already finished.
        """
        status = await self.engine.status(stream_id)
        if status is None or status.state is not StreamState.ACTIVE:
            return None
        return self._text(stream_id, skip_characters, catch_up_below=status.chunk_count)

    async def has_existing_stream(self, stream_id: str) -> Literal[True, "DONE"] | None:
        """None if unknown, ``True`` while active, ``"DONE"`` once finished."""
        status = await self.engine.status(stream_id)
        if status is None:
            return None
        return "DONE" if status.is_terminal else True

    async def _text(
        self, stream_id: str, skip_characters: int | None, *, catch_up_below: int
    ) -> AsyncIterator[str]:
        """The stream as text: chunks with ``seq < catch_up_below`` joined into one."""
        skip = skip_characters or 0
        catch_up: list[str] = []
        sent_catch_up = catch_up_below == 0
        async with aclosing(self.engine.read(stream_id)) as items:
            async for item in items:
                if isinstance(item, StreamEnd):
                    break
                text = _skip(item, skip)
                skip = max(skip - _utf16_len(item.data), 0)
                if not sent_catch_up:
                    catch_up.append(text)
                    if item.seq < catch_up_below - 1:
                        continue
                    sent_catch_up = True
                    text = "".join(catch_up)
                yield text
        if not sent_catch_up:
            yield "".join(catch_up)


def _utf16_len(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _skip(chunk: Chunk, units: int) -> str:
    return utf16_skip(chunk.data, units)[0] if units else chunk.data


async def _deferred(make_stream: MakeStream) -> AsyncIterator[str]:
    # make_stream() runs only once this process has won the claim, as in the npm package.
    async for text in make_stream():
        yield text
