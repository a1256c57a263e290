"""Where a resume's time goes: one resume of a live stream, layer by layer, against the floor
of its one round trip to Redis.

Run:  .venv/bin/python benchmarks/resume_read_cost.py [--lengths 1,100,400] [--resumes 60]
          [--burst 1000]

`peers_bench.py` times `unbroken.compat` resumes against the npm package. This script takes
one such resume apart. One engine produces a stream, a chunk per log entry as at a model's
pace, and leaves it active at each length of ``--lengths``; a second engine (as another
process would: it reads through Redis) then reads it ``--resumes`` times, 20 ms apart with
the process idle between, as in `peers_bench.py`, each layer in turn on the same log:

- ``round trip``: the resume's three commands (the meta, the log's last entry, the log)
  written on a plain asyncio socket, the replies decoded by hiredis: one round trip and the
  reply's objects, with no client library around them (the floor);
- ``pipeline``: the same commands through the backend's pipeliner (redis-py's connection
  and parser);
- ``look``: the backend's `look`: the same pipeline, its replies read as a status and chunks;
- ``resume``: `ResumableStreamContext.resume_existing_stream` to its first text (the
  engine's reader, and the catch-up joined into one text);
- ``joined in Redis``: a Lua script that reads the log and joins its chunks into one reply,
  which Python cuts into the same chunks (a design not shipped: it moves the decoding of
  the log into Redis).

Then each layer runs ``--burst`` times back to back, for Redis's CPU per read (the time its
main thread ran, from /proc/<pid>/schedstat). Prints a table; writes
benchmarks/results/resume-read-cost.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import hiredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _redis_targets import Node, run_seconds, single_server
from _results import save_results

from unbroken import StreamEngine
from unbroken._models import Chunk, new_chunk
from unbroken.backends.redis import RedisBackend
from unbroken.backends.redis._backend import _read_command, _status_commands
from unbroken.compat import CATCH_UP_READ, ResumableStreamContext

PREFIX = "resume-read-cost"
CHUNK = "x" * 19 + " "
PAUSE = 0.02  # between two timed reads: the process idles, as between resumes in peers_bench
SETTLE = 0.2  # after a burst of reads, before Redis's CPU is read again
LAYERS = ("round trip", "pipeline", "look", "resume", "joined in Redis")

# The rejected design: Redis reads the log and joins it (offsets, lengths, data) so that the
# reply is a handful of strings instead of ~11 objects per entry. Entries other than the
# writers' usual four fields end the run; this script's logs have none.
JOINED_READ = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local offsets, lengths, datas = {}, {}, {}
for i, entry in ipairs(entries) do
  local f = entry[2]
  if #f ~= 8 or f[1] ~= 'o' or f[3] ~= 'n' or f[5] ~= 'd' then break end
  offsets[i], lengths[i], datas[i] = f[2], f[4], f[6]
end
return {table.concat(offsets, ' '), table.concat(lengths, ' '), table.concat(datas)}
"""


def joined_chunks(reply: list[bytes]) -> list[Chunk]:
    """`JOINED_READ`'s reply as chunks (every entry one chunk, from seq 0)."""
    offsets, lengths, data = reply
    text = data.decode("utf-8", "surrogatepass")
    chunks, position = [], 0
    for seq, (offset, length) in enumerate(zip(offsets.split(), lengths.split(), strict=True)):
        end = position + int(length)
        chunks.append(new_chunk(seq, text[position:end], int(offset)))
        position = end
    if position != len(text):
        raise ValueError("the lengths do not add up to the data")
    return chunks


class Layers:
    """Each layer of one resume, as an awaitable that reads the stream's log once."""

    def __init__(
        self, context: ResumableStreamContext, socket: tuple[Any, Any], stream_id: str
    ) -> None:
        backend = context.engine.backend
        assert isinstance(backend, RedisBackend)
        self.context, self.backend, self.stream_id = context, backend, stream_id
        self.reader, self.writer = socket
        keys = backend._keys(stream_id)
        read = _read_command(keys, -1, CATCH_UP_READ)
        assert read is not None
        self.commands = [*_status_commands(keys), read]
        self.packed = b"".join(hiredis.pack_command(command) for command in self.commands)
        self.joined_args = (keys.log, "0-1", CATCH_UP_READ)
        self.joined_sha = ""

    async def prepare(self) -> None:
        pipeliner = self.backend._open_pipeliner()
        self.joined_sha = await pipeliner.call("SCRIPT", "LOAD", JOINED_READ)

    def by_name(self) -> dict[str, Callable[[], Awaitable[int]]]:
        return dict(
            zip(
                LAYERS,
                (self.round_trip, self.pipeline, self.look, self.resume, self.joined),
                strict=True,
            )
        )

    async def round_trip(self) -> int:
        parser = hiredis.Reader()
        self.writer.write(self.packed)
        replies: list[Any] = []
        while len(replies) < len(self.commands):
            parser.feed(await self.reader.read(1 << 20))
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        return len(replies[-1])

    async def pipeline(self) -> int:
        replies = await self.backend._open_pipeliner().call_many(self.commands)
        return len(replies[-1][0])

    async def look(self) -> int:
        _, chunks = await self.backend.look(self.stream_id, after=-1, limit=CATCH_UP_READ)
        return len(chunks)

    async def resume(self) -> int:
        stream = await self.context.resume_existing_stream(self.stream_id)
        assert stream is not None, "the stream is not active"
        try:
            return len(await anext(stream))
        finally:
            await stream.aclose()

    async def joined(self) -> int:
        return len(await self.joined_chunks())

    async def joined_chunks(self) -> list[Chunk]:
        pipeliner = self.backend._open_pipeliner()
        reply = await pipeliner.call("EVALSHA", self.joined_sha, 1, *self.joined_args)
        return joined_chunks(reply)

    async def check(self, length: int) -> None:
        """Every layer reads the whole log (each counts what it read: entries, chunks, or
        the catch-up's characters), and the joined read the same chunks as `look`."""
        expected = dict.fromkeys(LAYERS, length) | {"resume": length * len(CHUNK)}
        for name, read in self.by_name().items():
            if await read() != expected[name]:
                raise SystemExit(f"{name} did not read the whole log of {length} chunks")
        _, looked = await self.backend.look(self.stream_id, after=-1, limit=CATCH_UP_READ)
        if await self.joined_chunks() != looked:
            raise SystemExit(f"the joined read disagrees with look on {length} chunks")


async def produce(engine: StreamEngine, stream_id: str, length: int) -> asyncio.Event:
    """Start a stream of ``length`` chunks, a log entry each, that stays active until the
    returned event is set; returns once every chunk is in Redis."""
    release = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        for _ in range(length):
            await asyncio.sleep(0.004)  # longer than the write window: an entry per chunk
            yield CHUNK
        await release.wait()

    await engine.start(stream_id, source())
    deadline = time.monotonic() + 30
    while True:
        status = await engine.status(stream_id)
        if status is not None and status.chunk_count >= length:
            return release
        if time.monotonic() > deadline:
            raise SystemExit(f"the stream did not reach {length} chunks")
        await asyncio.sleep(0.05)


async def measure(url: str, node: Node, length: int, resumes: int, burst: int) -> dict[str, Any]:
    stream_id = f"stream-{length}"
    producer = StreamEngine(RedisBackend(url, key_prefix=f"{PREFIX}:rs"))
    context = ResumableStreamContext(
        StreamEngine(RedisBackend(url, key_prefix=f"{PREFIX}:rs")), owns_engine=True
    )
    async with producer, context:
        release = await produce(producer, stream_id, length)
        socket = await asyncio.open_connection("127.0.0.1", node.port)
        try:
            layers = Layers(context, socket, stream_id)
            await layers.prepare()
            await layers.check(length)
            reads = layers.by_name()
            timings: dict[str, list[float]] = {name: [] for name in LAYERS}
            cpu: dict[str, float] = dict.fromkeys(LAYERS, 0.0)
            for turn in range(resumes + 1):  # the first turn warms the connections
                for name, read in reads.items():
                    cpu_begun, begun = time.process_time(), time.perf_counter()
                    await read()
                    ms = (time.perf_counter() - begun) * 1000
                    if turn:
                        timings[name].append(ms)
                        cpu[name] += time.process_time() - cpu_begun
                    await asyncio.sleep(PAUSE)
            redis_us: dict[str, float] = {}
            for name, read in reads.items():
                started = run_seconds(node.pid)
                for _ in range(burst):
                    await read()
                await asyncio.sleep(SETTLE)  # what a read leaves to do (an unsubscribe)
                redis_us[name] = (run_seconds(node.pid) - started) * 1e6 / burst
        finally:
            socket[1].close()
            release.set()
    return {
        "length": length,
        "layers": {
            name: {
                "median_ms": statistics.median(timings[name]),
                "p90_ms": statistics.quantiles(timings[name], n=10)[-1],
                "cpu_ms": cpu[name] * 1000 / resumes,
                "redis_us": redis_us[name],
            }
            for name in LAYERS
        },
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        "| log entries | layer | median | p90 | this process's CPU | Redis CPU per read |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        for name, layer in run["layers"].items():
            lines.append(
                f"| {run['length']:,} | {name} | {layer['median_ms']:.3f} ms "
                f"| {layer['p90_ms']:.3f} ms | {layer['cpu_ms']:.3f} ms "
                f"| {layer['redis_us']:.0f} µs |"
            )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    lengths = [run["length"] for run in results["runs"]]
    for number, name in enumerate(LAYERS):
        layers = [run["layers"][name] for run in results["runs"]]
        style = {"marker": "o", "color": f"C{number}", "label": name}
        left.plot(lengths, [layer["median_ms"] for layer in layers], **style)
        right.plot(lengths, [layer["redis_us"] for layer in layers], **style)
    left.set_ylabel("call to the log read, median (ms)")
    right.set_ylabel("Redis CPU per read (µs)")
    for ax in (left, right):
        ax.set_xlabel("log entries (one chunk each)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle("one resume's read of a live stream, layer by layer", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--lengths", default="1,100,400", help="log entries of the streams")
    parser.add_argument("--resumes", type=int, default=60, help="timed reads per layer")
    parser.add_argument("--burst", type=int, default=1000, help="reads per layer for Redis's CPU")
    args = parser.parse_args()
    lengths = [int(value) for value in args.lengths.split(",")]
    if min(lengths) < 1 or max(lengths) > CATCH_UP_READ or args.resumes < 2:
        raise SystemExit(f"--lengths: 1 to {CATCH_UP_READ} each; --resumes: 2 or more")
    runs = []
    with single_server() as target:
        node = target.masters[0]
        for length in lengths:
            print(f"a log of {length} entries ...", file=sys.stderr, flush=True)
            runs.append(asyncio.run(measure(target.url, node, length, args.resumes, args.burst)))
            target.flush()
    results = {"resumes": args.resumes, "burst": args.burst, "runs": runs}
    print(report(results))
    save_results("resume-read-cost", results, chart)


if __name__ == "__main__":
    main()
