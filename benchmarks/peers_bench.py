"""unbroken against the npm ``resumable-stream`` package and its PyPI port, one run: throughput
and resume latency, through `unbroken.compat` and through the chat service's resume route.

Run:  .venv/bin/python benchmarks/peers_bench.py [--rounds 3] [--resumes 40] [--skip npm,pypi]
      [--busy-resumes 100] [--others 100] [--latency-rounds 4] [--chat-db postgres|sqlite]
      [--baseline SRC]

Each library does the same work against one redis-server this script starts on a free port:

1. one stream of 10,000 × 20-byte chunks (the source yields to the event loop every 100),
   read by its producer and by a resumer from a second context that attaches after 2,000
   chunks: chunks per second until both have read everything (median of the rounds);
2. resume latency: a producer in another process writes a chunk every 5 ms; a second process
   resumes it 20 ms apart (``resumeExistingStream`` / ``resume_existing_stream``) and times
   each call until its first chunk arrives (the catch-up: everything so far, in one chunk,
   for every library): median, p90, p99 of ``--resumes`` resumes, and the resuming
   process's CPU per resume;
3. the same with ``--others`` other streams active (``busy``): the producer also writes
   them at 30 chunks/s each and the resuming process follows every one of them live,
   ``--busy-resumes`` timed resumes.

Then the chat service (``chat``): two ``unbroken chat`` processes (workers A and B, one
uvicorn worker each) on that redis-server and one database (a PostgreSQL database made for
the run, dropped after, or with ``--chat-db sqlite`` a SQLite file), the demo model at
30 tokens/s, an API key. An answer is posted to A (its response is read to its first event
and dropped: the answer goes on); once it is 2 s old, B is asked for it
(``GET /api/chat/{id}/stream``, no ``Last-Event-ID``: the whole answer, then live) every
100 ms, each request on a new connection, timed from the request's write to the response's
first byte and to its first event, then hung up; and worker B's CPU per resume (which also
pays for the rest of the replay it sends before it hears the hang-up). Quiet, then with
``--others`` other answers streaming (posted to A, each followed live through B, a new one
when one ends, all stopped after).

The resumes come in ``--latency-rounds`` rounds in which every library and the chat service
take turns (this machine's load drifts, so each round compares moments close together).
Each turn has a producer (or an answer) of its own, and waits first for the time the
earlier turns' resumes took, so the turns together resume logs of the lengths one run of
all the resumes would (a catch-up is the whole log so far: its length matters).

The HTTP floor (``floor``): a third uvicorn process serves `system_apps.floor_app`, a
route at the same path that answers one event at once (no authentication, database, engine
or Redis), and the same route reading one key from the run's Redis first, timed the same
way in every quiet round, alternately: what no resume route on this server stack can go
below, and what no route that reads the stream from Redis can.

``frozen`` is `unbroken.compat` again, in resuming processes that call
`unbroken.cli.freeze_startup_heap()` once their followers are set up (as docs/your-app.md
advises a long-running server): what Python's full garbage collections cost the resumes.

``--baseline SRC`` also runs unbroken from another source tree (``SRC`` is put on
PYTHONPATH: e.g. ``git worktree add /tmp/base main`` and ``--baseline /tmp/base/src``), so a
change is compared with what it changes in the same run.

The npm package is installed with npm into a temporary folder (skipped with a message when
``node`` or ``npm`` is missing); the PyPI port into its own temporary venv (skipped with a
message if it cannot be installed); unbroken runs from this venv. Prints the tables, the
issue's targets met or missed, and writes benchmarks/results/peers.json and peers.png. The
machine is shared: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import Http
from _results import RESULTS, save_results

NPM_PACKAGES = ["resumable-stream@2.2.13", "redis@4"]
PYPI_PACKAGE = "resumable-stream==0.2.0"
LIBRARIES = ("npm", "pypi", "unbroken", "frozen", "baseline")
LABELS = {
    "npm": "npm resumable-stream 2.2.13",
    "pypi": "PyPI resumable-stream 0.2.0",
    "unbroken": "unbroken.compat",
    "frozen": "unbroken.compat, heap frozen",
    "baseline": "unbroken.compat (baseline)",
}
CHAT_LABELS = {"unbroken": "chat v5 resume", "baseline": "chat v5 resume (baseline)"}
CHAT_TOKENS_PER_S = 30  # the demo model's pace: an LLM's
CHAT_AGE = 2.0  # seconds an answer has streamed before it is resumed
CHAT_LIFE = 11.0  # ... and after which the next timed resume is of a new answer
CHAT_EVERY = 0.1  # seconds between timed chat resumes
RESUME_EVERY = 0.02  # ... and between a library's (the npm package's benchmark method)
BUSY_TARGET_P99_MS = 5.0
RATIO_TARGET = 0.5

NODE_WORKER = r"""
const { createResumableStreamContext } = require("resumable-stream");
const [mode, streamId, count, othersArg, laterArg] = process.argv.slice(2);
const N = Number(count);
const OTHERS = Number(othersArg || 0);
const LATER = Number(laterArg || 0);  // seconds to wait before the timed resumes
const CHUNK = "x".repeat(19) + " ";
const context = () =>
  createResumableStreamContext({ keyPrefix: process.env.BENCH_PREFIX, waitUntil: null });
const tick = () => new Promise((resolve) => setImmediate(resolve));
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const other = (i) => `${streamId}-other-${i}`;

async function* fast() {
  for (let i = 0; i < N; i++) {
    if (i % 100 === 0) await tick();
    yield CHUNK;
  }
}
async function* every(ms) {
  for (let i = 0; i < 20000; i++) {
    await pause(ms);
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
  for (let i = 0; i < OTHERS; i++) {
    const made = () => ReadableStream.from(every(1000 / 30));
    drain(await producer.createNewResumableStream(other(i), made));
  }
  const make = () => ReadableStream.from(every(5));
  const stream = await producer.createNewResumableStream(streamId, make);
  await drain(stream, (n) => { if (n === 5) console.log("ready"); });
}

async function resume() {
  const resumer = context();
  await pause(100);
  let followed = 0;
  for (let i = 0; i < OTHERS; i++) {
    drain(await resumer.resumeExistingStream(other(i)), () => { followed += 1; });
  }
  if (OTHERS) await pause(500);  // every follower live
  const latencies = [];
  const since = followed, started = performance.now(), cpuStarted = process.cpuUsage();
  let cpu = 0;
  for (let i = 0; i <= N; i++) {
    if (i === 1) await pause(LATER * 1000);
    const cpuBegun = process.cpuUsage();
    const begun = performance.now();
    const stream = await resumer.resumeExistingStream(streamId);
    const reader = stream.getReader();
    await reader.read();
    const ms = performance.now() - begun;
    await reader.cancel();
    if (i > 0) {  // the first one warms the connections
      latencies.push(ms);
      const used = process.cpuUsage(cpuBegun);
      cpu += (used.user + used.system) / 1000;
    }
    await pause(20);
  }
  const wall = performance.now() - started;
  const rate = (followed - since) / (wall / 1000);
  const all = process.cpuUsage(cpuStarted);
  const busy = (all.user + all.system) / 1000 / wall;  // of one core, the whole process
  console.log(JSON.stringify({
    latencies, followed_per_s: rate, cpu_ms: cpu / Math.max(N, 1), busy,
  }));
  process.exit(0);  // the followers never end
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
OTHERS = int(sys.argv[5]) if len(sys.argv) > 5 else 0
LATER = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0  # wait before the timed resumes
URL, PREFIX = os.environ["REDIS_URL"], os.environ["BENCH_PREFIX"]
CHUNK = "x" * 19 + " "


async def context(stack):
    if LIBRARY != "pypi":
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


def other(i):
    return f"{STREAM_ID}-other-{i}"


async def fast():
    for i in range(COUNT):
        if i % 100 == 0:
            await asyncio.sleep(0)
        yield CHUNK


def every(seconds):
    async def source():
        for _ in range(20000):
            await asyncio.sleep(seconds)
            yield CHUNK

    return source


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
    others = []
    for i in range(OTHERS):
        made = await producer.create_new_resumable_stream(other(i), every(1 / 30))
        others.append(asyncio.ensure_future(drain(made)))
    stream = await producer.create_new_resumable_stream(STREAM_ID, every(0.005))

    def on_chunk(n):
        if n == 5:
            print("ready", flush=True)

    await drain(stream, on_chunk)


async def resume(stack):
    resumer = await context(stack)
    followed = [0]

    def count(_):
        followed[0] += 1

    followers = []
    for i in range(OTHERS):
        stream = await resumer.resume_existing_stream(other(i))
        followers.append(asyncio.ensure_future(drain(stream, count)))
    if OTHERS:
        await asyncio.sleep(0.5)  # every follower live
    if os.environ.get("BENCH_FREEZE_HEAP"):
        from unbroken.cli import freeze_startup_heap

        freeze_startup_heap()  # as docs/your-app.md advises a server, once it started
    latencies = []
    since, started, cpu_started = followed[0], time.perf_counter(), time.process_time()
    cpu = 0.0
    for i in range(COUNT + 1):
        if i == 1:
            await asyncio.sleep(LATER)
        cpu_begun = time.process_time()
        begun = time.perf_counter()
        stream = await resumer.resume_existing_stream(STREAM_ID)
        await stream.__anext__()
        ms = (time.perf_counter() - begun) * 1000
        await stream.aclose()
        if i > 0:  # the first one warms the connections
            latencies.append(ms)
            cpu += time.process_time() - cpu_begun
        await asyncio.sleep(0.02)
    wall = time.perf_counter() - started
    rate = (followed[0] - since) / wall
    cpu_ms = cpu * 1000 / max(COUNT, 1)
    busy = (time.process_time() - cpu_started) / wall  # of one core, the whole process
    result = {"latencies": latencies, "followed_per_s": rate, "cpu_ms": cpu_ms, "busy": busy}
    print(json.dumps(result), flush=True)
    os._exit(0)  # the followers never end


async def main():
    async with AsyncExitStack() as stack:
        await {"throughput": throughput, "produce": produce, "resume": resume}[MODE](stack)
    if LIBRARY == "pypi":
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


@dataclass(frozen=True)
class Library:
    """How to run one library's worker: its command and what its environment adds."""

    command: list[str]
    env: dict[str, str]


def run_worker(library: Library, env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run a worker to its end and return the JSON it printed last."""
    done = subprocess.run(
        [*library.command, *args],
        env={**env, **library.env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{library.command[-1]} {args[0]} failed: {done.stderr[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def producer(library: Library, env: dict[str, str], others: int) -> Iterator[str]:
    """A live producer in another process (a chunk every 5 ms, and ``others`` other streams
    at 30 chunks/s); yields its stream's id."""
    stream_id = f"latency-{uuid.uuid4().hex[:12]}"
    process = subprocess.Popen(
        [*library.command, "produce", stream_id, "0", str(others)],
        env={**env, **library.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        if process.stdout.readline().strip() != "ready":
            process.kill()
            raise RuntimeError(f"producer did not start: {process.stderr.read()[-800:]}")
        yield stream_id
    finally:
        process.kill()
        process.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: list[float]) -> dict[str, Any]:
    if not latencies:  # every one failed (the failures are reported)
        return {"latencies_ms": [], "median_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan}
    return {
        "latencies_ms": latencies,
        "median_ms": statistics.median(latencies),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
    }


def shares(total: int, rounds: int) -> list[int]:
    """``total`` split into ``rounds`` parts (the first ones one larger)."""
    return [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]


def throughputs(
    libraries: dict[str, Library], env: dict[str, str], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Every library's throughput, rounds interleaved: the median of the rounds."""
    rates: dict[str, list[float]] = {name: [] for name in libraries}
    for round_ in range(args.rounds):
        for name, library in libraries.items():
            stream_id = f"throughput-{round_}-{uuid.uuid4().hex[:12]}"
            got = run_worker(library, env, "throughput", stream_id, str(args.chunks))
            expected = args.chunks * 20
            if got["own"] != expected or got["resumed"] != expected:
                raise RuntimeError(f"{name}: read {got['own']}/{got['resumed']} of {expected}")
            rates[name].append(args.chunks / got["seconds"])
    return {
        name: {"rates": got, "chunks_per_s": statistics.median(got)} for name, got in rates.items()
    }


def latencies(
    libraries: dict[str, Library],
    services: dict[str, ChatService],
    env: dict[str, str],
    args: argparse.Namespace,
    others: int,
    floor: int | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, str]]:
    """Resume latencies of every library and chat service, in ``--latency-rounds`` rounds
    that take turns (the machine's load drifts: each round compares moments close
    together), with ``others`` other streams active; with ``floor`` (a port), the HTTP
    floor's too, as the chat services' entry ``floor``. Also what failed, and why."""
    resumes = args.busy_resumes if others else args.resumes
    got: dict[str, dict[str, list[float]]] = {}
    failed: dict[str, str] = {}
    done = 0
    for count in shares(resumes, args.latency_rounds):
        # A new producer for each turn. A resume's catch-up is the log so far, so a turn
        # waits first for the time the resumes of the earlier turns took (20 ms apart), and
        # the turns together resume logs of the lengths one run of them all would.
        later = done * (RESUME_EVERY + 0.005)
        age = CHAT_AGE + (done * CHAT_EVERY) % (CHAT_LIFE - CHAT_AGE)
        done += count
        for name, library in libraries.items():
            if name in failed:
                continue
            try:
                with producer(library, env, others) as stream_id:
                    run = run_worker(
                        library, env, "resume", stream_id, str(count), str(others), str(later)
                    )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failed[name] = f"{'busy' if others else 'quiet'}: {str(exc)[-300:]}"
                continue
            mine = got.setdefault(name, {"latencies": [], "followed": [], "cpu": [], "busy": []})
            mine["latencies"] += run["latencies"]
            mine["followed"].append(run["followed_per_s"])
            mine["cpu"].append(run["cpu_ms"])
            mine["busy"].append(run["busy"])
        for name, service in services.items():
            chat = asyncio.run(_chat_run(service, count, others, age))
            entry = got.setdefault(
                f"chat:{name}",
                {"first_byte": [], "first_event": [], "followed": [], "cpu": [], "errors": []},
            )
            for key in ("first_byte", "first_event", "errors"):
                entry[key] += chat[key]
            entry["followed"].append(chat["followed_per_s"])
            entry["cpu"].append(chat["cpu_ms"])
        if floor is not None:
            timed = asyncio.run(_floor_run(floor, count))
            entry = got.setdefault("floor", {key: [] for key in timed})
            for key, values in timed.items():
                entry[key] += values
    libraries_out: dict[str, dict[str, Any]] = {}
    chat_out: dict[str, dict[str, Any]] = {}
    for name, mine in got.items():
        if name == "floor":
            chat_out[name] = {key: summary(values) for key, values in mine.items()}
            continue
        followed = statistics.median(mine["followed"])
        cpu = statistics.mean(mine["cpu"])  # the turns are of (nearly) equal size
        if name.startswith("chat:"):
            chat_out[name[5:]] = {
                "first_byte": summary(mine["first_byte"]),
                "first_event": summary(mine["first_event"]),
                "followed_per_s": followed,
                "cpu_ms": cpu,
                "errors": mine["errors"],
            }
        else:
            libraries_out[name] = {
                **summary(mine["latencies"]),
                "followed_per_s": followed,
                "cpu_ms": cpu,
                "process_busy": statistics.median(mine["busy"]),
            }
    return libraries_out, chat_out, failed


# -- the chat service ----------------------------------------------------------------------


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class ChatService:
    """Two ``unbroken chat`` processes sharing one Redis and one database."""

    ports: tuple[int, int]
    pids: tuple[int, int]
    api_key: str
    database: str


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (nanosecond counters, from /proc)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with suppress(OSError, ValueError):
            total += int(stat.read_text().split()[0])
    return total / 1e9


@contextmanager
def chat_service(
    url: str,
    folder: Path,
    args: argparse.Namespace,
    pythonpath: str | None,
    *,
    worker: list[str] | None = None,
    worker_env: dict[str, str] | None = None,
) -> Iterator[ChatService]:
    """Workers A and B of the chat service, up and answering, until the block ends.

    ``worker``: the command that runs the workers' ``unbroken chat`` (default: this Python's
    ``-m unbroken.cli``), with ``worker_env`` added to their environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UNBROKEN_", "DATABASE_URL", "REDIS_URL", "KV_URL"))
    }
    env.update(
        REDIS_URL=url,
        UNBROKEN_REDIS_PREFIX=f"peers-chat-{uuid.uuid4().hex[:8]}",
        UNBROKEN_MODEL="demo",
        UNBROKEN_DEMO_TOKENS_PER_SECOND=str(CHAT_TOKENS_PER_S),
        UNBROKEN_MAX_CONCURRENT_ANSWERS="0",  # one user posts every answer here
        UNBROKEN_ANSWERS_PER_MINUTE="0",
        UNBROKEN_SECRET_KEY="peers-bench-" + uuid.uuid4().hex,
    )
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    pg_name: str | None = None
    if args.chat_db == "postgres":
        pg_name = f"unbroken_peers_{uuid.uuid4().hex[:10]}"
        asyncio.run(_pg_admin(args.pg_url, f'CREATE DATABASE "{pg_name}"'))
        base = args.pg_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        env["DATABASE_URL"] = f"{base}/{pg_name}"
    else:
        env["DATABASE_URL"] = f"sqlite+aiosqlite:///{folder / f'chat-{uuid.uuid4().hex[:8]}.db'}"
    cli = [sys.executable, "-m", "unbroken.cli"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
        made = subprocess.run(
            [*cli, "users", "create-key", "--name", "peers-bench"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        ports = (free_port(), free_port())
        for port in ports:
            log = open(folder / f"chat-{port}.log", "wb")  # noqa: SIM115 - the process's
            processes.append(
                subprocess.Popen(
                    [*(worker or cli), "chat", "--port", str(port), "--log-level", "warning"],
                    env={**env, **(worker_env or {})},
                    stdout=log,
                    stderr=log,
                )
            )
            _wait_healthy(port, processes[-1], folder / f"chat-{port}.log")
        database = "postgresql" if pg_name else "sqlite"
        pids = (processes[0].pid, processes[1].pid)
        yield ChatService(ports, pids, made.stdout.strip(), database)
    finally:
        _stop(processes)
        _keep_failed_logs(folder, args.stem)
        if pg_name is not None:
            drop = f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'
            asyncio.run(_pg_admin(args.pg_url, drop))


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Ask every server process to shut down (SIGINT, as Ctrl-C would), then wait for each
    in turn, killing one that takes longer than 30 s."""
    for process in processes:
        process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _keep_failed_logs(folder: Path, stem: str) -> None:
    """Copy the workers' logs that hold a traceback next to the results, and say where."""
    for log in sorted(folder.glob("chat-*.log")):
        if "Traceback" in log.read_text(errors="replace"):
            RESULTS.mkdir(exist_ok=True)
            kept = RESULTS / f"{stem}-{log.name}"
            shutil.copyfile(log, kept)
            print(f"a chat worker logged a traceback: {kept}", file=sys.stderr)


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"unbroken chat did not start:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)


class _Response:
    """A response as `_loadgen.Http` hands it over: when its head and its first event came;
    ``keep`` > 0: read that many events (0: all of them) before hanging up."""

    def __init__(self, keep: int = 1, on_event: Any = None) -> None:
        self.status: int | None = None
        self.head: float | None = None
        self.first: float | None = None
        self.done = False
        self.keep = keep
        self.events = 0
        self.on_event = on_event

    def response(self, status: int, t: float) -> None:
        self.status, self.head = status, t

    def frame(self, frame: bytes, t: float) -> bool:
        if frame[:1] == b":":
            return False  # a keep-alive comment
        if self.first is None:
            self.first = t
        self.events += 1
        if self.on_event is not None:
            self.on_event()
        if frame.endswith(b"data: [DONE]"):
            self.done = True
            return True
        return self.keep > 0 and self.events >= self.keep


async def request(port: int, raw: bytes, sink: _Response) -> float:
    """Send ``raw`` on a new connection to ``port``, read until ``sink`` is done; the time
    the request was written (connecting is not timed)."""
    loop = asyncio.get_running_loop()
    transport, http = await loop.create_connection(lambda: Http(sink), "127.0.0.1", port)
    sent = time.monotonic()
    transport.write(raw)
    try:
        await http.lost
    finally:
        http.close()
    return sent


class ChatClient:
    """AI SDK v5 requests to the two workers, on raw connections (see `_loadgen.Http`)."""

    def __init__(self, service: ChatService) -> None:
        self.service = service
        self.auth = f"Authorization: Bearer {service.api_key}\r\n"

    async def post(self, chat_id: str, text: str, sink: _Response) -> float:
        body = json.dumps(
            {
                "id": chat_id,
                "trigger": "submit-message",
                "messages": [
                    {
                        "id": uuid.uuid4().hex,
                        "role": "user",
                        "parts": [{"type": "text", "text": text}],
                    }
                ],
            }
        ).encode()
        head = (
            f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.auth}"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        return await request(self.service.ports[0], head + body, sink)

    async def resume(self, chat_id: str, sink: _Response) -> float:
        head = (
            f"GET /api/chat/{chat_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.auth}"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        return await request(self.service.ports[1], head, sink)

    async def stop(self, chat_id: str) -> None:
        """Stop the chat's answer (on worker A; any worker would do) and wait for the
        response's head."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.service.ports[0])
        try:
            writer.write(
                f"POST /api/chat/{chat_id}/stop HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.auth}"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()

    async def start_answer(self) -> tuple[str, float]:
        """Post an answer to worker A and drop its response at the first event; the chat id
        and when the answer started."""
        chat_id = uuid.uuid4().hex
        sink = _Response()
        await self.post(chat_id, f"peers bench {chat_id}", sink)
        if sink.status != 200 or sink.first is None:
            raise RuntimeError(f"POST /api/chat answered {sink.status}")
        return chat_id, sink.first


async def stop_followers(
    stop: asyncio.Event,
    followers: Sequence[asyncio.Future[Any]],
    client: ChatClient,
    running: set[str],
) -> None:
    """End a chat run: its followers stopped and awaited, its answers still going stopped."""
    stop.set()
    for task in followers:
        task.cancel()
    for task in followers:
        with suppress(asyncio.CancelledError, RuntimeError, OSError):
            await task
    await asyncio.gather(*(client.stop(chat_id) for chat_id in running))


async def _chat_run(
    service: ChatService, resumes: int, others: int, age: float = CHAT_AGE
) -> dict[str, Any]:
    """``resumes`` timed resumes on worker B of answers produced on A, from when the
    first is ``age`` seconds old, ``others`` other answers streaming meanwhile."""
    client = ChatClient(service)
    followed = [0]
    stop = asyncio.Event()
    errors: list[str] = []

    def count() -> None:
        followed[0] += 1

    running: set[str] = set()  # answers to stop at the end, so none loads the next turn

    async def other() -> None:
        while not stop.is_set():
            chat_id, _ = await client.start_answer()
            running.add(chat_id)
            sink = _Response(keep=0, on_event=count)
            await client.resume(chat_id, sink)
            if not sink.done and not stop.is_set():
                errors.append(f"a followed answer ended early (HTTP {sink.status})")

    followers = [asyncio.ensure_future(other()) for _ in range(others)]
    try:
        if others:
            await asyncio.sleep(2.0)  # every follower live
        heads: list[float] = []
        firsts: list[float] = []
        since, started = followed[0], time.monotonic()
        chat_id, born = await client.start_answer()
        running.add(chat_id)
        for i in range(resumes + 1):
            if time.monotonic() - born > CHAT_LIFE:
                chat_id, born = await client.start_answer()
                running.add(chat_id)
                age = CHAT_AGE
            await asyncio.sleep(max(0.0, born + age - time.monotonic()))
            sink = _Response()
            sent = await client.resume(chat_id, sink)
            if sink.status != 200 or sink.head is None or sink.first is None:
                errors.append(f"a timed resume answered HTTP {sink.status}")
            elif i > 0:  # the first one warms the connections
                heads.append((sink.head - sent) * 1000)
                firsts.append((sink.first - sent) * 1000)
            if i == 0:
                cpu = cpu_seconds(service.pids[1])
            await asyncio.sleep(CHAT_EVERY)
        cpu_ms = (cpu_seconds(service.pids[1]) - cpu) * 1000 / max(resumes, 1)
        rate = (followed[0] - since) / (time.monotonic() - started)
    finally:
        await stop_followers(stop, followers, client, running)
    return {
        "first_byte": heads,
        "first_event": firsts,
        "followed_per_s": rate,
        "cpu_ms": cpu_ms,
        "errors": errors,
    }


@contextmanager
def http_floor(folder: Path, redis_url: str) -> Iterator[int]:
    """`system_apps.floor_app` under uvicorn (its defaults, as ``unbroken chat`` runs it), on
    ``redis_url``, up and answering, until the block ends: its port."""
    port = free_port()
    log_path = folder / f"floor-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "--factory", "--app-dir"),
                str(Path(__file__).resolve().parent),
                *("system_apps:floor_app", "--port", str(port), "--log-level", "warning"),
            ],
            env={**os.environ, "REDIS_URL": redis_url},
            stdout=log,
            stderr=log,
        )
    try:
        _wait_healthy(port, process, log_path)
        yield port
    finally:
        _stop([process])


#: The HTTP floor's two routes: as they are, and reading one key from Redis first.
FLOOR_KINDS = {"": "first_", "?redis=1": "redis_first_"}


async def _floor_run(port: int, resumes: int) -> dict[str, list[float]]:
    """``resumes`` timed requests to each of the HTTP floor's routes, alternately,
    ``CHAT_EVERY`` apart as the chat service's resumes, each on a new connection (the first
    of each warms up, untimed): keys ``first_byte``, ``first_event``, ``redis_first_byte``
    and ``redis_first_event``."""
    path = f"/api/chat/{uuid.uuid4().hex}/stream"
    requests = {
        prefix: (
            f"GET {path}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        for query, prefix in FLOOR_KINDS.items()
    }
    timed: dict[str, list[float]] = {
        f"{prefix}{what}": [] for prefix in requests for what in ("byte", "event")
    }
    for i in range(resumes + 1):
        for prefix, raw in requests.items():
            sink = _Response()
            sent = await request(port, raw, sink)
            if sink.status != 200 or sink.head is None or sink.first is None:
                raise RuntimeError(f"the HTTP floor answered {sink.status}")
            if i > 0:
                timed[f"{prefix}byte"].append((sink.head - sent) * 1000)
                timed[f"{prefix}event"].append((sink.first - sent) * 1000)
            await asyncio.sleep(CHAT_EVERY / 2)
    return timed


# -- report --------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    """The tables, with ratios to the npm package where it ran, and the issue's targets."""
    measured = results["libraries"]
    names = [name for name in LIBRARIES if name in measured]
    lines = [
        "| | " + " | ".join(LABELS[name] for name in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    npm = measured.get("npm")
    others = results["others"]

    def value(name: str, key: str) -> float | None:
        entry = measured[name]
        for part in key.split("."):
            entry = entry.get(part) if isinstance(entry, dict) else None
        return entry if isinstance(entry, float | int) else None

    def cell(name: str, key: str, fmt: str, faster_is_higher: bool) -> str:
        got = value(name, key)
        if got is None:
            return "-"
        text = format(got, fmt)
        theirs = value("npm", key) if npm is not None else None
        if name in ("unbroken", "frozen", "baseline") and theirs:
            ratio = got / theirs
            text += f" ({ratio:.2f}× npm)" if faster_is_higher else f" ({ratio:.2f}× npm's)"
        return text

    rows = [
        ("one stream, 1 resumer (chunks/s)", "chunks_per_s", ",.0f", True),
        ("resume → first chunk, median (ms)", "resume_median_ms", ".2f", False),
        ("resume → first chunk, p90 (ms)", "resume_p90_ms", ".2f", False),
        ("resume → first chunk, p99 (ms)", "resume_p99_ms", ".2f", False),
        ("resuming process's CPU per resume (ms)", "resume_cpu_ms", ".2f", False),
        (f"… {others} other streams active, median (ms)", "busy.median_ms", ".2f", False),
        (f"… {others} other streams active, p99 (ms)", "busy.p99_ms", ".2f", False),
        (f"… {others} other streams' chunks/s followed", "busy.followed_per_s", ",.0f", True),
        ("… the resuming process's CPU (share of a core)", "busy.process_busy", ".0%", False),
    ]
    for label, key, fmt, higher in rows:
        cells = [cell(name, key, fmt, higher) for name in names]
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    chat = results.get("chat", {})
    npm_median = npm["resume_median_ms"] if npm else None
    npm_busy = npm.get("busy", {}).get("median_ms") if npm else None
    for name, run in chat.items():
        lines += [
            "",
            f"{CHAT_LABELS[name]} on another worker ({run['database']}, demo model "
            f"{CHAT_TOKENS_PER_S} tokens/s, answers {CHAT_AGE:g} s old or more):",
            "",
            "| | median (ms) | p90 (ms) | p99 (ms) | median vs npm's resume |",
            "|---|---:|---:|---:|---:|",
        ]
        for section, title, theirs in (
            ("quiet", "", npm_median),
            ("busy", f", {others} other answers streaming", npm_busy),
        ):
            if section not in run:
                continue
            for what in ("first_byte", "first_event"):
                got = run[section][what]
                ratio = f"{got['median_ms'] / theirs:.2f}×" if theirs else "-"
                lines.append(
                    f"| {what.replace('_', ' ')}{title} | {got['median_ms']:.2f} | "
                    f"{got['p90_ms']:.2f} | {got['p99_ms']:.2f} | {ratio} |"
                )
            if section == "quiet":
                cpu = run[section]["cpu_ms"]
                lines.append(f"| worker B's CPU per resume (ms) | {cpu:.2f} | | | |")
            else:
                rate = run[section]["followed_per_s"]
                due = others * CHAT_TOKENS_PER_S
                label = f"… other answers' events/s followed (about {due:,} due)"
                lines.append(f"| {label} | {rate:,.0f} | | | |")
            if run[section]["errors"]:
                errors = run[section]["errors"]
                lines.append(f"| … failed requests: {len(errors)} ({errors[0]}) | | | | |")
    floor = results.get("floor")
    if floor is not None:
        lines += [
            "",
            "The HTTP floor: a route at the same path answering one event at once (uvicorn and "
            "FastAPI, no authentication, database, engine or Redis), and the same route "
            "reading one key from Redis first:",
            "",
            "| | median (ms) | p90 (ms) | p99 (ms) | median vs npm's resume |",
            "|---|---:|---:|---:|---:|",
        ]
        for what, label in (
            ("first_byte", "first byte"),
            ("first_event", "first event"),
            ("redis_first_byte", "first byte, one Redis read first"),
            ("redis_first_event", "first event, one Redis read first"),
        ):
            got = floor[what]
            ratio = f"{got['median_ms'] / npm_median:.2f}×" if npm_median else "-"
            lines.append(
                f"| {label} | {got['median_ms']:.2f} | {got['p90_ms']:.2f} | "
                f"{got['p99_ms']:.2f} | {ratio} |"
            )
    lines += ["", *targets(results)]
    for name, reason in results["skipped"].items():
        lines.append(f"\n{LABELS.get(name, name)}: {reason}")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
    """Issue 21's resume targets, each met or missed in this run."""
    measured, chat = results["libraries"], results.get("chat", {})
    npm = measured.get("npm")
    lines = ["Targets (issue 21), this run:"]

    def line(what: str, got: float | None, limit: float | None, unit: str) -> None:
        if got is None or limit is None:
            return
        verdict = "met" if got <= limit else "MISSED"
        lines.append(f"- {what}: {got:.2f}{unit} (target ≤ {limit:.2f}{unit}): {verdict}")

    ours = measured.get("unbroken")
    if ours is not None and npm is not None:
        npm_median = npm["resume_median_ms"]
        line(
            "compat resume median / npm's", ours["resume_median_ms"] / npm_median, RATIO_TARGET, "×"
        )
    run = chat.get("unbroken")
    if run is not None and npm is not None:
        for what in ("first_byte", "first_event"):
            got = run["quiet"][what]["median_ms"] / npm["resume_median_ms"]
            line(f"chat v5 resume {what.replace('_', ' ')} median / npm's", got, RATIO_TARGET, "×")
    floor = results.get("floor")
    if floor is not None and npm is not None:
        bare = floor["first_byte"]["median_ms"] / npm["resume_median_ms"]
        read = floor["redis_first_byte"]["median_ms"] / npm["resume_median_ms"]
        lines.append(
            f"- (no target) the HTTP floor's first byte median / npm's: {bare:.2f}×, "
            f"{read:.2f}× with one Redis read: no resume route answers sooner"
        )
    if ours is not None and "busy" in ours:
        line("compat resume p99, others active", ours["busy"]["p99_ms"], BUSY_TARGET_P99_MS, " ms")
    frozen = measured.get("frozen")
    if frozen is not None and "busy" in frozen:
        p99 = frozen["busy"]["p99_ms"]
        line("compat resume p99, others active, heap frozen", p99, BUSY_TARGET_P99_MS, " ms")
    if run is not None and "busy" in run:
        for what in ("first_byte", "first_event"):
            got = run["busy"][what]["p99_ms"]
            line(f"chat v5 resume {what.replace('_', ' ')} p99, others active", got, 5.0, " ms")
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    """Throughput bars, and resume latency distributions: the libraries, quiet and busy,
    and the chat route's first event."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = results["libraries"]
    names = [name for name in LIBRARIES if name in measured]
    labels = [
        LABELS[name].replace(" resumable-stream ", "\n").replace(" (", "\n(") for name in names
    ]

    def wrapped(label: str) -> str:  # long labels side by side would overlap
        lines = label.replace("unbroken.compat", "compat").split("\n")
        return "\n".join(textwrap.fill(line, 12, break_long_words=False) for line in lines)

    palette = {
        "npm": "#999999",
        "pypi": "#cc9933",
        "unbroken": "#3366cc",
        "frozen": "#33aa66",
        "baseline": "#99bbee",
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), width_ratios=(1, 2.4))
    left.bar(
        [wrapped(label) for label in labels],
        [measured[name]["chunks_per_s"] for name in names],
        color=[palette[n] for n in names],
    )
    left.set_ylabel("chunks/s (higher is better)")
    left.set_title("one stream of 10,000 chunks, 1 resumer")
    boxes: list[list[float]] = []
    box_labels: list[str] = []
    for name, label in zip(names, labels, strict=True):
        boxes.append(measured[name]["latencies_ms"])
        box_labels.append(label)
        if "busy" in measured[name]:
            boxes.append(measured[name]["busy"]["latencies_ms"])
            box_labels.append(f"{label}\n{results['others']} others")
    for name, run in results.get("chat", {}).items():
        label = CHAT_LABELS[name].replace(" resume", "\nresume")
        boxes.append(run["quiet"]["first_event"]["latencies_ms"])
        box_labels.append(f"{label}\nfirst event")
        if "busy" in run:
            boxes.append(run["busy"]["first_event"]["latencies_ms"])
            box_labels.append(f"{label}\n{results['others']} others")
    if results.get("floor") is not None:
        boxes.append(results["floor"]["first_event"]["latencies_ms"])
        box_labels.append("HTTP floor\nfirst event")
    right.boxplot(boxes, whis=(1, 99))
    right.set_xticks(range(1, len(boxes) + 1), [wrapped(label) for label in box_labels])
    right.set_yscale("log")  # the busy spreads would flatten the quiet ones
    right.set_ylabel("ms, log scale (lower is better)")
    right.set_title("resume → first chunk / first event, live producer elsewhere")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (median)")
    parser.add_argument(
        "--latency-rounds", type=int, default=4, help="turns the libraries take at resuming"
    )
    parser.add_argument("--resumes", type=int, default=40, help="timed resumes per library")
    parser.add_argument("--busy-resumes", type=int, default=100, help="... with others active")
    parser.add_argument("--others", type=int, default=100, help="other streams when busy")
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated: npm, pypi, compat, frozen, chat, floor, busy",
    )
    parser.add_argument("--chat-db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--baseline", help="another unbroken source tree (its src folder)")
    parser.add_argument("--stem", default="peers", help="results file name (without suffix)")
    args = parser.parse_args()
    skip = {name for name in args.skip.split(",") if name}
    busy = "busy" not in skip
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as scratch:
        folder = Path(scratch)
        (folder / "worker.py").write_text(PYTHON_WORKER)
        python = [sys.executable, str(folder / "worker.py")]
        prepared: dict[str, Library | str] = {
            "npm": "skipped: --skip" if "npm" in skip else _library(prepare_npm(folder / "npm")),
            "pypi": "skipped: --skip"
            if "pypi" in skip
            else _library(prepare_pypi(folder / "pypi")),
            "unbroken": "skipped: --skip"
            if "compat" in skip
            else Library([*python, "unbroken"], {}),
        }
        if args.baseline and "compat" not in skip:
            baseline_env = {"PYTHONPATH": str(Path(args.baseline).resolve())}
            prepared["baseline"] = Library([*python, "baseline"], baseline_env)
        if "compat" not in skip and "frozen" not in skip:
            prepared["frozen"] = Library([*python, "unbroken"], {"BENCH_FREEZE_HEAP": "1"})
        libraries = {name: how for name, how in prepared.items() if isinstance(how, Library)}
        skipped = {name: how for name, how in prepared.items() if isinstance(how, str)}
        sources: dict[str, str | None] = {"unbroken": None}
        if args.baseline:
            sources["baseline"] = str(Path(args.baseline).resolve())
        with redis_server() as (url, _process), ExitStack() as stack:
            env = {**os.environ, "REDIS_URL": url, "BENCH_PREFIX": f"peers-{uuid.uuid4().hex[:8]}"}
            env.pop("KV_URL", None)
            measured = throughputs(libraries, env, args)
            services: dict[str, ChatService] = {}
            if "chat" in skip:
                skipped["chat"] = "skipped: --skip"
            else:
                for name, pythonpath in sources.items():
                    services[name] = stack.enter_context(
                        chat_service(url, folder, args, pythonpath)
                    )
            floor = None if "floor" in skip else stack.enter_context(http_floor(folder, url))
            quiet, chat_quiet, failed = latencies(libraries, services, env, args, 0, floor)
            floor_run = chat_quiet.pop("floor", None)
            skipped.update(failed)
            if busy:
                loaded, chat_busy, failed = latencies(libraries, services, env, args, args.others)
                skipped.update({f"{name} (busy)": why for name, why in failed.items()})
    for name, entry in quiet.items():
        measured[name].update(
            resume_cpu_ms=entry["cpu_ms"],
            latencies_ms=entry["latencies_ms"],
            resume_median_ms=entry["median_ms"],
            resume_p90_ms=entry["p90_ms"],
            resume_p99_ms=entry["p99_ms"],
        )
        if busy and name in loaded:
            measured[name]["busy"] = loaded[name]
    measured = {name: entry for name, entry in measured.items() if "latencies_ms" in entry}
    chat: dict[str, Any] = {}
    for name, service in services.items():
        chat[name] = {"database": service.database, "quiet": chat_quiet[name]}
        if busy:
            chat[name]["busy"] = chat_busy[name]
    results = {
        "chunks": args.chunks,
        "rounds": args.rounds,
        "latency_rounds": args.latency_rounds,
        "resumes": args.resumes,
        "busy_resumes": args.busy_resumes,
        "others": args.others,
        "libraries": measured,
        "chat": chat,
        "floor": floor_run,
        "skipped": skipped,
    }
    print(report(results))
    save_results(args.stem, results, chart)


def _library(prepared: list[str] | str) -> Library | str:
    return Library(prepared, {}) if isinstance(prepared, list) else prepared


if __name__ == "__main__":
    main()
