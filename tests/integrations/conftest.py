"""Fixtures for the integration tests: real uvicorn servers on real sockets.

- ``serve(app)``: an ASGI app under uvicorn in a thread, on a free port; yields its URL.
- ``start_worker(env)``: the router test app (``tests/integrations/_app.py``) as a uvicorn
  process of its own, so two of them are two workers sharing only Redis.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests._services import free_port, port_answers
from tests.conformance._node import NodeToolchain, NodeUnavailable, find_toolchain

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread until the block ends; yields its base URL."""
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
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@dataclass
class Worker:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def start_worker() -> Iterator[Callable[[dict[str, str]], Worker]]:
    """``start_worker(env)`` -> the router test app running in a uvicorn process."""
    started: list[Worker] = []
    logs = ExitStack()

    def start(env: dict[str, str]) -> Worker:
        port = free_port()
        log = logs.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - closed by logs
        full_env = {
            **os.environ,
            **env,
            "ROUTER_TEST_APP": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.integrations._app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        worker = Worker(f"http://127.0.0.1:{port}", process)
        started.append(worker)
        deadline = time.monotonic() + 30
        while not port_answers("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the worker did not start:\n{log.read().decode(errors='replace')}")
            time.sleep(0.05)
        return worker

    with logs:
        yield start
        for worker in started:
            if worker.process.poll() is None:
                worker.process.terminate()
                try:
                    worker.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait()


@pytest.fixture(scope="session")
def node_toolchain() -> NodeToolchain:
    """Node.js and npm for the real AI SDK clients (skips, saying why, without them)."""
    try:
        return find_toolchain()
    except NodeUnavailable as exc:
        pytest.skip(str(exc))
