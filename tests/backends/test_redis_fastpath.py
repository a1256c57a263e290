"""Appends without the script (plain XADD NOMKSTREAM + PUBLISH): every guarantee the
script gives still holds. See ``unbroken/backends/redis/_fastpath.py`` for why."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio
import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from tests._services import delete_redis_keys, free_port, port_answers, redis_server_binary
from unbroken._models import Chunk, StreamState
from unbroken.backends.base import Append, Appended, StreamTimes
from unbroken.backends.redis import RedisBackend
from unbroken.backends.redis._fastpath import KnownStreams
from unbroken.backends.redis._keys import stream_keys
from unbroken.exceptions import CorruptStreamError

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(60)]

TIMES = StreamTimes(lease=5.0, active=60.0, retention=120.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chunks(*texts: str, seq: int = 0, offset: int = 0) -> list[Chunk]:
    out = []
    for text in texts:
        out.append(Chunk(seq=seq, data=text, offset=offset))
        seq, offset = seq + 1, offset + len(text)
    return out


async def append(
    backend: RedisBackend,
    batch: list[Chunk],
    *,
    renew_lease: bool = False,
    token: str = "tok",
    times: StreamTimes = TIMES,
) -> StreamState | Exception | None:
    """One gathered append of stream ``s`` (without renewing the lease: a plain one when the
    backend knows the stream)."""
    one = Append("s", token, batch, times, time.time(), renew_lease=renew_lease)
    (outcome,) = await backend.append_many([one])
    return outcome


@pytest.fixture
async def backend(redis_url: str, key_prefix: str) -> AsyncIterator[RedisBackend]:
    try:
        async with RedisBackend(redis_url, key_prefix=key_prefix) as opened:
            yield opened
    finally:
        await delete_redis_keys(redis_url, key_prefix)


async def started(backend: RedisBackend, times: StreamTimes = TIMES) -> None:
    """Stream ``s`` claimed and its log created by an append through the script, so the
    backend's next appends of it go plain."""
    assert await backend.claim("s", token="tok", times=times, now=time.time())
    assert await append(backend, chunks("a"), times=times) is StreamState.ACTIVE


async def log_ids(raw: aioredis.Redis, backend: RedisBackend) -> list[bytes]:
    log = stream_keys(backend.key_prefix, "s").log
    return [entry_id for entry_id, _ in await raw.xrange(log)]


async def test_plain_appends_keep_an_active_streams_counts_exact(
    backend: RedisBackend, other: RedisBackend, raw: aioredis.Redis
) -> None:
    meta = stream_keys(backend.key_prefix, "s").meta
    assert await backend.claim("s", token="tok", times=TIMES, now=time.time())
    async with other.listen("s") as listener:
        assert await append(backend, chunks("héllo ")) is StreamState.ACTIVE
        assert await append(backend, chunks("🌍", seq=1, offset=6)) is StreamState.ACTIVE
        assert await append(backend, chunks("a", "\ud800", seq=2, offset=7)) is StreamState.ACTIVE
        with anyio.fail_after(10):
            heard = [await listener.receive() for _ in range(3)]
    assert heard[1:] == [
        Appended(tuple(chunks("🌍", seq=1, offset=6))),
        Appended(tuple(chunks("a", "\ud800", seq=2, offset=7))),
    ]
    assert await raw.hget(meta, "chunks") == b"1"  # the plain appends left the meta alone
    size = len("héllo 🌍a\ud800".encode("utf-8", "surrogatepass"))
    for reader in (backend, other):
        status = await reader.status("s")
        assert status is not None
        assert (status.chunk_count, status.char_count, status.byte_count) == (4, 9, size)
    texts = [chunk.data for chunk in await other.read("s", after=-1, limit=10)]
    assert texts == ["héllo ", "🌍", "a", "\ud800"]
    # The end records the log's counts in the meta, which is what an ended stream reads.
    finished = await other.finish(
        "s", state=StreamState.DONE, error=None, token="tok", times=TIMES, now=time.time()
    )
    assert finished is StreamState.DONE
    assert await raw.hmget(meta, "chunks", "chars", "bytes") == [b"4", b"9", b"%d" % size]
    status = await backend.status("s")
    assert status is not None
    assert (status.state, status.chunk_count, status.char_count) == (StreamState.DONE, 4, 9)


async def test_an_ended_log_is_sealed(backend: RedisBackend, raw: aioredis.Redis) -> None:
    log = stream_keys(backend.key_prefix, "s").log
    await started(backend)
    state = await backend.finish(
        "s", state=StreamState.DONE, error=None, token="tok", times=TIMES, now=time.time()
    )
    assert state is StreamState.DONE
    for entry_id in ("0-2", "*"):
        with pytest.raises(redis_errors.ResponseError):
            await raw.xadd(log, {"d": "late"}, id=entry_id)
    assert await log_ids(raw, backend) == [b"0-1"]


async def test_a_stale_producer_adds_nothing_once_another_process_interrupted_it(
    backend: RedisBackend, other: RedisBackend, raw: aioredis.Redis
) -> None:
    await started(backend)
    assert await append(backend, chunks("b", seq=1, offset=1)) is StreamState.ACTIVE
    await raw.delete(stream_keys(backend.key_prefix, "s").lease)  # as if it had lapsed
    interrupted = await other.finish(
        "s",
        state=StreamState.INTERRUPTED,
        error=None,
        token=None,
        times=TIMES,
        now=time.time(),
        only_if_lease_expired=True,
    )
    assert interrupted is StreamState.INTERRUPTED
    # The producer does not know: its append goes plain, is refused, and the script says why.
    assert await append(backend, chunks("c", seq=2, offset=2)) is StreamState.INTERRUPTED
    assert await log_ids(raw, backend) == [b"0-1", b"0-2"]
    status = await other.status("s")
    assert status is not None and status.chunk_count == 2


async def test_an_append_after_a_stop_from_another_process_is_refused(
    backend: RedisBackend, other: RedisBackend, raw: aioredis.Redis
) -> None:
    await started(backend)
    stopped = await other.finish(
        "s", state=StreamState.CANCELLED, error=None, token=None, times=TIMES, now=time.time()
    )
    assert stopped is StreamState.CANCELLED
    assert await append(backend, chunks("b", seq=1, offset=1)) is StreamState.CANCELLED
    assert await log_ids(raw, backend) == [b"0-1"]


async def test_a_new_life_after_expiry_is_not_written_by_the_old_producer(
    backend: RedisBackend, other: RedisBackend, raw: aioredis.Redis
) -> None:
    short = StreamTimes(lease=5.0, active=0.3, retention=1.0)  # the active TTL is shorter
    await started(backend, short)
    assert await append(backend, chunks("b", seq=1, offset=1), times=short) is StreamState.ACTIVE
    await anyio.sleep(0.4)  # every key expired: the id is free
    assert await other.claim("s", token="new", times=TIMES, now=time.time())
    fresh = Append("s", "new", chunks("fresh"), TIMES, time.time())
    assert await other.append_many([fresh]) == [StreamState.ACTIVE]
    stale = await append(backend, chunks("c", seq=2, offset=2), times=short)
    assert stale is StreamState.INTERRUPTED
    assert [chunk.data for chunk in await other.read("s", after=-1, limit=10)] == ["fresh"]


async def test_logs_of_the_earlier_layouts_count_from_the_meta_then_from_the_log(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """An upgrade mid-stream: entries without a byte offset, written by a version that
    kept the counts in the meta; the new writer continues from them."""
    keys = stream_keys(backend.key_prefix, "s")
    assert await backend.claim("s", token="tok", times=TIMES, now=time.time())
    await raw.xadd(keys.log, {"data": "é", "offset": 0}, id="0-1")  # one chunk per entry
    await raw.xadd(keys.log, {"o": 1, "n": "1,2", "d": "xyz"}, id="0-3")  # no b
    await raw.hset(keys.meta, mapping={"chunks": 3, "chars": 4, "bytes": 5})
    status = await backend.status("s")
    assert status is not None
    assert (status.chunk_count, status.char_count, status.byte_count) == (3, 4, 5)
    assert await append(backend, chunks("k", seq=3, offset=4)) is StreamState.ACTIVE
    assert await append(backend, chunks("ü", seq=4, offset=5)) is StreamState.ACTIVE
    status = await backend.status("s")
    assert status is not None
    assert (status.chunk_count, status.char_count, status.byte_count) == (5, 6, 8)
    texts = [chunk.data for chunk in await backend.read("s", after=-1, limit=10)]
    assert texts == ["é", "x", "yz", "k", "ü"]
    await raw.delete(keys.log)
    await raw.xadd(keys.log, {"data": "old", "offset": 0}, id="0-1")
    await raw.hset(keys.meta, mapping={"chunks": 1, "chars": 3, "bytes": 3})
    status = await backend.status("s")
    assert status is not None
    assert (status.chunk_count, status.char_count, status.byte_count) == (1, 3, 3)


def test_known_streams_are_bounded() -> None:
    known = KnownStreams()
    past = time.monotonic() - 100
    for index in range(5000):  # streams that stopped appending without ending here
        known.claimed(f"s{index}", "tok", sent=past, lifetime=1.0, fence=0)
    assert len(known) < 1024
    known.claimed("live", "tok", sent=time.monotonic(), lifetime=10.0, fence=0)
    known.forget("live")
    assert known.usable("live", "tok", 0, time.monotonic(), 0) is None


# -- a server that comes back with less than it acknowledged ----------------------------------


@contextmanager
def snapshotting_redis() -> Iterator[tuple[str, list[subprocess.Popen[bytes]], list[str]]]:
    """A private redis-server that loads its snapshot (written by SAVE only) when started
    again with the command it yields."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="unbroken-redis-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", workdir]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield f"redis://127.0.0.1:{port}/0", procs, command
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=5)


def start(command: list[str], procs: list[subprocess.Popen[bytes]]) -> None:
    procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 10
    while not port_answers("127.0.0.1", int(command[2])):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)


async def test_a_server_back_with_fewer_chunks_gets_no_hole_in_its_log() -> None:
    """Redis restarted from an older snapshot (or a replica promoted without the newest
    writes): a plain append would land after a hole, so it never goes on a connection made
    since the stream was last checked, and the script finds the log shorter."""
    with snapshotting_redis() as (url, procs, command):
        start(command, procs)
        async with RedisBackend(url, key_prefix="p") as backend, aioredis.from_url(url) as raw:
            await started(backend)
            assert await append(backend, chunks("b", seq=1, offset=1)) is StreamState.ACTIVE
            await raw.save()
            assert await append(backend, chunks("c", seq=2, offset=2)) is StreamState.ACTIVE
            procs[-1].kill()
            procs[-1].wait(timeout=5)
            start(command, procs)
            outcome = await append(backend, chunks("d", seq=3, offset=3))
            assert isinstance(outcome, CorruptStreamError)
            assert "the log has 2 chunks" in str(outcome)
        async with aioredis.from_url(url) as raw:
            log = stream_keys("p", "s").log
            assert [entry_id for entry_id, _ in await raw.xrange(log)] == [b"0-1", b"0-2"]
