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
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from types import TracebackType
from typing import Any, Literal, Self

from unbroken._engine import StreamEngine, StreamReader
from unbroken._engine.reading import READ_PAGE, Batch
from unbroken._models import Chunk, StreamEnd, StreamState
from unbroken.backends.base import Backend
from unbroken.backends.memory import MemoryBackend
from unbroken.exceptions import StreamExistsError, StreamNotFoundError

__all__ = [
    "ResumableStreamContext",
    "TextStream",
    "create_resumable_stream_context",
    "utf16_skip",
]

logger = logging.getLogger("unbroken.compat")

MakeStream = Callable[[], AsyncIterable[str]]

# Chunks in a resume's first look. Its first text is the whole catch-up, and a log longer
# than the look waits for the subscription and more reads before it: the look covers the
# answers a model writes, bounded so that one reply stays a few hundred KiB.
CATCH_UP_READ = 16 * READ_PAGE


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
        return await self._produced(stream_id, skip_characters)

    async def create_new_resumable_stream(
        self, stream_id: str, make_stream: MakeStream, skip_characters: int | None = None
    ) -> AsyncIterator[str]:
        """Always become the producer; raises `StreamExistsError` if the id is taken."""
        await self.engine.start(stream_id, _deferred(make_stream))
        return await self._produced(stream_id, skip_characters)

    async def resume_existing_stream(
        self, stream_id: str, skip_characters: int | None = None
    ) -> AsyncIterator[str] | None:
        """Resume an active stream: one catch-up chunk, then live chunks.

        None if the stream is unknown or already finished.
        """
        # The reader's first look is the only round trip before the first chunk: the first
        # text is the whole catch-up, so the reader takes the log up to `CATCH_UP_READ` in
        # that look (not the few chunks a response's first event needs). Its first batch is
        # the log as it stood then, so it is the catch-up, unless the log is longer than the
        # look: then the rest is read anyway, and the look's chunk count says how far to join.
        try:
            reader = await self.engine._open_reader(stream_id, -1, None, first_read=CATCH_UP_READ)
        except StreamNotFoundError:
            return None
        try:
            if reader.state is not StreamState.ACTIVE:
                await reader.aclose()
                return None
            first = await anext(reader)  # at once: the reader holds it since it opened
            seen = sum(isinstance(item, Chunk) for item in first)
            catch_up_below = reader.chunk_count if seen >= CATCH_UP_READ else seen
        except BaseException:
            await reader.aclose()
            raise
        return TextStream(reader, skip_characters or 0, catch_up_below, first)

    async def has_existing_stream(self, stream_id: str) -> Literal[True, "DONE"] | None:
        """None if unknown, ``True`` while active, ``"DONE"`` once finished."""
        status = await self.engine.status(stream_id)
        if status is None:
            return None
        return "DONE" if status.is_terminal else True

    async def _produced(self, stream_id: str, skip_characters: int | None) -> TextStream:
        # This process produces the stream: the reader reads its chunks from memory.
        return TextStream(await self.engine.open(stream_id), skip_characters or 0, 0)


class TextStream:
    """A stream's text as `resumable_stream` and friends return it: an async iterator of
    strings, chunks with ``seq < catch_up_below`` joined into one catch-up chunk.

    It holds an open reader: iterate it to the end, or close it with `aclose`.
    """

    __slots__ = ("_reader", "_texts")

    def __init__(
        self, reader: StreamReader, skip: int, catch_up_below: int, first: Batch | None = None
    ) -> None:
        self._reader = reader
        self._texts = _texts(reader, skip, catch_up_below, first or [])

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        return await anext(self._texts)

    async def aclose(self) -> None:
        """Stop reading and release the reader (its subscription). Idempotent."""
        await self._texts.aclose()
        await self._reader.aclose()


async def _texts(
    reader: StreamReader, skip: int, catch_up_below: int, first: Batch
) -> AsyncGenerator[str, None]:
    """The reader's batches (after ``first``, already taken from it) as text."""
    catch_up: list[str] = []
    sent_catch_up = catch_up_below == 0
    try:
        batch: Batch | None = first
        while batch is not None:
            for item in batch:
                if isinstance(item, StreamEnd):
                    break
                text = item.data
                if skip:
                    text = utf16_skip(text, skip)[0]
                    skip = max(skip - _utf16_len(item.data), 0)
                if not sent_catch_up:
                    catch_up.append(text)
                    if item.seq < catch_up_below - 1:
                        continue
                    sent_catch_up = True
                    text = "".join(catch_up)
                yield text
            batch = await anext(reader, None)
        if not sent_catch_up:
            yield "".join(catch_up)
    finally:
        await reader.aclose()


def _utf16_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


async def _deferred(make_stream: MakeStream) -> AsyncIterator[str]:
    # make_stream() runs only once this process has won the claim, as in the npm package.
    async for text in make_stream():
        yield text
