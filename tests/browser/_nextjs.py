"""Build and run the Next.js example (examples/nextjs) in front of a real `unbroken chat`.

- `build_example`: ``npm ci`` when ``node_modules`` does not match the lock file (and this
  Node.js and platform), ``next build`` when ``.next`` was not built from exactly these
  sources. Both stamps live inside the git-ignored folders they describe, so a checkout
  pays the build once and every later run of its tests reuses it; any change to the lock
  file, a source file or the Node.js version rebuilds.
- `NextApp`: ``npm start`` (the README's command) on a loopback port, pointed at a service
  through ``UNBROKEN_URL``.
- `TwoWorkerService`: ``unbroken chat --workers 2`` sharing streams through Redis.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests._services import free_port
from tests.browser.conftest import REPO, ChatServer

EXAMPLE = REPO / "examples" / "nextjs"
MIN_NODE = (20, 9)  # what Next.js 16 needs
#: What the build is made from; anything else in the folder does not change it.
SOURCES = ("app", "components", "lib", "next.config.ts", "tsconfig.json", "package.json")
_INSTALL_STAMP = ".unbroken-install-sha256"
_BUILD_STAMP = ".unbroken-build-sha256"
_NODE_ENV = {"NEXT_TELEMETRY_DISABLED": "1", "NO_UPDATE_NOTIFIER": "1"}


class NodeUnavailable(Exception):
    """Node.js or npm is missing or too old; the message says what to install."""


@dataclass(frozen=True)
class Toolchain:
    node: str
    npm: str
    version: str


@dataclass(frozen=True)
class BuildReport:
    """What `build_example` had to do, and how long each step took (seconds; 0 = reused)."""

    install_seconds: float
    build_seconds: float


def find_toolchain() -> Toolchain:
    """The machine's node and npm, or `NodeUnavailable` saying what is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        raise NodeUnavailable(
            f"{missing} not found on PATH: install Node.js >= 20.9 with npm to run the "
            "Next.js example's tests"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    if (major, minor) < MIN_NODE:
        raise NodeUnavailable(f"node {version} is too old: Next.js 16 needs Node.js >= 20.9")
    return Toolchain(node, npm, version)


def _digest(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(len(part).to_bytes(8, "big"))
        sha.update(part)
    return sha.hexdigest()


def install_key(toolchain: Toolchain) -> str:
    """The lock file, and what native packages depend on (Node.js version, OS, CPU)."""
    machine = f"{toolchain.version} {platform.system()} {platform.machine()}".encode()
    return _digest((EXAMPLE / "package-lock.json").read_bytes(), machine)


def build_key(toolchain: Toolchain) -> str:
    """`install_key` plus every source file's path and content."""
    parts = [install_key(toolchain).encode()]
    for name in SOURCES:
        root = EXAMPLE / name
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            parts += [str(path.relative_to(EXAMPLE)).encode(), path.read_bytes()]
    return _digest(*parts)


def _run(command: list[str], what: str, timeout: float) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        command,
        cwd=EXAMPLE,
        env={**os.environ, **_NODE_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed in {EXAMPLE}:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return time.monotonic() - started


def build_example(toolchain: Toolchain) -> BuildReport:
    """Install and build the example unless its stamps say this exact build is there."""
    install_stamp = EXAMPLE / "node_modules" / _INSTALL_STAMP
    build_stamp = EXAMPLE / ".next" / _BUILD_STAMP
    installed = install_key(toolchain)
    install_seconds = build_seconds = 0.0
    if not install_stamp.exists() or install_stamp.read_text() != installed:
        build_stamp.unlink(missing_ok=True)  # a build is only as good as its node_modules
        install_seconds = _run(
            [toolchain.npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], "npm ci", 600
        )
        install_stamp.write_text(installed)
    built = build_key(toolchain)
    if not build_stamp.exists() or build_stamp.read_text() != built:
        build_stamp.unlink(missing_ok=True)  # no stamp on a half-finished build
        build_seconds = _run([toolchain.npm, "run", "build"], "next build", 600)
        build_stamp.write_text(built)
    return BuildReport(install_seconds, build_seconds)


@dataclass
class NextApp:
    """``npm start`` of the built example on a loopback port, forwarding to ``service_url``."""

    toolchain: Toolchain
    service_url: str
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process (it needs no service to start: `wait_ready` after)."""
        env = {
            **os.environ,
            **_NODE_ENV,
            "UNBROKEN_URL": self.service_url,
            "PORT": str(self.port),
        }
        with self.log.open("wb") as out:
            # The README's `npm start`, bound to loopback; its own process group, so stopping
            # it stops npm's child (next) too.
            self.proc = subprocess.Popen(
                [self.toolchain.npm, "start", "--", "--hostname", "127.0.0.1"],
                cwd=EXAMPLE,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"next start exited:\n{self.log.read_text()}")
            try:
                # Any HTTP answer means it serves (a chat page asks nothing of the service).
                with urllib.request.urlopen(f"{self.url}/chat/ready", timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"next start did not answer:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to the process group (npm and next), SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class TwoWorkerService(ChatServer):
    """``unbroken chat --workers 2``: needs ``REDIS_URL`` in its environment."""

    def command(self) -> list[str]:
        return [*super().command(), "--workers", "2"]
