"""A PostgreSQL server of a test's own, started from the machine's PostgreSQL binaries
(``initdb``, ``pg_ctl``) in a temporary directory on a free loopback port, so the test can
stop and start it at will (the shared server on 5432 must keep running for everyone else).

initdb refuses to run as root: as root the server runs as the ``postgres`` user (through
``runuser``), which owns the directory. Without the binaries, or as root without a
``postgres`` user, the tests skip with the reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._services import free_port

__all__ = ["PostgresServer", "postgres_binaries", "postgres_server"]

_USER = "postgres"


def postgres_binaries() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (newest version first), or skip."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in found:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) to start a server from")


def _run_as() -> tuple[list[str], int | None]:
    """The command prefix that runs a server binary as a user initdb accepts, and that
    user's uid when it is not us (who must then own the data directory)."""
    if os.geteuid() != 0:
        return [], None
    try:
        uid = pwd.getpwnam(_USER).pw_uid
    except KeyError:
        pytest.skip("running as root without a 'postgres' user: initdb refuses root")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: initdb refuses root")
    return [runuser, "-u", _USER, "--"], uid


@dataclass
class PostgresServer:
    """One PostgreSQL server in ``datadir`` on 127.0.0.1:``port``; `stop` and `start` it."""

    bindir: Path
    datadir: Path
    port: int
    prefix: list[str]

    @property
    def url(self) -> str:
        """The chat service's ``DATABASE_URL`` for the server's ``postgres`` database."""
        return f"postgresql+asyncpg://{_USER}@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        command = [*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[-1]} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("-l", str(self.datadir / "server.log"), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``immediate`` is a crash (no checkpoint, every connection cut at
        once; the next start recovers from the write-ahead log)."""
        self._pg_ctl("-m", mode, "-w", "-t", "30", "stop")

    def log(self) -> str:
        try:
            return (self.datadir / "server.log").read_text(errors="replace")
        except OSError:
            return ""


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh, running server (trust authentication, loopback only), removed afterwards."""
    bindir = postgres_binaries()
    prefix, uid = _run_as()
    workdir = Path(tempfile.mkdtemp(prefix="unbroken-pg-"))
    datadir = workdir / "data"
    try:
        if uid is not None:
            os.chown(workdir, uid, -1)
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(datadir), "-U", _USER, "-A", "trust",
             "--no-sync", "--no-instructions", "-E", "UTF8"],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        port = free_port()
        with (datadir / "postgresql.conf").open("a") as conf:
            # Durability does not matter here; a socket directory of its own keeps clear of
            # the machine's server; a short stop must not wait for clients to leave.
            conf.write(
                f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{workdir}'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n"
            )
        server = PostgresServer(bindir, datadir, port, prefix)
        server.start()
        try:
            yield server
        finally:
            with suppress(RuntimeError):  # already stopped
                server.stop("immediate")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
