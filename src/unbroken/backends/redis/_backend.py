"""`RedisBackend`: the backend contract over the pipeliner, the scripts and the router."""

from __future__ import annotations

import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NamedTuple

import anyio
from anyio.abc import TaskGroup
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from unbroken._models import Chunk, ChunkLog, StreamState, StreamStatus
from unbroken.backends.base import (
    Append,
    Backend,
    GatheredAppends,
    Listener,
    PacksEndedLogs,
    ReadsWithStatus,
    Renewal,
    StreamTimes,
)
from unbroken.backends.redis._codec import (
    ENTRY_CHUNKS,
    PackedAppend,
    append_args,
    append_many_command,
    encode,
    ended_payload,
    fast_append_commands,
    ms,
    pack_args,
    parse_appended,
    parse_log,
    parse_state,
    parse_status,
    renewal_calls,
    script_calls,
)
from unbroken.backends.redis._errors import corrupt, translated
from unbroken.backends.redis._fastpath import Known, KnownStreams
from unbroken.backends.redis._keys import (
    StreamKeys,
    check_separator,
    log_entry_id,
    stream_keys,
)
from unbroken.backends.redis._pipeliner import DEFERRABLE_SCRIPTS, SCRIPTS, Command, Pipeliner
from unbroken.backends.redis._pubsub import HAS_SHARDED_PUBSUB, RedisListener, Router
from unbroken.backends.redis._url import OwnedClient, describe_client, parse_redis_url
from unbroken.exceptions import (
    BackendError,
    CorruptStreamError,
    EngineClosedError,
    MissingDependencyError,
)

__all__ = ["RedisBackend"]

_DEFAULT_URL = "redis://localhost:6379/0"


class RedisBackend(Backend, GatheredAppends, PacksEndedLogs, ReadsWithStatus):
    """Streams in Redis, shared by every process using the same Redis and ``key_prefix``.

    Give either ``url`` (the backend creates, owns and closes the client) or ``client`` (yours;
    it is never closed here). Neither means ``redis://localhost:6379/0``. The URL may name one
    server (``redis://``, ``rediss://``, ``unix://``), a Redis Cluster
    (``redis+cluster://host:port,host:port``) or a Sentinel service
    (``redis+sentinel://host:port,host:port/<service>[/db]``); see ``_url.py`` for the forms.
    A URL it cannot use raises `ValueError` here, not at the first command. ``cluster=True``
    targets Redis Cluster (with ``url``: a `RedisCluster` is created) and uses sharded pub/sub.
    ``reader_buffer`` bounds each listener's queue; overflow gives it one `Lagged`.
    ``write_gather`` (seconds, the engine's `append_gather`), the write window: how long the
    engine gathers the chunks of all its streams before appending them with one
    `append_many`, and how long a lease renewal waits for other commands to share its
    pipeline. Each stream's chunks from one append are one log entry and one notification,
    and an append costs Redis about the same whatever it carries, so a window longer than the
    time between a stream's chunks (a model's tokens: ~30 ms) divides Redis's cost per chunk;
    every reader sees a chunk up to that much later. 0 sends as soon as a connection is free.
    ``placement_separator`` (one character, e.g. ``"/"``; None by default): streams whose ids
    share the text before it (their placement group) share one Redis Cluster hash slot, so
    one master holds them all. Every process using the same streams must use the same one.
    See "Placement groups" in docs/backends.md for when it pays.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | RedisCluster | None = None,
        key_prefix: str = "unbroken",
        cluster: bool = False,
        reader_buffer: int = 1024,
        write_gather: float = 0.002,
        placement_separator: str | None = None,
    ) -> None:
        if url is not None and client is not None:
            raise ValueError("pass either url or client, not both")
        if reader_buffer < 1:
            raise ValueError("reader_buffer must be at least 1")
        if not 0 <= write_gather <= 1:
            raise ValueError("write_gather must be between 0 and 1 second")
        if not key_prefix or "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must be non-empty and without braces")
        check_separator(placement_separator)
        self.key_prefix = key_prefix
        self.placement_separator = placement_separator
        if url is None and client is None:
            url = _DEFAULT_URL
        self._topology = parse_redis_url(url) if url is not None else None
        self.cluster = (
            cluster
            or isinstance(client, RedisCluster)
            or (self._topology is not None and self._topology.kind == "cluster")
        )
        if self.cluster and self._topology is not None and self._topology.kind == "sentinel":
            raise ValueError("a redis+sentinel:// url cannot be used with cluster=True")
        if self.cluster and not HAS_SHARDED_PUBSUB:
            raise MissingDependencyError("redis>=8.0 (sharded pub/sub, for cluster=True)", "redis")
        self._given_client = client
        self._owned: OwnedClient | None = None
        self._reader_buffer = reader_buffer
        self._write_gather = self.append_gather = write_gather
        self._client: Redis | RedisCluster | None = None
        self._pipeliner: Pipeliner | None = None
        self._router: Router | None = None
        self._task_group: TaskGroup | None = None
        # The streams whose appends may go without the script (see `_fastpath`).
        self._known = KnownStreams()

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
        pipeliner = Pipeliner(client, gather=self._write_gather)
        router = Router(client, sharded=self.cluster)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        task_group.start_soon(pipeliner.run, name="unbroken-redis-pipeliner")
        task_group.start_soon(router.run, name="unbroken-redis-router")
        self._client, self._task_group = client, task_group
        self._pipeliner, self._router = pipeliner, router

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_task_group", None) is not None:  # None too if __init__ raised
            _warn(f"unclosed {self!r}: use 'async with backend:'", ResourceWarning, source=self)

    def _new_client(self) -> Redis | RedisCluster:
        assert self._topology is not None
        # One quick retry: a pooled connection may have died with a Redis restart (or a
        # failover), and the retry on a fresh connection then succeeds. A Redis that is down
        # fails fast, and the engine decides about retrying, with its own backoff. Every
        # command here is short, so a reply that takes 10 s means a hung server or network,
        # not a slow command. (A cluster keeps only the connect timeout: see `OwnedClient`.)
        self._owned = OwnedClient(
            self._topology,
            cluster=self.cluster,
            retry=Retry(NoBackoff(), 1),
            socket_connect_timeout=5,
            socket_timeout=10,
        )
        return self._owned.client

    @property
    def client(self) -> Redis | RedisCluster:
        """The redis-py client this backend talks through (yours if you passed one), for
        keys of your own next to the streams'. Raises `EngineClosedError` before `open`."""
        client = self._client or self._given_client
        if client is None:
            raise EngineClosedError("backend is not open")
        return client

    async def describe(self) -> str:
        """Where this backend's streams live, as found now: ``standalone redis at host:port``,
        ``redis cluster with N masters`` or ``redis sentinel service 'name' at master
        host:port``; an unreachable deployment says so (for a start-up line: never raises)."""
        return await describe_client(self.client)

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
            owned, self._owned = self._owned, None
            if owned is not None:
                with anyio.CancelScope(shield=True):
                    await owned.aclose()

    # -- commands --

    def _keys(self, stream_id: str) -> StreamKeys:
        return stream_keys(self.key_prefix, stream_id, self.placement_separator)

    def _open_pipeliner(self) -> Pipeliner:
        if self._pipeliner is None:
            raise EngineClosedError("backend is closed")
        return self._pipeliner

    async def _call(self, stream_id: str, *args: Any) -> Any:
        """One command for ``stream_id``, with driver errors translated."""
        pipeliner = self._open_pipeliner()
        with translated(stream_id):
            return await pipeliner.call(*args)

    async def _run_script(
        self,
        name: str,
        stream_id: str,
        args: Sequence[str | bytes | int],
        keys: StreamKeys | None = None,
    ) -> Any:
        """Script ``name`` on the stream's keys, with driver errors translated."""
        pipeliner = self._open_pipeliner()
        script_keys = (keys or self._keys(stream_id)).script_keys
        with translated(stream_id):
            return await pipeliner.call(
                len(script_keys),
                *script_keys,
                *args,
                script=SCRIPTS[name],
                deferrable=name in DEFERRABLE_SCRIPTS,
            )

    # -- writes --

    async def claim(self, stream_id: str, *, token: str, times: StreamTimes, now: float) -> bool:
        args: list[str | bytes | int] = [
            encode(token),
            repr(float(now)),
            ms(times.lease),
            ms(times.active),
        ]
        self._known.forget(stream_id)
        sent, fence = time.monotonic(), self._open_pipeliner().generation
        claimed = bool(await self._run_script("claim", stream_id, args))
        if claimed:
            lifetime = _lifetime(times)
            self._known.claimed(stream_id, token, sent=sent, lifetime=lifetime, fence=fence)
        return claimed

    async def append(
        self, stream_id: str, *, token: str, chunks: Sequence[Chunk], times: StreamTimes, now: float
    ) -> StreamState | None:
        """`Backend.append`, sent as soon as a connection is free (chunks that should share
        a round trip come through `append_many`)."""
        keys = self._keys(stream_id)
        append = Append(stream_id, token, chunks, times, now)
        args = append_args(append, keys, sharded=self.cluster)
        self._known.forget(stream_id)
        sent, fence = time.monotonic(), self._open_pipeliner().generation
        reply = await self._run_script("append", stream_id, args, keys)
        return self._appended(append, reply, sent, fence)

    def _appended(
        self, append: Append, reply: object, sent: float, fence: int
    ) -> StreamState | None:
        """The outcome of an append through the script, known streams updated with it."""
        state, next_byte = parse_appended(append.stream_id, reply)
        if next_byte is not None:
            next_seq = append.chunks[-1].seq + 1 if append.chunks else None
            self._known.checked(
                append.stream_id,
                append.token,
                sent=sent,
                lifetime=_lifetime(append.times),
                fence=fence,
                next_seq=next_seq,
                next_byte=next_byte,
            )
        return state

    async def append_many(
        self, appends: Sequence[Append]
    ) -> list[StreamState | BackendError | None]:
        """Every append in one pipeline, sent at once (the engine gathered them already).

        An append that need not renew the lease, of a stream whose last checked write here
        is recent (see `_fastpath`), is a plain XADD and PUBLISH; any such append that
        Redis does not take (the stream ended, or Redis restarted) is sent again through
        the script in a second round trip, and its answer is the answer. Every other append
        goes through the script: several streams share one script call (up to a bound, so
        that one call stays short); in a cluster, only streams of one hash slot (a
        placement group's) can share one, so most streams are a call of their own.
        """
        pipeliner = self._open_pipeliner()
        outcomes: list[StreamState | BackendError | None] = [None] * len(appends)
        plain, checked = self._plan(appends, pipeliner.generation)
        again = await self._send_appends(pipeliner, appends, plain, checked, outcomes)
        if again:
            await self._send_appends(pipeliner, appends, [], again, outcomes)
        return outcomes

    def _plan(self, appends: Sequence[Append], generation: int) -> tuple[list[_Plain], list[int]]:
        """The appends that may go plain (with their commands), and the places of those
        that go through the script."""
        now = time.monotonic()
        plain: list[_Plain] = []
        checked: list[int] = []
        for place, append in enumerate(appends):
            chunks = append.chunks
            known = None
            if not append.renew_lease and 0 < len(chunks) <= ENTRY_CHUNKS:
                known = self._known.usable(
                    append.stream_id, append.token, chunks[0].seq, now, generation
                )
            if known is None or not _consecutive(chunks):
                checked.append(place)
                continue
            keys = self._keys(append.stream_id)
            xadd, publish, size = fast_append_commands(
                append, keys, known.next_byte, sharded=self.cluster
            )
            plain.append(_Plain(place, known, xadd, publish, size))
        return plain, checked

    async def _send_appends(
        self,
        pipeliner: Pipeliner,
        appends: Sequence[Append],
        plain: list[_Plain],
        checked: list[int],
        outcomes: list[StreamState | BackendError | None],
    ) -> list[int]:
        """Send ``plain`` and ``checked`` appends in one pipeline and record the outcomes;
        returns the places of the plain appends Redis did not take."""
        sendable: list[PackedAppend] = []
        for place in checked:
            append = appends[place]
            self._known.forget(append.stream_id)
            keys = self._keys(append.stream_id)
            try:
                args = append_args(append, keys, sharded=self.cluster)
            except CorruptStreamError as exc:  # not sent: the chunks are not consecutive
                outcomes[place] = exc
                continue
            sendable.append(PackedAppend(place, append.stream_id, keys, args, len(append.chunks)))
        calls = script_calls(sendable, by_slot=self.cluster)
        commands = [
            command
            for entry in plain
            for command in (
                Command(entry.xadd, fence=entry.known.fence),
                Command(entry.publish, fence=entry.known.fence),
            )
        ]
        script = SCRIPTS["append_many"]
        commands += [Command(append_many_command(call), script) for call in calls]
        sent, fence = time.monotonic(), pipeliner.generation
        replies = await pipeliner.call_commands(commands)
        again: list[int] = []
        for index, entry in enumerate(plain):
            added, error = replies[2 * index]
            if error is None and added is not None:
                self._known.appended(entry.known, len(appends[entry.place].chunks), entry.size)
                outcomes[entry.place] = StreamState.ACTIVE
            else:  # sealed, missing, fenced out, or an id Redis refused: let the script say
                self._known.forget(appends[entry.place].stream_id)
                again.append(entry.place)
        places = [[(packed.place, packed.stream_id) for packed in call] for call in calls]

        def settle(place: int, reply: object) -> StreamState | None:
            return self._appended(appends[place], reply, sent, fence)

        _settle_each(places, replies[2 * len(plain) :], outcomes, settle)
        return again

    async def renew_many(
        self, renewals: Sequence[Renewal]
    ) -> list[StreamState | BackendError | None]:
        """Every renewal in one pipeline, several streams to a script call (of one hash
        slot each in a cluster, as in `append_many`); it may wait up to ``write_gather`` to
        share a pipeline."""
        pipeliner = self._open_pipeliner()
        streams = [self._keys(renewal.stream_id) for renewal in renewals]
        calls = renewal_calls(streams, by_slot=self.cluster)
        commands = []
        for call in calls:
            keys: list[str] = []
            args: list[str | bytes | int] = []
            for place in call:
                renewal = renewals[place]
                keys += streams[place].script_keys
                args += [
                    encode(renewal.token),
                    ms(renewal.times.lease),
                    ms(renewal.times.active),
                    repr(float(renewal.now)),
                ]
            commands.append((len(keys), *keys, *args))
        sent, fence = time.monotonic(), pipeliner.generation
        replies = await pipeliner.call_many(commands, script=SCRIPTS["renew_many"], deferrable=True)
        outcomes: list[StreamState | BackendError | None] = [None] * len(renewals)
        places = [[(place, renewals[place].stream_id) for place in call] for call in calls]

        def settle(place: int, reply: object) -> StreamState | None:
            renewal = renewals[place]
            return self._renewed(
                renewal.stream_id, renewal.token, renewal.times, reply, sent, fence
            )

        _settle_each(places, replies, outcomes, settle)
        return outcomes

    def _renewed(
        self,
        stream_id: str,
        token: str,
        times: StreamTimes,
        reply: object,
        sent: float,
        fence: int,
    ) -> StreamState | None:
        """The outcome of a renewal, known streams updated with it."""
        state = parse_state(stream_id, reply)
        if state is StreamState.ACTIVE:
            lifetime = _lifetime(times)
            self._known.checked(stream_id, token, sent=sent, lifetime=lifetime, fence=fence)
        else:
            self._known.forget(stream_id)
        return state

    async def renew_lease(
        self, stream_id: str, *, token: str, times: StreamTimes, now: float
    ) -> StreamState | None:
        """`Backend.renew_lease`; it may wait up to ``write_gather`` to share a pipeline."""
        args: list[str | bytes | int] = [
            encode(token),
            ms(times.lease),
            ms(times.active),
            repr(float(now)),
        ]
        sent, fence = time.monotonic(), self._open_pipeliner().generation
        reply = await self._run_script("renew", stream_id, args)
        return self._renewed(stream_id, token, times, reply, sent, fence)

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
            encode(error or ""),
            "0" if token is None else "1",
            encode(token or ""),
            "1" if only_if_lease_expired else "0",
            repr(float(now)),
            ms(times.retention),
            "1" if self.cluster else "0",
            keys.channel,
            keys.ends_channel,
            ended_payload(state),
        ]
        self._known.forget(stream_id)
        return parse_state(stream_id, await self._run_script("finish", stream_id, args, keys))

    async def pack_ended(self, stream_id: str, *, token: str, log: ChunkLog) -> bool:
        """`PacksEndedLogs.pack_ended`; it may wait up to ``write_gather`` to share a
        pipeline."""
        if not log:
            return False
        return bool(await self._run_script("pack", stream_id, pack_args(token, log)))

    # -- reads --

    async def status(self, stream_id: str) -> StreamStatus | None:
        """`Backend.status`: the meta, and for an active stream the counts of its log's
        last entry (appends need not write them to the meta), read in one pipeline."""
        pipeliner = self._open_pipeliner()
        keys = self._keys(stream_id)
        with translated(stream_id):
            meta, last = await pipeliner.call_many(_status_commands(keys))
            return _parsed_status(stream_id, meta, last)

    async def read(self, stream_id: str, *, after: int, limit: int) -> list[Chunk]:
        self._open_pipeliner()
        after = max(after, -1)
        read = _read_command(self._keys(stream_id), after, limit)
        if read is None:
            return []
        entries = await self._call(stream_id, *read)
        return parse_log(stream_id, entries, after, limit)

    async def look(
        self, stream_id: str, *, after: int, limit: int
    ) -> tuple[StreamStatus | None, list[Chunk]]:
        """`ReadsWithStatus.look`: the commands of `status` and `read` in one pipeline."""
        pipeliner = self._open_pipeliner()
        keys = self._keys(stream_id)
        after = max(after, -1)
        read = _read_command(keys, after, limit)
        commands = _status_commands(keys)
        if read is not None:
            commands.append(read)
        with translated(stream_id):
            replies = await pipeliner.call_many(commands)
            status = _parsed_status(stream_id, replies[0], replies[1])
            if read is None:
                return status, []
            entries, error = replies[2]
            if error is not None:
                raise error
        return status, parse_log(stream_id, entries, after, limit)

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
        listener = RedisListener(self._reader_buffer)
        await router.subscribe(channel, listener)
        try:
            yield listener
        finally:
            router.unsubscribe(channel, listener)


def _status_commands(keys: StreamKeys) -> list[tuple[Any, ...]]:
    """What `RedisBackend.status` reads: the meta, and the log's last entry."""
    return [("HGETALL", keys.meta), ("XREVRANGE", keys.log, "+", "-", "COUNT", 1)]


def _parsed_status(
    stream_id: str,
    meta: tuple[Any, BaseException | None],
    last: tuple[Any, BaseException | None],
) -> StreamStatus | None:
    """The status from the replies (each a reply and its error) to `_status_commands`; the
    meta's error is raised, the last entry's is read as a log that is not one."""
    raw, error = meta
    if error is not None:
        raise error
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        corrupt(stream_id, "metadata is not a hash")
    entry, log_error = last
    return parse_status(stream_id, raw, entry if log_error is None else log_error)


def _read_command(keys: StreamKeys, after: int, limit: int) -> tuple[Any, ...] | None:
    """The XRANGE of `RedisBackend.read` after seq ``after`` (at least -1); None: nothing
    to read."""
    if limit <= 0 or after >= 2**62:
        return None
    # An entry holds one chunk at least: ``limit`` entries hold ``limit`` chunks or all.
    return ("XRANGE", keys.log, log_entry_id(after + 1), "+", "COUNT", limit)


class _Plain(NamedTuple):
    """An append going as plain commands: its index in the batch, its stream as known
    here, its XADD and PUBLISH, and its size in bytes."""

    place: int
    known: Known
    xadd: tuple[Any, ...]
    publish: tuple[Any, ...]
    size: int


def _lifetime(times: StreamTimes) -> float:
    """How long a checked write keeps the stream's meta at least: the active TTL, and the
    lease's for good measure (see `_fastpath`)."""
    return min(times.lease, times.active)


def _consecutive(chunks: Sequence[Chunk]) -> bool:
    first = chunks[0].seq
    return all(chunk.seq == first + index for index, chunk in enumerate(chunks))


def _settle_each(
    places: list[list[tuple[int, str]]],
    replies: list[tuple[Any, BaseException | None]],
    outcomes: list[StreamState | BackendError | None],
    parse: Callable[[int, object], StreamState | None],
) -> None:
    """Each stream's outcome from the replies of script calls for several streams
    (``places``: each call's streams, as their index in ``outcomes`` and their id; ``parse``
    reads a stream's reply, given its index); a call's error, or a stream's error reply,
    becomes that stream's `BackendError`."""
    for call, (reply, error) in zip(places, replies, strict=True):
        if error is None and not (isinstance(reply, list) and len(reply) == len(call)):
            error = redis_errors.ResponseError(f"UNBROKEN_CORRUPT script replied {reply!r}")
        for position, (index, stream_id) in enumerate(call):
            try:
                with translated(stream_id):
                    if error is not None:
                        raise error
                    outcome = reply[position]
                    if isinstance(outcome, Exception):
                        raise outcome
                    outcomes[index] = parse(index, outcome)
            except BackendError as exc:
                outcomes[index] = exc
