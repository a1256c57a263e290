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

import anyio

from unbroken._engine import StreamEngine, StreamReader
from unbroken._models import Chunk, StreamEnd, StreamState, StreamStatus
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
        # The reader's first look and the status (for the catch-up's length) go out
        # together, so the first chunk is one round trip away, not two.
        status: StreamStatus | None = None
        failures: list[Exception] = []
        reader: StreamReader | None = None

        async def look_up() -> None:
            nonlocal status
            try:
                status = await self.engine.status(stream_id)
            except Exception as exc:  # raised below, unwrapped (a task group would group it)
                failures.append(exc)

        async with anyio.create_task_group() as looks:
            looks.start_soon(look_up)
            try:
                reader = await self.engine.open(stream_id)
            except Exception as exc:
                failures.insert(0, exc)
        if failures:
            if reader is not None:
                await reader.aclose()
            if isinstance(failures[0], StreamNotFoundError):
                return None
            raise failures[0]
        assert reader is not None
        if reader.state is not StreamState.ACTIVE:
            await reader.aclose()
            return None
        catch_up_below = status.chunk_count if status is not None else 0
        return TextStream(reader, skip_characters or 0, catch_up_below)

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

    def __init__(self, reader: StreamReader, skip: int, catch_up_below: int) -> None:
        self._reader = reader
        self._texts = _texts(reader, skip, catch_up_below)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        return await anext(self._texts)

    async def aclose(self) -> None:
        """Stop reading and release the reader (its subscription). Idempotent."""
        await self._texts.aclose()
        await self._reader.aclose()


async def _texts(reader: StreamReader, skip: int, catch_up_below: int) -> AsyncGenerator[str, None]:
    catch_up: list[str] = []
    sent_catch_up = catch_up_below == 0
    try:
        async for batch in reader:
            for item in batch:
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
    finally:
        await reader.aclose()


def _utf16_len(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _skip(chunk: Chunk, units: int) -> str:
    return utf16_skip(chunk.data, units)[0] if units else chunk.data


async def _deferred(make_stream: MakeStream) -> AsyncIterator[str]:
    # make_stream() runs only once this process has won the claim, as in the npm package.
    async for text in make_stream():
        yield text
