"""The npm-parity API: create-or-resume, DONE handling, UTF-16 skip counts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from tests._services import delete_redis_keys
from unbroken import MemoryBackend, StreamEngine, StreamExistsError
from unbroken.backends.base import ReadsWithStatus
from unbroken.compat import (
    CATCH_UP_READ,
    ResumableStreamContext,
    create_resumable_stream_context,
    utf16_skip,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def words(pieces: list[str], gate: anyio.Event | None = None) -> AsyncIterator[str]:
    for i, piece in enumerate(pieces):
        if gate is not None and i == 2:
            await gate.wait()
        yield piece


async def drain(stream: AsyncIterator[str] | None) -> list[str]:
    assert stream is not None
    with anyio.fail_after(10):
        return [text async for text in stream]


def test_utf16_skip_counts_code_units() -> None:
    assert utf16_skip("a😀b", 1) == ("😀b", 0)
    assert utf16_skip("a😀b", 3) == ("b", 0)
    assert utf16_skip("a😀b", 2) == ("b", 0)  # inside the pair: the whole emoji goes
    assert utf16_skip("ab", 5) == ("", 3)


# (backend, async library): not Redis on trio, as redis-py's client is written for asyncio.
CONTEXTS = [
    pytest.param("memory", "asyncio", id="memory-asyncio"),
    pytest.param("memory", "trio", id="memory-trio"),
    pytest.param("redis", "asyncio", id="redis-asyncio", marks=pytest.mark.redis),
]


@pytest.fixture
async def context_kwargs(
    context_backend: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    key_prefix: str,
) -> AsyncIterator[dict[str, str]]:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("KV_URL", raising=False)
    if context_backend == "memory":
        yield {"key_prefix": key_prefix}
        return
    url: str = request.getfixturevalue("redis_url")
    try:
        yield {"key_prefix": key_prefix, "redis_url": url}
    finally:
        await delete_redis_keys(url, key_prefix)  # the shared Redis keeps nothing of this test


@pytest.mark.parametrize(("context_backend", "anyio_backend"), CONTEXTS)
async def test_create_or_resume(
    context_kwargs: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0
    gate = anyio.Event()

    def make() -> AsyncIterator[str]:
        nonlocal calls
        calls += 1
        return words(["Hel", "lo ", "wor", "ld 😀", "!"], gate)

    async with create_resumable_stream_context(**context_kwargs) as ctx:
        assert await ctx.has_existing_stream("chat-1") is None
        assert await ctx.resume_existing_stream("chat-1") is None
        first = await ctx.resumable_stream("chat-1", make)
        # Let the producer reach the gate with two chunks written: the backend's own view
        # is what a resumer sees, and nothing else signals it, so poll it (bounded).
        with anyio.fail_after(5):
            while (status := await ctx.engine.status("chat-1")) is None or status.chunk_count < 2:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        second = await ctx.resumable_stream("chat-1", make)
        skipped = await ctx.resumable_stream("chat-1", make, skip_characters=4)
        assert await ctx.has_existing_stream("chat-1") is True
        results: list[list[str]] = []

        async def read(stream: AsyncIterator[str] | None) -> None:
            results.append(await drain(stream))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read, first)
            await anyio.sleep(0.05)
            gate.set()
        assert results[0] == ["Hel", "lo ", "wor", "ld 😀", "!"]
        assert calls == 1
        # The resumers joined before the gate: one catch-up chunk, then live ones.
        rest = await drain(second)
        assert rest[0] == "Hello " and "".join(rest) == "Hello world 😀!"
        assert "".join(await drain(skipped)) == "o world 😀!"
        assert await ctx.has_existing_stream("chat-1") == "DONE"
        assert await ctx.resumable_stream("chat-1", make) is None
        assert calls == 1
        with pytest.raises(StreamExistsError):
            await ctx.create_new_resumable_stream("chat-1", make)
        fresh = await ctx.create_new_resumable_stream("chat-2", make)
        assert "".join(await drain(fresh)) == "Hello world 😀!"
    if "redis_url" not in context_kwargs:
        assert "REDIS_URL is not set" in caplog.text


@asynccontextmanager
async def two_processes(
    context_kwargs: dict[str, str],
) -> AsyncIterator[tuple[ResumableStreamContext, ResumableStreamContext]]:
    """Two contexts sharing one backend, as two worker processes would."""
    if "redis_url" in context_kwargs:
        async with (
            create_resumable_stream_context(**context_kwargs) as first,
            create_resumable_stream_context(**context_kwargs) as second,
        ):
            yield first, second
        return
    backend = MemoryBackend()
    async with StreamEngine(backend) as one, StreamEngine(backend) as other:
        yield (
            create_resumable_stream_context(engine=one),
            create_resumable_stream_context(engine=other),
        )


@pytest.mark.parametrize(("context_backend", "anyio_backend"), CONTEXTS)
async def test_resume_catches_up_in_one_chunk_past_a_look(context_kwargs: dict[str, str]) -> None:
    # More chunks than the resume's first look reads: the resumer still gets them as one
    # catch-up.
    pieces = [f"{i:05d} " for i in range(CATCH_UP_READ + 300)]
    gate = anyio.Event()

    async def long_then_gate() -> AsyncIterator[str]:
        for piece in pieces:
            yield piece
        await gate.wait()
        yield "end"

    async with two_processes(context_kwargs) as (producing, resuming):
        own = await producing.create_new_resumable_stream("long", long_then_gate)
        with anyio.fail_after(5):
            while (status := await resuming.engine.status("long")) is None or (  # noqa: ASYNC110
                status.chunk_count < len(pieces)
            ):
                await anyio.sleep(0.01)
        resumed = await resuming.resume_existing_stream("long", skip_characters=5)
        assert resumed is not None
        first = await anext(resumed)
        assert first == "".join(pieces)[5:]
        gate.set()
        assert [text async for text in resumed] == ["end"]
        assert "".join(await drain(own)) == "".join(pieces) + "end"
        assert await resuming.resume_existing_stream("long") is None  # finished
        assert await resuming.resume_existing_stream("no-such-stream") is None


@pytest.mark.parametrize(("context_backend", "anyio_backend"), CONTEXTS)
@pytest.mark.parametrize(
    ("pieces", "looks"), [(1200, 1), (CATCH_UP_READ + 300, 2)], ids=["within", "past"]
)
async def test_a_catch_up_asks_no_status_of_its_own(
    context_kwargs: dict[str, str], pieces: int, looks: int
) -> None:
    # The reader's first look says how long the log was: the only statuses asked before the
    # first text are its looks: the first, which reads a log of many pages whole, and for a
    # longer one the look after it subscribed.
    texts = [f"{i:05d} " for i in range(pieces)]
    gate = anyio.Event()

    async def long_then_gate() -> AsyncIterator[str]:
        for text in texts:
            yield text
        await gate.wait()
        yield "end"

    async with two_processes(context_kwargs) as (producing, resuming):
        own = await producing.create_new_resumable_stream("counted", long_then_gate)
        with anyio.fail_after(5):
            while (status := await resuming.engine.status("counted")) is None or (  # noqa: ASYNC110
                status.chunk_count < pieces
            ):
                await anyio.sleep(0.01)
        backend = resuming.engine.backend
        real_status = backend.status
        real_look = backend.look if isinstance(backend, ReadsWithStatus) else None
        asked: list[str] = []

        async def counted(stream_id: str) -> Any:
            asked.append(stream_id)
            return await real_status(stream_id)

        async def counted_look(stream_id: str, *, after: int, limit: int) -> Any:
            asked.append(stream_id)  # a look in one call (`ReadsWithStatus`) is a status too
            assert real_look is not None
            return await real_look(stream_id, after=after, limit=limit)

        backend.status = counted  # type: ignore[method-assign]
        if real_look is not None:
            backend.look = counted_look  # type: ignore[attr-defined]
        try:
            resumed = await resuming.resume_existing_stream("counted")
            assert resumed is not None
            assert await anext(resumed) == "".join(texts)
        finally:
            backend.status = real_status  # type: ignore[method-assign]
            if real_look is not None:
                backend.look = real_look  # type: ignore[attr-defined]
        assert asked == ["counted"] * looks
        gate.set()
        assert [text async for text in resumed] == ["end"]
        assert "".join(await drain(own)) == "".join(texts) + "end"


@pytest.mark.parametrize(("context_backend", "anyio_backend"), CONTEXTS)
async def test_a_resumed_stream_closed_unread_lets_go(context_kwargs: dict[str, str]) -> None:
    gate = anyio.Event()
    async with create_resumable_stream_context(**context_kwargs) as ctx:
        own = await ctx.create_new_resumable_stream("idle", lambda: words(["a", "b", "c"], gate))
        resumed = [await ctx.resume_existing_stream("idle") for _ in range(3)]
        for stream in resumed:
            assert stream is not None
            await stream.aclose()  # never iterated: its reader is released all the same
            await stream.aclose()
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
        gate.set()
        assert "".join(await drain(own)) == "abc"
