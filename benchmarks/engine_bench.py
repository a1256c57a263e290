"""Stream engine benchmarks, each compared with a baseline measured in the same run.

Run:  .venv/bin/python benchmarks/engine_bench.py [--redis-url URL] [--quick]

Prints a table, writes benchmarks/results/engine.json and engine.png. Measures:

1. throughput of one stream of 10,000 × 20-byte chunks: plain async iteration of the source
   (baseline), the engine with no reader, with 1 and with 10 attached readers (readers in a
   second engine over the same backend, as another worker would be);
2. time from a resume call to its first chunk (median, p99 over 200+ resumes, with 100 other
   streams active);
3. Redis commands and round trips per chunk; Python heap per active stream;
4. 1,000 concurrent streams at 30 chunks/s: delay from append to a reader (p50/p99) and CPU
   per chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

from unbroken import MemoryBackend, StreamEnd, StreamEngine
from unbroken.backends.base import Backend

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = "x" * 19 + " "  # 20 bytes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def source(n: int) -> AsyncIterator[str]:
    for _ in range(n):
        yield CHUNK


async def timed_source(n: int, rate: float, stamps: dict[int, float]) -> AsyncIterator[str]:
    """Yields ``n`` chunks at ``rate`` per second; each chunk carries its own index."""
    for i in range(n):
        await anyio.sleep(1 / rate)
        stamps[i] = time.perf_counter()
        yield f"{i:08d}"


class RedisCounter:
    """Counts commands (server side) and round trips (client side) against one Redis."""

    def __init__(self, url: str) -> None:
        import redis
        from redis.asyncio.connection import Connection

        self.sync = redis.Redis.from_url(url)
        self.round_trips = 0
        original = Connection.send_packed_command
        counter = self

        async def counting(self: Any, command: Any, check_health: bool = True) -> None:
            counter.round_trips += 1
            await original(self, command, check_health)

        Connection.send_packed_command = counting  # type: ignore[method-assign]

    def commands(self) -> int:
        return int(self.sync.info("stats")["total_commands_processed"])


def make_backend_factory(kind: str, url: str | None, prefix: str) -> Callable[[], Backend]:
    if kind == "memory":
        shared = MemoryBackend(reader_buffer=4096)
        return lambda: shared
    from unbroken.backends.redis import RedisBackend

    assert url
    return lambda: RedisBackend(url, key_prefix=prefix, reader_buffer=4096)


async def throughput(make: Callable[[], Backend], kind: str, n: int, readers: int) -> float:
    """Chunks per second from start until every reader has the end (or the stream is done)."""
    owns = kind != "memory"
    producer = StreamEngine(make(), owns_backend=owns)
    reader = StreamEngine(make(), owns_backend=owns)
    stream_id = f"tp-{uuid.uuid4().hex}"
    async with producer, reader:

        async def read() -> None:
            count = 0
            async for item in reader.read(stream_id):
                if isinstance(item, StreamEnd):
                    assert count == n, (count, n)
                    return
                count += 1

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            await producer.start(stream_id, source(n))
            for _ in range(readers):
                tg.start_soon(read)
            if readers == 0:
                await producer.wait(stream_id)
        return n / (time.perf_counter() - t0)


async def baseline_throughput(n: int) -> float:
    t0 = time.perf_counter()
    count = 0
    async for _ in source(n):
        count += 1
    return count / (time.perf_counter() - t0)


async def resume_latency(make: Callable[[], Backend], kind: str, resumes: int) -> list[float]:
    owns = kind != "memory"
    producer = StreamEngine(make(), owns_backend=owns)
    reader = StreamEngine(make(), owns_backend=owns)
    stop = anyio.Event()

    async def slow(i: int) -> AsyncIterator[str]:
        yield f"first chunk of {i} "
        while not stop.is_set():
            await anyio.sleep(0.05)
            yield "more "

    latencies: list[float] = []
    async with producer, reader:
        ids = [f"bg-{uuid.uuid4().hex}" for _ in range(101)]
        for i, stream_id in enumerate(ids):
            await producer.start(stream_id, slow(i))
        await anyio.sleep(0.2)
        for i in range(resumes):
            stream_id = ids[i % len(ids)]
            t0 = time.perf_counter()
            async for _item in reader.read(stream_id):
                latencies.append(time.perf_counter() - t0)
                break
        stop.set()
    return latencies


async def commands_per_chunk(url: str, prefix: str, n: int, readers: int) -> dict[str, float]:
    from unbroken.backends.redis import RedisBackend

    counter = RedisCounter(url)
    producer = StreamEngine(RedisBackend(url, key_prefix=prefix))
    reader = StreamEngine(RedisBackend(url, key_prefix=prefix))
    async with producer, reader:
        stream_id = f"cmd-{uuid.uuid4().hex}"
        before_cmd, before_rt = counter.commands(), counter.round_trips
        await producer.start(stream_id, source(n))
        async with anyio.create_task_group() as tg:
            for _ in range(readers):

                async def read() -> None:
                    async for _ in reader.read(stream_id):
                        pass

                tg.start_soon(read)
            await producer.wait(stream_id)
        commands = counter.commands() - before_cmd
        round_trips = counter.round_trips - before_rt
    return {"commands_per_chunk": commands / n, "round_trips_per_chunk": round_trips / n}


async def heap_per_stream(make: Callable[[], Backend], kind: str, streams: int) -> float:
    owns = kind != "memory"
    stop = anyio.Event()

    async def idle() -> AsyncIterator[str]:
        yield "hello "
        await stop.wait()

    engine = StreamEngine(make(), owns_backend=owns)
    async with engine:
        await anyio.sleep(0.05)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(streams):
            await engine.start(f"heap-{uuid.uuid4().hex}", idle())
        await anyio.sleep(0.3)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stop.set()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / streams


async def many_streams(
    make: Callable[[], Backend], kind: str, streams: int, rate: float, seconds: float
) -> dict[str, float]:
    owns = kind != "memory"
    producer = StreamEngine(make(), owns_backend=owns)
    reader = StreamEngine(make(), owns_backend=owns)
    per_stream = int(rate * seconds)
    delays: list[float] = []
    async with producer, reader:
        stamps: list[dict[int, float]] = [{} for _ in range(streams)]
        ids = [f"many-{uuid.uuid4().hex}" for _ in range(streams)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:

            async def follow(k: int) -> None:
                async for item in reader.read(ids[k]):
                    if isinstance(item, StreamEnd):
                        return
                    delays.append(time.perf_counter() - stamps[k][int(item.data)])

            for k in range(streams):
                await producer.start(ids[k], timed_source(per_stream, rate, stamps[k]))
                tg.start_soon(follow, k)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    chunks = streams * per_stream
    return {
        "streams": streams,
        "chunks": chunks,
        "wall_s": wall,
        "delay_p50_ms": percentile(delays, 0.5) * 1000,
        "delay_p99_ms": percentile(delays, 0.99) * 1000,
        "cpu_us_per_chunk": cpu / chunks * 1e6,
    }


async def many_streams_baseline(streams: int, rate: float, seconds: float) -> dict[str, float]:
    """The same sources read directly by their consumers: no engine, no resumability."""
    per_stream = int(rate * seconds)
    delays: list[float] = []
    stamps: list[dict[int, float]] = [{} for _ in range(streams)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:

        async def consume(k: int) -> None:
            async for data in timed_source(per_stream, rate, stamps[k]):
                delays.append(time.perf_counter() - stamps[k][int(data)])

        for k in range(streams):
            tg.start_soon(consume, k)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    chunks = streams * per_stream
    return {
        "streams": streams,
        "chunks": chunks,
        "wall_s": wall,
        "delay_p50_ms": percentile(delays, 0.5) * 1000,
        "delay_p99_ms": percentile(delays, 0.99) * 1000,
        "cpu_us_per_chunk": cpu / chunks * 1e6,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = 2_000 if args.quick else 10_000
    results: dict[str, Any] = {"chunks": n, "chunk_bytes": len(CHUNK), "backends": {}}
    results["baseline_chunks_per_s"] = statistics.median(
        [await baseline_throughput(n) for _ in range(3)]
    )
    many = (200, 2.0) if args.quick else (1000, 5.0)
    results["many_streams_baseline"] = await many_streams_baseline(many[0], 30.0, many[1])
    kinds = ["memory"] + (["redis"] if args.redis_url else [])
    for kind in kinds:
        prefix = f"unbroken-bench-{uuid.uuid4().hex[:8]}"
        make = make_backend_factory(kind, args.redis_url, prefix)
        entry: dict[str, Any] = {}
        if kind == "memory":
            await make().open()
        for readers in (0, 1, 10):
            entry[f"chunks_per_s_{readers}_readers"] = statistics.median(
                [await throughput(make, kind, n, readers) for _ in range(3)]
            )
        lat = await resume_latency(make, kind, 100 if args.quick else 300)
        entry["resume_first_chunk_ms"] = {
            "median": statistics.median(lat) * 1000,
            "p99": percentile(lat, 0.99) * 1000,
            "count": len(lat),
        }
        entry["heap_bytes_per_active_stream"] = await heap_per_stream(
            make, kind, 200 if args.quick else 1000
        )
        entry["many_streams"] = await many_streams(make, kind, many[0], 30.0, many[1])
        if kind == "redis":
            entry["redis_per_chunk_no_reader"] = await commands_per_chunk(
                args.redis_url, prefix, n, 0
            )
            entry["redis_per_chunk_1_reader"] = await commands_per_chunk(
                args.redis_url, prefix, n, 1
            )
            await cleanup(args.redis_url, prefix)
        results["backends"][kind] = entry
    return results


async def cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    keys = [k async for k in client.scan_iter(match=f"*{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def report(results: dict[str, Any]) -> str:
    base = results["baseline_chunks_per_s"]
    lines = [
        f"one stream of {results['chunks']:,} x {results['chunk_bytes']}-byte chunks;"
        " baseline = plain async iteration of the same source",
        f"{'measure':<44}" + "".join(f"{kind:>16}" for kind in results["backends"]),
    ]

    def row(label: str, get: Callable[[dict[str, Any]], str]) -> None:
        lines.append(
            f"{label:<44}" + "".join(f"{get(e):>16}" for e in results["backends"].values())
        )

    lines.append(f"{'baseline chunks/s':<44}{base:>16,.0f}")
    for readers in (0, 1, 10):
        key = f"chunks_per_s_{readers}_readers"
        row(f"engine, {readers} reader(s): chunks/s", lambda e, k=key: f"{e[k]:,.0f}")
        row(f"engine, {readers} reader(s): x baseline", lambda e, k=key: f"{e[k] / base:.3f}")
    row(
        "resume -> first chunk median (ms)", lambda e: f"{e['resume_first_chunk_ms']['median']:.3f}"
    )
    row("resume -> first chunk p99 (ms)", lambda e: f"{e['resume_first_chunk_ms']['p99']:.3f}")
    row(
        "python heap per active stream (bytes)",
        lambda e: f"{e['heap_bytes_per_active_stream']:,.0f}",
    )
    b = results["many_streams_baseline"]
    lines.append(
        f"{'1,000 streams @30/s, baseline: p50/p99 ms':<44}"
        f"{b['delay_p50_ms']:>8.2f}{b['delay_p99_ms']:>8.2f}"
    )
    lines.append(
        f"{'1,000 streams @30/s, baseline: CPU/chunk us':<44}{b['cpu_us_per_chunk']:>16.1f}"
    )
    row("1,000 streams @30/s: delay p50 (ms)", lambda e: f"{e['many_streams']['delay_p50_ms']:.2f}")
    row("1,000 streams @30/s: delay p99 (ms)", lambda e: f"{e['many_streams']['delay_p99_ms']:.2f}")
    row(
        "1,000 streams @30/s: CPU per chunk (us)",
        lambda e: f"{e['many_streams']['cpu_us_per_chunk']:.1f}",
    )
    if "redis" in results["backends"]:
        r = results["backends"]["redis"]
        for key in ("redis_per_chunk_no_reader", "redis_per_chunk_1_reader"):
            lines.append(
                f"{key.replace('_', ' '):<44}"
                f"{'commands ' + format(r[key]['commands_per_chunk'], '.3f'):>16}"
                f"{'round trips ' + format(r[key]['round_trips_per_chunk'], '.3f'):>20}"
            )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = ["0 readers", "1 reader", "10 readers"]
    width = 0.35
    for i, (kind, entry) in enumerate(results["backends"].items()):
        values = [
            entry[f"chunks_per_s_{r}_readers"] / results["baseline_chunks_per_s"]
            for r in (0, 1, 10)
        ]
        ax.bar([x + i * width for x in range(3)], values, width, label=kind)
    ax.set_xticks([x + width / 2 for x in range(3)], labels)
    ax.set_ylabel("throughput / plain iteration (same run)")
    ax.set_yscale("log")
    ax.set_title(f"one stream of {results['chunks']:,} x 20-byte chunks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    if args.no_redis:
        args.redis_url = None
    results = anyio.run(run, args)
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(results, indent=2))
    chart(results, RESULTS / "engine.png")
    print(report(results))
    print(f"\nwrote {RESULTS / 'engine.json'} and {RESULTS / 'engine.png'}")


if __name__ == "__main__":
    main()
