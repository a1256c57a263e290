"""Run the real AI SDK npm clients from pytest.

Each folder next to this file (``ai4``, ``ai5``, ``ai5_0_0``, ``ai6``, ``ai7``) pins one set of
client packages in a committed ``package.json`` + ``package-lock.json`` and re-exports them in
``clients.mjs``. The scripts in ``common/`` load a folder's clients, drive them against a
server and print one JSON line on stdout (see ``common/util.mjs``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COMMON = HERE / "common"

#: Every client folder, and what it pins (the folder's package.json says it exactly).
CLIENT_FOLDERS: tuple[str, ...] = ("ai4", "ai5", "ai5_0_0", "ai6", "ai7")
#: The folders with a v5+ `useChat`/`Chat` (@ai-sdk/react ≥ 2).
UI_MESSAGE_STREAM_REACT: tuple[str, ...] = ("ai5", "ai6", "ai7")
#: The folders with a v5+ transport (every UI message stream client, strictest first).
UI_MESSAGE_STREAM_CLIENTS: tuple[str, ...] = ("ai5_0_0", "ai5", "ai6", "ai7")

MIN_NODE_MAJOR = 20
_STAMP = ".unbroken-lock-sha256"


class NodeUnavailable(Exception):
    """Node.js or npm is missing or too old; the message says what to install."""


class NodeScriptError(AssertionError):
    """A conformance script failed: its JSON error report and its stderr are in the message."""


@dataclass(frozen=True)
class NodeToolchain:
    node: str
    npm: str
    version: str

    def install(self, folders: Iterable[str]) -> dict[str, Path]:
        """``npm ci`` each folder whose node_modules does not match its lock file (in parallel)."""
        paths = {name: HERE / name for name in folders}
        stale = [path for path in paths.values() if not _installed(path)]
        with ThreadPoolExecutor(max_workers=max(1, len(stale))) as pool:
            for error in pool.map(self._npm_ci, stale):
                if error:
                    raise RuntimeError(error)
        return paths

    def _npm_ci(self, folder: Path) -> str | None:
        proc = subprocess.run(
            [self.npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            return f"npm ci failed in {folder}:\n{proc.stdout}\n{proc.stderr}"
        (folder / "node_modules" / _STAMP).write_text(_lock_hash(folder))
        return None

    def run(
        self,
        script: str,
        clients: Path,
        config: Mapping[str, Any],
        *,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Run ``common/<script>`` with ``config`` and return its ``result`` (fail on error)."""
        payload = {"clientsDir": str(clients), "timeoutMs": int(timeout * 1000) - 2000, **config}
        proc = subprocess.run(
            [self.node, str(COMMON / script), json.dumps(payload)],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        lines = proc.stdout.strip().splitlines()
        try:
            report: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            raise NodeScriptError(
                f"{script} ({clients.name}) printed no JSON result (exit {proc.returncode})\n"
                f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
            ) from None
        if not report.get("ok"):
            raise NodeScriptError(
                f"{script} ({clients.name}, {report.get('versions')}) failed: "
                f"{report.get('error')}\n{report.get('stack', '')}\nstderr:\n{proc.stderr[-4000:]}"
            )
        if report.get("unhandledRejections"):
            raise NodeScriptError(
                f"{script} ({clients.name}): unhandled rejections {report['unhandledRejections']}"
            )
        result: dict[str, Any] = report["result"]
        result["versions"] = report["versions"]
        return result


def client_version(folder: str) -> str:
    """The exact ``ai`` version a client folder pins."""
    package = json.loads((HERE / folder / "package.json").read_text())
    return str(package["dependencies"]["ai"])


def find_toolchain() -> NodeToolchain:
    """The machine's node and npm, or :class:`NodeUnavailable` saying what is missing."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        raise NodeUnavailable(
            f"{missing} not found on PATH: install Node.js >= {MIN_NODE_MAJOR} with npm to run "
            "the AI SDK conformance tests"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    if major < MIN_NODE_MAJOR:
        raise NodeUnavailable(
            f"node {version} on PATH is too old: the AI SDK clients need Node.js >= "
            f"{MIN_NODE_MAJOR}"
        )
    return NodeToolchain(node=node, npm=npm, version=version)


def _lock_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "package-lock.json").read_bytes()).hexdigest()


def _installed(folder: Path) -> bool:
    stamp = folder / "node_modules" / _STAMP
    return stamp.exists() and stamp.read_text() == _lock_hash(folder)
