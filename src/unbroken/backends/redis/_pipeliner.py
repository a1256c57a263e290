"""Commands to Redis: the Lua scripts, and the pipelines every caller of one backend shares."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from unbroken.exceptions import EngineClosedError

__all__ = ["DEFERRABLE_SCRIPTS", "SCRIPTS", "Pipeliner", "Script"]


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


class _Call:
    """One command waiting for its pipeline: the result, or the error, once ``done``.

    ``done`` is a bare future of the running loop (redis-py's asyncio client needs asyncio
    anyway): one is made per command, and an `anyio.Event` would look the running async
    library up on every creation.
    """

    __slots__ = ("args", "done", "error", "result", "script")

    def __init__(self, args: tuple[Any, ...], script: Script | None) -> None:
        self.args = args
        self.script = script
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.result: Any = None
        self.error: BaseException | None = None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome and wake the caller (unless it is gone: it was cancelled)."""
        if not self.done.done():
            self.result, self.error = result, error
            self.done.set_result(None)


class Pipeliner:
    """Every command of the backend goes out in a pipeline shared by all concurrent callers.

    Idle, a command is sent at once, in a pipeline started from its caller's task when a
    connection is free; while pipelines are in flight, new commands gather and leave together
    in the next one. So many streams in one process share round trips, and the backend never
    uses more than `_PIPELINES_IN_FLIGHT` connections however many streams are written at once.

    A pipeline's cost to this process is mostly fixed (redis-py's pipeline, the socket write,
    the wake-up for the reply), whatever it carries. Chunks wait for company in one layer
    only, the engine's gathered appends (`GatheredAppends.append_many`), so an append is sent
    like any other command. Only ``deferrable`` commands (lease renewals, which nobody waits
    on) wait up to ``gather`` seconds for company; any other command takes them along.
    """

    def __init__(self, client: Redis | RedisCluster, *, gather: float = 0.0) -> None:
        self._client = client
        self._gather = gather
        self._queue: list[_Call] = []
        self._wakeup = anyio.Event()  # a command is waiting
        self._urgent = anyio.Event()  # ... and one that must not wait
        self._slots = anyio.Semaphore(_PIPELINES_IN_FLIGHT)
        self._senders: TaskGroup | None = None  # run's task group, for `_send_now`
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
        """Stop sending; every command still waiting fails with `EngineClosedError`."""
        self._closed = True
        self._stop.cancel()
        for call in self._queue:
            call.settle(error=EngineClosedError("backend is closed"))
        self._queue.clear()

    def _send_now(self) -> bool:
        """Send everything waiting (in order) in a pipeline started from the caller's task,
        if a connection is free: the command then leaves without waking `run` first, one
        task switch sooner (a resume's status and first page, a claim, an append)."""
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
        """Send what gathers while every connection is busy, and the deferrable commands,
        until `close`."""
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
        try:
            results: list[Any] = await pipeline.execute(raise_on_error=False)
        except (AttributeError, TypeError, RuntimeError) as exc:
            # redis-py may write to a connection another task has just torn down (a node
            # lost in a failover, a peer reset) and trip over the closed stream or transport
            # (None attributes, uvloop's "handler is closed") instead of raising
            # ConnectionError. It is one: the caller treats it as such and retries.
            raise redis_errors.ConnectionError(f"connection lost while sending: {exc}") from exc
        return results
