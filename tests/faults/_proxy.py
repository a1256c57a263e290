"""A TCP fault proxy on loopback, between chat workers and a Redis server: the network faults
the kernel's netem would give, which these machines do not have.

`FaultProxy` listens on 127.0.0.1:<free port> and forwards every connection to a target
port. On command it adds latency to what the clients send (each command then reaches the
server that much later; its reply comes back at once), stalls every connection (data is
held, as on a network that drops packets, and delivered once resumed), cuts every
connection, or refuses new ones. It runs its own event loop in a thread, so its timing does
not depend on what the test's loop is doing; every method is safe to call from the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests._services import free_port

__all__ = ["FaultProxy", "fault_proxy"]

_READ_SIZE = 65536


class _Link:
    """One proxied connection: two pumps, each holding data until its due time."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        """Copy ``reader`` to ``writer``; ``delayed``: each piece ``latency`` after arrival."""
        try:
            while data := await reader.read(_READ_SIZE):
                due = time.monotonic() + (self.proxy.latency if delayed else 0.0)
                while True:
                    wait = max(due - time.monotonic(), 0.0)
                    if self.proxy.stalled.is_set():
                        await self.proxy.running.wait()
                    elif wait > 0:
                        await asyncio.sleep(wait)
                    else:
                        break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; see the module docstring."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.latency = 0.0  # seconds added to every piece of data a client sends
        self.connections = 0  # accepted so far
        self._refusing = False
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.stalled = asyncio.Event()  # set while stalled (only touched in the loop)
        self.running = asyncio.Event()  # set while not stalled

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._thread.start()
        self._run(self._start())

    async def _start(self) -> None:
        self.running.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    def stall(self) -> None:
        """Hold every byte in both directions (new connections too) until `resume`."""
        self._run(self._set_stalled(True))

    def resume(self) -> None:
        self._run(self._set_stalled(False))

    async def _set_stalled(self, stalled: bool) -> None:
        if stalled:
            self.running.clear()
            self.stalled.set()
        else:
            self.stalled.clear()
            self.running.set()

    def cut(self) -> None:
        """Close every open connection now (both ends see it closed)."""
        self._run(self._cut())

    async def _cut(self) -> None:
        for link in list(self._links):
            link.close()

    def refuse(self, refusing: bool = True) -> None:
        """Close new connections at once (``False``: accept them again)."""
        self._refusing = refusing

    @contextmanager
    def partition(self) -> Iterator[None]:
        """Cut off: open connections closed, new ones refused, until the block ends."""
        self.refuse(True)
        self.cut()
        try:
            yield
        finally:
            self.refuse(False)

    def close(self) -> None:
        if self._thread.is_alive():
            self._run(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        tasks = [task for link in self._links for task in link.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self, coro: object) -> None:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        future.result(timeout=10)

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        if self._refusing:
            client.close()
            return
        try:
            server_reader, server = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client.close()
            return
        link = _Link(self)
        link.writers = [client, server]
        self._links.add(link)
        link.tasks = [
            asyncio.ensure_future(link.pump(client_reader, server, delayed=True)),
            asyncio.ensure_future(link.pump(server_reader, client, delayed=False)),
        ]
        try:
            await asyncio.gather(*link.tasks)
        finally:
            self._links.discard(link)
            for writer in link.writers:
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


@contextmanager
def fault_proxy(target: int) -> Iterator[FaultProxy]:
    """A running `FaultProxy` to ``target``, closed afterwards."""
    proxy = FaultProxy(target)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
