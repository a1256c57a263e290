"""Live notifications: one pub/sub connection per backend, shared by all its listeners.

A router task (in the backend's task group) reads the connection and hands each message to
per-listener bounded queues. When that connection drops, the router reconnects with backoff,
subscribes again, and tells every listener `Lagged` (re-read the log), so a Redis restart
costs latency, never data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from unbroken.backends._listener import QueueListener
from unbroken.backends.base import Lagged, Notification
from unbroken.backends.redis._codec import parse_notification, text
from unbroken.exceptions import BackendUnavailableError, EngineClosedError

__all__ = ["HAS_SHARDED_PUBSUB", "RedisListener", "Router"]

# Sharded pub/sub in redis.asyncio (and its ClusterPubSub) arrived in redis-py 8.0; the rest
# of the backend works with redis-py >= 5.0.1.
HAS_SHARDED_PUBSUB = hasattr(PubSub, "ssubscribe")
_NODE_RETRY = 0.005  # how soon a node reader looks again at a connection being made
_MESSAGE_KINDS = (b"message", "message")  # a notification's reply, bytes or decoded

logger = logging.getLogger("unbroken.redis")

_SUBSCRIBE_TIMEOUT = 10.0  # how long listen() waits for Redis to confirm a subscription
_RECONNECT_MIN, _RECONNECT_MAX = 0.05, 2.0  # backoff of the pub/sub connection, seconds
_POLL = 1.0  # how often the router checks the pub/sub connection's health
_PING_AFTER = 10.0  # ping the pub/sub connection after this much silence ...
_DEAD_AFTER = 30.0  # ... and give it up after this much (a half-open TCP connection)
_STABLE = 10.0  # a pub/sub connection that lived this long resets the reconnect backoff

# The pub/sub connection must not reconnect on its own: redis-py would resubscribe silently
# and notifications published meanwhile would vanish without the `Lagged` that makes
# listeners re-read the log. The router reconnects instead, and says so.
_NO_RETRY = Retry(NoBackoff(), 0)


class RedisListener(QueueListener):
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
        self.listeners: set[RedisListener] = set()
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
    async def open(cls, client: Redis | RedisCluster, *, sharded: bool) -> _Link:
        """A new pub/sub connection of ``client``, set up to never reconnect on its own."""
        if isinstance(client, RedisCluster):
            # ClusterPubSub picks node connections per channel lazily, on SSUBSCRIBE, from
            # the slot map, which needs the client initialised (a no-op once it is).
            await client.initialize()
            return cls(client.pubsub(), sharded=True, cluster=True)
        link = cls(client.pubsub(push_handler_func=_as_is), sharded=sharded)
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
        """Close the connection, giving a caller-owned pool's connection its settings back."""
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
        """Have the writer task send ``op`` (for ``channel``), after those requested before."""
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
        the router's blocked read). The reads themselves carry no timeout, because a timeout
        per message would arm and cancel a timer for every notification a reader gets."""
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

    async def get_message(self) -> tuple[str, object, object] | None:
        """The next message as (kind, channel, data), waiting as long as it takes; None for
        a reply that is not one."""
        message: Any
        if self.cluster:
            message = await self._inbox.receive()
            self.last_seen = time.monotonic()
        else:
            reply = await self.pubsub.parse_response(block=True)
            self.last_seen = time.monotonic()
            # Notifications, the replies that come by the thousand, go straight to the
            # router: redis-py's handle_message would build a dict, look for a handler and
            # record metrics for each. Every other reply goes through it, which keeps the
            # pub/sub object's own account of its subscriptions.
            if isinstance(reply, list) and len(reply) == 3 and reply[0] in _MESSAGE_KINDS:
                return "message", reply[1], reply[2]
            message = await self.pubsub.handle_message(reply)
        if not isinstance(message, dict):
            return None
        return text(message.get("type")), message.get("channel"), message.get("data")

    def _start_node_readers(self) -> None:
        assert self._tasks is not None
        for name in self.pubsub.node_pubsub_mapping:
            if name not in self._node_readers:
                node = self.pubsub.cluster.get_node(node_name=name)
                self._node_readers.add(name)
                self._tasks.start_soon(self._read_node, name, node)

    async def _read_node(self, name: str, node: Any) -> None:
        """Forward one node's messages until ClusterPubSub drops that node's connection
        (it does once its last channel there is unsubscribed).

        Each read waits as long as it takes (``timeout=None``): from redis-py 8.2 a read
        with a timeout holds the node connection's lock for that long, and the writer
        task's SSUBSCRIBE on that node would wait for it, one channel after another."""
        mapping = self.pubsub.node_pubsub_mapping
        try:
            while (current := mapping.get(name)) is not None:
                if current.connection is None:
                    # ClusterPubSub dropped this node's last channel and is subscribing a new
                    # one from the writer task: its new connection is on its way.
                    await anyio.sleep(_NODE_RETRY)
                    continue
                message = await self.pubsub.get_sharded_message(timeout=None, target_node=node)
                if message is not None:
                    await self._inbox_in.send(message)
        finally:
            self._node_readers.discard(name)


async def _as_is(reply: object) -> object:
    """The pub/sub connection's handler of RESP3 pushes: the reply itself (redis-py's own
    would format every notification into a debug message, logged or not)."""
    return reply


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


class Router:
    """Routes one pub/sub connection's messages to this process's listeners.

    Invariants: at most one SUBSCRIBE per channel is awaiting confirmation, and UNSUBSCRIBE is
    only sent for a live subscription, so every confirmation can be attributed; a channel is
    live only once Redis confirmed it on the current connection.
    """

    def __init__(self, client: Redis | RedisCluster, *, sharded: bool) -> None:
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

    async def subscribe(self, channel: str, listener: RedisListener) -> None:
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

    def unsubscribe(self, channel: str, listener: RedisListener) -> None:
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
                    self._route(*message)

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

    def _route(self, kind: str, channel: object, data: object) -> None:
        try:
            if kind in ("message", "smessage"):
                self._deliver(text(channel), data)
            elif kind in ("subscribe", "ssubscribe"):
                self._confirmed(text(channel))
        except Exception:  # the router must outlive anything Redis can send
            logger.warning(
                "dropped an unreadable pub/sub message: %r", (kind, channel, data), exc_info=True
            )

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
            note = parse_notification(data)
        except (ValueError, TypeError) as exc:
            # Not ours or not readable: the log is the truth, so have the listeners re-read.
            logger.warning(
                "malformed notification on %r (%s); listeners re-read the log", channel, exc
            )
            note = Lagged()
        for listener in entry.listeners:
            listener.push(note)
