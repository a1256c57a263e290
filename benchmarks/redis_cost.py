"""What a token costs Redis: its CPU, commands and log entries per chunk, the delivery delay
of the write window, and what one and three Cluster masters carry.

Run:  .venv/bin/python benchmarks/redis_cost.py [--levels 100,1000,5000] [--producers 1,1,3]
          [--readers 1,1,2] [--gathers 0.002,0.02,0.05,0.1] [--cluster] [--rate 30]
          [--warmup 4] [--window 10]

For each level, that many streams yield a 20-byte chunk every 1/30 s (LLM pace), spread over
``--producers`` processes (an engine each); ``--readers`` other processes read every stream
on engines of their own, so each chunk also goes out as a notification. Everything talks to
Redis deployments this script starts on free loopback ports: one redis-server, and with
``--cluster`` also the 3-master Redis Cluster (a replica each) the fault tests start; each
level and write window runs on both, one after the other, in the same run.

Once every stream is started and every reader subscribed, and after a warm-up, the script
reads each redis-server's CPU time from /proc/<pid>/stat and resets ``INFO commandstats``;
after the window it reads both again. The denominator is the chunks the producers yielded
during the window (they count them: an append may carry several chunks, a log entry too):
Redis CPU in µs, command calls (scripts' inner commands included), script calls and log
entries (XADD calls) per chunk. Each chunk carries its producer's wall-clock time, so the
readers measure the delivery delay (yield to receipt in another process, same clock) of every
tenth chunk yielded during the window. At the end every reader must have every chunk of
every stream, in order, no duplicate, and every stream must have ended ``done``.

``--gathers`` runs each level once per ``RedisBackend(write_gather=...)`` value. With
``--cluster``, per master: its CPU per chunk it carried and its share of the chunks (from the
hash slots of the streams' keys); from those, the tokens/s one master carries at 100 % CPU and
what 3 masters carry before the busiest one is full. A small machine cannot saturate three
masters, so that figure is derived from the per-master cost and the measured spread.

With two levels or more run with the same write window and client processes, each node's CPU
is also fitted as a fixed part per second plus a part per chunk it carried (least squares
over those levels): at a model's pace most of a lightly loaded server's CPU is the fixed part,
paid per pipeline, so the tokens/s a server carries at 100 % CPU comes from that fit, not
from the cost per chunk at a light load. Levels marked client-bound are left out of it.

Prints a table per section, writes benchmarks/results/<stem>.json and <stem>.png. A small
machine may not reach the target rate: the achieved rate is printed next to it, and the
per-chunk figures hold for the rate achieved. A run whose clients could not keep up (below
95 % of the pace, or a producer or reader process running or waiting for a CPU 90 % of the
window) is marked client-bound: its delays are the clients' queue, and its appends carry more
chunks than at pace. ``--rate`` lowers the pace, to run many streams on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _redis_targets import Target, cpu_seconds, redis_cluster, run_queue_seconds, single_server
from _results import save_results

RATE = 30.0  # chunks per second per stream: a model's token pace (the default of --rate)
DELAY_SAMPLE = 10  # every tenth chunk's delivery delay is measured
STREAM_OPEN_TIMEOUT = 60.0  # a reader gives up on a stream that never appears
CHILD_START_TIMEOUT = 180.0  # starting thousands of streams on a busy machine takes a while
RUN_LIMIT = 900.0  # no child produces or reads for longer than this, whatever it is told
TAIL = 0.5  # streams run this long after the window, so its last chunks are delivered in it


def chunk_text(index: int, micros: int) -> str:
    """A 20-character chunk: its index in the stream and its producer's clock (µs since the
    level's epoch), which the reader checks and times."""
    return f"{index:06d} {micros:012d} "


def chunk_fields(data: str) -> tuple[int, int]:
    return int(data[:6]), int(data[7:19])


# -- children: producers and readers ------------------------------------------------------


async def control_line() -> dict[str, Any]:
    """The parent's one control line on stdin (the window); an empty one if it went away."""
    line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), RUN_LIMIT)
    return json.loads(line) if line.strip() else {}


async def produce(args: argparse.Namespace) -> dict[str, Any]:
    """Run one stream per id at ``--rate`` until the window's end (plus TAIL); count what each
    stream yielded, in all and within the window."""
    from unbroken import StreamEngine
    from unbroken.backends.redis import RedisBackend

    ids = stream_ids(args.run, args.first, args.streams, json.loads(args.placement))
    produced, in_window = [0] * len(ids), [0] * len(ids)
    window = {"start": math.inf, "end": math.inf, "until": time.time() + RUN_LIMIT}
    epoch, rate = args.epoch, args.rate

    async def paced(k: int) -> Any:
        # Streams out of step, like real ones; each keeps its own schedule, so its rate holds
        # while the process keeps up and falls (without bursts) when it does not.
        due = time.time() + random.random() / rate
        index = 0
        while True:
            due += 1 / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            now = time.time()
            if now >= window["until"]:
                break
            due = max(due, now - 1 / rate)
            if window["start"] <= now < window["end"]:
                in_window[k] += 1
            produced[k] += 1
            yield chunk_text(index, int((now - epoch) * 1e6))
            index += 1

    running = len(ids)
    all_ended = asyncio.Event()
    ends: dict[str, int] = {}

    async def ended(end: Any) -> None:
        nonlocal running
        ends[end.state.value] = ends.get(end.state.value, 0) + 1
        running -= 1
        if running == 0:
            all_ended.set()

    separator = SEPARATOR if json.loads(args.placement) else None
    backend = RedisBackend(
        args.url, key_prefix=args.prefix, write_gather=args.gather, placement_separator=separator
    )
    async with StreamEngine(backend) as engine:
        cpu = time.process_time()
        for first in range(0, len(ids), 200):
            await asyncio.gather(
                *(
                    engine.start(ids[k], paced(k), on_end=ended)
                    for k in range(first, min(first + 200, len(ids)))
                )
            )
        print(json.dumps({"ready": True}), flush=True)
        told = await control_line()
        window.update(told or {"until": 0.0})
        await asyncio.wait_for(all_ended.wait(), max(1.0, window["until"] - time.time()) + 120)
        cpu = time.process_time() - cpu
    return {"produced": produced, "in_window": in_window, "ends": ends, "cpu_s": cpu}


async def read(args: argparse.Namespace) -> dict[str, Any]:
    """Follow every stream to its end on an engine of this process's own; check each chunk
    comes once, in order, and time every DELAY_SAMPLE-th one yielded during the window."""
    from unbroken import StreamEnd, StreamEngine, StreamNotFoundError
    from unbroken.backends.redis import RedisBackend

    ids = stream_ids(args.run, args.first, args.streams, json.loads(args.placement))
    received, done = [0] * len(ids), [False] * len(ids)
    faults: list[str] = []
    ends: dict[str, int] = {}
    delays: list[float] = []
    window = {"start": math.inf, "end": math.inf}
    epoch = args.epoch
    opened = 0
    all_opened = asyncio.Event()

    def fault(text: str) -> None:
        if len(faults) < 20:
            faults.append(text)

    async def follow(engine: StreamEngine, k: int) -> None:
        nonlocal opened
        stream_id = ids[k]
        deadline = time.monotonic() + STREAM_OPEN_TIMEOUT
        while True:
            try:
                reader = await engine.open(stream_id)
                break
            except StreamNotFoundError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        async with reader:
            opened += 1
            if opened == len(ids):
                all_opened.set()
            expected = 0
            async for batch in reader:
                now = time.time()
                for item in batch:
                    if isinstance(item, StreamEnd):
                        ends[item.state.value] = ends.get(item.state.value, 0) + 1
                        done[k] = item.state.value == "done"
                        continue
                    index, micros = chunk_fields(item.data)
                    if item.seq != expected or index != item.seq:
                        fault(f"{stream_id}: chunk seq {item.seq} index {index}, not {expected}")
                    expected = max(expected, item.seq + 1)
                    if item.seq % DELAY_SAMPLE == 0:
                        sent = epoch + micros / 1e6
                        if window["start"] <= sent < window["end"]:
                            delays.append(now - sent)
            received[k] = expected

    separator = SEPARATOR if json.loads(args.placement) else None
    backend = RedisBackend(
        args.url, key_prefix=args.prefix, reader_buffer=4096, placement_separator=separator
    )
    async with StreamEngine(backend) as engine:
        cpu = time.process_time()
        readers: asyncio.Future[Any] = asyncio.gather(*(follow(engine, k) for k in range(len(ids))))
        waiting: asyncio.Future[Any] = asyncio.ensure_future(all_opened.wait())
        try:
            await asyncio.wait(
                [waiting, readers], timeout=CHILD_START_TIMEOUT, return_when="FIRST_COMPLETED"
            )
            if readers.done():
                readers.result()  # a reader that failed to open raises here
            if not all_opened.is_set():
                raise TimeoutError("the readers did not all open in time")
            print(json.dumps({"ready": True}), flush=True)
            window.update(await control_line())
            await asyncio.wait_for(readers, RUN_LIMIT)
        finally:
            waiting.cancel()
            readers.cancel()
            with contextlib.suppress(BaseException):
                await readers
        cpu = time.process_time() - cpu
    delays.sort()
    return {
        "received": received,
        "done": done,
        "faults": faults,
        "ends": ends,
        "delays_ms": [round(d * 1e3, 3) for d in delays],
        "cpu_s": cpu,
    }


def role_main(args: argparse.Namespace) -> None:
    """A child process: some of the producers or readers of one level."""
    result = asyncio.run(produce(args) if args.role == "produce" else read(args))
    print(json.dumps(result), flush=True)


# -- the parent: one measurement --------------------------------------------------------


class Child:
    """A producer or reader process; its stdout lines arrive through a thread, so the parent
    waits for each with a timeout."""

    def __init__(self, argv: list[str]) -> None:
        self.role = argv[3]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stdout: IO[str] | None) -> None:
        assert stdout is not None
        for line in stdout:
            self._lines.put(line)
        self._lines.put(None)

    def line(self, deadline: float) -> dict[str, Any]:
        """The next JSON line it prints, before the monotonic ``deadline``."""
        try:
            line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"a {self.role} child timed out") from None
        if line is None:
            raise RuntimeError(f"a {self.role} child exited ({self.proc.wait()})")
        found: dict[str, Any] = json.loads(line)
        return found

    def tell(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """(first, count) of ``parts`` nearly equal consecutive slices of ``total``."""
    bounds = [total * part // parts for part in range(parts + 1)]
    return [(a, b - a) for a, b in itertools.pairwise(bounds) if b > a]


#: The backends' placement_separator when streams are placed by producer (``--placement``).
SEPARATOR = "/"


def stream_ids(run: str, first: int, count: int, placement: list[list[Any]]) -> list[str]:
    """The ids of streams ``first`` to ``first + count - 1``: ``<run>-<k>``, or with
    ``placement`` ([first, count, group] per producer) ``<group>/<run>-<k>``, so that each
    producer's streams form one placement group."""
    ids = []
    for k in range(first, first + count):
        group = next((g for start, n, g in placement if start <= k < start + n), None)
        ids.append(f"{group}{SEPARATOR}{run}-{k}" if group else f"{run}-{k}")
    return ids


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, int(q * len(values)))]


@contextlib.contextmanager
def children(argvs: list[list[str]]) -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        for argv in argvs:
            started.append(Child(argv))
        yield started
    finally:
        for child in started:
            child.stop()


@dataclass(frozen=True)
class Level:
    """What one measurement runs: so many streams at ``rate`` chunks/s each, over so many
    producer and reader processes, with one ``write_gather``."""

    streams: int
    gather: float
    producers: int
    readers: int
    rate: float
    warmup: float
    window: float
    placed: bool = False  # each producer's streams one placement group, on its own master


def measure(target: Target, level: Level) -> dict[str, Any]:
    """One level on one target: children started, a steady window measured, every chunk
    checked."""
    streams, gather, producers, readers = (
        level.streams, level.gather, level.producers, level.readers
    )  # fmt: skip
    run, prefix, epoch = f"cost-{uuid.uuid4().hex[:8]}", f"cost-{uuid.uuid4().hex[:8]}", time.time()
    # Placed: producer i's streams are one group on master i (round robin), as many workers
    # each naming its streams after itself would spread over the masters.
    placement = [
        [first, count, target.group_on(prefix, part % len(target.masters), SEPARATOR)]
        for part, (first, count) in enumerate(split(streams, producers))
    ] if level.placed else []  # fmt: skip

    def argv(role: str, first: int, count: int) -> list[str]:
        return [
            *(sys.executable, __file__, "--role", role, "--url", target.url),
            *("--prefix", prefix, "--run", run, "--epoch", repr(epoch), "--gather", str(gather)),
            *("--first", str(first), "--streams", str(count), "--rate", str(level.rate)),
            *("--placement", json.dumps(placement)),
        ]

    with children([argv("produce", *part) for part in split(streams, producers)]) as makers:
        deadline = time.monotonic() + CHILD_START_TIMEOUT
        for child in makers:
            child.line(deadline)  # every stream claimed and running
        with children([argv("read", *part) for part in split(streams, readers)]) as followers:
            deadline = time.monotonic() + CHILD_START_TIMEOUT
            for child in followers:
                child.line(deadline)  # every stream's reader subscribed
            start = time.time() + level.warmup
            end = start + level.window
            told = {"start": start, "end": end, "until": end + TAIL}
            for child in [*makers, *followers]:
                child.tell(told)
            clients = [*makers, *followers]
            time.sleep(max(0.0, told["start"] - time.time()))
            cpu0, wall0 = target.start_window(), time.perf_counter()
            clients0 = [cpu_seconds(child.proc.pid) for child in clients]
            waits0 = [run_queue_seconds(child.proc.pid) for child in clients]
            time.sleep(max(0.0, told["end"] - time.time()))
            (cpu1, stats), wall1 = target.end_window(), time.perf_counter()
            clients1 = [cpu_seconds(child.proc.pid) for child in clients]
            waits1 = [run_queue_seconds(child.proc.pid) for child in clients]
            deadline = time.monotonic() + TAIL + 300
            made = [child.line(deadline) for child in makers]
            got = [child.line(deadline) for child in followers]
    target.flush()

    produced = [n for part in made for n in part["produced"]]
    in_window = [n for part in made for n in part["in_window"]]
    received = [n for part in got for n in part["received"]]
    done = [d for part in got for d in part["done"]]
    faults = [f for part in got for f in part["faults"]]
    delays = sorted(d for part in got for d in part["delays_ms"])
    chunks = sum(in_window)
    if chunks == 0:
        raise RuntimeError("no chunk was yielded during the window")
    seconds = wall1 - wall0

    # Each master's share of the window's chunks, from the slots of the streams' keys.
    carried = [0] * len(target.masters)
    ids = stream_ids(run, 0, streams, placement)
    separator = SEPARATOR if placement else None
    for stream_id, count in zip(ids, in_window, strict=True):
        carried[target.master_of(prefix, stream_id, separator)] += count

    def per_chunk(node_stats: dict[str, dict[str, float]]) -> dict[str, float]:
        return {
            name: values["calls"] / chunks
            for name, values in sorted(node_stats.items(), key=lambda item: -item[1]["calls"])
            if name not in ("config|resetstat", "info")
        }

    nodes: dict[str, dict[str, Any]] = {}
    for index, node in enumerate(target.nodes):
        cpu = cpu1[node.name] - cpu0[node.name]
        share = carried[index] if index < len(target.masters) else 0
        node_stats = stats[node.name]
        nodes[node.name] = {
            "cpu_s": cpu,
            "cpu_share": cpu / seconds,
            "chunks": share,
            "chunk_share": share / chunks,
            "cpu_us_per_chunk": cpu / share * 1e6 if share else None,
            "xadd_calls": node_stats.get("xadd", {}).get("calls", 0),
            "script_usec": sum(v["usec"] for n, v in node_stats.items() if n.startswith("eval")),
        }
    masters = [node.name for node in target.masters]
    total: dict[str, dict[str, float]] = {}
    for name in masters:
        for command, values in stats[name].items():
            entry = total.setdefault(command, {"calls": 0.0, "usec": 0.0})
            entry["calls"] += values["calls"]
            entry["usec"] += values["usec"]
    commands = per_chunk(total)
    master_cpu = sum(nodes[name]["cpu_s"] for name in masters)
    whole = received == produced and all(done) and not faults
    # The clients' own CPU during the window, from /proc like Redis's.
    used = [b - a for a, b in zip(clients0, clients1, strict=True)]
    producer_cpu, reader_cpu = sum(used[: len(made)]), sum(used[len(made) :])
    busiest = max(used) / seconds
    # Running or waiting for a CPU: a process near 100 % could not keep up, whether its own
    # work or other processes on the machine took the time.
    waited = [b - a for a, b in zip(waits0, waits1, strict=True)]
    wanting = max(u + w for u, w in zip(used, waited, strict=True)) / seconds

    def ends(parts: list[dict[str, Any]]) -> dict[str, int]:
        counted: dict[str, int] = {}
        for part in parts:
            for state, count in part["ends"].items():
                counted[state] = counted.get(state, 0) + count
        return counted

    return {
        "target": target.name + (", placed" if level.placed else ""),
        "placed": level.placed,
        "streams": streams,
        "write_gather": gather,
        "producers": producers,
        "readers": readers,
        "rate_per_stream": level.rate,
        "target_chunks_per_s": streams * level.rate,
        "chunks_per_s": chunks / seconds,
        "window_chunks": chunks,
        "redis_cpu_us_per_chunk": master_cpu / chunks * 1e6,
        "redis_cpu_share": master_cpu / seconds,
        "commands_per_chunk": commands,
        "command_calls_per_chunk": sum(commands.values()),
        "log_entries_per_chunk": commands.get("xadd", 0.0),
        "script_calls_per_chunk": sum(v for n, v in commands.items() if n.startswith("eval")),
        "script_us_per_chunk": sum(nodes[name]["script_usec"] for name in masters) / chunks,
        "usec_per_call": {
            n: v["usec"] / v["calls"] for n, v in total.items() if v["calls"] and n != "info"
        },
        "delay_ms": {
            "samples": len(delays),
            "p50": percentile(delays, 0.5),
            "p99": percentile(delays, 0.99),
            "max": delays[-1] if delays else math.nan,
        },
        "nodes": nodes,
        "produced": sum(produced),
        "received": sum(received),
        "streams_done": sum(done),
        "faults": faults,
        "producer_ends": ends(made),
        "reader_ends": ends(got),
        "every_chunk_read": whole,
        "busiest_client_share": busiest,
        "busiest_client_wanting_share": wanting,
        "client_bound": chunks / seconds < 0.95 * streams * level.rate or wanting > 0.9,
        "producer_cpu_us_per_chunk": producer_cpu / chunks * 1e6,
        "reader_cpu_us_per_chunk": reader_cpu / chunks * 1e6,
    }


# -- reporting ---------------------------------------------------------------------------


def _run_line(r: dict[str, Any]) -> str:
    delay = r["delay_ms"]
    whole = "yes" if r["every_chunk_read"] else "NO"
    unusual = {state: n for state, n in r["reader_ends"].items() if state != "done"}
    if unusual:
        whole += ", ended " + ", ".join(f"{state} {n}" for state, n in unusual.items())
    bound = " *" if r["client_bound"] else ""
    return (
        f"| {r['streams']:,} | {r['write_gather'] * 1e3:g} | {r['producers']}/{r['readers']} | "
        f"{r['chunks_per_s']:,.0f} ({r['target_chunks_per_s']:,.0f}){bound} | "
        f"{r['redis_cpu_us_per_chunk']:.1f} | {r['redis_cpu_share']:.0%} | "
        f"{r['command_calls_per_chunk']:.2f} | {r['script_calls_per_chunk']:.3f} | "
        f"{r['log_entries_per_chunk']:.2f} | {delay['p50']:.1f} / {delay['p99']:.1f} | "
        f"{r['producer_cpu_us_per_chunk']:.0f} / {r['reader_cpu_us_per_chunk']:.0f} | "
        f"{r['busiest_client_share']:.0%} / {r['busiest_client_wanting_share']:.0%} | "
        f"{whole} ({r['received']:,}/{r['produced']:,}) |"
    )


RUN_HEADER = [
    "| streams | write_gather (ms) | producer/reader processes | chunks/s (target) |"
    " Redis CPU per chunk (µs) | Redis core busy | commands per chunk | script calls per chunk |"
    " log entries per chunk | delivery p50 / p99 (ms) | producer / reader CPU per chunk (µs) |"
    " busiest client process: CPU / CPU + run queue | every chunk, in order, once |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
]
CLIENT_BOUND = (
    "  * client-bound: the producers fell below 95 % of their pace or a producer or reader"
    " process was running or waiting for a CPU 90 % of the time, so chunks queued in the"
    " clients; the delays are the queue's, and"
    " appends carried more chunks than at pace (Redis's cost per chunk is lower than at pace)."
    " Use more --producers / --readers on a machine with the cores for them."
)


def capacity(runs: list[dict[str, Any]], single: dict[str, Any] | None) -> dict[str, Any]:
    """Tokens/s at 100 % CPU: of one redis-server, of one cluster master (its own cost per
    chunk it carried), and of the 3 masters until the busiest is full (the spread measured)."""
    out: dict[str, Any] = {}
    if single is not None:
        out["single_tokens_per_s"] = 1e6 / single["redis_cpu_us_per_chunk"]
    for run in runs:
        masters = [node for name, node in run["nodes"].items() if name.startswith("master")]
        costs = [node["cpu_us_per_chunk"] for node in masters if node["cpu_us_per_chunk"]]
        out["master_tokens_per_s"] = [1e6 / cost for cost in costs]
        # All masters full together only if the load is even: the busiest one sets the limit.
        out["cluster_tokens_per_s"] = min(
            1e6 / (node["chunk_share"] * node["cpu_us_per_chunk"])
            for node in masters
            if node["cpu_us_per_chunk"]
        )
        out["cluster_if_even_tokens_per_s"] = sum(out["master_tokens_per_s"])
    return out


def _line_fit(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Least squares ``y = fixed + marginal * x``: (fixed, marginal, the largest residual
    as a share of its y)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    marginal = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    fixed = mean_y - marginal * mean_x
    worst = max(abs(y - (fixed + marginal * x)) / y for x, y in points)
    return fixed, marginal, worst


def fits(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each node's CPU as a fixed part per second plus a part per chunk it carried, fitted
    over the levels run with the same target, write window and processes (clients that kept
    the pace only); from those, the tokens/s at 100 % CPU of each node and of the target."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        if not run["client_bound"]:
            key = (run["target"], run["write_gather"], run["producers"], run["readers"])
            groups.setdefault(key, []).append(run)
    out = []
    for (target, gather, producers, readers), group in groups.items():
        if len({round(run["chunks_per_s"]) for run in group}) < 2:
            continue
        nodes = {}
        for name, first in group[0]["nodes"].items():
            if not first["chunks"]:
                continue  # a replica: it carries no chunks of its own
            points = [
                (run["chunks_per_s"] * run["nodes"][name]["chunk_share"],
                 run["nodes"][name]["cpu_share"] * 1e6)
                for run in group
            ]  # fmt: skip
            fixed, marginal, worst = _line_fit(points)
            share = statistics.mean(run["nodes"][name]["chunk_share"] for run in group)
            nodes[name] = {
                "fixed_core_share": fixed / 1e6,
                "marginal_us_per_chunk": marginal,
                "worst_residual": worst,
                "chunk_share": share,
                "tokens_per_s": (1e6 - fixed) / marginal if marginal > 0 else math.inf,
            }
        if not nodes:
            continue
        # The busiest node is full first: its share of the target's chunks sets the limit.
        carried = min(node["tokens_per_s"] / node["chunk_share"] for node in nodes.values())
        out.append({
            "target": target, "write_gather": gather, "producers": producers,
            "readers": readers, "streams": [run["streams"] for run in group],
            "chunks_per_s": [run["chunks_per_s"] for run in group],
            "nodes": nodes, "tokens_per_s": carried,
        })  # fmt: skip
    return out


def _fit_lines(fitted: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Fixed and per-chunk cost, fitted over the levels (same window and processes)",
        "| target | write_gather (ms) | producer/reader processes | levels (streams) | node |"
        " fixed (share of a core) | per chunk it carried (µs) | worst residual |"
        " tokens/s at 100 % CPU |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for fit in fitted:
        for name, node in fit["nodes"].items():
            lines.append(
                f"| {fit['target']} | {fit['write_gather'] * 1e3:g} |"
                f" {fit['producers']}/{fit['readers']} |"
                f" {', '.join(f'{s:,}' for s in fit['streams'])} | {name} |"
                f" {node['fixed_core_share']:.1%} | {node['marginal_us_per_chunk']:.2f} |"
                f" {node['worst_residual']:.0%} | {node['tokens_per_s']:,.0f} |"
            )
    singles = {f["write_gather"]: f for f in fitted if f["target"] == "single"}
    for fit in fitted:
        if fit["target"] == "single":
            continue
        one = singles.get(fit["write_gather"])
        ratio = f" ({fit['tokens_per_s'] / one['tokens_per_s']:.2f}× one server)" if one else ""
        lines.append(
            f"  {fit['target']}, {fit['write_gather'] * 1e3:g} ms: carries"
            f" {fit['tokens_per_s']:,.0f} tokens/s until its busiest master is full{ratio},"
            " with this many client processes (each one's pipelines add to the fixed part)"
        )
    lines.append(
        "  The fixed part is paid per pipeline (each producer process sends one per write"
        " window to each master holding its streams), so it grows with the client processes."
    )
    return lines


def _busiest(run: dict[str, Any]) -> str:
    """The CPU share of the busiest server carrying chunks in ``run``."""
    return f"{max(n['cpu_share'] for n in run['nodes'].values() if n['chunks']):.1%}"


def _placed_lines(runs: list[dict[str, Any]], placed: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Placed by producer (each producer's streams one group, on one master)",
        "| target | streams | write_gather (ms) | producer/reader processes | chunks/s |"
        " Redis CPU per chunk (µs): unplaced → placed | busiest master: unplaced → placed |"
        " producer CPU per chunk (µs): unplaced → placed | delivery p50 / p99 placed (ms) |"
        " every chunk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    bases = {id(run): base for base, run in _placed_pairs(runs)}
    for run in placed:
        base = bases.get(id(run))

        before = f"{base['redis_cpu_us_per_chunk']:.1f} → " if base else ""
        busy_before = f"{_busiest(base)} → " if base else ""
        cpu_before = f"{base['producer_cpu_us_per_chunk']:.0f} → " if base else ""
        bound = " (client-bound *)" if run["client_bound"] else ""
        lines.append(
            f"| {run['target']}{bound} | {run['streams']:,} | {run['write_gather'] * 1e3:g} |"
            f" {run['producers']}/{run['readers']} | {run['chunks_per_s']:,.0f} |"
            f" {before}{run['redis_cpu_us_per_chunk']:.1f} | {busy_before}{_busiest(run)} |"
            f" {cpu_before}{run['producer_cpu_us_per_chunk']:.0f} |"
            f" {run['delay_ms']['p50']:.1f} / {run['delay_ms']['p99']:.1f} |"
            f" {'yes' if run['every_chunk_read'] else 'NO'} |"
        )
    return lines


def report(results: dict[str, Any]) -> str:
    runs = results["runs"]
    single = [r for r in runs if r["target"] == "single"]
    gathers = results["gathers"]
    pace = f"{results['rate_per_stream']:g} chunks/s per stream"
    lines = [f"## Levels (one redis-server, {pace}, write_gather {gathers[0] * 1e3:g} ms)"]
    lines += RUN_HEADER
    lines += [_run_line(r) for r in single if r["write_gather"] == gathers[0]]
    if len(gathers) > 1:
        lines += ["", f"## Write windows (one redis-server, {pace})", *RUN_HEADER]
        lines += [_run_line(r) for r in single]
    if any(r["client_bound"] for r in runs):
        lines.append(CLIENT_BOUND)
    for r in runs:
        for fault in r["faults"][:5]:
            lines.append(f"  {r['target']} {r['streams']:,} streams: {fault}")
    lines += ["", "## Commands per chunk (calls / chunks yielded), largest first"]
    for r in runs:
        parts = [f"{n} {c:.2f}" for n, c in r["commands_per_chunk"].items() if c >= 0.005]
        lines.append(
            f"  {r['target']} {r['streams']:,} streams, {r['write_gather'] * 1e3:g} ms: "
            f"{', '.join(parts)}; Redis CPU {r['redis_cpu_us_per_chunk']:.1f} µs per chunk, "
            f"scripts {r['script_us_per_chunk']:.1f} µs (commandstats' wall clock: more than"
            " the CPU when other processes take Redis's core)"
        )
    clustered = [r for r in runs if r["target"] == "cluster"]
    if clustered:
        lines += ["", f"## Redis Cluster, 3 masters (a replica each) vs one redis-server, {pace}"]
        lines += [
            "| streams | write_gather (ms) | node | chunks/s | CPU per chunk it carried (µs) |"
            " share of chunks | core busy | log entries it wrote per chunk it carried |"
            " tokens/s at 100 % CPU |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for run in clustered:
            base = next(
                (
                    r
                    for r in single
                    if r["streams"] == run["streams"] and r["write_gather"] == run["write_gather"]
                ),
                None,
            )
            if base is not None:
                lines.append(
                    f"| {base['streams']:,} | {base['write_gather'] * 1e3:g} | one redis-server |"
                    f" {base['chunks_per_s']:,.0f} | {base['redis_cpu_us_per_chunk']:.1f} | 100% |"
                    f" {base['redis_cpu_share']:.0%} | {base['log_entries_per_chunk']:.2f} |"
                    f" {1e6 / base['redis_cpu_us_per_chunk']:,.0f} |"
                )
            for name, node in run["nodes"].items():
                if not name.startswith("master"):
                    continue
                cost = node["cpu_us_per_chunk"]
                lines.append(
                    f"| {run['streams']:,} | {run['write_gather'] * 1e3:g} | {name} |"
                    f" {run['chunks_per_s'] * node['chunk_share']:,.0f} |"
                    f" {f'{cost:.1f}' if cost else '–'} | {node['chunk_share']:.1%} |"
                    f" {node['cpu_share']:.0%} |"
                    f" {node['xadd_calls'] / max(1, node['chunks']):.2f} |"
                    f" {f'{1e6 / cost:,.0f}' if cost else '–'} |"
                )
            replicas = [n for name, n in run["nodes"].items() if name.startswith("replica")]
            scale = capacity([run], base)
            busy = ", ".join(f"{node['cpu_share']:.0%}" for node in replicas)
            delay = run["delay_ms"]
            bound = " (client-bound *)" if run["client_bound"] else ""
            lines.append(
                f"  {run['streams']:,} streams{bound}: replicas busy {busy}; every chunk read: "
                f"{'yes' if run['every_chunk_read'] else 'NO'}; delivery p50 / p99 "
                f"{delay['p50']:.1f} / {delay['p99']:.1f} ms; script calls per chunk"
                f" {run['script_calls_per_chunk']:.3f} (one redis-server:"
                f" {base['script_calls_per_chunk'] if base else math.nan:.3f}; in a cluster"
                " only a placement group's streams share a script call)"
            )
            three, even = scale["cluster_tokens_per_s"], scale["cluster_if_even_tokens_per_s"]
            derived = (
                "  derived from per-master cost and the measured key spread, not measured at"
                f" saturation (this machine cannot fill 3 masters): 3 masters carry {three:,.0f}"
                f" tokens/s until the busiest is full ({even:,.0f} with every master full at once)"
            )
            one = scale.get("single_tokens_per_s")
            if one:
                derived += f"; one redis-server {one:,.0f} tokens/s, so {three / one:.2f}×"
            lines.append(derived)
            run["scale_out"] = scale
    placed = [r for r in runs if r["placed"]]
    if placed:
        lines += _placed_lines(runs, placed)
    fitted = fits(runs)
    results["fits"] = fitted
    if fitted:
        lines += _fit_lines(fitted)
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Redis CPU per chunk by level and write window; delivery delay by write window;
    per-master CPU per chunk and share on the cluster; placed against not placed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    single = [r for r in runs if r["target"] == "single"]
    clustered = [r for r in runs if r["target"] == "cluster"]
    levels = sorted({r["streams"] for r in runs})
    gathers = results["gathers"]
    bars = sum(len(run["nodes"]) for run in clustered)
    widths = [5.0, 5.0, max(5.0, 0.4 * bars)][: 3 if clustered else 2]
    pairs = _placed_pairs(runs)
    if pairs:
        widths.append(max(4.0, 1.2 * len(pairs)))
    fig, axes = plt.subplots(
        1, len(widths), figsize=(sum(widths), 4.5), gridspec_kw={"width_ratios": widths}
    )
    width = 0.8 / len(gathers)
    for g, gather in enumerate(gathers):
        found = [
            next((r for r in single if (r["streams"], r["write_gather"]) == (level, gather)), None)
            for level in levels
        ]
        xs = [x + g * width for x in range(len(levels))]
        bars_of = axes[0].bar(
            xs,
            [r["redis_cpu_us_per_chunk"] if r else 0.0 for r in found],
            width,
            label=f"write_gather {gather * 1e3:g} ms",
            color=f"C{g}",
        )
        for bar, r in zip(bars_of, found, strict=True):
            if r and r["client_bound"]:  # hatched: the clients could not keep the pace
                bar.set_hatch("//")
    axes[0].set_xticks([x + width * (len(gathers) - 1) / 2 for x in range(len(levels))])
    axes[0].set_xticklabels([f"{level:,} streams" for level in levels])
    axes[0].set_ylabel("Redis CPU per chunk (µs)")
    axes[0].set_title(
        f"Redis's own CPU per chunk, {results['rate_per_stream']:g} chunks/s per stream", fontsize=9
    )
    axes[0].legend(fontsize=7, title="hatched: client-bound", title_fontsize=7)
    for number, level in enumerate(levels):
        rows = sorted((r for r in single if r["streams"] == level), key=lambda r: r["write_gather"])
        xs = [r["write_gather"] * 1e3 for r in rows]
        color = f"C{number}"
        p50 = [r["delay_ms"]["p50"] for r in rows]
        p99 = [r["delay_ms"]["p99"] for r in rows]
        axes[1].plot(xs, p50, "o-", color=color, label=f"{level:,} streams p50")
        axes[1].plot(xs, p99, "s--", color=color, label=f"{level:,} streams p99")
    axes[1].set_xlabel("write_gather (ms)")
    axes[1].set_ylabel("yield → remote reader (ms)")
    axes[1].set_title("delivery delay the write window adds", fontsize=9)
    axes[1].legend(fontsize=7)
    if clustered:
        labels, costs, shares, colors = [], [], [], []
        for run in clustered:
            base = next(
                (r for r in single if (r["streams"], r["write_gather"])
                 == (run["streams"], run["write_gather"])),
                None,
            )  # fmt: skip
            if base is not None:
                labels.append(f"{run['streams']:,}\none server\n{run['write_gather'] * 1e3:g}ms")
                costs.append(base["redis_cpu_us_per_chunk"])
                shares.append(1.0)
                colors.append("#999999")
            for name, node in run["nodes"].items():
                if name.startswith("master") and node["cpu_us_per_chunk"]:
                    labels.append(f"{run['streams']:,}\n{name}\n{run['write_gather'] * 1e3:g}ms")
                    costs.append(node["cpu_us_per_chunk"])
                    shares.append(node["chunk_share"])
                    colors.append("#3366cc")
        axes[2].bar(range(len(labels)), costs, color=colors, tick_label=labels)
        for x, (cost, share) in enumerate(zip(costs, shares, strict=True)):
            axes[2].annotate(f"{share:.0%}", (x, cost), ha="center", va="bottom", fontsize=7)
        axes[2].set_ylabel("CPU per chunk it carried (µs)")
        axes[2].set_title(
            "one redis-server (grey) vs each Cluster master (share of chunks)", fontsize=9
        )
        axes[2].tick_params(axis="x", labelsize=6, labelrotation=90)
    if pairs:
        ax = axes[-1]
        for offset, (label, pick) in enumerate((("not placed", 0), ("placed", 1))):
            xs = [x + (offset - 0.5) * 0.4 for x in range(len(pairs))]
            values = [pair[pick]["redis_cpu_us_per_chunk"] for pair in pairs]
            ax.bar(xs, values, 0.4, label=label, color=("#999999", "#3366cc")[pick])
        ax.set_xticks(range(len(pairs)))
        ax.set_xticklabels(
            [
                f"{base['target']}\n{base['write_gather'] * 1e3:g} ms\n"
                f"{base['producers']} producers"
                for base, _ in pairs
            ],
            fontsize=7,
        )
        ax.set_ylabel("Redis CPU per chunk, all masters (µs)")
        ax.set_title("streams placed by producer, or not", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _placed_pairs(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(not placed, placed) runs of the same target, level, window and processes."""
    pairs = []
    for run in runs:
        if not run["placed"]:
            continue
        for base in runs:
            same = (base["streams"], base["write_gather"], base["producers"], base["readers"]) == (
                run["streams"],
                run["write_gather"],
                run["producers"],
                run["readers"],
            )
            if not base["placed"] and same and run["target"] == f"{base['target']}, placed":
                pairs.append((base, run))
    return pairs


def per_level(text: str, levels: list[int], name: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if len(values) == 1:
        return values * len(levels)
    if len(values) != len(levels) or min(values) < 1:
        raise SystemExit(f"--{name}: one positive count, or one per level")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--levels", default="100,1000,5000", help="comma-separated stream counts")
    parser.add_argument(
        "--producers", default="1", help="producer processes: one count, or one per level"
    )
    parser.add_argument(
        "--readers", help="reader processes: one count, or one per level (default: --producers)"
    )
    parser.add_argument(
        "--gathers", default="0.002", help="comma-separated RedisBackend write_gather seconds"
    )
    parser.add_argument(
        "--cluster", action="store_true", help="also on a 3-master Redis Cluster, same run"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=RATE,
        help="chunks per second per stream (default: a model's pace); lower it to run many\n"
        "streams on a machine without the cores for them at that pace",
    )
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--stem", default="redis-cost", help="results file name")
    parser.add_argument("--role", choices=("produce", "read"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--epoch", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--gather", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--placement", default="[]", help=argparse.SUPPRESS)
    parser.add_argument(
        "--placed",
        choices=("no", "yes", "both"),
        default="no",
        help="streams placed by producer (RedisBackend(placement_separator=...)): each\n"
        "producer's streams one group, on one master; 'both' runs each level both ways",
    )
    args = parser.parse_args()
    if args.role:
        role_main(args)
        return
    # The servers and children are ended by the contexts below, on SIGTERM too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    levels = [int(level) for level in args.levels.split(",")]
    producers = per_level(args.producers, levels, "producers")
    readers = per_level(args.readers or args.producers, levels, "readers")
    gathers = [float(g) for g in args.gathers.split(",")]
    if not all(0 <= g <= 1 for g in gathers) or not 0 < args.window <= 300:
        raise SystemExit("write_gather must be between 0 and 1 s, the window up to 300 s")
    if not 0 < args.rate <= 1000:
        raise SystemExit("--rate must be above 0 and at most 1000 chunks/s")
    placements = {"no": [False], "yes": [True], "both": [False, True]}[args.placed]
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        targets = [stack.enter_context(single_server())]
        if args.cluster:
            targets.append(stack.enter_context(redis_cluster(3)))
        for streams, makers, followers in zip(levels, producers, readers, strict=True):
            for gather in gathers:
                # Side by side, so both targets (and both placements) see the same load.
                for target, placed in itertools.product(targets, placements):
                    print(
                        f"{target.name}{', placed' if placed else ''}: {streams:,} streams,"
                        f" write_gather {gather * 1e3:g} ms,"
                        f" {makers} producer / {followers} reader processes ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    level = Level(
                        streams, gather, makers, followers, args.rate, args.warmup, args.window,
                        placed,
                    )  # fmt: skip
                    runs.append(measure(target, level))
    results = {
        "window_s": args.window,
        "rate_per_stream": args.rate,
        "delay_sample": DELAY_SAMPLE,
        "gathers": gathers,
        "runs": runs,
    }
    print(report(results))
    save_results(args.stem, results, chart)


if __name__ == "__main__":
    main()
