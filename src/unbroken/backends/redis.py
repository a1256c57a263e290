"""`RedisBackend`: durable streams shared by every process that talks to one Redis.

Per stream (key formats in `unbroken.backends._keys`): a metadata hash, a chunk log (a Redis
Stream whose entry ids are ``0-<seq + 1>``, so reading from any position is one XRANGE), a
producer lease (a string with a PX expiry) and a notification channel. Every write is one
atomic Lua script (``_lua/``) that checks ownership and the sequence, writes, refreshes the
TTLs and publishes the notification, so a reader can never see a notification for data that
is not in the log yet.

Commands: concurrent calls from all streams of one backend share pipelines (a pipeliner
task sends what gathered while earlier pipelines were in flight), so round trips fall below
one per call under load and the backend uses at most four command connections.

Live notifications: all listeners of one backend share ONE pub/sub connection. A router task
(in the backend's task group) reads it and hands each message to per-listener bounded queues.
When that connection drops, the router reconnects with backoff, subscribes again, and tells
every listener `Lagged` (re-read the log), so a Redis restart costs latency, never data.

Works with Redis >= 6.2 and Valkey; with ``cluster=True`` it uses `RedisCluster` and sharded
pub/sub (SSUBSCRIBE/SPUBLISH, Redis >= 7.0). All keys of a stream share the hash tag
``{<prefix>:<id>}``, so they live in one slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Literal, NamedTuple, NoReturn

import anyio
from anyio.abc import TaskGroup

from unbroken._json import compact_json
from unbroken._models import Chunk, StreamState, StreamStatus
from unbroken.backends import _keys
from unbroken.backends._keys import StreamKeys, log_entry_id, log_entry_seq, stream_keys
from unbroken.backends._listener import QueueListener
from unbroken.backends.base import (
    Append,
    Appended,
    Backend,
    Ended,
    Lagged,
    Listener,
    Notification,
    StreamTimes,
    require_consecutive,
)
from unbroken.exceptions import (
    BackendError,
    BackendUnavailableError,
    CorruptStreamError,
    EngineClosedError,
    MissingDependencyError,
    UnbrokenError,
)

try:
    from redis import exceptions as redis_errors
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - exercised by a test that hides redis
    raise MissingDependencyError("redis", "redis") from exc

__all__ = ["RedisBackend"]

# Sharded pub/sub in redis.asyncio (and its ClusterPubSub) arrived in redis-py 8.0; the rest
# of the backend works with redis-py >= 5.0.1.
_HAS_SHARDED_PUBSUB = hasattr(PubSub, "ssubscribe")

logger = logging.getLogger("unbroken.redis")

_SUBSCRIBE_TIMEOUT = 10.0  # how long listen() waits for Redis to confirm a subscription
_RECONNECT_MIN, _RECONNECT_MAX = 0.05, 2.0  # backoff of the pub/sub connection, seconds
_POLL = 1.0  # how often the router checks the pub/sub connection's health
_PING_AFTER = 10.0  # ping the pub/sub connection after this much silence ...
_DEAD_AFTER = 30.0  # ... and give it up after this much (a half-open TCP connection)
_STABLE = 10.0  # a pub/sub connection that lived this long resets the reconnect backoff
_MAX_TTL_MS = 10 * 365 * 24 * 3600 * 1000  # TTLs are capped (Redis rejects overflowing ones)
_DEFAULT_URL = "redis://localhost:6379/0"
_INT = re.compile(r"[0-9]{1,18}")

# The pub/sub connection must not reconnect on its own: redis-py would resubscribe silently
# and notifications published meanwhile would vanish without the `Lagged` that makes
# listeners re-read the log. The router reconnects instead, and says so.
_NO_RETRY = Retry(NoBackoff(), 0)

_AnyRedis = Redis | RedisCluster


# -- errors ---------------------------------------------------------------------------------

# Errors after which the same call may well succeed a little later: the server is down,
# loading, failing over, resharding, read-only during a failover, or out of memory until
# TTLs free some. The engine keeps streaming from memory and retries these.
_TRANSIENT = (
    redis_errors.ConnectionError,  # includes BusyLoadingError (LOADING), MaxConnectionsError
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.SlotNotCoveredError,
    OSError,
)
_DRIVER_ERRORS = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)


def _translate(exc: BaseException, stream_id: str | None) -> UnbrokenError:
    """The unbroken error for a driver error: the one place redis exceptions are mapped."""
    about = f"stream {stream_id!r}: " if stream_id is not None else ""
    message = str(exc)
    if isinstance(exc, _TRANSIENT) or message.startswith("BUSY "):
        return BackendUnavailableError(f"redis is unavailable, retry later: {exc}")
    if isinstance(exc, UnicodeError):
        return CorruptStreamError(f"{about}redis holds text that is not utf-8: {exc}")
    if "UNBROKEN_SEQ " in message:
        return CorruptStreamError(about + message.split("UNBROKEN_SEQ ", 1)[1])
    if "UNBROKEN_CORRUPT " in message or "WRONGTYPE" in message:
        return CorruptStreamError(f"{about}redis holds data unbroken did not write: {exc}")
    return BackendError(f"{about}redis failed: {exc}")


@contextmanager
def _translated(stream_id: str | None = None) -> Iterator[None]:
    try:
        yield
    except (*_DRIVER_ERRORS, UnicodeError) as exc:
        raise _translate(exc, stream_id) from exc


def _corrupt(stream_id: str, why: str) -> NoReturn:
    raise CorruptStreamError(f"stream {stream_id!r}: redis holds data unbroken cannot read: {why}")


# -- encoding -------------------------------------------------------------------------------
# Text goes to Redis as UTF-8 bytes encoded by us, with "surrogatepass": any Python str
# round-trips exactly, and a caller-owned client's encoding settings cannot interfere.


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _text(value: object) -> str:
    """A reply value as str, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _count(value: object) -> int:
    text = _text(value)
    if not _INT.fullmatch(text):
        raise ValueError(f"not a non-negative integer: {text!r}")
    return int(text)


def _timestamp(value: object) -> float:
    number = float(_text(value))
    if not math.isfinite(number):
        raise ValueError(f"not a finite time: {number!r}")
    return number


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (0 would delete the key at once)."""
    if not math.isfinite(seconds) or seconds * 1000 >= _MAX_TTL_MS:
        return _MAX_TTL_MS
    return max(1, math.ceil(seconds * 1000))


def _appended_payload(chunks: Sequence[Chunk]) -> bytes:
    rows = [[chunk.seq, chunk.offset, chunk.data] for chunk in chunks]
    note = {_keys.NOTE_APPENDED: rows}
    return _encode(compact_json(note))


def _ended_payload(state: StreamState) -> bytes:
    return _encode(compact_json({_keys.NOTE_ENDED: state.value}))


class _PackedAppend(NamedTuple):
    """One stream's append, ready for ``append_many.lua``; ``place``: its index in the batch."""

    place: int
    stream_id: str
    keys: StreamKeys
    args: list[str | bytes | int]
    chunks: int


def _calls(appends: list[_PackedAppend]) -> list[list[_PackedAppend]]:
    """``appends`` in order, cut into append_many.lua calls of bounded size."""
    calls: list[list[_PackedAppend]] = []
    call: list[_PackedAppend] = []
    chunks = 0
    for append in appends:
        if call and (len(call) == _STREAMS_PER_CALL or chunks + append.chunks > _CHUNKS_PER_CALL):
            calls.append(call)
            call, chunks = [], 0
        call.append(append)
        chunks += append.chunks
    if call:
        calls.append(call)
    return calls


def _append_many_command(appends: Sequence[_PackedAppend]) -> tuple[Any, ...]:
    """The arguments of one ``append_many.lua`` call: every stream's keys, then each
    stream's argument count and arguments."""
    keys = [key for append in appends for key in append.keys.script_keys]
    args: list[str | bytes | int] = []
    for append in appends:
        args.append(len(append.args))
        args += append.args
    return (len(keys), *keys, *args)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_notification(raw: object) -> Notification:
    """A notification payload as published by the scripts; ValueError if it is not one."""
    note = json.loads(_text(raw))
    if not isinstance(note, dict) or len(note) != 1:
        raise ValueError("not a one-key object")
    if _keys.NOTE_ENDED in note:
        state = StreamState(note[_keys.NOTE_ENDED])
        if not state.is_terminal:
            raise ValueError("an end notification with a non-terminal state")
        return Ended(state)
    rows = note.get(_keys.NOTE_APPENDED)
    if not isinstance(rows, list) or not rows:
        raise ValueError("no chunks")
    chunks: list[Chunk] = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3):
            raise ValueError("a chunk is not [seq, offset, data]")
        seq, offset, data = row
        if not (_is_int(seq) and _is_int(offset) and isinstance(data, str)):
            raise ValueError("a chunk has bad types")
        if chunks and seq != chunks[-1].seq + 1:
            raise ValueError("chunk sequence numbers are not consecutive")
        chunks.append(Chunk(seq=seq, data=data, offset=offset))
    return Appended(tuple(chunks))


def _parse_status(stream_id: str, raw: Mapping[Any, Any]) -> StreamStatus:
    try:
        fields = {_text(key): value for key, value in raw.items()}
        finished = fields.get(_keys.META_FINISHED)
        error = fields.get(_keys.META_ERROR)
        return StreamStatus(
            stream_id=stream_id,
            state=StreamState(_text(fields[_keys.META_STATE])),
            chunk_count=_count(fields[_keys.META_CHUNKS]),
            char_count=_count(fields[_keys.META_CHARS]),
            byte_count=_count(fields[_keys.META_BYTES]),
            created_at=_timestamp(fields[_keys.META_CREATED]),
            updated_at=_timestamp(fields[_keys.META_UPDATED]),
            finished_at=None if finished is None else _timestamp(finished),
            error=None if error is None else _text(error),
        )
    except (KeyError, ValueError) as exc:
        _corrupt(stream_id, f"metadata: {exc!r}")


def _parse_log(stream_id: str, entries: object, after: int) -> list[Chunk]:
    """XRANGE entries as chunks; the log must hold exactly seq after+1, after+2, ..."""
    if not isinstance(entries, list):
        _corrupt(stream_id, "log reply is not a list")
    chunks: list[Chunk] = []
    for entry in entries:
        try:
            entry_id, fields = entry
            seq = log_entry_seq(_text(entry_id))
            values = {_text(key): value for key, value in fields.items()}
            data = _text(values[_keys.LOG_DATA])
            offset = _count(values[_keys.LOG_OFFSET])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            _corrupt(stream_id, f"log entry: {exc!r}")
        if seq != after + 1 + len(chunks):
            _corrupt(stream_id, f"log has seq {seq} where {after + 1 + len(chunks)} belongs")
        chunks.append(Chunk(seq=seq, data=data, offset=offset))
    return chunks


# -- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Script:
    """A Lua script from ``_lua/`` (after the shared prelude and the ``libraries`` it uses),
    run by its SHA1."""

    source: str
    sha: str

    @classmethod
    def load(cls, name: str, *libraries: str) -> _Script:
        folder = files("unbroken.backends").joinpath("_lua")
        parts = ["_prelude", *libraries, name]
        source = "\n".join(folder.joinpath(f"{part}.lua").read_text("utf-8") for part in parts)
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


_SCRIPTS = {
    "claim": _Script.load("claim"),
    "append": _Script.load("append", "_append"),
    "append_many": _Script.load("append_many", "_append"),
    "renew": _Script.load("renew"),
    "finish": _Script.load("finish"),
}
#: Writes nobody waits on by the millisecond: they may wait to share a pipeline.
_DEFERRABLE_SCRIPTS = frozenset({"append", "renew"})
_PIPELINES_IN_FLIGHT = 4  # at most this many connections carry this backend's commands
# At most this many streams, and (unless one stream has more) chunks, per append_many.lua
# call: Redis runs nothing else while a script runs, and 100 streams of one chunk take it
# about a millisecond.
_STREAMS_PER_CALL = 100
_CHUNKS_PER_CALL = 1000


class _Call:
    """One command waiting for its pipeline: the result, or the error, once ``done``.

    ``done`` is a bare future of the running loop (redis-py's asyncio client needs asyncio
    anyway): one is made per command, and `anyio.Event` looks the async library up on every
    creation (4 % of a Redis-backed server's CPU at 100 streams)."""

    __slots__ = ("args", "done", "error", "result", "script")

    def __init__(self, args: tuple[Any, ...], script: _Script | None) -> None:
        self.args = args
        self.script = script
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.result: Any = None
        self.error: BaseException | None = None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        if not self.done.done():  # (cancelled: its caller is gone)
            self.result, self.error = result, error
            self.done.set_result(None)


class _Pipeliner:
    """Every command of the backend goes out in a pipeline shared by all concurrent callers.

    Idle, a command is sent at once; while pipelines are in flight, new commands gather and
    leave together in the next one. So many streams in one process share round trips, and
    the backend never uses more than `_PIPELINES_IN_FLIGHT` connections however many
    streams are written at once.

    A pipeline costs this process ~90 µs of CPU however few commands it carries (redis-py's
    pipeline, the socket write, the wake-up for the reply), ~10 µs more per command. At one
    chunk per append, a pipeline each would cost more than the rest of the chunk's journey,
    so commands that may wait (``deferrable``: appends and lease renewals) wait up to
    ``gather`` seconds for company; any other command leaves at once (in a pipeline started
    from its caller's task when a connection is free) and takes them along.
    """

    def __init__(self, client: _AnyRedis, *, gather: float = 0.0) -> None:
        self._client = client
        self._gather = gather
        self._queue: list[_Call] = []
        self._wakeup = anyio.Event()  # a command is waiting
        self._urgent = anyio.Event()  # ... and one that must not wait
        self._slots = anyio.Semaphore(_PIPELINES_IN_FLIGHT)
        self._senders: TaskGroup | None = None  # run's task group, for `_send_now`
        self._stop = anyio.CancelScope()
        self._closed = False

    async def call(
        self, *args: Any, script: _Script | None = None, deferrable: bool = False
    ) -> Any:
        """Run one command (EVALSHA if ``script``); raises what Redis or the driver raised.
        ``deferrable``: it may wait up to ``gather`` seconds to share a pipeline."""
        ((result, error),) = await self.call_many([args], script=script, deferrable=deferrable)
        if error is not None:
            raise error
        return result

    async def call_many(
        self,
        commands: Sequence[tuple[Any, ...]],
        *,
        script: _Script | None = None,
        deferrable: bool = False,
    ) -> list[tuple[Any, BaseException | None]]:
        """Run several commands in one pipeline (each EVALSHA if ``script``); each one's
        (reply, error). They settle together, so only the last one is awaited."""
        if self._closed:
            raise EngineClosedError("backend is closed")
        if not commands:
            return []
        prefix = ("EVALSHA", script.sha) if script is not None else ()
        calls = [_Call((*prefix, *args), script) for args in commands]
        self._queue += calls
        if deferrable or not self._send_now():
            self._wakeup.set()
            if not deferrable:
                self._urgent.set()
        # If the caller is cancelled the commands may still run, exactly as if they had been
        # sent directly and the replies were never read.
        await calls[-1].done
        return [(call.result, call.error) for call in calls]

    def close(self) -> None:
        self._closed = True
        self._stop.cancel()
        for call in self._queue:
            call.settle(error=EngineClosedError("backend is closed"))
        self._queue.clear()

    def _send_now(self) -> bool:
        """Send everything waiting (in order) in a pipeline started from the caller's task,
        if a connection is free: a command someone waits on then leaves without waking
        `run` first, one task switch sooner (a resume's status and first page, a claim)."""
        if self._senders is None:
            return False
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            return False
        batch, self._queue = self._queue, []
        self._senders.start_soon(self._send, batch)
        return True

    async def run(self) -> None:
        with self._stop:
            async with anyio.create_task_group() as senders:
                self._senders = senders
                try:
                    while True:
                        await self._wakeup.wait()
                        if self._gather and not self._urgent.is_set():
                            with anyio.move_on_after(self._gather):
                                await self._urgent.wait()
                        await self._slots.acquire()  # meanwhile, more commands gather
                        self._wakeup, self._urgent = anyio.Event(), anyio.Event()
                        batch, self._queue = self._queue, []
                        if batch:
                            senders.start_soon(self._send, batch)
                        else:  # `_send_now` sent them meanwhile
                            self._slots.release()
                finally:
                    self._senders = None

    async def _send(self, batch: list[_Call]) -> None:
        try:
            results = await self._execute(batch)
            unknown = [
                index
                for index, (call, result) in enumerate(zip(batch, results, strict=True))
                if isinstance(result, redis_errors.NoScriptError) and call.script is not None
            ]
            if unknown:  # a new or flushed server: load the scripts, then run those again
                for script in {batch[index].script for index in unknown}:
                    assert script is not None
                    await self._client.script_load(script.source)
                retried = await self._execute([batch[index] for index in unknown])
                for index, result in zip(unknown, retried, strict=True):
                    results[index] = result
            for call, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    call.settle(error=result)
                else:
                    call.settle(result)
        except Exception as exc:  # the connection failed: every command in it did
            for call in batch:
                call.settle(error=exc)
        finally:
            for call in batch:  # only when cancelled: the backend is closing
                call.settle(error=EngineClosedError("backend is closed"))
            self._slots.release()

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        pipeline: Any = self._client.pipeline(transaction=False)
        for call in batch:
            pipeline.execute_command(*call.args)
        results: list[Any] = await pipeline.execute(raise_on_error=False)
        return results


# -- live notifications ---------------------------------------------------------------------


class _RedisListener(QueueListener):
    """A `QueueListener` that fails with `EngineClosedError` once its backend is closed."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._closed = False

    def close(self) -> None:
        """Wake a waiting `receive` (with `Lagged`); later calls raise `EngineClosedError`."""
        self._closed = True
        self.push(Lagged())

    async def receive(self) -> Notification:
        if self._closed:
            raise EngineClosedError("backend is closed")
        return await super().receive()


class _Channel:
    """Listeners of one channel in this process, and where its subscription stands."""

    __slots__ = ("lagged", "listeners", "live", "ready", "requested")

    def __init__(self) -> None:
        self.listeners: set[_RedisListener] = set()
        # Redis confirmed the subscription on the current connection.
        self.live = False
        # It was live on a connection that was lost: listeners hear `Lagged` once it is back.
        self.lagged = False
        # The connection a SUBSCRIBE was sent on and is awaiting confirmation, if any.
        self.requested: _Link | None = None
        # Set when the subscription becomes live or the connection is lost.
        self.ready = anyio.Event()


_Op = Literal["subscribe", "unsubscribe", "ping"]


class _Link:
    """One pub/sub connection: commands go through `request` and are sent by one writer task.

    Only the router's two tasks touch the redis-py pub/sub object; nothing else can make it
    reconnect on its own behind the router's back.
    """

    def __init__(self, pubsub: PubSub, *, sharded: bool, cluster: bool = False) -> None:
        # redis-py's pub/sub API is untyped; it is confined to this class.
        self.pubsub: Any = pubsub
        self.sharded = sharded
        self.cluster = cluster  # a ClusterPubSub, with one connection per node
        # Silence is only suspicious where pings are answered: ClusterPubSub has no single
        # connection to ping, so there a dead node shows up as a read error instead.
        self.pings = not self.cluster
        self.last_seen = time.monotonic()  # (per message: cheaper than anyio's clock)
        self._ops: list[tuple[_Op, str]] = []
        self._wakeup = anyio.Event()
        self._restore: dict[str, Any] = {}  # connection settings changed while it is ours
        # Cluster: one reader task per node connection feeds this inbox, so a message on
        # any node is routed at once (ClusterPubSub would poll the nodes one by one).
        self._node_readers: set[str] = set()
        self._inbox_in, self._inbox = anyio.create_memory_object_stream[dict[str, Any]](1024)
        self._tasks: TaskGroup | None = None

    @classmethod
    async def open(cls, client: _AnyRedis, *, sharded: bool) -> _Link:
        if isinstance(client, RedisCluster):
            # ClusterPubSub picks node connections per channel lazily, on SSUBSCRIBE, from
            # the slot map, which needs the client initialised (a no-op once it is).
            await client.initialize()
            return cls(client.pubsub(), sharded=True, cluster=True)
        link = cls(client.pubsub(), sharded=sharded)
        try:
            await link.pubsub.connect()
        except BaseException:
            await link.aclose()
            raise
        # Neither silent reconnects (see _NO_RETRY) nor redis-py's health checks, which on
        # an idle connection read a PONG inline, racing the router's reader: the router
        # pings itself.
        connection = link.pubsub.connection
        link._restore = {
            "retry": connection.retry,
            "health_check_interval": connection.health_check_interval,
        }
        connection.retry, connection.health_check_interval = _NO_RETRY, 0
        return link

    async def aclose(self) -> None:
        self._inbox_in.close()
        self._inbox.close()
        connection = getattr(self.pubsub, "connection", None)
        if connection is not None:
            for name, value in self._restore.items():  # it goes back to the caller's pool
                setattr(connection, name, value)
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self.pubsub.aclose()
            except Exception:  # a dead connection may fail to close; it is dropped anyway
                logger.debug("closing the pub/sub connection failed", exc_info=True)

    def request(self, op: _Op, channel: str = "") -> None:
        self._ops.append((op, channel))
        self._wakeup.set()

    async def run(self, tasks: TaskGroup) -> None:
        """Start the writer (and node readers) in ``tasks``, the connection's task group."""
        self._tasks = tasks
        tasks.start_soon(self._write_loop)

    async def _write_loop(self) -> None:
        """Send requested commands in order (runs of one command go out as one). Every
        `_POLL` seconds, check the connection: ping it after `_PING_AFTER` seconds of silence,
        give it up after `_DEAD_AFTER` (raising here ends the link's task group, and with it
        the router's blocked read). The reads themselves carry no timeout: one per message
        cost a timer each, 10 % of a reader's CPU under load."""
        while True:
            with anyio.move_on_after(_POLL):
                await self._wakeup.wait()
            self._wakeup = anyio.Event()
            ops, self._ops = self._ops, []
            silence = time.monotonic() - self.last_seen
            if self.pings and silence > _DEAD_AFTER:
                raise redis_errors.ConnectionError("no reply from redis, reconnecting")
            if not ops and silence >= _PING_AFTER:
                ops = [("ping", "")]
            for op, channels in _runs(ops):
                await self._send(op, channels)

    async def _send(self, op: _Op, channels: list[str]) -> None:
        pubsub = self.pubsub
        if op == "ping":
            if self.pings:
                await pubsub.ping()
        elif self.sharded:
            # One channel per command: channels of different slots cannot share one.
            for channel in channels:
                if op == "subscribe":
                    await pubsub.ssubscribe(channel)
                else:
                    await pubsub.sunsubscribe(channel)
            if self.cluster:
                self._start_node_readers()
        elif op == "subscribe":
            await pubsub.subscribe(*channels)
        else:
            await pubsub.unsubscribe(*channels)

    async def get_message(self) -> dict[str, Any] | None:
        """The next message (None: a reply that is not one), waiting as long as it takes."""
        message: Any
        if self.cluster:
            message = await self._inbox.receive()
        else:
            message = await self.pubsub.get_message(timeout=None)
        self.last_seen = time.monotonic()
        return message if isinstance(message, dict) else None

    def _start_node_readers(self) -> None:
        assert self._tasks is not None
        for name in self.pubsub.node_pubsub_mapping:
            if name not in self._node_readers:
                node = self.pubsub.cluster.get_node(node_name=name)
                self._node_readers.add(name)
                self._tasks.start_soon(self._read_node, name, node)

    async def _read_node(self, name: str, node: Any) -> None:
        """Forward one node's messages until ClusterPubSub drops that node's connection
        (it does once its last channel there is unsubscribed)."""
        try:
            while name in self.pubsub.node_pubsub_mapping:
                message = await self.pubsub.get_sharded_message(timeout=_POLL, target_node=node)
                if message is not None:
                    await self._inbox_in.send(message)
        finally:
            self._node_readers.discard(name)


def _runs(ops: list[tuple[_Op, str]]) -> Iterator[tuple[_Op, list[str]]]:
    """Consecutive ops of one kind, merged, in order (order matters: unsubscribe, then
    subscribe again, must reach Redis in that order)."""
    run: list[str] = []
    current: _Op | None = None
    for op, channel in ops:
        if op != current and current is not None:
            yield current, run
            run = []
        current = op
        run.append(channel)
    if current is not None:
        yield current, run


class _Router:
    """Routes one pub/sub connection's messages to this process's listeners.

    Invariants: at most one SUBSCRIBE per channel is awaiting confirmation, and UNSUBSCRIBE is
    only sent for a live subscription, so every confirmation can be attributed; a channel is
    live only once Redis confirmed it on the current connection.
    """

    def __init__(self, client: _AnyRedis, *, sharded: bool) -> None:
        self._client = client
        self._sharded = sharded
        self._channels: dict[str, _Channel] = {}
        self._link: _Link | None = None
        # True once a connection attempt failed or the connection was lost, until the next
        # one is up: listen() then fails fast instead of waiting for a Redis that is down.
        self._down = False
        self._link_changed = anyio.Event()
        self._stop = anyio.CancelScope()

    # -- called by listen() --

    async def subscribe(self, channel: str, listener: _RedisListener) -> None:
        """Add ``listener``; returns once Redis confirmed the channel's subscription."""
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel()
        entry.listeners.add(listener)
        try:
            await self._wait_live(channel, entry)
        except BaseException:
            self.unsubscribe(channel, listener)
            raise

    async def _wait_live(self, channel: str, entry: _Channel) -> None:
        with anyio.move_on_after(_SUBSCRIBE_TIMEOUT):
            while not entry.live:
                if self._stop.cancel_called:
                    raise EngineClosedError("backend is closed")
                link = self._link
                if link is None:
                    if self._down:
                        raise BackendUnavailableError(
                            "redis is unavailable: cannot subscribe, retry later"
                        )
                    await self._link_changed.wait()  # the connection is being (re)established
                    continue
                if entry.requested is not link:
                    entry.requested = link
                    link.request("subscribe", channel)
                await entry.ready.wait()
                if not entry.live and not self._stop.cancel_called:
                    raise BackendUnavailableError("redis connection lost while subscribing")
            return
        raise BackendUnavailableError("redis did not confirm a subscription in time, retry later")

    def unsubscribe(self, channel: str, listener: _RedisListener) -> None:
        """Remove ``listener``; the last one out unsubscribes the channel. Never blocks."""
        entry = self._channels.get(channel)
        if entry is None:
            return
        entry.listeners.discard(listener)
        if entry.listeners:
            return
        if entry.live:
            del self._channels[channel]
            if self._link is not None:
                self._link.request("unsubscribe", channel)
        elif entry.requested is None:
            del self._channels[channel]
        # else: a SUBSCRIBE is in flight; its confirmation unsubscribes (see _confirmed).

    def close(self) -> None:
        """Stop the router task; wake every listener for good (their next `receive` raises
        `EngineClosedError`)."""
        self._stop.cancel()
        self._link_changed.set()
        for entry in self._channels.values():
            for listener in entry.listeners:
                listener.close()
            entry.ready.set()
        self._channels.clear()

    # -- the router task --

    async def run(self) -> None:
        """Keep the pub/sub connection up until `close`; never raises."""
        with self._stop:
            await self._keep_connected()

    async def _keep_connected(self) -> None:
        delay = _RECONNECT_MIN
        failures = 0  # in a row: a connection that lived `_STABLE` seconds ends the series
        while True:
            started = anyio.current_time()
            try:
                link = await _Link.open(self._client, sharded=self._sharded)
            except Exception as exc:
                failures += 1
                self._log_failure("could not connect pub/sub", exc, failures)
                self._set_link(None)
            else:
                try:
                    await self._serve(link)
                except Exception as exc:
                    if anyio.current_time() - started >= _STABLE:
                        failures, delay = 0, _RECONNECT_MIN
                    failures += 1
                    self._log_failure("pub/sub connection lost", exc, failures)
                finally:
                    self._connection_lost()
                    await link.aclose()
            await anyio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX)

    @staticmethod
    def _log_failure(what: str, exc: Exception, failures: int) -> None:
        # Warn once per outage (repeats while Redis stays down would flood the log), naming
        # the cause rather than the task group that carried it; the traceback is for debug.
        while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        level = logging.WARNING if failures == 1 else logging.DEBUG
        cause = f"{type(exc).__name__}: {exc}"
        logger.log(level, "%s (%s); live notifications resume after reconnecting", what, cause)
        logger.debug("pub/sub failure details", exc_info=exc)

    async def _serve(self, link: _Link) -> None:
        async with anyio.create_task_group() as tasks:
            self._set_link(link)
            for channel, entry in list(self._channels.items()):
                if entry.listeners:
                    entry.requested = link
                    link.request("subscribe", channel)
                else:
                    del self._channels[channel]
            await link.run(tasks)
            while True:
                message = await link.get_message()
                if message is not None:
                    self._route(message)

    def _set_link(self, link: _Link | None) -> None:
        self._link, self._down = link, link is None
        changed, self._link_changed = self._link_changed, anyio.Event()
        changed.set()

    def _connection_lost(self) -> None:
        self._set_link(None)
        for channel, entry in list(self._channels.items()):
            if not entry.listeners:
                del self._channels[channel]
                continue
            entry.lagged = entry.lagged or entry.live
            entry.live = False
            entry.requested = None
            # Listeners still waiting for a confirmation give up (they raise unavailable).
            ready, entry.ready = entry.ready, anyio.Event()
            ready.set()

    def _route(self, message: dict[str, Any]) -> None:
        try:
            kind = _text(message.get("type"))
            if kind in ("message", "smessage"):
                self._deliver(_text(message.get("channel")), message.get("data"))
            elif kind in ("subscribe", "ssubscribe"):
                self._confirmed(_text(message.get("channel")))
        except Exception:  # the router must outlive anything Redis can send
            logger.warning("dropped an unreadable pub/sub message: %r", message, exc_info=True)

    def _confirmed(self, channel: str) -> None:
        entry = self._channels.get(channel)
        link = self._link
        if entry is None or not entry.listeners:
            # Everyone left while the SUBSCRIBE was in flight (or redis-py resubscribed a
            # channel on its own): undo it.
            self._channels.pop(channel, None)
            if link is not None:
                link.request("unsubscribe", channel)
            return
        # Confirmed again while live means the connection was renewed without us: the
        # listeners may have missed notifications in between, exactly like after a reconnect.
        missed = entry.lagged or entry.live
        entry.live, entry.lagged, entry.requested = True, False, None
        entry.ready.set()
        if missed:
            for listener in entry.listeners:
                listener.push(Lagged())

    def _deliver(self, channel: str, data: object) -> None:
        entry = self._channels.get(channel)
        if entry is None or not entry.listeners:
            return
        try:
            note = _parse_notification(data)
        except (ValueError, TypeError) as exc:
            # Not ours or not readable: the log is the truth, so have the listeners re-read.
            logger.warning(
                "malformed notification on %r (%s); listeners re-read the log", channel, exc
            )
            note = Lagged()
        for listener in entry.listeners:
            listener.push(note)


# -- the backend ----------------------------------------------------------------------------


class RedisBackend(Backend):
    """Streams in Redis, shared by every process using the same Redis and ``key_prefix``.

    Give either ``url`` (the backend creates, owns and closes the client) or ``client`` (yours;
    it is never closed here). Neither means ``redis://localhost:6379/0``. ``cluster=True``
    targets Redis Cluster (with ``url``: a `RedisCluster` is created) and uses sharded pub/sub.
    ``reader_buffer`` bounds each listener's queue; overflow gives it one `Lagged`.
    ``write_gather``: how long (seconds) appends and lease renewals may wait for other
    commands to share their pipeline: each pipeline costs this process ~90 µs of CPU, so at
    one chunk per append, sharing is most of a Redis-backed chunk's cost. The engine gathers
    the chunks of all its streams that long and appends them with one `append_many`. Readers
    see a chunk up to that much later. 0 sends as soon as a connection is free.
    """

    appends_together = True

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | RedisCluster | None = None,
        key_prefix: str = "unbroken",
        cluster: bool = False,
        reader_buffer: int = 1024,
        write_gather: float = 0.002,
    ) -> None:
        if url is not None and client is not None:
            raise ValueError("pass either url or client, not both")
        if reader_buffer < 1:
            raise ValueError("reader_buffer must be at least 1")
        if not 0 <= write_gather <= 1:
            raise ValueError("write_gather must be between 0 and 1 second")
        if not key_prefix or "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must be non-empty and without braces")
        self.key_prefix = key_prefix
        self.cluster = cluster or isinstance(client, RedisCluster)
        if self.cluster and not _HAS_SHARDED_PUBSUB:
            raise MissingDependencyError("redis>=8.0 (sharded pub/sub, for cluster=True)", "redis")
        if url is None and client is None:
            url = _DEFAULT_URL
        self._url = url
        self._given_client = client
        self._reader_buffer = reader_buffer
        self._write_gather = self.append_gather = write_gather
        self._client: _AnyRedis | None = None
        self._pipeliner: _Pipeliner | None = None
        self._router: _Router | None = None
        self._task_group: TaskGroup | None = None

    # -- lifecycle --

    async def open(self) -> None:
        """Start the command pipeliner and the pub/sub router (connections are made as
        needed, so this works while Redis is down). Idempotent.

        The tasks live in a task group entered here and exited by `close`, so call `close`
        from the same task at the same cancel-scope nesting (``async with backend:`` does).
        """
        if self._task_group is not None:
            return
        client = self._given_client or self._new_client()
        pipeliner = _Pipeliner(client, gather=self._write_gather)
        router = _Router(client, sharded=self.cluster)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        task_group.start_soon(pipeliner.run, name="unbroken-redis-pipeliner")
        task_group.start_soon(router.run, name="unbroken-redis-router")
        self._client, self._task_group = client, task_group
        self._pipeliner, self._router = pipeliner, router

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_task_group", None) is not None:  # None too if __init__ raised
            _warn(f"unclosed {self!r}: use 'async with backend:'", ResourceWarning, source=self)

    def _new_client(self) -> _AnyRedis:
        assert self._url is not None
        if self.cluster:
            # redis-py's own cluster retries follow MOVED/ASK and failovers: keep them.
            return RedisCluster.from_url(self._url, socket_connect_timeout=5)
        # One quick retry: a pooled connection may have died with a Redis restart, and the
        # retry on a fresh connection then succeeds. A Redis that is down fails fast, and the
        # engine decides about retrying, with its own backoff. Every command here is short,
        # so a reply that takes 10 s means a hung server or network, not a slow command.
        return Redis.from_url(
            self._url, retry=Retry(NoBackoff(), 1), socket_connect_timeout=5, socket_timeout=10
        )

    async def close(self) -> None:
        """Stop the router, wake every listener (their next receive raises), close the
        client if this backend created it. Idempotent."""
        task_group, client = self._task_group, self._client
        pipeliner, router = self._pipeliner, self._router
        if task_group is None or client is None or pipeliner is None or router is None:
            return
        self._task_group = self._client = self._pipeliner = self._router = None
        # Only the tasks' own scopes are cancelled, never the task group's: that one also
        # covers the caller's task, which must not be cancelled by closing a backend.
        pipeliner.close()
        router.close()
        try:
            await task_group.__aexit__(None, None, None)
        except RuntimeError as exc:
            raise RuntimeError(
                "RedisBackend.close() must run in the task and cancel-scope nesting that "
                "open() ran in (not inside another CancelScope; it shields its own cleanup)"
            ) from exc
        finally:
            if self._given_client is None:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def _call(
        self,
        stream_id: str,
        *args: Any,
        script: _Script | None = None,
        deferrable: bool = False,
    ) -> Any:
        """One command for ``stream_id``, with driver errors translated."""
        if self._pipeliner is None:
            raise EngineClosedError("backend is closed")
        with _translated(stream_id):
            return await self._pipeliner.call(*args, script=script, deferrable=deferrable)

    def _keys(self, stream_id: str) -> StreamKeys:
        return stream_keys(self.key_prefix, stream_id)

    async def _run_script(
        self,
        name: str,
        stream_id: str,
        args: Sequence[str | bytes | int],
        keys: StreamKeys | None = None,
    ) -> Any:
        script_keys = (keys or self._keys(stream_id)).script_keys
        deferrable = name in _DEFERRABLE_SCRIPTS
        return await self._call(
            stream_id,
            len(script_keys),
            *script_keys,
            *args,
            script=_SCRIPTS[name],
            deferrable=deferrable,
        )

    def _state_reply(self, stream_id: str, reply: object) -> StreamState | None:
        if reply is None:
            return None
        try:
            return StreamState(_text(reply))
        except ValueError:
            _corrupt(stream_id, f"unexpected script reply {reply!r}")

    # -- writes --

    async def claim(self, stream_id: str, *, token: str, times: StreamTimes, now: float) -> bool:
        args: list[str | bytes | int] = [
            _encode(token),
            repr(float(now)),
            _ms(times.lease),
            _ms(times.active),
        ]
        return bool(await self._run_script("claim", stream_id, args))

    async def append(
        self, stream_id: str, *, token: str, chunks: Sequence[Chunk], times: StreamTimes, now: float
    ) -> StreamState | None:
        keys = self._keys(stream_id)
        args = self._append_args(Append(stream_id, token, chunks, times, now), keys)
        reply = await self._run_script("append", stream_id, args, keys)
        return self._state_reply(stream_id, reply)

    async def append_many(
        self, appends: Sequence[Append]
    ) -> list[StreamState | BackendError | None]:
        """Every append in one pipeline, sent at once (the engine gathered them already).

        Outside a cluster, up to `_STREAMS_PER_CALL` streams share one script call: for
        redis-py one command to pack and one reply to parse, for Redis one script run,
        instead of one each per stream. In a cluster the streams' keys live in different
        slots, so each stream is a call of its own.
        """
        if self._pipeliner is None:
            raise EngineClosedError("backend is closed")
        outcomes: list[StreamState | BackendError | None] = [None] * len(appends)
        sendable: list[_PackedAppend] = []
        for index, append in enumerate(appends):
            keys = self._keys(append.stream_id)
            try:
                args = self._append_args(append, keys)
            except CorruptStreamError as exc:  # not sent: the chunks are not consecutive
                outcomes[index] = exc
                continue
            sendable.append(_PackedAppend(index, append.stream_id, keys, args, len(append.chunks)))
        calls = [[append] for append in sendable] if self.cluster else _calls(sendable)
        replies = await self._pipeliner.call_many(
            [_append_many_command(call) for call in calls], script=_SCRIPTS["append_many"]
        )
        for call, (reply, error) in zip(calls, replies, strict=True):
            if error is None and not (isinstance(reply, list) and len(reply) == len(call)):
                error = redis_errors.ResponseError(f"UNBROKEN_CORRUPT script replied {reply!r}")
            for position, (index, stream_id, *_) in enumerate(call):
                try:
                    with _translated(stream_id):
                        if error is not None:
                            raise error
                        outcome = reply[position]
                        if isinstance(outcome, Exception):
                            raise outcome
                    outcomes[index] = self._state_reply(stream_id, outcome)
                except BackendError as exc:
                    outcomes[index] = exc
        return outcomes

    def _append_args(self, append: Append, keys: StreamKeys) -> list[str | bytes | int]:
        chunks = append.chunks
        first = chunks[0].seq if chunks else 0
        require_consecutive(append.stream_id, chunks, first)
        args: list[str | bytes | int] = [
            _encode(append.token),
            repr(float(append.now)),
            _ms(append.times.lease),
            _ms(append.times.active),
            first,
            sum(len(chunk.data) for chunk in chunks),
            "1" if self.cluster else "0",
            keys.channel,
            _appended_payload(chunks) if chunks else b"",
        ]
        for chunk in chunks:
            args += [log_entry_id(chunk.seq), _encode(chunk.data), chunk.offset]
        return args

    async def renew_lease(
        self, stream_id: str, *, token: str, times: StreamTimes, now: float
    ) -> StreamState | None:
        args: list[str | bytes | int] = [_encode(token), _ms(times.lease), _ms(times.active)]
        return self._state_reply(stream_id, await self._run_script("renew", stream_id, args))

    async def finish(
        self,
        stream_id: str,
        *,
        state: StreamState,
        error: str | None,
        token: str | None,
        times: StreamTimes,
        now: float,
        only_if_lease_expired: bool = False,
    ) -> StreamState | None:
        if not state.is_terminal:
            raise ValueError("finish needs a terminal state")
        keys = self._keys(stream_id)
        args: list[str | bytes | int] = [
            state.value,
            "0" if error is None else "1",
            _encode(error or ""),
            "0" if token is None else "1",
            _encode(token or ""),
            "1" if only_if_lease_expired else "0",
            repr(float(now)),
            _ms(times.retention),
            "1" if self.cluster else "0",
            keys.channel,
            keys.ends_channel,
            _ended_payload(state),
        ]
        return self._state_reply(stream_id, await self._run_script("finish", stream_id, args))

    # -- reads --

    async def status(self, stream_id: str) -> StreamStatus | None:
        raw = await self._call(stream_id, "HGETALL", self._keys(stream_id).meta)
        if not raw:
            return None
        if not isinstance(raw, Mapping):
            _corrupt(stream_id, "metadata is not a hash")
        return _parse_status(stream_id, raw)

    async def lease_alive(self, stream_id: str) -> bool:
        return bool(await self._call(stream_id, "EXISTS", self._keys(stream_id).lease))

    async def read(self, stream_id: str, *, after: int, limit: int) -> list[Chunk]:
        if self._pipeliner is None:
            raise EngineClosedError("backend is closed")
        after = max(after, -1)
        if limit <= 0 or after >= 2**62:
            return []
        log = self._keys(stream_id).log
        start = log_entry_id(after + 1)
        entries = await self._call(stream_id, "XRANGE", log, start, "+", "COUNT", limit)
        return _parse_log(stream_id, entries, after)

    # -- live --

    def listen(
        self, stream_id: str, *, ends_only: bool = False
    ) -> AbstractAsyncContextManager[Listener]:
        """Subscribe to the stream's notifications through this backend's one pub/sub
        connection. Entering returns once Redis confirmed the subscription; raises
        `BackendUnavailableError` if it cannot (Redis down or not confirming in time).
        ``ends_only`` listens on the stream's end channel, which carries no chunks."""
        return self._listen(stream_id, ends_only)

    @asynccontextmanager
    async def _listen(self, stream_id: str, ends_only: bool) -> AsyncIterator[Listener]:
        router = self._router
        if router is None:
            raise EngineClosedError("backend is closed")
        keys = self._keys(stream_id)
        channel = keys.ends_channel if ends_only else keys.channel
        listener = _RedisListener(self._reader_buffer)
        await router.subscribe(channel, listener)
        try:
            yield listener
        finally:
            router.unsubscribe(channel, listener)
