"""What a token costs Redis: its CPU per chunk and the commands it runs per chunk.

Run:  .venv/bin/python benchmarks/redis_cost.py [--levels 100,1000] [--window 10]

For each level, that many streams produce a 20-byte chunk every 1/30 s (LLM pace) in one
process (one engine); another process reads every stream on a second engine, so each chunk
also goes out as a notification. Both talk to a redis-server this script starts on a free
port. After a warm-up, the script reads redis-server's CPU time from /proc/<pid>/stat and
resets ``INFO commandstats``; after the window it reads both again. Per chunk (a chunk is one
XADD, so Redis's own count is the denominator): Redis CPU in µs, and the calls of each
command, scripts' inner commands included. At the end every reader must have every chunk.

Prints a table and writes benchmarks/results/redis-cost.json and redis-cost.png. The two
processes may not reach the target rate on a small machine: the achieved rate is printed
next to it, and the per-chunk figures hold for the rate achieved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results
from peers_bench import redis_server

CHUNK = "x" * 19 + " "
RATE = 30.0  # chunks per second per stream: a model's token pace


def redis_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


async def produce(url: str, prefix: str, ids: list[str], until: float) -> dict[str, Any]:
    """Run one stream per id at RATE until the wall clock passes ``until``."""
    from unbroken import StreamEngine
    from unbroken.backends.redis import RedisBackend

    produced = 0

    async def paced() -> Any:
        nonlocal produced
        await asyncio.sleep(random.random() / RATE)  # streams out of step, like real ones
        while time.time() < until:
            await asyncio.sleep(1 / RATE)
            produced += 1
            yield CHUNK

    running = len(ids)
    all_ended = asyncio.Event()

    async def ended(_end: Any) -> None:
        nonlocal running
        running -= 1
        if running == 0:
            all_ended.set()

    cpu = time.process_time()
    async with StreamEngine(RedisBackend(url, key_prefix=prefix)) as engine:
        for stream_id in ids:
            await engine.start(stream_id, paced(), on_end=ended)
        await all_ended.wait()
    return {"produced": produced, "cpu_s": time.process_time() - cpu}


async def read(url: str, prefix: str, ids: list[str]) -> dict[str, Any]:
    """Read every stream to its end on an engine of this process's own."""
    from unbroken import StreamEnd, StreamEngine, StreamNotFoundError
    from unbroken.backends.redis import RedisBackend

    received = 0
    ended = 0

    async def follow(engine: StreamEngine, stream_id: str) -> None:
        nonlocal received, ended
        while True:
            try:
                async for item in engine.read(stream_id):
                    if isinstance(item, StreamEnd):
                        ended += item.state.value == "done"
                    else:
                        received += 1
                return
            except StreamNotFoundError:
                await asyncio.sleep(0.05)  # its producer has not claimed it yet

    cpu = time.process_time()
    backend = RedisBackend(url, key_prefix=prefix, reader_buffer=4096)
    async with StreamEngine(backend) as engine:
        await asyncio.gather(*(follow(engine, stream_id) for stream_id in ids))
    return {"received": received, "ended_done": ended, "cpu_s": time.process_time() - cpu}


def role_main(args: argparse.Namespace) -> None:
    """A child process: the producers or the readers of one level."""
    ids = [f"{args.run}-{k}" for k in range(args.streams)]
    if args.role == "produce":
        result = asyncio.run(produce(args.url, args.prefix, ids, args.until))
    else:
        result = asyncio.run(read(args.url, args.prefix, ids))
    print(json.dumps(result), flush=True)


def command_stats(client: Any) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): values for name, values in stats.items()}


def measure_level(url: str, pid: int, streams: int, warmup: float, window: float) -> dict[str, Any]:
    """One level: children started, a steady window measured, every chunk checked."""
    import redis

    client = redis.Redis.from_url(url)
    run, prefix = f"cost-{uuid.uuid4().hex[:8]}", f"cost-{uuid.uuid4().hex[:8]}"
    until = time.time() + warmup + window + 1.0

    def child(role: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                *(sys.executable, __file__, "--role", role, "--url", url, "--prefix", prefix),
                *("--run", run, "--streams", str(streams), "--until", str(until)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

    readers = child("read")
    producers = child("produce")
    time.sleep(warmup)
    client.config_resetstat()
    cpu0, wall0 = redis_cpu_seconds(pid), time.perf_counter()
    time.sleep(window)
    cpu1, wall1 = redis_cpu_seconds(pid), time.perf_counter()
    stats = command_stats(client)
    produced = json.loads(producers.communicate(timeout=120)[0].strip().splitlines()[-1])
    received = json.loads(readers.communicate(timeout=120)[0].strip().splitlines()[-1])
    client.close()
    chunks = int(stats.get("xadd", {}).get("calls", 0))
    if chunks == 0:
        raise RuntimeError("no chunk was appended during the window")
    per_chunk = {
        name: values["calls"] / chunks
        for name, values in sorted(stats.items(), key=lambda item: -item[1]["calls"])
        if name not in ("config|resetstat", "info")
    }
    return {
        "streams": streams,
        "target_chunks_per_s": streams * RATE,
        "chunks_per_s": chunks / (wall1 - wall0),
        "window_chunks": chunks,
        "redis_cpu_us_per_chunk": (cpu1 - cpu0) / chunks * 1e6,
        "redis_cpu_share": (cpu1 - cpu0) / (wall1 - wall0),
        "commands_per_chunk": per_chunk,
        "usec_per_call": {name: values["usec_per_call"] for name, values in stats.items()},
        "produced": produced["produced"],
        "received": received["received"],
        "ended_done": received["ended_done"],
        "producer_cpu_s": produced["cpu_s"],
        "reader_cpu_s": received["cpu_s"],
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        "| streams at 30 chunks/s | chunks/s (target) | Redis CPU per chunk (µs) |"
        " Redis core busy | commands per chunk | every chunk read |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for level in results["levels"]:
        total = sum(level["commands_per_chunk"].values())
        whole = level["received"] == level["produced"] and level["ended_done"] == level["streams"]
        lines.append(
            f"| {level['streams']:,} | {level['chunks_per_s']:,.0f} "
            f"({level['target_chunks_per_s']:,.0f}) | {level['redis_cpu_us_per_chunk']:.1f} | "
            f"{level['redis_cpu_share']:.0%} | {total:.2f} | "
            f"{'yes' if whole else 'NO'} ({level['received']:,}/{level['produced']:,}) |"
        )
    lines.append("\ncommands per chunk (calls per XADD), largest first:")
    for level in results["levels"]:
        parts = [
            f"{name} {calls:.2f}"
            for name, calls in level["commands_per_chunk"].items()
            if calls >= 0.005
        ]
        lines.append(f"  {level['streams']:,} streams: " + ", ".join(parts))
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Redis CPU per chunk for each level, split by command count on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["levels"]
    labels = [f"{level['streams']:,} streams" for level in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(labels, [level["redis_cpu_us_per_chunk"] for level in levels], color="#3366cc")
    left.set_ylabel("Redis CPU per chunk (µs)")
    left.set_title("Redis's own CPU per chunk at 30 chunks/s per stream")
    names = sorted({name for level in levels for name in level["commands_per_chunk"]})
    names = [
        name for name in names if max(lv["commands_per_chunk"].get(name, 0) for lv in levels) > 0.01
    ]
    bottom = [0.0] * len(levels)
    for name in names:
        values = [level["commands_per_chunk"].get(name, 0.0) for level in levels]
        right.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set_ylabel("commands per chunk")
    right.set_title("commands per chunk (scripts' inner commands included)")
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--levels", default="100,1000", help="comma-separated stream counts")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--stem", default="redis-cost", help="results file name")
    parser.add_argument("--role", choices=("produce", "read"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role_main(args)
        return
    levels = [int(level) for level in args.levels.split(",")]
    measured = []
    with redis_server() as (url, process):
        for streams in levels:
            measured.append(measure_level(url, process.pid, streams, args.warmup, args.window))
    results = {"window_s": args.window, "rate_per_stream": RATE, "levels": measured}
    print(report(results))
    save_results(args.stem, results, chart)


if __name__ == "__main__":
    main()
