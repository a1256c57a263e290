"""The engine contract, run on every backend and both async libraries (ids such as
``memory-asyncio``, ``plain-trio``, ``redis-asyncio``: see ``conftest.py``).

Reads go through a *second* engine over the same store wherever it matters, so they take the
backend path (log + live notifications) and not only the producer's in-process shortcut.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import pytest

from tests.engine.conftest import ASYNC_LIBRARIES, EngineFactory
from unbroken import (
    Chunk,
    StreamEnd,
    StreamEngine,
    StreamExistsError,
    StreamNotFoundError,
    StreamSourceError,
    StreamState,
)
from unbroken._engine.reading import FIRST_READ, READ_PAGE
from unbroken.backends.base import (
    Backend,
    GatheredAppends,
    InlineAppends,
    ReadsWithStatus,
    Renewal,
    StreamTimes,
)
from unbroken.exceptions import BackendError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

UNICODE_PIECES = ["héllo ", "👩‍👩‍👧 ", "e\u0301", "🎉", " 中文", "\u0915\u094d\u0937", "!"]


async def paced(
    pieces: list[str], delay: float = 0.0, gate: anyio.Event | None = None
) -> AsyncIterator[str]:
    for i, piece in enumerate(pieces):
        if gate is not None and i == len(pieces) // 2:
            await gate.wait()
        if delay:
            await anyio.sleep(delay)
        else:
            await anyio.lowlevel.checkpoint()
        yield piece


async def collect(
    engine: StreamEngine, stream_id: str, **kwargs: int
) -> tuple[list[Chunk], StreamEnd]:
    chunks: list[Chunk] = []
    # aclosing: a read left before its generator is exhausted is closed here and now, not
    # when collected (trio warns about an async generator that is collected unfinished).
    with anyio.fail_after(20):
        async with aclosing(engine.read(stream_id, **kwargs)) as items:
            async for item in items:
                if isinstance(item, StreamEnd):
                    return chunks, item
                chunks.append(item)
    raise AssertionError("read ended without a StreamEnd")


def assert_gapless(chunks: list[Chunk], first_seq: int) -> None:
    assert [c.seq for c in chunks] == list(range(first_seq, first_seq + len(chunks)))


async def test_read_whole_stream(make_engine: EngineFactory) -> None:
    producer, reader = await make_engine(), await make_engine()
    pieces = [f"piece {i} " for i in range(300)]
    await producer.start("s1", paced(pieces))
    for engine in (producer, reader):
        chunks, end = await collect(engine, "s1")
        assert "".join(c.data for c in chunks) == "".join(pieces)
        assert_gapless(chunks, 0)
        assert end.state is StreamState.DONE
        assert end.chunk_count == 300
        assert end.char_count == len("".join(pieces))
    status = await reader.status("s1")
    assert status is not None
    assert status.state is StreamState.DONE
    assert status.chunk_count == 300
    assert status.finished_at is not None and status.finished_at >= status.created_at


async def test_concurrent_readers_join_at_random_points(make_engine: EngineFactory) -> None:
    producer, other = await make_engine(), await make_engine()
    pieces = [f"<{i}>" for i in range(400)]
    await producer.start("live", paced(pieces, delay=0.002))
    rng = random.Random(7)
    results: list[tuple[int, list[Chunk], StreamEnd]] = []

    async def join_later(engine: StreamEngine, after: int) -> None:
        await anyio.sleep(rng.uniform(0, 0.6))
        chunks, end = await collect(engine, "live", after=after)
        results.append((after, chunks, end))

    async with anyio.create_task_group() as tg:
        for i in range(24):
            tg.start_soon(join_later, (producer, other)[i % 2], rng.randrange(-1, 399))
    assert len(results) == 24
    for after, chunks, end in results:
        assert_gapless(chunks, after + 1)
        assert "".join(c.data for c in chunks) == "".join(pieces[after + 1 :])
        assert end.state is StreamState.DONE


async def test_resume_from_every_offset(make_engine: EngineFactory) -> None:
    producer, reader = await make_engine(), await make_engine()
    pieces = ["a", "bc", "def", "", "ghij", "k"] * 5
    text = "".join(pieces)
    await producer.start("every", paced(pieces))
    await reader.wait("every")
    nonempty = [p for p in pieces if p]
    for after in range(-1, len(nonempty)):
        chunks, end = await collect(reader, "every", after=after)
        assert [c.data for c in chunks] == nonempty[after + 1 :]
        assert end.state is StreamState.DONE
    for offset in range(len(text) + 2):
        chunks, _ = await collect(reader, "every", offset=offset)
        assert "".join(c.data for c in chunks) == text[offset:]
        if chunks:
            assert chunks[0].offset == offset


async def wait_for_chunks(engine: StreamEngine, stream_id: str, count: int) -> None:
    """Until the backend holds ``count`` chunks of the stream (what another engine sees;
    nothing else signals it, so poll it, bounded)."""
    with anyio.fail_after(10):
        while (status := await engine.status(stream_id)) is None or status.chunk_count < count:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_readers_start_with_a_short_batch(make_engine: EngineFactory) -> None:
    """A reader, on the producer's engine or another one, knows the stream's state and
    length before its first batch, which is short (a response encodes little before its
    first byte; another engine reads a few chunks for it, not a page), then the rest of
    the log and the live part follow with no gap and no duplicate."""
    producer, other = await make_engine(), await make_engine()
    pieces = [f"{i} " for i in range(READ_PAGE + 100)]
    gate = anyio.Event()

    async def source() -> AsyncIterator[str]:
        for piece in pieces:
            yield piece
        await gate.wait()
        yield "end"

    results: list[list[Chunk]] = []

    async def read(engine: StreamEngine, caught_up: anyio.Event) -> None:
        chunks: list[Chunk] = []
        async with engine.open("long") as opened:
            assert opened.state is StreamState.ACTIVE
            assert opened.chunk_count == len(pieces)
            first = await anext(opened)
            assert 0 < len(first) <= FIRST_READ
            chunks += [item for item in first if isinstance(item, Chunk)]
            async for batch in opened:
                chunks += [item for item in batch if isinstance(item, Chunk)]
                if len(chunks) == len(pieces):
                    caught_up.set()
                if batch and isinstance(batch[-1], StreamEnd):
                    assert batch[-1].state is StreamState.DONE
                    break
        results.append(chunks)

    await producer.start("long", source())
    await wait_for_chunks(other, "long", len(pieces))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            for engine in (producer, other):
                caught_up = anyio.Event()
                tasks.start_soon(read, engine, caught_up)
                await caught_up.wait()  # it has the whole log and waits for the rest
            gate.set()
    assert len(results) == 2
    for chunks in results:
        assert_gapless(chunks, 0)
        assert [c.data for c in chunks] == [*pieces, "end"]


async def test_an_ended_stream_is_read_without_a_subscription(
    make_engine: EngineFactory,
) -> None:
    """A stream that has ended is read from its log alone: no notification can tell a
    reader more, so none subscribes (one look, the pages, the end)."""
    producer, reader = await make_engine(), await make_engine()
    pieces = [f"<{i}>" for i in range(READ_PAGE + 10)]
    await producer.start("ended", paced(pieces))
    await reader.wait("ended")
    backend = reader.backend
    real_listen = backend.listen
    subscribed: list[str] = []

    def listen(stream_id: str, *, ends_only: bool = False) -> Any:
        subscribed.append(stream_id)
        return real_listen(stream_id, ends_only=ends_only)

    backend.listen = listen
    try:
        for after in (-1, 5, len(pieces) - 1):
            chunks, end = await collect(reader, "ended", after=after)
            assert "".join(c.data for c in chunks) == "".join(pieces[after + 1 :])
            assert end.state is StreamState.DONE and end.chunk_count == len(pieces)
    finally:
        backend.listen = real_listen
    assert subscribed == []


async def test_an_end_between_the_looks_read_and_status_loses_nothing(
    make_engine: EngineFactory,
) -> None:
    """The first look reads the log and the status at the same time. When its read goes
    first and the stream gets its last chunk and ends before its status, the status says
    ended: the reader still delivers that last chunk before the end."""
    producer, reader = await make_engine(), await make_engine()
    backend = reader.backend
    if isinstance(backend, InlineAppends):
        pytest.skip("an in-process backend's look asks the status first, then reads")
    gate = anyio.Event()

    async def source() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        await gate.wait()
        yield "c"

    await producer.start("race", source())
    await wait_for_chunks(reader, "race", 2)
    real_read, real_status = backend.read, backend.status
    read_first = anyio.Event()
    armed = [True]

    async def read(stream_id: str, *, after: int, limit: int) -> list[Chunk]:
        got: list[Chunk] = await real_read(stream_id, after=after, limit=limit)
        read_first.set()
        return got

    async def status(stream_id: str) -> Any:
        if armed.pop() if armed else False:
            await read_first.wait()  # the look's read has the log as it stood ...
            gate.set()  # ... then the last chunk and the end, before the look's status
            await producer.wait("race")
        return await real_status(stream_id)

    async def look(stream_id: str, *, after: int, limit: int) -> Any:
        # A look in one call (`ReadsWithStatus`) may also read the log before the status.
        got = await read(stream_id, after=after, limit=limit)
        return await status(stream_id), got

    real_look = backend.look if isinstance(backend, ReadsWithStatus) else None
    backend.read, backend.status = read, status
    if real_look is not None:
        backend.look = look
    try:
        chunks, end = await collect(reader, "race")
    finally:
        backend.read, backend.status = real_read, real_status
        if real_look is not None:
            backend.look = real_look
    assert [c.data for c in chunks] == ["a", "b", "c"]
    assert end.state is StreamState.DONE and end.chunk_count == 3


async def test_unicode_character_offsets(make_engine: EngineFactory) -> None:
    producer, reader = await make_engine(), await make_engine()
    text = "".join(UNICODE_PIECES)
    gate = anyio.Event()
    await producer.start("uni", paced(UNICODE_PIECES, gate=gate))
    # Offsets are code points; resuming mid-stream (live) and after the end both cut exactly.
    live_reads = []
    async with anyio.create_task_group() as tg:

        async def read_live(offset: int) -> None:
            chunks, _ = await collect(reader, "uni", offset=offset)
            live_reads.append((offset, "".join(c.data for c in chunks)))

        for offset in range(len(text) + 1):
            tg.start_soon(read_live, offset)
        await anyio.sleep(0.05)
        gate.set()
    assert sorted(live_reads) == [(o, text[o:]) for o in range(len(text) + 1)]
    status = await reader.status("uni")
    assert status is not None
    assert status.char_count == len(text)
    assert status.byte_count == len(text.encode())


async def test_producer_error_is_recorded_safely(make_engine: EngineFactory) -> None:
    producer, reader = await make_engine(), await make_engine()

    async def failing() -> AsyncIterator[str]:
        yield "partial "
        raise RuntimeError("secret database password in here")

    async def public_failure() -> AsyncIterator[str]:
        yield "x"
        raise StreamSourceError("the model is overloaded, try again")

    await producer.start("healthy", paced(["ok "] * 50, delay=0.001))
    await producer.start("broken", failing())
    await producer.start("public", public_failure())
    chunks, end = await collect(reader, "broken")
    assert [c.data for c in chunks] == ["partial "]
    assert end.state is StreamState.ERROR
    assert end.error is not None and "secret" not in end.error
    _, end = await collect(reader, "public")
    assert end.error == "the model is overloaded, try again"
    chunks, end = await collect(reader, "healthy")
    assert end.state is StreamState.DONE and len(chunks) == 50


async def test_cancel_from_another_engine(make_engine: EngineFactory) -> None:
    producer, other = await make_engine(), await make_engine()
    source_closed = anyio.Event()
    produced = 0

    async def endless() -> AsyncIterator[str]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield f"{produced} "
                await anyio.sleep(0.005)
        finally:
            source_closed.set()

    await producer.start("stop-me", endless())
    reader_end: list[StreamEnd] = []

    async def follow() -> None:
        reader_end.append((await collect(other, "stop-me"))[1])

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await anyio.sleep(0.1)
        started = time.monotonic()
        assert await other.cancel("stop-me") is StreamState.CANCELLED
        with anyio.fail_after(1):
            await source_closed.wait()
        elapsed = time.monotonic() - started
    assert elapsed < 0.5, f"producer stopped {elapsed:.3f}s after cancel"
    assert reader_end[0].state is StreamState.CANCELLED
    assert (await producer.wait("stop-me")).state is StreamState.CANCELLED
    # Idempotent, from either side, and the log stays as it was.
    count = reader_end[0].chunk_count
    assert await other.cancel("stop-me") is StreamState.CANCELLED
    assert await producer.cancel("stop-me") is StreamState.CANCELLED
    chunks, end = await collect(other, "stop-me")
    assert len(chunks) == count == end.chunk_count
    assert await other.cancel("never-existed") is None


@pytest.mark.timeout(30)  # a writer that spins blocks the loop: no in-loop timeout fires
async def test_cancel_while_the_source_yields_without_waiting(make_engine: EngineFactory) -> None:
    """A source that yields several chunks in a row (as `ui_chunks` does: a step's start,
    then its text) keeps adding chunks after a cancel; the appends refused after the end
    must not send the stream's writer into a loop that never yields (which, with the memory
    backend, froze the whole process at full CPU)."""
    producer, other = await make_engine(), await make_engine()

    async def pairs() -> AsyncIterator[str]:
        for index in range(10_000):
            await anyio.sleep(0.001)
            yield f"a{index} "
            yield f"b{index} "

    streams = [f"pairs-{index}" for index in range(50)]
    for stream_id in streams:
        await producer.start(stream_id, pairs())
    await anyio.sleep(0.1)
    with anyio.fail_after(10):
        for index, stream_id in enumerate(streams):
            # Mostly from the producing engine (as a stop reaching that process does):
            # its source is cancelled at once, and may be mid-way through a pair.
            engine = other if index % 5 == 0 else producer
            assert await engine.cancel(stream_id) is StreamState.CANCELLED
        for stream_id in streams:
            assert (await producer.wait(stream_id)).state is StreamState.CANCELLED
            chunks, end = await collect(other, stream_id)
            assert end.state is StreamState.CANCELLED and len(chunks) == end.chunk_count
            assert_gapless(chunks, 0)


async def test_cancel_after_done_keeps_done(engine: StreamEngine) -> None:
    await engine.start("fin", paced(["a", "b"]))
    await engine.wait("fin")
    assert await engine.cancel("fin") is StreamState.DONE


async def test_produces_until_the_end_callback_is_done(make_engine: EngineFactory) -> None:
    producer, other = await make_engine(), await make_engine()
    gate, in_callback, release = anyio.Event(), anyio.Event(), anyio.Event()

    async def on_end(end: StreamEnd) -> None:
        in_callback.set()
        await release.wait()

    await producer.start("p1", paced(["a", "b", "c", "d"], gate=gate), on_end=on_end)
    assert producer.produces("p1") and not other.produces("p1")
    gate.set()
    with anyio.fail_after(10):
        await in_callback.wait()
        assert producer.produces("p1")  # its end is being stored: still its producer's
        release.set()
        await producer.wait("p1")
        for _ in range(500):  # the producer lets go right after its callback returns
            if not producer.produces("p1"):
                break
            await anyio.sleep(0.01)
    assert not producer.produces("p1")
    assert not producer.produces("never-started")


async def test_dead_producer_lease_expiry_gives_interrupted(make_engine: EngineFactory) -> None:
    """A producer that vanished without cleanup: only its lease tells. Simulated at the
    backend level (a claim and two appends, then silence); see test_redis_processes.py for
    a real SIGKILLed process."""
    reader = await make_engine(lease_ttl=0.6)
    backend = reader.backend
    times = StreamTimes(lease=0.6, active=60, retention=60)
    now = time.time()
    assert await backend.claim("ghost", token="t", times=times, now=now)
    chunks = [Chunk(0, "half an ", 0), Chunk(1, "answer", 8)]
    assert await backend.append("ghost", token="t", chunks=chunks, times=times, now=now)
    started = time.monotonic()
    got, end = await collect(reader, "ghost")
    waited = time.monotonic() - started
    assert [c.data for c in got] == ["half an ", "answer"]
    assert end.state is StreamState.INTERRUPTED
    assert end.error
    assert waited < 0.6 * 4 / 3 + 0.5
    status = await reader.status("ghost")
    assert status is not None and status.state is StreamState.INTERRUPTED


async def test_leases_are_renewed_for_producers_that_do_not_append(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One engine task keeps every lease: a producer waiting for its source keeps its stream
    alive long past ``lease_ttl``; one that streams needs no renewal (its appends renew it).
    A backend with gathered appends gets every renewal due at a tick in one `renew_many`."""
    producer = await make_engine(lease_ttl=0.3)
    other = await make_engine(lease_ttl=0.3)
    renewed: list[str] = []
    backend_type = type(producer.backend)
    renew = backend_type.renew_lease

    async def counting(self: Backend, stream_id: str, **options: Any) -> StreamState | None:
        renewed.append(stream_id)
        state: StreamState | None = await renew(self, stream_id, **options)
        return state

    monkeypatch.setattr(backend_type, "renew_lease", counting)
    if issubclass(backend_type, GatheredAppends):
        renew_many = backend_type.renew_many

        async def counting_many(
            self: GatheredAppends, renewals: Sequence[Renewal]
        ) -> list[StreamState | BackendError | None]:
            renewed.extend(renewal.stream_id for renewal in renewals)
            return await renew_many(self, renewals)

        monkeypatch.setattr(backend_type, "renew_many", counting_many)
    gate = anyio.Event()
    await producer.start("idle", paced(["a ", "b"], gate=gate))  # waits after "a "
    await producer.start("busy", paced(["x"] * 40, delay=0.025))  # a chunk every 25 ms
    busy, end = await collect(other, "busy")
    assert end.state is StreamState.DONE and len(busy) == 40
    assert await other.check_producer("idle") is StreamState.ACTIVE  # > 3 lease_ttl later
    assert renewed.count("idle") >= 5  # every lease_ttl / 3
    assert renewed.count("busy") <= 2  # (only if its source stalled for a whole round)
    gate.set()
    idle, end = await collect(other, "idle")
    assert end.state is StreamState.DONE and "".join(c.data for c in idle) == "a b"


async def test_second_start_is_refused_everywhere(make_engine: EngineFactory) -> None:
    first, second = await make_engine(), await make_engine()
    gate = anyio.Event()
    await first.start("once", paced(["a", "b", "c", "d"], gate=gate))
    with pytest.raises(StreamExistsError):
        await second.start("once", paced(["x"]))
    with pytest.raises(StreamExistsError):
        await first.start("once", paced(["x"]))
    gate.set()
    await first.wait("once")
    with pytest.raises(StreamExistsError):
        await second.start("once", paced(["x"]))
    chunks, _ = await collect(second, "once")
    assert "".join(c.data for c in chunks) == "abcd"


async def test_retention_ttl_expiry(make_engine: EngineFactory) -> None:
    engine = await make_engine(retention=0.3)
    await engine.start("short", paced(["a"]))
    await engine.wait("short")
    await engine.start("long", paced(["b"]), retention=30)
    await engine.wait("long")
    assert await engine.status("short") is not None
    await anyio.sleep(0.5)
    assert await engine.status("short") is None
    with pytest.raises(StreamNotFoundError):
        await collect(engine, "short")
    assert await engine.status("long") is not None


async def test_sliding_ttl_drops_abandoned_streams(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    times = StreamTimes(lease=0.2, active=0.3, retention=60)
    assert await engine.backend.claim("abandoned", token="t", times=times, now=time.time())
    await anyio.sleep(0.5)
    assert await engine.status("abandoned") is None


async def test_slow_reader_gets_everything(make_engine: EngineFactory) -> None:
    producer = await make_engine()
    reader = await make_engine()
    pieces = [f"{i}," for i in range(3000)]
    await producer.start("flood", paced(pieces))
    seen: list[Chunk] = []
    with anyio.fail_after(30):
        async with aclosing(reader.read("flood")) as items:
            async for item in items:
                if isinstance(item, StreamEnd):
                    break
                seen.append(item)
                if item.seq % 200 == 0:
                    await anyio.sleep(0.02)  # far slower than the producer; buffers overflow
    assert_gapless(seen, 0)
    assert "".join(c.data for c in seen) == "".join(pieces)


async def test_heartbeats_while_quiet_then_the_rest_without_gap(
    make_engine: EngineFactory,
) -> None:
    """``read_batches(heartbeat=)`` gives empty batches while a live stream is quiet (what
    keeps a response's connection alive), on the producer's engine (local read) and on
    another one (through the backend), then goes on with the rest: no gap, no duplicate."""
    producer, other = await make_engine(lease_ttl=0.3), await make_engine(lease_ttl=0.3)
    gate = anyio.Event()
    pieces = [f"p{i} " for i in range(20)]
    await producer.start("quiet", paced(pieces, gate=gate))

    heartbeats = {"producer": 0, "other": 0}

    async def read(engine: StreamEngine, name: str) -> tuple[list[Chunk], int, StreamEnd]:
        chunks: list[Chunk] = []
        with anyio.fail_after(20):
            async with aclosing(engine.read_batches("quiet", heartbeat=0.15)) as batches:
                async for batch in batches:
                    if not batch and len(chunks) == len(pieces) // 2:
                        heartbeats[name] += 1
                        if min(heartbeats.values()) >= 2:
                            gate.set()  # both readers have waited out two heartbeats
                    for item in batch:
                        if isinstance(item, StreamEnd):
                            return chunks, heartbeats[name], item
                        chunks.append(item)
        raise AssertionError("read ended without a StreamEnd")

    results: list[tuple[list[Chunk], int, StreamEnd]] = []

    async def run(engine: StreamEngine, name: str) -> None:
        results.append(await read(engine, name))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, producer, "producer")
        tg.start_soon(run, other, "other")
    assert len(results) == 2
    for chunks, quiet_batches, end in results:
        assert quiet_batches >= 2
        assert_gapless(chunks, 0)
        assert "".join(c.data for c in chunks) == "".join(pieces)
        assert end.state is StreamState.DONE


async def test_size_limit_ends_in_error(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_chunks=10)
    await engine.start("big", paced(["x"] * 50))
    chunks, end = await collect(engine, "big")
    assert len(chunks) == 10
    assert end.state is StreamState.ERROR
    assert end.error == "the stream exceeded its size limit"


async def test_shutdown_interrupts_after_drain_deadline(make_engine: EngineFactory) -> None:
    observer = await make_engine()
    producer = StreamEngine(observer.backend, drain_timeout=0.2, lease_ttl=0.6, owns_backend=False)
    finished_in_time = anyio.Event()

    async def quick() -> AsyncIterator[str]:
        yield "fast"
        finished_in_time.set()

    async with producer:
        await producer.start("slow", paced(["tick "] * 1000, delay=0.01))
        await producer.start("quick", quick())
        await anyio.sleep(0.05)
    chunks, end = await collect(observer, "slow")
    assert end.state is StreamState.INTERRUPTED
    assert end.error and "shut down" in end.error
    assert 0 < len(chunks) < 1000
    _, end = await collect(observer, "quick")
    assert end.state is StreamState.DONE


@pytest.mark.parametrize("anyio_backend", ASYNC_LIBRARIES)
async def test_engine_misuse_is_explained() -> None:
    engine = StreamEngine()
    with pytest.raises(Exception, match="engine is closed"):
        await engine.start("x", paced(["a"]))
    async with engine:
        with pytest.raises(ValueError, match="invalid stream id"):
            await engine.start("{bad}", paced(["a"]))
        with pytest.raises(StreamNotFoundError):
            await collect(engine, "missing")
        assert await engine.status("missing") is None
