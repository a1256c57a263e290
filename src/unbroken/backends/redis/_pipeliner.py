"""Commands to Redis: the Lua scripts, and the pipelines every caller of one backend shares."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.resources import files
from typing import Any, NamedTuple, cast

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from unbroken.exceptions import EngineClosedError

__all__ = ["DEFERRABLE_SCRIPTS", "SCRIPTS", "Command", "Fenced", "Pipeliner", "Script"]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script from this package's ``_lua/`` folder (after the shared prelude and the
    ``libraries`` it uses), run by its SHA1."""

    source: str
    sha: str

    @classmethod
    def load(cls, name: str, *libraries: str) -> Script:
        """Read ``_lua/<name>.lua`` with ``_lua/_prelude.lua`` and the libraries before it."""
        folder = files("unbroken.backends.redis").joinpath("_lua")
        parts = ["_prelude", *libraries, name]
        source = "\n".join(folder.joinpath(f"{part}.lua").read_text("utf-8") for part in parts)
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


SCRIPTS = {
    "claim": Script.load("claim"),
    "append": Script.load("append", "_append"),
    "append_many": Script.load("append_many", "_append"),
    "renew": Script.load("renew", "_renew"),
    "renew_many": Script.load("renew_many", "_renew"),
    "finish": Script.load("finish"),
    "pack": Script.load("pack"),
}
#: Writes that may wait to share a pipeline: nobody waits on them, and they carry no chunks
#: (chunks wait for company only in the engine's gathered appends).
DEFERRABLE_SCRIPTS = frozenset({"renew", "renew_many", "pack"})
_PIPELINES_IN_FLIGHT = 4  # at most this many connections carry this backend's commands


class Fenced(redis_errors.ConnectionError):
    """A fenced command was not sent: its connection generation had passed (see
    `Pipeliner.generation`)."""


class Command(NamedTuple):
    """One command of `Pipeliner.call_commands`: EVALSHA of ``script`` with ``args`` if a
    script is given, else ``args`` as they are. ``fence``: send it only on a connection of
    this generation (`Pipeliner.generation`), else it fails with `Fenced` unsent."""

    args: tuple[Any, ...]
    script: Script | None = None
    fence: int | None = None


class _Call:
    """One command waiting for its pipeline: the result, or the error, once settled.

    Commands of one `Pipeliner.call_commands` settle together, so only the last one has a
    ``done`` future to wake its caller: a bare future of the running loop (redis-py's
    asyncio client needs asyncio anyway), since an `anyio.Event` would look the running
    async library up on every creation.
    """

    __slots__ = ("args", "done", "error", "fence", "result", "script", "settled")

    def __init__(
        self,
        args: tuple[Any, ...],
        script: Script | None,
        fence: int | None = None,
        *,
        waited: bool = False,
    ) -> None:
        self.args = args
        self.script = script
        self.fence = fence
        self.done: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if waited else None
        )
        self.settled = False
        self.result: Any = None
        self.error: BaseException | None = None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Record the first outcome and wake the caller (unless it is gone: cancelled)."""
        if self.settled:
            return
        self.settled = True
        self.result, self.error = result, error
        done = self.done
        if done is not None and not done.done():
            done.set_result(None)


class Pipeliner:
    """Every command of the backend goes out in a pipeline shared by all concurrent callers.

    `_PIPELINES_IN_FLIGHT` sender tasks each send one pipeline at a time. A command someone
    waits on wakes an idle sender, which sends it with everything waiting by the time it
    runs; while every sender is busy, new commands gather and the next sender that is done
    takes them all. So many streams in one process share round trips, and the backend never
    uses more than `_PIPELINES_IN_FLIGHT` connections however many streams are written at once.

    A pipeline's cost to this process is mostly fixed (packing, the socket write, the wake-up
    for the reply), whatever it carries. Chunks wait for company in one layer only, the
    engine's gathered appends (`GatheredAppends.append_many`), so an append is sent like any
    other command. Only ``deferrable`` commands (lease renewals, which nobody waits on) wait
    up to ``gather`` seconds for company; any other command takes them along.
    """

    def __init__(self, client: Redis | RedisCluster, *, gather: float = 0.0) -> None:
        self._client = client
        self._gather = gather
        # Outside a cluster, pipelines go out on connections the pipeliner keeps (see
        # `_Connections`); a cluster's pipelines are redis-py's, which route by slot.
        self._connections = None if isinstance(client, RedisCluster) else _Connections(client)
        self._fenced = _FencedClusterSends(client) if isinstance(client, RedisCluster) else None
        self._queue: list[_Call] = []
        # The queue holds a command that leaves with the next pipeline (one someone waits
        # on, or deferrable ones that waited long enough).
        self._due = False
        # Idle senders, each waiting on its future (bare futures: one wait per pipeline).
        self._idle: list[asyncio.Future[None]] = []
        self._waking = False  # a sender was woken and has not taken the queue yet
        self._deferred = anyio.Event()  # a deferrable command is waiting: `run` times it
        self._stop = anyio.CancelScope()
        self._closed = False

    async def call(self, *args: Any, script: Script | None = None, deferrable: bool = False) -> Any:
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
        script: Script | None = None,
        deferrable: bool = False,
    ) -> list[tuple[Any, BaseException | None]]:
        """Run several commands in one pipeline (each EVALSHA if ``script``); each one's
        (reply, error). They settle together, so only the last one is awaited."""
        return await self.call_commands(
            [Command(args, script) for args in commands], deferrable=deferrable
        )

    @property
    def generation(self) -> int:
        """Counts the connections made so far (taken from the pool, connected again, or in
        a cluster first seen): a command fenced with the generation read now is sent only
        on a connection that was already connected now, so never to a server that was not
        there then (one restarted, or a replica promoted since)."""
        if self._connections is not None:
            return self._connections.generation
        assert self._fenced is not None
        return self._fenced.generation

    async def call_commands(
        self, commands: Sequence[Command], *, deferrable: bool = False
    ) -> list[tuple[Any, BaseException | None]]:
        """Run several commands, scripts or not, in one pipeline; each one's (reply, error).
        They settle together, so only the last one is awaited."""
        if self._closed:
            raise EngineClosedError("backend is closed")
        if not commands:
            return []
        last = len(commands) - 1
        calls = [
            _Call(
                args if script is None else ("EVALSHA", script.sha, *args),
                script,
                fence,
                waited=index == last,
            )
            for index, (args, script, fence) in enumerate(commands)
        ]
        self._queue += calls
        if deferrable:
            self._deferred.set()
        else:
            self._due = True
            self._wake_sender()
        # If the caller is cancelled the commands may still run, exactly as if they had been
        # sent directly and the replies were never read.
        done = calls[-1].done
        assert done is not None
        await done
        return [(call.result, call.error) for call in calls]

    def close(self) -> None:
        """Stop sending; every command still waiting fails with `EngineClosedError`."""
        self._closed = True
        self._stop.cancel()
        for call in self._queue:
            call.settle(error=EngineClosedError("backend is closed"))
        self._queue.clear()

    def _wake_sender(self) -> None:
        """Have an idle sender take the queue, unless one is about to (it takes all of it)."""
        if self._waking:
            return
        while self._idle:
            waiter = self._idle.pop()
            if not waiter.done():  # (done: its sender was cancelled, the backend closing)
                self._waking = True
                waiter.set_result(None)
                return

    async def run(self) -> None:
        """Run the senders, and send the deferrable commands once they waited ``gather``
        seconds for company, until `close`; then give the connections kept back to the
        client's pool."""
        try:
            with self._stop:
                async with anyio.create_task_group() as senders:
                    for _ in range(_PIPELINES_IN_FLIGHT):
                        senders.start_soon(self._sender)
                    while True:
                        await self._deferred.wait()
                        self._deferred = anyio.Event()
                        if self._gather:
                            # A command someone waits on takes them along meanwhile.
                            await anyio.sleep(self._gather)
                        if self._queue:
                            self._due = True
                            self._wake_sender()
        finally:
            if self._connections is not None:
                with anyio.CancelScope(shield=True):
                    await self._connections.release_all()

    async def _sender(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._due and self._queue:
                batch, self._queue, self._due = self._queue, [], False
                await self._send(batch)
                continue
            waiter = loop.create_future()
            self._idle.append(waiter)
            await waiter
            self._waking = False

    async def _send(self, batch: list[_Call]) -> None:
        try:
            results = await self._execute(batch)
            unknown = [
                index
                for index, (call, result) in enumerate(zip(batch, results, strict=True))
                if isinstance(result, redis_errors.NoScriptError) and call.script is not None
            ]
            if unknown:  # a new or flushed server: load the scripts, then run those again
                scripts = {batch[index].script for index in unknown}
                again = [batch[index] for index in unknown]
                if self._connections is None:  # a cluster: loaded on every master
                    for script in scripts:
                        assert script is not None
                        await self._client.script_load(script.source)
                    retried = await self._execute(again)
                else:  # on the same connection, in the same pipeline as the retries
                    loads = [_Call(("SCRIPT", "LOAD", s.source), None) for s in scripts if s]
                    retried = (await self._execute(loads + again))[len(loads) :]
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

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        """Each command's reply (a `redis.exceptions.ResponseError` for an error reply);
        raises for a connection that failed."""
        try:
            if self._connections is not None:
                return await self._connections.execute(
                    [call.args for call in batch], [call.fence for call in batch]
                )
            return await self._execute_pipeline(batch)
        except (AttributeError, TypeError, RuntimeError) as exc:
            # redis-py may write to a connection another task has just torn down (a node
            # lost in a failover, a peer reset) and trip over the closed stream or transport
            # (None attributes, uvloop's "handler is closed") instead of raising
            # ConnectionError. It is one: the caller treats it as such and retries.
            raise redis_errors.ConnectionError(f"connection lost while sending: {exc}") from exc

    async def _execute_pipeline(self, batch: list[_Call]) -> list[Any]:
        """A cluster's pipeline: redis-py's (routed by slot, following redirections and
        failovers) for the commands without a fence, and the fenced ones alongside."""
        assert self._fenced is not None
        fenced = [call for call in batch if call.fence is not None]
        if not fenced:
            return await self._execute_routed(batch)
        unfenced = [call for call in batch if call.fence is None]
        routed: list[Any] = []
        failed: list[Exception] = []
        fenced_results: list[Any] = []

        async def route() -> None:
            try:
                routed.extend(await self._execute_routed(unfenced))
            except Exception as exc:  # raised below as it is, not in an exception group
                failed.append(exc)

        async with anyio.create_task_group() as both:
            if unfenced:
                both.start_soon(route)
            fenced_results.extend(await self._fenced.execute(fenced))
        if failed:
            raise failed[0]
        replies, fenced_replies = iter(routed), iter(fenced_results)
        return [next(fenced_replies if call.fence is not None else replies) for call in batch]

    async def _execute_routed(self, batch: list[_Call]) -> list[Any]:
        pipeline: Any = self._client.pipeline(transaction=False)
        for call in batch:
            pipeline.execute_command(*call.args)
        results: list[Any] = await pipeline.execute(raise_on_error=False)
        return results


class _FencedClusterSends:
    """Fenced commands in a cluster, each sent to its slot's primary on one of that node's
    connections, as they are: no redirection followed, no retry (a command that fails is
    the caller's to send otherwise).

    redis-py connects a cluster's connections inside its pipelines, so connects are
    counted here by a callback on every connection this has seen, and a connection not seen
    yet counts as a new one.
    """

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self.generation = 0  # see `Pipeliner.generation`
        self._seen: weakref.WeakSet[Any] = weakref.WeakSet()

    def _connected(self, _connection: Any) -> None:
        self.generation += 1

    async def execute(self, calls: list[_Call]) -> list[Any]:
        """Each call's reply, or its error (`Fenced` if not sent)."""
        results: list[Any] = [None] * len(calls)
        nodes: dict[str, tuple[Any, list[int]]] = {}
        manager: Any = self._client.nodes_manager
        for index, call in enumerate(calls):
            try:
                node = manager.get_node_from_slot(self._client.keyslot(call.args[1]))
            except Exception as exc:  # the slot has no known primary right now
                results[index] = redis_errors.ConnectionError(f"no node for the slot: {exc}")
                continue
            nodes.setdefault(node.name, (node, []))[1].append(index)
        async with anyio.create_task_group() as sends:
            for node, indexes in nodes.values():
                sends.start_soon(self._send_to, node, indexes, calls, results)
        return results

    async def _send_to(
        self, node: Any, indexes: list[int], calls: list[_Call], results: list[Any]
    ) -> None:
        try:
            connection = node.acquire_connection()
        except Exception as exc:  # all the node's connections are busy
            for index in indexes:
                results[index] = redis_errors.ConnectionError(f"no connection: {exc}")
            return
        try:
            await node.disconnect_if_needed(connection)
            if connection not in self._seen:
                self._seen.add(connection)
                connection.register_connect_callback(self._connected)
                self.generation += 1
            elif not connection.is_connected:
                self.generation += 1  # whoever connects it next: not for what was fenced
            sendable = []
            for index in indexes:
                if calls[index].fence == self.generation and connection.is_connected:
                    sendable.append(index)
                else:
                    results[index] = _fenced()
            if sendable:
                commands = [calls[index].args for index in sendable]
                await connection.send_packed_command(connection.pack_commands(commands))
                for index in sendable:
                    try:
                        results[index] = await node.parse_response(connection, calls[index].args[0])
                    except redis_errors.ResponseError as exc:  # MOVED too: the slot moved
                        results[index] = exc
        except Exception as exc:  # the connection failed: give up what it did not answer
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await connection.disconnect()
            for index in indexes:
                if results[index] is None:
                    results[index] = redis_errors.ConnectionError(str(exc))
        finally:
            node.release(connection)


def _fenced() -> Fenced:
    return Fenced("not sent: connected again since the command was fenced")


def _pack_python(args: tuple[Any, ...]) -> bytes:
    """One command in the Redis protocol (RESP), for str (UTF-8), bytes and int arguments:
    what hiredis's packer does, where hiredis is missing."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


#: Packs one command: hiredis's packer (C) where installed.
_pack: Callable[[tuple[Any, ...]], bytes]
try:
    from hiredis import pack_command
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    _pack = _pack_python
else:
    _pack = cast(Callable[[tuple[Any, ...]], bytes], pack_command)


#: Commands whose replies are returned as Redis sent them, without the client's response
#: callback: the backend's codec reads stream entries from the reply as it is, and
#: redis-py's stream callback would build a dict per entry first (one per chunk a
#: catch-up reads).
_AS_SENT = frozenset({"XRANGE", "XREVRANGE"})


class _Connections:
    """Pipelines on connections of a (non-cluster) client's pool that the pipeliner keeps
    between pipelines, each pipeline packed in one go and written at once.

    What a redis-py pipeline does per pipeline besides the socket I/O (taking a connection
    from the pool and checking it, packing each argument into a buffer copied again for the
    next one, the retry and observability wrappers, giving the connection back) costs more
    than what one gathered append carries, so it is done here once per connection instead:
    a connection is taken from the pool when all those kept are busy (at most one per
    pipeline in flight), kept while it works, given back when it fails (disconnected, so it
    reconnects when next used) and when the backend closes. Replies are read with the
    client's own parsing (its response callbacks, its decoding), so a command answers
    exactly what the client would have answered, except the stream reads (`_AS_SENT`),
    which answer as Redis sent them; the client's retry policy applies to a
    pipeline whose connection failed, as for redis-py's pipelines.
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        # Idle kept connections (connected, or to reconnect), each with its socket timeout.
        self._idle: list[tuple[Any, float | None]] = []
        self._pack: Callable[[tuple[Any, ...]], bytes] | None = None
        self.generation = 0  # see `Pipeliner.generation`

    async def execute(self, commands: list[tuple[Any, ...]], fences: list[int | None]) -> list[Any]:
        """Each command's reply; a fenced one (its ``fences`` entry not None) is sent only
        on a connection of that generation, else its reply is a `Fenced` error."""
        pool: Any = self._client.connection_pool
        if self._idle:
            connection, timeout = self._idle.pop()
        else:
            # Counted before it is taken: what was fenced before cannot go on it.
            self.generation += 1
            connection = await pool.get_connection()
            # One deadline per pipeline (`_round_trip`) instead of redis-py's per write (a
            # task for each, on Python < 3.12) and per reply: the connection's own timeout
            # is off while it is kept, and given back with it.
            timeout, connection.socket_timeout = connection.socket_timeout, None
        kept = False
        try:
            replies: list[Any] = await connection.retry.call_with_retry(
                partial(self._round_trip, connection, timeout, commands, fences),
                lambda _error: connection.disconnect(),
            )
            kept = True
            return replies
        finally:
            if kept:
                self._idle.append((connection, timeout))
            else:
                # Failed or cancelled midway, perhaps with replies unread: never reused
                # as it is (the pool reconnects it before handing it out again).
                with anyio.CancelScope(shield=True):
                    await connection.disconnect(nowait=True)
                    await self._give_back(connection, timeout)

    def _packed(
        self, connection: Any, commands: list[tuple[Any, ...]], fences: list[int | None]
    ) -> tuple[bytes, list[Any]]:
        """Every command packed (one error in ``results`` in place of a command that cannot
        be, or is fenced out, which is then not sent), and ``results`` with a None per
        command sent."""
        pack = self._pack or self._packer(connection.encoder)
        parts: list[bytes] = []
        results: list[Any] = []
        for args, fence in zip(commands, fences, strict=True):
            if fence is not None and fence != self.generation:
                results.append(_fenced())
                continue
            try:
                parts.append(pack(args))
            except (TypeError, ValueError, redis_errors.DataError) as exc:
                results.append(redis_errors.DataError(f"cannot send {args[0]!r}: {exc}"))
            else:
                results.append(None)
        return b"".join(parts), results

    def _packer(self, encoder: Any) -> Callable[[tuple[Any, ...]], bytes]:
        """The packer for this client: `_pack` when the client encodes text as strict UTF-8,
        as `_pack` does; else the client's encoder first, then `_pack`."""
        name = str(encoder.encoding).lower().replace("-", "").replace("_", "")
        if name == "utf8" and encoder.encoding_errors == "strict":
            self._pack = _pack
        else:

            def encoded(args: tuple[Any, ...]) -> bytes:
                return _pack(tuple(encoder.encode(a) if isinstance(a, str) else a for a in args))

            self._pack = encoded
        return self._pack

    async def _round_trip(
        self,
        connection: Any,
        socket_timeout: float | None,
        commands: list[tuple[Any, ...]],
        fences: list[int | None],
    ) -> list[Any]:
        """Send the pipeline and read its replies within the connection's socket timeout
        (redis-py disconnects a connection whose write or read is cut short). A retry comes
        here again after a reconnect, which fences out the fenced commands."""
        try:
            # asyncio's own timeout: the pipeliner runs on asyncio only (its futures), and an
            # anyio cancel scope per round trip costs more than the packing of its commands.
            async with asyncio.timeout(socket_timeout or None):
                if not connection.is_connected:
                    self.generation += 1  # before: nothing fenced earlier goes on it
                    await connection.connect()
                packed, unsent = self._packed(connection, commands, fences)
                if not packed:
                    return unsent
                await connection.send_packed_command(packed)
                parse, callbacks = self._client.parse_response, self._client.response_callbacks
                results = list(unsent)
                for index, args in enumerate(commands):
                    if unsent[index] is not None:
                        continue
                    try:
                        # Without a callback the client's parsing is this read (most of the
                        # commands sent: XADD, PUBLISH, EVALSHA), minus a layer of calls.
                        if args[0] in _AS_SENT or args[0] not in callbacks:
                            results[index] = await connection.read_response()
                        else:
                            results[index] = await parse(connection, args[0])
                    except redis_errors.ResponseError as exc:
                        results[index] = exc
                return results
        except TimeoutError:
            raise redis_errors.TimeoutError(f"no reply from redis in {socket_timeout} s") from None

    async def release_all(self) -> None:
        """Give every kept connection back to the client's pool."""
        idle, self._idle = self._idle, []
        for connection, socket_timeout in idle:
            await self._give_back(connection, socket_timeout)

    async def _give_back(self, connection: Any, socket_timeout: float | None) -> None:
        connection.socket_timeout = socket_timeout
        pool: Any = self._client.connection_pool
        with contextlib.suppress(Exception):  # a closed pool: nothing to give back to
            await pool.release(connection)
