"""unbroken.compat against the npm ``resumable-stream`` package and its PyPI port, one run.

Run:  .venv/bin/python benchmarks/peers_bench.py [--rounds 3] [--resumes 40] [--skip npm,pypi]

Each library does the same work against one redis-server this script starts on a free port:

1. one stream of 10,000 × 20-byte chunks (the source yields to the event loop every 100),
   read by its producer and by a resumer from a second context that attaches after 2,000
   chunks: chunks per second until both have read everything (median of the rounds);
2. resume latency: a producer in another process writes a chunk every 5 ms; a second process
   resumes it ``--resumes`` times (``resumeExistingStream`` / ``resume_existing_stream``) and
   times each call until its first chunk arrives: median, p90, p99.

The npm package is installed with npm into a temporary folder (skipped with a message when
``node`` or ``npm`` is missing); the PyPI port into its own temporary venv (skipped with a
message if it cannot be installed); unbroken runs from this venv. Prints a table and writes
benchmarks/results/peers.json and peers.png. The machine is shared: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results

NPM_PACKAGES = ["resumable-stream@2.2.13", "redis@4"]
PYPI_PACKAGE = "resumable-stream==0.2.0"
LIBRARIES = ("npm", "pypi", "unbroken")
LABELS = {
    "npm": "npm resumable-stream 2.2.13",
    "pypi": "PyPI resumable-stream 0.2.0",
    "unbroken": "unbroken.compat",
}

NODE_WORKER = r"""
const { createResumableStreamContext } = require("resumable-stream");
const [mode, streamId, count] = process.argv.slice(2);
const N = Number(count);
const CHUNK = "x".repeat(19) + " ";
const context = () =>
  createResumableStreamContext({ keyPrefix: process.env.BENCH_PREFIX, waitUntil: null });
const tick = () => new Promise((resolve) => setImmediate(resolve));
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function* fast() {
  for (let i = 0; i < N; i++) {
    if (i % 100 === 0) await tick();
    yield CHUNK;
  }
}
async function* slow() {
  for (let i = 0; i < 20000; i++) {
    await pause(5);
    yield CHUNK;
  }
}
async function drain(stream, onChunk) {
  const reader = stream.getReader();
  let chars = 0, chunks = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return chars;
    chars += value.length;
    chunks += 1;
    if (onChunk) onChunk(chunks);
  }
}

async function throughput() {
  const producer = context(), resumer = context();
  await pause(100);  // both contexts' clients connected
  const started = performance.now();
  const stream = await producer.resumableStream(streamId, () => ReadableStream.from(fast()));
  let attached = null, resumed = 0;
  const own = await drain(stream, (n) => {
    if (n === 2000 && attached === null) {
      attached = resumer.resumeExistingStream(streamId).then((s) => drain(s))
        .then((chars) => { resumed = chars; });
    }
  });
  await attached;
  const seconds = (performance.now() - started) / 1000;
  console.log(JSON.stringify({ seconds, own, resumed }));
}

async function produce() {
  const producer = context();
  await pause(100);
  const make = () => ReadableStream.from(slow());
  const stream = await producer.createNewResumableStream(streamId, make);
  await drain(stream, (n) => { if (n === 5) console.log("ready"); });
}

async function resume() {
  const resumer = context();
  await pause(100);
  const latencies = [];
  for (let i = 0; i <= N; i++) {
    const started = performance.now();
    const stream = await resumer.resumeExistingStream(streamId);
    const reader = stream.getReader();
    await reader.read();
    const ms = performance.now() - started;
    await reader.cancel();
    if (i > 0) latencies.push(ms);  // the first one warms the connections
    await pause(20);
  }
  console.log(JSON.stringify({ latencies }));
}

({ throughput, produce, resume })[mode]().then(() => process.exit(0), (e) => {
  console.error(e);
  process.exit(1);
});
"""

PYTHON_WORKER = r"""
import asyncio, json, os, sys, time
from contextlib import AsyncExitStack

LIBRARY, MODE, STREAM_ID, COUNT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
URL, PREFIX = os.environ["REDIS_URL"], os.environ["BENCH_PREFIX"]
CHUNK = "x" * 19 + " "


async def context(stack):
    if LIBRARY == "unbroken":
        from unbroken.compat import create_resumable_stream_context

        made = create_resumable_stream_context(key_prefix=PREFIX, redis_url=URL)
        return await stack.enter_async_context(made)
    from resumable_stream import RedisPublisher, RedisSubscriber, create_resumable_stream_context

    publisher, subscriber = RedisPublisher(URL), RedisSubscriber(URL)
    await publisher.connect()
    await subscriber.connect()
    return create_resumable_stream_context(
        key_prefix=PREFIX, publisher=publisher, subscriber=subscriber
    )


async def fast():
    for i in range(COUNT):
        if i % 100 == 0:
            await asyncio.sleep(0)
        yield CHUNK


async def slow():
    for _ in range(20000):
        await asyncio.sleep(0.005)
        yield CHUNK


async def drain(stream, on_chunk=None):
    chars = chunks = 0
    async for text in stream:
        chars += len(text)
        chunks += 1
        if on_chunk is not None:
            on_chunk(chunks)
    return chars


async def throughput(stack):
    producer, resumer = await context(stack), await context(stack)
    resumed = []
    attached = []

    async def follow():
        resumed.append(await drain(await resumer.resume_existing_stream(STREAM_ID)))

    def on_chunk(n):
        if n == 2000 and not attached:
            attached.append(asyncio.ensure_future(follow()))

    started = time.perf_counter()
    stream = await producer.resumable_stream(STREAM_ID, fast)
    own = await drain(stream, on_chunk)
    await attached[0]
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "own": own, "resumed": resumed[0]}), flush=True)


async def produce(stack):
    producer = await context(stack)
    stream = await producer.create_new_resumable_stream(STREAM_ID, slow)

    def on_chunk(n):
        if n == 5:
            print("ready", flush=True)

    await drain(stream, on_chunk)


async def resume(stack):
    resumer = await context(stack)
    latencies = []
    for i in range(COUNT + 1):
        started = time.perf_counter()
        stream = await resumer.resume_existing_stream(STREAM_ID)
        await stream.__anext__()
        ms = (time.perf_counter() - started) * 1000
        await stream.aclose()
        if i > 0:  # the first one warms the connections
            latencies.append(ms)
        await asyncio.sleep(0.02)
    print(json.dumps({"latencies": latencies}), flush=True)


async def main():
    async with AsyncExitStack() as stack:
        await {"throughput": throughput, "produce": produce, "resume": resume}[MODE](stack)
    if LIBRARY != "unbroken":
        os._exit(0)  # the port's background listeners keep the loop from closing cleanly


asyncio.run(main())
"""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a private, diskless redis-server on a free loopback port; yield (url, process)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        process.terminate()
        process.wait(timeout=10)


def prepare_npm(folder: Path) -> list[str] | str:
    """Install the npm package; the command that runs the worker, or why it is skipped."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "skipped: node and npm are needed for the npm package"
    folder.mkdir()
    (folder / "package.json").write_text('{"name": "peers-bench", "private": true}')
    done = subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", *NPM_PACKAGES],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"skipped: npm install failed: {done.stderr.strip()[-300:]}"
    (folder / "worker.js").write_text(NODE_WORKER)
    return [node, str(folder / "worker.js")]


def prepare_pypi(folder: Path) -> list[str] | str:
    """Install the PyPI port in its own venv; the worker command, or why it is skipped."""
    venv = folder / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True)
    python = venv / "bin" / "python"
    if made.returncode != 0 or not python.exists():
        return "skipped: could not make a venv for the PyPI port"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", PYPI_PACKAGE],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"skipped: pip install {PYPI_PACKAGE} failed: {done.stderr.strip()[-300:]}"
    return [str(python), str(folder.parent / "worker.py"), "pypi"]


def run_worker(command: list[str], env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run a worker to its end and return the JSON it printed last."""
    done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{command[-1]} {args[0]} failed: {done.stderr.strip()[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def resume_latencies(command: list[str], env: dict[str, str], resumes: int) -> list[float]:
    """Latencies (ms) of ``resumes`` resumes of a live producer running in another process."""
    stream_id = f"latency-{uuid.uuid4().hex[:12]}"
    producer = subprocess.Popen(
        [*command, "produce", stream_id, "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert producer.stdout is not None
        if producer.stdout.readline().strip() != "ready":
            raise RuntimeError(f"producer did not start: {producer.stderr.read()[-800:]}")  # type: ignore[union-attr]
        latencies: list[float] = run_worker(command, env, "resume", stream_id, str(resumes))[
            "latencies"
        ]
        return latencies
    finally:
        producer.kill()
        producer.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    commands: dict[str, list[str]], url: str, rounds: int, resumes: int, count: int
) -> dict[str, dict[str, Any]]:
    """Every library's throughput (rounds interleaved) and resume latency."""
    env = {**os.environ, "REDIS_URL": url, "BENCH_PREFIX": f"peers-{uuid.uuid4().hex[:8]}"}
    env.pop("KV_URL", None)
    results: dict[str, dict[str, Any]] = {name: {"rates": []} for name in commands}
    for round_ in range(rounds):
        for name, command in commands.items():
            stream_id = f"throughput-{round_}-{uuid.uuid4().hex[:12]}"
            got = run_worker(command, env, "throughput", stream_id, str(count))
            expected = count * 20
            if got["own"] != expected or got["resumed"] != expected:
                raise RuntimeError(f"{name}: read {got['own']}/{got['resumed']} of {expected}")
            results[name]["rates"].append(count / got["seconds"])
    for name, command in commands.items():
        latencies = resume_latencies(command, env, resumes)
        results[name].update(
            chunks_per_s=statistics.median(results[name]["rates"]),
            latencies_ms=latencies,
            resume_median_ms=statistics.median(latencies),
            resume_p90_ms=percentile(latencies, 0.90),
            resume_p99_ms=percentile(latencies, 0.99),
        )
    return results


def report(results: dict[str, Any]) -> str:
    """The table, with unbroken's ratio to the npm package where both ran."""
    measured = results["libraries"]
    names = [name for name in LIBRARIES if name in measured]
    lines = [
        "| | " + " | ".join(LABELS[name] for name in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    npm = measured.get("npm")

    def cell(name: str, key: str, fmt: str, faster_is_higher: bool) -> str:
        value = measured[name][key]
        text = format(value, fmt)
        if name == "unbroken" and npm is not None:
            ratio = value / npm[key]
            text += f" ({ratio:.2f}× npm)" if faster_is_higher else f" ({ratio:.2f}× npm's)"
        return text

    rows = [
        ("one stream, 1 resumer (chunks/s)", "chunks_per_s", ",.0f", True),
        ("resume → first chunk, median (ms)", "resume_median_ms", ".2f", False),
        ("resume → first chunk, p90 (ms)", "resume_p90_ms", ".2f", False),
        ("resume → first chunk, p99 (ms)", "resume_p99_ms", ".2f", False),
    ]
    for label, key, fmt, higher in rows:
        cells = [cell(name, key, fmt, higher) for name in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, reason in results["skipped"].items():
        lines.append(f"\n{LABELS[name]}: {reason}")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Throughput bars and resume latency distributions, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = results["libraries"]
    names = [name for name in LIBRARIES if name in measured]
    labels = [LABELS[name].replace(" resumable-stream ", "\n") for name in names]
    colors = ["#999999", "#cc9933", "#3366cc"][-len(names) :]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(labels, [measured[name]["chunks_per_s"] for name in names], color=colors)
    left.set_ylabel("chunks/s (higher is better)")
    left.set_title("one stream of 10,000 chunks, 1 resumer")
    right.boxplot([measured[name]["latencies_ms"] for name in names], whis=(1, 99))
    right.set_xticks(range(1, len(names) + 1), labels)
    right.set_ylabel("ms (lower is better)")
    right.set_title("resume → first chunk, live producer elsewhere")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (median)")
    parser.add_argument("--resumes", type=int, default=40, help="timed resumes per library")
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--skip", default="", help="comma-separated: npm, pypi")
    parser.add_argument("--stem", default="peers", help="results file name (without suffix)")
    args = parser.parse_args()
    skip = {name for name in args.skip.split(",") if name}
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as scratch:
        folder = Path(scratch)
        (folder / "worker.py").write_text(PYTHON_WORKER)
        prepared: dict[str, list[str] | str] = {
            "npm": "skipped: --skip" if "npm" in skip else prepare_npm(folder / "npm"),
            "pypi": "skipped: --skip" if "pypi" in skip else prepare_pypi(folder / "pypi"),
            "unbroken": [sys.executable, str(folder / "worker.py"), "unbroken"],
        }
        commands = {name: how for name, how in prepared.items() if isinstance(how, list)}
        skipped = {name: how for name, how in prepared.items() if isinstance(how, str)}
        with redis_server() as (url, _process):
            measured = measure(commands, url, args.rounds, args.resumes, args.chunks)
    results = {
        "chunks": args.chunks,
        "rounds": args.rounds,
        "resumes": args.resumes,
        "libraries": measured,
        "skipped": skipped,
    }
    print(report(results))
    save_results(args.stem, results, chart)


if __name__ == "__main__":
    main()
