"""Cross-process behaviour over real Redis, with producers in real separate processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from tests._services import delete_redis_keys, free_port, redis_server_process
from unbroken import Chunk, StreamEnd, StreamEngine, StreamState

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def redis_engine(redis_url: str, key_prefix: str) -> AsyncIterator[StreamEngine]:
    from unbroken.backends.redis import RedisBackend

    async with StreamEngine(
        RedisBackend(redis_url, key_prefix=key_prefix), lease_ttl=0.6
    ) as engine:
        yield engine
    await delete_redis_keys(redis_url, key_prefix)


@pytest.fixture
def spawn(redis_url: str, key_prefix: str) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def run(
        stream_id: str, chunks: int, delay: float, action: str = "produce"
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.engine._producer_process",
                redis_url,
                key_prefix,
                stream_id,
                str(chunks),
                str(delay),
                action,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


async def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    with anyio.fail_after(20):
        return (await anyio.to_thread.run_sync(proc.stdout.readline)).strip()


async def collect(
    engine: StreamEngine, stream_id: str, after: int = -1
) -> tuple[list[Chunk], StreamEnd]:
    chunks: list[Chunk] = []
    with anyio.fail_after(20):
        async for item in engine.read(stream_id, after=after):
            if isinstance(item, StreamEnd):
                return chunks, item
            chunks.append(item)
    raise AssertionError("no StreamEnd")


async def test_sigkilled_producer_is_reported_interrupted(
    redis_engine: StreamEngine, spawn: object
) -> None:
    proc = spawn("victim", 10_000, 0.01)  # type: ignore[operator]
    assert await read_line(proc) == "started"
    seen: list[Chunk] = []
    killed_at = 0.0
    with anyio.fail_after(20):
        async for item in redis_engine.read("victim"):
            if isinstance(item, StreamEnd):
                end = item
                break
            seen.append(item)
            if len(seen) == 20:
                os.kill(proc.pid, signal.SIGKILL)  # no cleanup at all
                killed_at = time.monotonic()
    noticed = time.monotonic() - killed_at
    assert end.state is StreamState.INTERRUPTED
    assert noticed < 0.6 * 4 / 3 + 1.0, f"interrupted noticed after {noticed:.2f}s"
    assert [c.seq for c in seen] == list(range(len(seen)))
    assert "".join(c.data for c in seen) == "".join(f"tick {i}\n" for i in range(len(seen)))
    chunks, again = await collect(redis_engine, "victim")
    assert again.state is StreamState.INTERRUPTED
    assert len(chunks) == len(seen) == again.chunk_count


async def test_cancel_reaches_a_producer_in_another_process(
    redis_engine: StreamEngine, spawn: object
) -> None:
    proc = spawn("far", 10_000, 0.01)  # type: ignore[operator]
    assert await read_line(proc) == "started"
    await anyio.sleep(0.1)
    started = time.monotonic()
    assert await redis_engine.cancel("far") is StreamState.CANCELLED
    assert await read_line(proc) == "end cancelled"
    with anyio.fail_after(10):
        await anyio.to_thread.run_sync(proc.wait)
    assert time.monotonic() - started < 2.0
    assert proc.returncode == 0
    _, end = await collect(redis_engine, "far")
    assert end.state is StreamState.CANCELLED


async def test_second_start_from_another_process_is_refused(
    redis_engine: StreamEngine, spawn: object
) -> None:
    async def slow() -> AsyncIterator[str]:
        for i in range(30):
            await anyio.sleep(0.01)
            yield str(i)

    await redis_engine.start("mine", slow())
    proc = spawn("mine", 3, 0.0, "start-existing")  # type: ignore[operator]
    assert await read_line(proc) == "exists"
    chunks, end = await collect(redis_engine, "mine")
    assert "".join(c.data for c in chunks) == "".join(str(i) for i in range(30))
    assert end.state is StreamState.DONE


async def test_redis_restart_during_a_stream() -> None:
    """Redis dies mid-stream and comes back empty. The producer keeps going and its local
    reader keeps receiving; afterwards the stream is written again and a reader in another
    engine finishes it without gap or duplicate."""
    from unbroken.backends.redis import RedisBackend

    port = free_port()
    pieces = [f"[{i}]" for i in range(150)]
    gate_down, gate_up = anyio.Event(), anyio.Event()

    async def source() -> AsyncIterator[str]:
        for i, piece in enumerate(pieces):
            if i == 50:
                gate_down.set()
                await gate_up.wait()  # pause while redis is down, then continue
            if i in range(50, 70):
                await anyio.sleep(0.01)
            yield piece

    with redis_server_process(port) as (url, server):
        producer = StreamEngine(RedisBackend(url, key_prefix="restart"), lease_ttl=0.6)
        remote = StreamEngine(RedisBackend(url, key_prefix="restart"), lease_ttl=0.6)
        async with producer, remote:
            await producer.start("survivor", source())
            local_seen: list[Chunk] = []
            remote_seen: list[Chunk] = []
            local_end: list[StreamEnd] = []
            remote_end: list[StreamEnd] = []

            async def follow(
                engine: StreamEngine, seen: list[Chunk], ends: list[StreamEnd]
            ) -> None:
                after = -1
                with anyio.fail_after(30):
                    while True:
                        try:
                            async for item in engine.read("survivor", after=after):
                                if isinstance(item, StreamEnd):
                                    ends.append(item)
                                    return
                                seen.append(item)
                                after = item.seq
                        except Exception:
                            await anyio.sleep(0.1)  # like a client: reconnect from its offset

            restarted: subprocess.Popen[bytes] | None = None
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follow, producer, local_seen, local_end)
                    tg.start_soon(follow, remote, remote_seen, remote_end)
                    await gate_down.wait()
                    await anyio.sleep(0.1)
                    server.kill()
                    server.wait()
                    gate_up.set()
                    await anyio.sleep(0.4)  # the producer goes on while redis is down
                    assert len(local_seen) > 50, "the local reader must keep receiving"
                    restarted = subprocess.Popen(server.args, stdout=subprocess.DEVNULL)  # noqa: ASYNC220
                    # The readers finish (or fail_after in follow() fails the test).
            finally:
                if restarted is not None:
                    restarted.terminate()
                    restarted.wait()
    text = "".join(pieces)
    for seen, ends in ((local_seen, local_end), (remote_seen, remote_end)):
        assert ends[0].state is StreamState.DONE
        assert [c.seq for c in seen] == list(range(150))
        assert "".join(c.data for c in seen) == text


async def test_stream_started_while_redis_is_down() -> None:
    """Fail open: with Redis down, start() still works and its own readers get everything;
    once Redis is up the stream is claimed and written, and other processes can read it."""
    from unbroken.backends.redis import RedisBackend

    port = free_port()
    pieces = [f"<{i}>" for i in range(40)]
    redis_up = anyio.Event()

    async def source() -> AsyncIterator[str]:
        for i, piece in enumerate(pieces):
            if i == 20:
                await redis_up.wait()
            yield piece

    url = f"redis://127.0.0.1:{port}/0"
    producer = StreamEngine(RedisBackend(url, key_prefix="down"), lease_ttl=0.6)
    async with producer:
        await producer.start("early", source())
        seen: list[Chunk] = []
        with anyio.fail_after(20):
            async for item in producer.read("early"):
                assert isinstance(item, Chunk)
                seen.append(item)
                if len(seen) == 20:
                    break
        assert "".join(c.data for c in seen) == "".join(pieces[:20])
        with redis_server_process(port):
            redis_up.set()
            end = await producer.wait("early")
            assert end.state is StreamState.DONE
            async with StreamEngine(RedisBackend(url, key_prefix="down"), lease_ttl=0.6) as other:
                chunks, end = await collect(other, "early")
        assert end.state is StreamState.DONE
        assert "".join(c.data for c in chunks) == "".join(pieces)
