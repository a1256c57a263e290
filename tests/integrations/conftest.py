"""Fixtures for the integration tests: real uvicorn servers on real sockets.

- ``serve(app)``: an ASGI app under uvicorn in a thread, on a free port; yields its URL.
- ``start_worker(env)``: the router test app (``tests/integrations/_app.py``) as a uvicorn
  process of its own, so two of them are two workers sharing only Redis.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._services import serve_asgi, uvicorn_process
from tests.conformance._node import NodeToolchain, NodeUnavailable, find_toolchain

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread until the block ends; yields its base URL."""
    with serve_asgi(app) as (url, _):
        yield url


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
        url, process = logs.enter_context(
            uvicorn_process("tests.integrations._app:app", {**env, "ROUTER_TEST_APP": "1"})
        )
        worker = Worker(url, process)
        started.append(worker)
        return worker

    with logs:  # stops every worker started
        yield start


@pytest.fixture(scope="session")
def node_toolchain() -> NodeToolchain:
    """Node.js and npm for the real AI SDK clients (skips, saying why, without them)."""
    try:
        return find_toolchain()
    except NodeUnavailable as exc:
        pytest.skip(str(exc))
