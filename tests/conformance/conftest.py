"""Fixtures for the AI SDK conformance tests: Node.js, the npm clients, a real server.

The server is the example app (``examples/ai_sdk_app.py``) under a real uvicorn on a free
loopback port, with a fast fake model. ``UNBROKEN_CONFORMANCE_URL=http://host:port`` runs the
same tests against a server started by hand instead: it must serve the example's routes and
answer (``EXAMPLE_WORDS=24``, any delay from about 10 ms per event).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._services import free_port, port_answers
from tests.conformance._expected import EXAMPLE_WORDS
from tests.conformance._node import (
    CLIENT_FOLDERS,
    NodeToolchain,
    NodeUnavailable,
    find_toolchain,
)

REPO = Path(__file__).resolve().parents[2]

#: Per-chunk delay of the example's fake model in the conformance runs: slow enough that a
#: cut, a reload or a second reader reliably lands mid-answer, fast enough for a short run.
MODEL_DELAY_SECONDS = "0.015"


@pytest.fixture(scope="session")
def node_toolchain() -> NodeToolchain:
    try:
        return find_toolchain()
    except NodeUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def npm_clients(node_toolchain: NodeToolchain) -> dict[str, Path]:
    """Every client folder, installed from its lock file (once per session, when stale)."""
    try:
        return node_toolchain.install(CLIENT_FOLDERS)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not install the AI SDK npm clients: {exc}")


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """Base URL of a real server running the AI SDK example app."""
    external = os.environ.get("UNBROKEN_CONFORMANCE_URL")
    if external:
        yield external.rstrip("/")
        return
    port = free_port()
    env = {
        **os.environ,
        "UNBROKEN_EXAMPLE_DELAY": MODEL_DELAY_SECONDS,
        "EXAMPLE_WORDS": str(EXAMPLE_WORDS),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.ai_sdk_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not port_answers("127.0.0.1", port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    pytest.fail(f"the example app did not start on port {port}:\n{output}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
