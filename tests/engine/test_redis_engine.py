"""What the engine does only over a backend with round trips (Redis), on real Redis.

Gathered appends (the `GatheredAppends` capability): the engine appends the new chunks of
all its streams with one ``append_many`` every ``append_gather`` seconds, two tasks taking
turns. What must hold: far fewer round trips than chunks, every chunk exactly once, an append
that hangs holds back only its own streams, and a stream whose gathered append fails or is
still on its way when the stream ends is finished by the stream's own writer without
repeating or losing a chunk.

Readers in another process peek at the stream's status and log while their subscription is
being confirmed: whatever happens before it is live (appends, the end) must still reach them,
at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from tests._services import delete_redis_keys
from unbroken import StreamEngine, StreamState
from unbroken._engine.reading import FIRST_READ
from unbroken.backends.base import Append, Listener, Renewal
from unbroken.backends.redis import RedisBackend
from unbroken.backends.redis._keys import stream_keys
from unbroken.backends.redis._pipeliner import SCRIPTS, Pipeliner
from unbroken.exceptions import BackendError, BackendUnavailableError, StreamNotFoundError

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture
async def redis_engine(redis_url: str, key_prefix: str) -> AsyncIterator[StreamEngine]:
    try:
        backend = RedisBackend(redis_url, key_prefix=key_prefix, write_gather=0.02)
        async with StreamEngine(backend, lease_ttl=0.6, drain_timeout=2.0) as engine:
            yield engine
    finally:
        await delete_redis_keys(redis_url, key_prefix)


async def paced(texts: Sequence[str], pause: float) -> AsyncIterator[str]:
    for text in texts:
        await anyio.sleep(pause)
        yield text


async def read_text(engine: StreamEngine, stream_id: str) -> tuple[list[str], StreamState]:
    parts: list[str] = []
    async for item in engine.read(stream_id):
        if hasattr(item, "data"):
            parts.append(item.data)
        else:
            return parts, item.state
    raise AssertionError("unreachable")


async def test_many_streams_append_in_few_round_trips(
    redis_engine: StreamEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends_per_pipeline: list[int] = []  # streams appended to, per pipeline
    append_calls = 0
    execute = Pipeliner._execute
    one_sha, many_sha = (SCRIPTS[name].sha for name in ("append", "append_many"))

    def streams_appended(args: tuple[Any, ...]) -> int:
        if args[1] == many_sha:
            return int(args[2]) // 3  # three keys per stream
        return int(args[1] == one_sha)

    async def recording(self: Any, batch: list[Any]) -> list[Any]:
        nonlocal append_calls
        appends_per_pipeline.append(sum(streams_appended(call.args) for call in batch))
        append_calls += sum(call.args[1] in (one_sha, many_sha) for call in batch)
        return await execute(self, batch)

    monkeypatch.setattr(Pipeliner, "_execute", recording)
    streams = [f"s{index}" for index in range(20)]
    texts = [f"t{k} " for k in range(5)]
    for stream_id in streams:
        await redis_engine.start(stream_id, paced(texts, 0.1))
    with anyio.fail_after(10):
        results = [await read_text(redis_engine, stream_id) for stream_id in streams]
    assert results == [(texts, StreamState.DONE)] * len(streams)
    appends = sum(appends_per_pipeline)
    pipelines = sum(1 for count in appends_per_pipeline if count)
    # 100 chunks from 20 streams in 5 beats: one append per stream and beat at most, and
    # the appends of a beat share pipelines (a beat's streams may straddle two windows, and
    # more on a loaded machine, whose timers wake the sources further apart).
    assert appends <= 100
    assert pipelines <= 25, appends_per_pipeline
    # ... and a pipeline's gathered appends share one script call (a stream that ends may
    # write its last chunk itself, in a call of its own).
    assert append_calls <= pipelines + len(streams), append_calls


async def test_a_failed_gathered_append_is_written_by_the_streams_writer(
    redis_engine: StreamEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = 2
    append_many = RedisBackend.append_many

    async def failing(
        self: RedisBackend, appends: Sequence[Append]
    ) -> list[StreamState | BackendError | None]:
        nonlocal failures
        if failures:
            failures -= 1
            return [BackendUnavailableError("injected") for _ in appends]
        return await append_many(self, appends)

    monkeypatch.setattr(RedisBackend, "append_many", failing)
    texts = [f"t{k} " for k in range(30)]
    await redis_engine.start("s", paced(texts, 0.01))
    with anyio.fail_after(10):
        assert await read_text(redis_engine, "s") == (texts, StreamState.DONE)
    assert failures == 0
    status = await redis_engine.status("s")
    assert status is not None and status.chunk_count == len(texts)


async def test_a_gathered_append_that_hangs_holds_back_only_its_own_streams(
    redis_engine: StreamEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One append waits (a connection that died, until the driver's timeout): the other
    streams' chunks keep being appended, gathered while it is out, and its own streams'
    chunks leave as soon as it is back, none twice."""
    append_many = RedisBackend.append_many
    hung, release = anyio.Event(), anyio.Event()
    held: list[set[str]] = []  # the streams of the append that hangs

    async def hanging(
        self: RedisBackend, appends: Sequence[Append]
    ) -> list[StreamState | BackendError | None]:
        if not held:
            held.append({append.stream_id for append in appends})
            hung.set()
            await release.wait()
        return await append_many(self, appends)

    monkeypatch.setattr(RedisBackend, "append_many", hanging)
    go = anyio.Event()

    async def stuck() -> AsyncIterator[str]:
        yield "a"  # the first append: it hangs
        await go.wait()
        yield "b"

    await redis_engine.start("stuck", stuck())
    try:
        with anyio.fail_after(5):
            await hung.wait()
        assert held == [{"stuck"}]
        texts = [f"t{k} " for k in range(5)]
        await redis_engine.start("flowing", paced(texts, 0.01))
        with anyio.fail_after(5):  # far less than it would wait behind the stuck append
            assert await read_text(redis_engine, "flowing") == (texts, StreamState.DONE)
    finally:
        go.set()
        release.set()  # else the engine could not close: the stuck stream's end waits for it
    with anyio.fail_after(5):
        assert await read_text(redis_engine, "stuck") == (["a", "b"], StreamState.DONE)
    status = await redis_engine.status("stuck")
    assert status is not None and status.chunk_count == 2


async def test_chunks_that_waited_for_the_appends_in_flight_leave_at_once(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk waits at most ``append_gather`` for company: one that came while both
    appends were in flight (a slow Redis) leaves as soon as one is back, not after another
    gathering wait."""
    gather = 0.5
    append_many = RedisBackend.append_many
    back = [anyio.Event(), anyio.Event()]  # the first two appends wait for these
    out = [anyio.Event(), anyio.Event()]
    calls = 0

    async def slow(
        self: RedisBackend, appends: Sequence[Append]
    ) -> list[StreamState | BackendError | None]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            out[calls - 1].set()
            await back[calls - 1].wait()
        return await append_many(self, appends)

    monkeypatch.setattr(RedisBackend, "append_many", slow)
    go = anyio.Event()

    async def one(text: str) -> AsyncIterator[str]:
        yield text
        await go.wait()

    try:
        backend = RedisBackend(redis_url, key_prefix=key_prefix, write_gather=gather)
        async with StreamEngine(backend, lease_ttl=30) as engine:
            try:
                for index in range(2):
                    await engine.start(f"s{index}", one("x"))
                    with anyio.fail_after(5):
                        await out[index].wait()  # both appenders have an append out
                await engine.start("late", one("y"))
                await anyio.sleep(gather * 1.2)  # it has waited for company long enough
                back[0].set()
                with anyio.fail_after(gather * 0.6):  # no second gathering wait
                    async for item in engine.read("late"):
                        assert getattr(item, "data", None) == "y"
                        break
            finally:
                for event in (*back, go):
                    event.set()
    finally:
        await delete_redis_keys(redis_url, key_prefix)


async def test_the_end_waits_for_a_gathered_append_on_its_way(
    redis_engine: StreamEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source ends while its last chunks' append is still out: the end must neither
    write them again nor record the end before they land."""
    append_many = RedisBackend.append_many
    slow = anyio.Event()

    async def slow_append(
        self: RedisBackend, appends: Sequence[Append]
    ) -> list[StreamState | BackendError | None]:
        slow.set()
        await anyio.sleep(0.3)
        return await append_many(self, appends)

    monkeypatch.setattr(RedisBackend, "append_many", slow_append)

    async def burst() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        await slow.wait()  # ends while the gathered append of "a", "b" is on its way
        yield "c"

    await redis_engine.start("s", burst())
    with anyio.fail_after(10):
        assert await read_text(redis_engine, "s") == (["a", "b", "c"], StreamState.DONE)
    status = await redis_engine.status("s")
    assert status is not None and status.chunk_count == 3 and status.char_count == 3


async def test_a_reader_whose_subscription_is_late_misses_nothing(
    redis_engine: StreamEngine, redis_url: str, key_prefix: str
) -> None:
    """The reader's peek sees the stream active with one chunk; the rest and the end come
    before its subscription is live. It must still get every chunk and the end at once,
    not at its next liveness check (lease_ttl / 3 = 10 s here)."""
    go = anyio.Event()

    async def source() -> AsyncIterator[str]:
        yield "a"
        await go.wait()
        yield "b"
        yield "c"

    await redis_engine.start("s", source())
    with anyio.fail_after(5):
        async for _ in redis_engine.read("s"):
            break  # "a" is in Redis
    live = anyio.Event()
    backend = RedisBackend(redis_url, key_prefix=key_prefix)
    listen = backend.listen

    @asynccontextmanager
    async def late_listen(stream_id: str, *, ends_only: bool = False) -> AsyncIterator[Listener]:
        await live.wait()
        async with listen(stream_id, ends_only=ends_only) as listener:
            yield listener

    backend.listen = late_listen  # type: ignore[method-assign]
    got: list[str] = []
    finished = anyio.Event()
    async with StreamEngine(backend, lease_ttl=30) as reader_engine:

        async def read() -> None:
            parts, state = await read_text(reader_engine, "s")
            got.extend([*parts, state.value])
            finished.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read)
            await anyio.sleep(0.2)  # the peek is done; the subscription waits
            go.set()
            await redis_engine.wait("s")
            live.set()
            with anyio.fail_after(2):
                await finished.wait()
    assert got == ["a", "b", "c", "done"]


async def test_open_brings_the_state_the_reader_found(
    redis_engine: StreamEngine, redis_url: str, key_prefix: str
) -> None:
    """`StreamEngine.open` in another process: the state and end time come with the
    reader's first look (no status call of its own), then the batches go on without a gap;
    a missing stream is `StreamNotFoundError`."""
    go = anyio.Event()

    async def source() -> AsyncIterator[str]:
        yield "a"
        await go.wait()
        yield "b"

    await redis_engine.start("s", source())
    with anyio.fail_after(5):
        async for _ in redis_engine.read("s"):
            break  # "a" is in Redis
    backend = RedisBackend(redis_url, key_prefix=key_prefix)
    async with StreamEngine(backend, lease_ttl=30) as other:
        looks: list[str] = []
        real_status, real_look = backend.status, backend.look

        async def status(stream_id: str) -> Any:
            looks.append(f"status {stream_id}")
            return await real_status(stream_id)

        async def look(stream_id: str, *, after: int, limit: int) -> Any:
            looks.append(f"look {stream_id}")
            return await real_look(stream_id, after=after, limit=limit)

        backend.status = status  # type: ignore[method-assign]
        backend.look = look  # type: ignore[method-assign]
        with pytest.raises(StreamNotFoundError):
            await other.open("nothing")
        async with other.open("s") as opened:
            # One look each (status and log in one call), nothing more before the first batch.
            assert looks == ["look nothing", "look s"]
            assert opened.state is StreamState.ACTIVE and opened.finished_at is None
            batches = aiter(opened)
            first = await anext(batches)
            assert [getattr(item, "data", None) for item in first] == ["a"]
            go.set()
            rest = [item async for batch in batches for item in batch]
        assert [getattr(item, "data", None) for item in rest] == ["b", None]
        assert getattr(rest[-1], "state", None) is StreamState.DONE

        async with other.open("s", after=0) as ended:
            assert ended.state is StreamState.DONE
            assert ended.finished_at is not None
            replay = [item async for batch in ended for item in batch]
        assert [getattr(item, "data", None) for item in replay] == ["b", None]


async def test_a_reader_elsewhere_has_its_first_batch_after_one_round_trip(
    redis_engine: StreamEngine, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's reader sends its status and its first read in one pipeline and
    subscribes only once its first batch is out; what it then sends (the subscription, the
    second look) comes after."""
    go = anyio.Event()

    async def source() -> AsyncIterator[str]:
        for index in range(100):
            yield f"{index} "
        await go.wait()

    await redis_engine.start("s", source())
    with anyio.fail_after(5):
        while (status := await redis_engine.status("s")) is None or status.chunk_count < 100:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    sent: list[list[str]] = []
    execute = Pipeliner._execute

    async def recording(self: Any, batch: list[Any]) -> list[Any]:
        # The reader's commands (the producer's engine may renew its lease meanwhile).
        commands = [str(call.args[0]) for call in batch if call.args[0] != "EVALSHA"]
        if commands:
            sent.append(commands)
        return await execute(self, batch)

    backend = RedisBackend(redis_url, key_prefix=key_prefix)
    listen = backend.listen
    subscribed: list[int] = []  # how many pipelines had gone when it subscribed

    def counted_listen(stream_id: str, *, ends_only: bool = False) -> Any:
        subscribed.append(len(sent))
        return listen(stream_id, ends_only=ends_only)

    backend.listen = counted_listen  # type: ignore[method-assign]
    async with StreamEngine(backend, lease_ttl=30) as other:
        monkeypatch.setattr(Pipeliner, "_execute", recording)
        with anyio.fail_after(5):
            async with other.open("s") as opened:
                first = await anext(opened)
                assert sent == [["HGETALL", "XREVRANGE", "XRANGE"]] and not subscribed
                assert len(first) == FIRST_READ
                await anext(opened)
                assert subscribed == [1]
        go.set()


async def test_an_ended_stream_is_kept_packed(redis_engine: StreamEngine) -> None:
    """Once the producer recorded the end, the log is packed from its own copy: the same
    chunks for every reader, in a fraction of the room."""
    backend = redis_engine.backend
    assert isinstance(backend, RedisBackend)
    log = stream_keys(backend.key_prefix, "packed").log
    texts = [f"token {n} " for n in range(300)]
    ended = anyio.Event()

    async def on_end(_end: object) -> None:
        ended.set()

    await redis_engine.start("packed", paced(texts, 0), on_end=on_end)
    with anyio.fail_after(10):
        await ended.wait()  # the end is recorded, and the log packed, before on_end
    entries = await backend.client.xrange(log)
    assert len(entries) == 2 and all(b"z" in fields for _, fields in entries)
    assert await read_text(redis_engine, "packed") == (texts, StreamState.DONE)
    replay = [chunk async for chunk in redis_engine.read("packed", after=149)]
    assert [getattr(item, "data", None) for item in replay] == [*texts[150:], None]


async def test_every_lease_due_at_a_tick_is_renewed_in_one_call(
    redis_engine: StreamEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of producers waiting on their sources keep their streams: their leases go
    in one `renew_many` per tick, not a task and a round trip each."""
    calls: list[int] = []
    renew_many = RedisBackend.renew_many

    async def counting(self: RedisBackend, renewals: Sequence[Renewal]) -> Any:
        calls.append(len(renewals))
        return await renew_many(self, renewals)

    monkeypatch.setattr(RedisBackend, "renew_many", counting)
    gate = anyio.Event()

    async def waiting() -> AsyncIterator[str]:
        yield "first "
        await gate.wait()
        yield "last"

    streams = [f"idle-{index}" for index in range(300)]
    for stream_id in streams:
        await redis_engine.start(stream_id, waiting())
    await anyio.sleep(0.6 * 3)  # three lease times
    for stream_id in streams:
        assert await redis_engine.check_producer(stream_id) is StreamState.ACTIVE
    assert max(calls) == len(streams)
    gate.set()
    with anyio.fail_after(10):
        for stream_id in streams[:10]:
            assert await read_text(redis_engine, stream_id) == (
                ["first ", "last"],
                StreamState.DONE,
            )
