"""Real Redis deployments for the fault tests, started from the ``redis-server`` binary on
free loopback ports: a Sentinel set (a primary, replicas, three sentinels) and a Redis
Cluster with a replica per master. Each lives in a temporary directory and is torn down
(every process terminated) when its context ends.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests._services import free_port, port_answers

__all__ = [
    "ClusterSet",
    "RedisNode",
    "SentinelSet",
    "cluster_with_replicas",
    "redis_7_binary",
    "sentinel_set",
]

SERVICE = "unbroken-primary"


def redis_7_binary() -> str:
    """The machine's redis-server (>= 7: sharded pub/sub for the cluster), or skip."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH to start sentinels or a cluster from")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\d+)\.", version)
    if found is None or int(found.group(1)) < 7:
        pytest.skip("these tests need redis-server >= 7")
    return binary


@dataclass
class RedisNode:
    """One redis-server (or sentinel) process; `kill` and `start` it again at will."""

    args: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready(self, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not port_answers("127.0.0.1", self.port, timeout=0.2):
            assert self.proc is not None and self.proc.poll() is None, f"{self.args} exited"
            assert time.monotonic() < deadline, f"port {self.port} did not open"
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write to replicas."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


def _server_args(binary: str, port: int, workdir: Path, *extra: str) -> list[str]:
    return [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        *extra,
    ]  # fmt: skip


@dataclass
class SentinelSet:
    """A primary, its replicas and three sentinels watching them as `SERVICE`."""

    primary: RedisNode
    replicas: list[RedisNode]
    sentinels: list[RedisNode]
    down_after_ms: int

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def master_port(self) -> int:
        with redis.Redis(port=self.sentinels[0].port, socket_timeout=5) as client:
            _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def wait_master_other_than(self, port: int, within: float = 30.0) -> int:
        """Until every sentinel names a master other than ``port``; returns the new one."""
        deadline = time.monotonic() + within
        while True:
            ports = set()
            for sentinel in self.sentinels:
                with redis.Redis(port=sentinel.port, socket_timeout=2) as client:
                    found = client.sentinel_get_master_addr_by_name(SERVICE)
                ports.add(int(found[1]) if found else None)
            if len(ports) == 1 and None not in ports and port not in ports:
                return int(ports.pop())  # type: ignore[arg-type]
            assert time.monotonic() < deadline, f"no failover within {within:g} s: {ports}"
            time.sleep(0.1)


@contextmanager
def sentinel_set(
    replicas: int = 1,
    *,
    down_after_ms: int = 600,
    replicate_from: Callable[[int], int] | None = None,
) -> Iterator[SentinelSet]:
    """Start a primary, ``replicas`` replicas and three sentinels (quorum 2); yields once
    the replicas are in sync and every sentinel sees them.

    ``replicate_from(primary_port)``: the port the replicas replicate from instead (a fault
    proxy's). The sentinels then see replicas of another address; they would point them
    back at the primary after ``failover-timeout``, so that is long here.
    """
    binary = redis_7_binary()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="unbroken-sent-")))

        def node(args: list[str], port: int) -> RedisNode:
            found = RedisNode(args, port)
            stack.callback(found.stop)
            found.start()
            return found

        def data_dir(name: str) -> Path:
            path = workdir / name
            path.mkdir()
            return path

        primary_port = free_port()
        primary = node(_server_args(binary, primary_port, data_dir("primary")), primary_port)
        primary.wait_ready()
        source = replicate_from(primary_port) if replicate_from is not None else primary_port
        copies = []
        for index in range(replicas):
            port = free_port()
            args = _server_args(
                binary, port, data_dir(f"replica{index}"), "--replicaof", "127.0.0.1",
                str(source),
            )  # fmt: skip
            copies.append(node(args, port))
        for each in copies:
            each.wait_ready()
        # Sentinels find replicas in the primary's INFO, which they read at once on start and
        # then every 10 s: start them once the replicas are attached, not before.
        deadline = time.monotonic() + 20
        while _online_replicas(primary) < replicas:
            assert time.monotonic() < deadline, "the replicas did not attach to the primary"
            time.sleep(0.02)
        sentinels = []
        for index in range(3):
            port = free_port()
            conf = workdir / f"sentinel{index}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 60000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            sentinels.append(node([binary, str(conf), "--sentinel"], port))
        found = SentinelSet(primary, copies, sentinels, down_after_ms)
        for each in sentinels:
            each.wait_ready()
        deadline = time.monotonic() + 20
        while not _sentinels_see(found, replicas):
            assert time.monotonic() < deadline, "the sentinels did not find the replicas"
            time.sleep(0.1)
        yield found


def _online_replicas(primary: RedisNode) -> int:
    with primary.client() as client:
        info = client.info("replication")
    return sum(1 for key, value in info.items() if key.startswith("slave") and
               isinstance(value, dict) and value.get("state") == "online")  # fmt: skip


def _sentinels_see(found: SentinelSet, replicas: int) -> bool:
    if _online_replicas(found.primary) < replicas:
        return False
    for sentinel in found.sentinels:
        with redis.Redis(port=sentinel.port, socket_timeout=2) as client:
            state = client.sentinel_master(SERVICE)
        if (
            int(state.get("num-slaves", 0)) < replicas
            or int(state.get("num-other-sentinels", 0)) < 2
        ):
            return False
    return True


@dataclass
class ClusterSet:
    """A Redis Cluster: masters (ports) and one replica each, by the master's port."""

    masters: list[RedisNode]
    replicas: dict[int, RedisNode] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{m.port}" for m in self.masters)


@contextmanager
def cluster_with_replicas(masters: int = 3, *, node_timeout_ms: int = 1000) -> Iterator[ClusterSet]:
    """A cluster of ``masters`` masters, each with one replica, all slots covered."""
    binary = redis_7_binary()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="unbroken-clr-")))
        nodes: list[RedisNode] = []
        for index in range(masters * 2):
            port, bus = free_port(), free_port()
            folder = workdir / f"n{index}"
            folder.mkdir()
            args = _server_args(
                binary, port, folder, "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-replica-validity-factor", "0",
            )  # fmt: skip
            found = RedisNode(args, port)
            stack.callback(found.stop)
            found.start()
            nodes.append(found)
        for found in nodes:
            found.wait_ready()
        primaries, copies = nodes[:masters], nodes[masters:]
        clients = [stack.enter_context(n.client()) for n in nodes]
        bounds = [16384 * index // masters for index in range(masters + 1)]
        first_bus = int(nodes[0].args[nodes[0].args.index("--cluster-port") + 1])
        for index, client in enumerate(clients):
            if index < masters:
                client.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", bounds[index], bounds[index + 1] - 1
                )
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port, first_bus)
        deadline = time.monotonic() + 20
        while not all(int(c.cluster("INFO")["cluster_known_nodes"]) == len(nodes) for c in clients):
            assert time.monotonic() < deadline, "the cluster nodes did not meet"
            time.sleep(0.05)
        for primary, client in zip(primaries, clients[masters:], strict=True):
            node_id = clients[nodes.index(primary)].execute_command("CLUSTER", "MYID")
            client.execute_command("CLUSTER", "REPLICATE", node_id)
        cluster = ClusterSet(primaries, {p.port: c for p, c in zip(primaries, copies, strict=True)})
        while not _cluster_ready(clients, masters):
            assert time.monotonic() < deadline, "the cluster did not form"
            time.sleep(0.05)
        yield cluster


def _cluster_ready(clients: list[redis.Redis], masters: int) -> bool:
    for client in clients:
        if client.cluster("INFO")["cluster_state"] != "ok":
            return False
    info = clients[0].info("replication")
    replicas_synced = all(
        c.info("replication").get("master_link_status") == "up" for c in clients[masters:]
    )
    return bool(info) and replicas_synced
