"""The Redis deployments `redis_cost.py` measures, each started on free loopback ports and torn
down when its context ends: one private redis-server, or the 3-master Redis Cluster (a replica
per master) that the fault tests start (`tests/faults/_servers.py`, imported, not copied).

A `Target` reads each node's own CPU time from /proc and its ``INFO commandstats``, and says
which master holds a stream's keys (by the Cluster hash slot of the stream's hash tag).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(BENCHMARKS.parent))  # for tests.faults._servers

from unbroken.backends.redis._keys import stream_keys  # noqa: E402

__all__ = [
    "Node",
    "Target",
    "cpu_seconds",
    "redis_cluster",
    "run_queue_seconds",
    "run_seconds",
    "single_server",
]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def run_seconds(pid: int) -> float:
    """How long the process's main thread has run on a CPU so far (from /proc/<pid>/schedstat,
    in nanoseconds: precise where /proc/<pid>/stat counts clock ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def run_queue_seconds(pid: int) -> float:
    """How long the process's main thread has waited, runnable, for a CPU so far (from
    /proc/<pid>/schedstat): on a shared machine, the time other processes took from it."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


@dataclass
class Node:
    """One redis-server process of a target."""

    name: str
    port: int
    pid: int

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def command_stats(self) -> dict[str, dict[str, float]]:
        """``INFO commandstats`` by command name (scripts' inner commands counted too)."""
        with self.client() as client:
            stats: dict[str, dict[str, float]] = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): values for name, values in stats.items()}

    def reset_stats(self) -> None:
        with self.client() as client:
            client.config_resetstat()


@dataclass
class Target:
    """A deployment: the URL the backends use, its masters (and their replicas, if any)."""

    name: str
    url: str
    masters: list[Node]
    replicas: list[Node] = field(default_factory=list)
    # (first slot, last slot, index in masters) for a cluster; empty for one server.
    slots: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [*self.masters, *self.replicas]

    def master_of(self, prefix: str, stream_id: str, separator: str | None = None) -> int:
        """The index in `masters` of the master holding the stream's keys (``separator``:
        the backends' ``placement_separator``)."""
        if not self.slots:
            return 0
        slot = key_slot(stream_keys(prefix, stream_id, separator).meta.encode())
        for first, last, index in self.slots:
            if first <= slot <= last:
                return index
        raise LookupError(f"no master serves slot {slot}")

    def group_on(self, prefix: str, master: int, separator: str) -> str:
        """A placement group name whose streams live on master number ``master``."""
        for attempt in itertools.count():
            group = f"g{master}-{attempt}"
            if self.master_of(prefix, f"{group}{separator}x", separator) == master:
                return group
        raise AssertionError("unreachable")

    def start_window(self) -> dict[str, float]:
        """Reset every node's command counts; each node's CPU time so far."""
        for node in self.nodes:
            node.reset_stats()
        return {node.name: node.cpu_seconds() for node in self.nodes}

    def end_window(self) -> tuple[dict[str, float], dict[str, dict[str, dict[str, float]]]]:
        """Each node's CPU time so far and its command counts since `start_window`."""
        cpu = {node.name: node.cpu_seconds() for node in self.nodes}
        return cpu, {node.name: node.command_stats() for node in self.nodes}

    def flush(self) -> None:
        """Drop every key (these servers are ours alone), so levels do not add up."""
        for node in self.masters:
            with node.client() as client:
                client.flushall()


@contextmanager
def single_server() -> Iterator[Target]:
    """A private, diskless redis-server (`peers_bench.redis_server`)."""
    from peers_bench import redis_server

    with redis_server() as (url, process):
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        yield Target("single", url, [Node("single", port, process.pid)])


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[Target]:
    """The fault tests' Redis Cluster: ``masters`` masters, a replica each, all slots
    covered, every process ended on exit."""
    from tests.faults._servers import cluster_with_replicas

    with ExitStack() as stack:
        cluster = _start_cluster(stack, masters, cluster_with_replicas)
        nodes = [
            Node(f"master{index}", master.port, _pid(master.proc))
            for index, master in enumerate(cluster.masters)
        ]
        replicas = [
            Node(f"replica{index}", cluster.replicas[master.port].port,
                 _pid(cluster.replicas[master.port].proc))
            for index, master in enumerate(cluster.masters)
        ]  # fmt: skip
        by_port = {node.port: index for index, node in enumerate(nodes)}
        with nodes[0].client() as client:
            ranges: Any = client.execute_command("CLUSTER SLOTS")
        slots = [
            (int(first), int(last), by_port[int(owner[1])]) for first, last, owner, *_ in ranges
        ]
        yield Target("cluster", cluster.url, nodes, replicas, sorted(slots))


def _start_cluster(stack: ExitStack, masters: int, start: Any) -> Any:
    """Enter ``start(masters)``, again if a node exits at start: the free ports it picks are
    free when picked, and another process may take one before the node binds it."""
    for attempt in range(3):
        try:
            return stack.enter_context(start(masters))
        except AssertionError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _pid(proc: Any) -> int:
    if proc is None:
        raise RuntimeError("a cluster node is not running")
    return int(proc.pid)
