"""System benchmarks: the chat service under uvicorn, driven by a load generator process.

Run:  .venv/bin/python benchmarks/system_bench.py [--quick] [--redis-url URL] [--pg-url URL]
      [--configs NAMES] [--levels N,N,...] [--auth key|cookie] [--profile STREAMS]
      [--paired ROUNDS]

Prints a table, writes benchmarks/results/system.json and system.png (``--output`` renames
them). Every server runs the demo model at 30 tokens/s (``UNBROKEN_DEMO_TOKENS_PER_SECOND``)
under uvicorn (uvloop, httptools, no access log) in its own process; the load generator
(`_loadgen.py`) runs in another and talks AI SDK v5 SSE over loopback, with an API key
(``unbroken users create-key``) or a guest session cookie. CPU is the server's (every uvicorn
process, from /proc), never the load generator's; ``other`` is what the rest of the machine
used meanwhile (Redis, PostgreSQL, and anything else running: the machine may be shared).

1. capacity: concurrency steps (10, 50, 100, 150, 250, 500, 1000, ...) of answers streaming
   back to back (slots start evenly over one answer's length, so answers start and end at a
   steady rate), then a measured window. A step passes when the p99 delivery delay (client
   receive time - time the model produced the chunk) is under 100 ms, at least 90 % of the
   chunks due arrived, and no request failed or delivered a wrong answer; one that failed on
   delay alone is run once more (``--retries``). Stops at the first step that fails.
   Configurations: ``plain`` (baseline in the same run: the same model, `ui_chunks` and v5
   encoder written straight to the response, no engine, no store: `system_apps.plain_app`),
   ``stored-plain`` (the second baseline: the chat service's authentication and SQL, the
   answer streamed straight from the model with no engine: `system_apps.stored_plain_app`,
   on SQLite), ``stored-plain-postgres`` (the same on PostgreSQL: the baseline of the
   configurations on PostgreSQL), ``memory-sqlite`` (one worker, the embedded default),
   ``memory-postgres`` (the embedded stream backend, the store on PostgreSQL),
   ``memory-sqlite flush`` (the same with ``UNBROKEN_FLUSH_INTERVAL=0.05``: fewer, larger
   writes), ``redis-postgres`` (one worker) and ``redis-postgres x2`` (two workers sharing
   streams through Redis). Redis is a private redis-server the script starts on a free port
   unless ``--redis-url`` names one;
2. server CPU per chunk delivered, and its ratio to plain streaming at the same load;
3. resume latency under load: in the second half of each window, 10 probes/s (``--probes``) GET
   ``/api/chat/{id}/stream`` with ``Last-Event-ID`` 8 chunks back, timed to the response's
   first byte and first event (CPU per chunk is measured in the first half, without them);
4. a reconnect storm: every second 20 % of the clients, each at a random moment, drop their
   connection and reconnect with ``Last-Event-ID``, for 60 s (10 s with ``--quick``); every
   answer is checked (no gap, no duplicate: its text is exactly the model's), and delays
   include the time away.

``--profile STREAMS`` samples the server with py-spy during that step and prints where its
CPU goes (see `PROFILE_RULES`).

``--paired ROUNDS`` replaces the capacity steps with the CPU ratio measured robustly: every
server is up at once and the steps alternate between plain streaming and each
configuration, ROUNDS rounds per level, so each round's ratio compares steps run a minute
apart (this machine's speed drifts over minutes; see `paired`). Each configuration on
PostgreSQL is compared with ``stored-plain-postgres`` too, and the Redis configurations' p99
delivery delay with the embedded backend's of the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers_bench import redis_server

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PYTHON = sys.executable
TOKENS_PER_SECOND = 30.0
DELAY_TARGET_MS = 100.0
RESUME_TARGET_MS = 10.0
CPU_RATIO_TARGET = 1.3
STREAMS_TARGET = 1000


@dataclass(frozen=True)
class Config:
    name: str
    app: str  # "plain" | "stored_plain" | "product": system_apps.<app>_app
    workers: int = 1
    redis: bool = False
    postgres: bool = False
    env: tuple[tuple[str, str], ...] = ()  # settings of the service besides the defaults
    #: Another source tree of unbroken to serve (``--before``): first on the server's path.
    src: str | None = None

    @property
    def product(self) -> bool:
        """The chat service, resumable: resume probes, stops, storms."""
        return self.app == "product"

    @property
    def stored(self) -> bool:
        """An app with the chat service's store and authentication (migrated, an API key)."""
        return self.app != "plain"


PLAIN = Config("plain", "plain")
#: The chat service without the engine: its SQL and authentication, plain streaming.
STORED_PLAIN = Config("stored-plain", "stored_plain")
#: The same on PostgreSQL: the baseline of the configurations on PostgreSQL, so that their
#: ratio to it is the cost of resumability alone, not that of another database too.
STORED_PLAIN_PG = Config("stored-plain-postgres", "stored_plain", postgres=True)
MEMORY = Config("memory-sqlite", "product")
#: The embedded stream backend with the chat store on PostgreSQL: between it and
#: ``redis-postgres`` only the stream backend differs.
MEMORY_PG = Config("memory-postgres", "product", postgres=True)
REDIS_1 = Config("redis-postgres", "product", redis=True, postgres=True)
REDIS_2 = Config("redis-postgres x2", "product", workers=2, redis=True, postgres=True)
#: The embedded default with a flush interval: each response writes what arrived in the last
#: FLUSH_INTERVAL seconds at once (fewer, larger writes; tokens up to that much later).
FLUSH_INTERVAL = 0.05
MEMORY_FLUSH = Config(
    "memory-sqlite flush",
    "product",
    env=(("UNBROKEN_FLUSH_INTERVAL", str(FLUSH_INTERVAL)),),
)


def redis_with_window(seconds: float) -> Config:
    """``redis-postgres`` with another write window (``UNBROKEN_REDIS_WRITE_GATHER``)."""
    gather = (("UNBROKEN_REDIS_WRITE_GATHER", repr(seconds)),)
    return dataclasses.replace(REDIS_1, name=f"redis-postgres {seconds * 1000:g} ms", env=gather)


CONFIGS = (PLAIN, STORED_PLAIN, STORED_PLAIN_PG, MEMORY, MEMORY_PG, MEMORY_FLUSH, REDIS_1, REDIS_2)


def stored_baseline(config: Config) -> Config:
    """The stored-plain baseline on the same database as ``config``."""
    return STORED_PLAIN_PG if config.postgres else STORED_PLAIN


def percentile(values: list[float] | array[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _delete_redis_keys(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        return len(keys)
    finally:
        client.close()


class Server:
    """One deployment of ``config``: its database, Redis prefix and uvicorn process."""

    def __init__(self, config: Config, args: argparse.Namespace, workdir: Path) -> None:
        self.config = config
        self.args = args
        self.port = free_port()
        self.stamps = workdir / f"stamps-{uuid.uuid4().hex[:8]}.tsv"
        self.stamps.touch()
        self.log = workdir / f"server-{config.name.replace(' ', '')}.log"
        self.gc_log = workdir / f"gc-{uuid.uuid4().hex[:8]}.tsv"
        self.gc_log.touch()
        self.prefix = f"unbroken-sysbench-{uuid.uuid4().hex[:8]}"
        self.pg_name: str | None = None
        self.api_key: str | None = None
        self.cookie: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("UNBROKEN_", "DATABASE_URL", "REDIS_URL"))
        }
        env.update(
            UNBROKEN_MODEL="demo",
            # Every client is one user here: no per-user answer limits.
            UNBROKEN_MAX_CONCURRENT_ANSWERS="0",
            UNBROKEN_ANSWERS_PER_MINUTE="0",
            UNBROKEN_DEMO_TOKENS_PER_SECOND=str(TOKENS_PER_SECOND),
            UNBROKEN_SECRET_KEY="benchmark-secret-" + uuid.uuid4().hex,
            UNBROKEN_BENCH_STAMPS=str(self.stamps),
            UNBROKEN_BENCH_GC_LOG=str(self.gc_log),
            UNBROKEN_REDIS_PREFIX=self.prefix,
        )
        if config.postgres:
            self.pg_name = f"unbroken_sysbench_{uuid.uuid4().hex[:10]}"
            asyncio.run(_pg_admin(args.pg_url, f'CREATE DATABASE "{self.pg_name}"'))
            base = args.pg_url.rsplit("/", 1)[0]
            env["DATABASE_URL"] = f"{base}/{self.pg_name}".replace(
                "postgresql://", "postgresql+asyncpg://", 1
            )
        else:
            env["DATABASE_URL"] = f"sqlite+aiosqlite:///{workdir / f'{self.prefix}.sqlite3'}"
        if config.redis:
            env["REDIS_URL"] = args.redis_url
        env.update(config.env)
        if config.src is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [config.src, env.get("PYTHONPATH")]))
        self.env = env

    def start(self) -> None:
        if self.config.stored:
            cli = [PYTHON, "-m", "unbroken.cli"]
            # The CLI migrates before forking workers, as `unbroken chat` does.
            subprocess.run([*cli, "db", "upgrade"], env=self.env, check=True, capture_output=True)
            made = subprocess.run(
                [*cli, "users", "create-key", "--name", "bench"],
                env=self.env,
                check=True,
                capture_output=True,
                text=True,
            )
            self.api_key = made.stdout.strip()
        app = f"system_apps:{self.config.app}_app"
        command = [
            PYTHON,
            "-m",
            "uvicorn",
            "--factory",
            app,
            "--app-dir",
            str(HERE),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.config.workers),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "5",
            "--backlog",
            "4096",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server {self.config.name} did not start:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        time.sleep(1.0 * self.config.workers)  # every worker up, not only the first
        if self.config.stored and self.args.auth == "cookie":
            # One guest session for every client: what a browser gets on its first visit.
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/chats") as response:
                self.cookie = response.headers["set-cookie"].split(";", 1)[0]
            self.api_key = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.config.redis:
            _delete_redis_keys(self.args.redis_url, self.prefix)
        if self.pg_name:
            drop = f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)'
            asyncio.run(_pg_admin(self.args.pg_url, drop))


def run_step(
    server: Server,
    streams: int,
    *,
    ramp: float,
    window: float,
    probes_per_s: float = 0.0,
    storm_fraction: float = 0.0,
    client_procs: int = 1,
    profile: str | None = None,
    profile_out: Path | None = None,
    profile_rate: int = 200,
) -> dict[str, Any]:
    """One load step against ``server``; returns the merged measurements."""
    assert server.proc is not None
    workdir = server.stamps.parent
    tag = uuid.uuid4().hex[:8]
    t0 = time.monotonic() + 3.0  # time for the load generators to start
    procs = []
    outs = []
    per_proc = [streams // client_procs + (i < streams % client_procs) for i in range(client_procs)]
    first = 0
    for i, count in enumerate(per_proc):
        out = workdir / f"load-{tag}-{i}.json"
        config = {
            "host": "127.0.0.1",
            "port": server.port,
            "api_key": server.api_key,
            "cookie": server.cookie,
            "tag": tag,
            "t0": t0,
            "ramp": ramp,
            "window": window,
            "first_slot": first,
            "streams": count,
            "total_streams": streams,
            "tokens_per_second": TOKENS_PER_SECOND,
            "stamps": str(server.stamps),
            "out": str(out),
            "probes_per_s": probes_per_s / client_procs,
            "storm_fraction": storm_fraction,
            "stop_unfinished": server.config.product,
            "measure_cpu": i == 0,
            "server_pid": server.proc.pid,
            "redis": server.args.redis_url if server.config.redis and i == 0 else None,
        }
        first += count
        path = workdir / f"load-{tag}-{i}.config.json"
        path.write_text(json.dumps(config))
        procs.append(subprocess.Popen([PYTHON, str(HERE / "_loadgen.py"), str(path)]))
        outs.append(out)
    spy = None
    profile_result = None
    if profile is not None:
        # Sample the server during the CPU part of the window (no probes then).
        time.sleep(max(0.0, t0 + ramp - time.monotonic()))
        seconds = window / 2 if probes_per_s else window
        # Blocking sampling (whole stacks; the server pauses ~0.1 ms per sample), only the
        # thread holding the GIL (= Python CPU), every worker.
        command = [profile, "record", "-p", str(server.proc.pid), "--gil"]
        if server.config.workers > 1:
            command.append("--subprocesses")
        command += ["-d", str(int(seconds)), "-r", str(profile_rate), "-f", "raw"]
        command += ["-o", str(profile_out)]
        spy = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        for proc in procs:
            proc.wait(timeout=ramp + window + 180)
    finally:
        for proc in procs:
            if proc.poll() is None:  # interrupted: do not leave load generators behind
                proc.kill()
                proc.wait()
    if spy is not None and profile_out is not None:
        spy.wait(timeout=60)
        if profile_out.exists():
            breakdown = profile_breakdown(profile_out)
            profile_result = {"path": str(profile_out), "breakdown": breakdown}
            print(f"  py-spy: {profile_out}; share of the server's samples:")
            for label, share in breakdown:
                print(f"    {share:6.1%}  {label}")
    parts = [json.loads(out.read_text()) for out in outs]
    delays: array[float] = array("d")
    for part in parts:
        with open(part["delays_path"], "rb") as f:
            delays.frombytes(f.read())
    main = parts[0]

    def merged(key: str) -> list[float]:
        return [v for part in parts for v in part[key]]

    def counts(key: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for part in parts:
            for k, v in part[key].items():
                total[k] = total.get(k, 0) + v
        return total

    chunks = sum(p["chunks"] for p in parts)
    wall = main["window_s"]
    due = streams * TOKENS_PER_SECOND * wall
    cpu_wall = main["cpu_window_s"]
    cpu_chunks = sum(p["cpu_chunks"] for p in parts)
    client_cpu = sum(p["client_cpu_s"] for p in parts)
    probe_head, probe_first = merged("probe_head_ms"), merged("probe_first_ms")
    rec_head, rec_first = merged("reconnect_head_ms"), merged("reconnect_first_ms")
    result = {
        "config": server.config.name,
        "workers": server.config.workers,
        "streams": streams,
        "window_s": wall,
        "chunks": chunks,
        "chunks_per_s": chunks / wall,
        "delivered_of_due": chunks / due,
        "cpu_window_s": cpu_wall,
        "cpu_chunks": cpu_chunks,
        "server_cpu_s": main["server_cpu_s"],
        "server_cores": main["server_cpu_s"] / cpu_wall,
        "cpu_us_per_chunk": main["server_cpu_s"] / cpu_chunks * 1e6 if cpu_chunks else math.nan,
        "client_cores": client_cpu / cpu_wall,
        # Everything else the machine ran meanwhile: other users' test runs, and Redis and
        # PostgreSQL for the configurations that use them.
        "other_cores": max(
            0.0, (main["machine_busy_s"] - main["server_cpu_s"] - client_cpu) / cpu_wall
        ),
        "redis_cpu_s": main["redis_cpu_s"],
        "delay_ms": {
            "p50": percentile(delays, 0.5),
            "p90": percentile(delays, 0.9),
            "p99": percentile(delays, 0.99),
            "max": max(delays) if delays else math.nan,
        },
        "answers": sum(p["answers"] for p in parts),
        "answers_done": sum(p["answers_done"] for p in parts),
        "errors": counts("errors"),
        "problems": counts("problems"),
        # The slowest stop of the answers still generating when the window closed.
        "stop_max_s": max(p.get("stop_max_s", 0.0) for p in parts),
        "missing_anchor": sum(p["missing_anchor"] for p in parts),
        "resume": {
            "count": len(probe_head),
            "first_byte_p50_ms": percentile(probe_head, 0.5),
            "first_byte_p99_ms": percentile(probe_head, 0.99),
            "first_event_p50_ms": percentile(probe_first, 0.5),
            "first_event_p99_ms": percentile(probe_first, 0.99),
        },
        "reconnects": sum(p["reconnects"] for p in parts),
        "reconnect": {
            "first_byte_p50_ms": percentile(rec_head, 0.5),
            "first_byte_p99_ms": percentile(rec_head, 0.99),
            "first_event_p50_ms": percentile(rec_first, 0.5),
            "first_event_p99_ms": percentile(rec_first, 0.99),
        },
    }
    if profile_result is not None:
        us = result["cpu_us_per_chunk"]
        profile_result["breakdown_us_per_chunk"] = [
            (label, share * us) for label, share in profile_result["breakdown"]
        ]
        result["profile"] = profile_result
    result["ok"] = (
        result["delay_ms"]["p99"] < DELAY_TARGET_MS
        and result["delivered_of_due"] >= 0.9
        and not result["errors"]
        and not result["problems"]
    )
    for part in parts:
        os.unlink(part["delays_path"])
    return result


#: Where a profile sample's CPU goes: the first rule one of whose names is part of a frame's
#: name in the sample's stack (``=name``: is a frame's whole name) names it.
PROFILE_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("per answer: on_end -> finalize (store the answer)", ("Answers.finalize",)),
    ("per request: route, auth, SQL, engine.start", ("=post_chat", "=resume_v5", "=identify")),
    ("HTTP send: ASGI send chain + uvicorn write", ("RequestResponseCycle.send",)),
    ("v5 encoder: decode, fit, encode JSON, SSE", ("StreamEncoder.encode",)),
    (
        "model + ui_chunks + encode_event (+ assembling the answer)",
        ("Answers._source", "=plain_frames", "=_stored_frames"),
    ),
    (
        "Redis backend: append_many (script arguments, notification payload, replies)",
        ("RedisBackend.append_many",),
    ),
    ("engine: producer (_pump, add, inline append, wake readers)", ("Producers._pump",)),
    ("engine: write loop (flush, append, wake readers)", ("Writes._write_loop",)),
    (
        "engine: gathered appends, outside the backend",
        ("Writes._gather_appends", "Writes._append_group", "Writes._take_dirty"),
    ),
    (
        "Redis: the pipeliner (packing, socket writes, reading replies)",
        ("Pipeliner.", "_Connections.", "_send_packed_command"),
    ),
    (
        "Redis: notifications (pub/sub reader)",
        ("Router._keep_connected", "Router._route", "Router.subscribe", "_Link."),
    ),
    ("engine: lease renewals and stop watchers", ("Writes.renew_leases", "_watch_for_stop")),
    (
        "response: the engine's reader (read, wait)",
        ("StreamEngine.read_batches", "LocalReader.batches", "BackendReader."),
    ),
    ("response: rest of the response loop", ("EngineStreamResponse", "StreamingResponse")),
    ("garbage collection (the benchmark's pause log)", ("on_gc",)),
]


def profile_breakdown(path: Path) -> list[tuple[str, float]]:
    """Share of a py-spy raw profile's samples per `PROFILE_RULES` category."""
    shares: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        names = {frame.partition(" (")[0] for frame in stack.split(";")}
        label = "event loop, other"
        for name, frames in PROFILE_RULES:
            if any(
                f[1:] in names if f[0] == "=" else any(f in name for name in names) for f in frames
            ):
                label = name
                break
        shares[label] = shares.get(label, 0) + int(n)
        total += int(n)
    return sorted(((k, v / total) for k, v in shares.items()), key=lambda kv: -kv[1])


def gc_pauses(path: Path, offset: int) -> dict[str, Any]:
    """Garbage-collection pauses of >= 1 ms the server logged after ``offset`` (ramp and
    window of one step): count, total and longest, per generation."""
    with path.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode().split("\n")
    pauses: dict[str, list[float]] = {}
    for line in lines:
        generation, _, ms = line.partition("\t")
        if ms:
            pauses.setdefault(f"gen{generation}", []).append(float(ms))
    return {
        gen: {"count": len(v), "total_ms": round(sum(v), 1), "max_ms": round(max(v), 1)}
        for gen, v in sorted(pauses.items())
    }


def step_line(r: dict[str, Any]) -> str:
    d, res = r["delay_ms"], r["resume"]
    resume = (
        f"{res['first_byte_p50_ms']:6.1f}/{res['first_byte_p99_ms']:6.1f}"
        f"  {res['first_event_p99_ms']:6.1f}"
        if res["count"]
        else f"{'-':>13}  {'-':>6}"
    )
    trouble = {**r["errors"], **r["problems"]}
    return (
        f"{r['config']:<18}{r['streams']:>7}{r['chunks_per_s']:>9,.0f}{r['delivered_of_due']:>6.0%}"
        f"{r['server_cores']:>6.2f}{r['client_cores']:>6.2f}{r['other_cores']:>6.2f}"
        f"{r['cpu_us_per_chunk']:>8.1f}"
        f"{d['p50']:>8.1f}{d['p99']:>8.1f}{d['max']:>8.0f}  {resume}"
        f"  {'ok' if r['ok'] else 'FAIL'} {', '.join(f'{k}: {v}' for k, v in trouble.items())}"
        + "".join(
            f" [{gen} gc: {p['count']} >= 1 ms, max {p['max_ms']:.0f} ms]"
            for gen, p in r.get("gc_pauses", {}).items()
        )
    )


HEADER = (
    f"{'config':<18}{'streams':>7}{'chunks/s':>9}{'deliv':>6}{'srv':>6}{'load':>6}{'other':>6}"
    f"{'us/chk':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}  {'resume p50/p99':>13}  {'ev p99':>6}"
    "  target"
)


def capacity(
    config: Config, args: argparse.Namespace, workdir: Path, levels: list[int]
) -> list[dict[str, Any]]:
    server = Server(config, args, workdir)
    steps: list[dict[str, Any]] = []
    try:
        server.start()
        for streams in levels:
            profiled = args.profile is not None and streams == args.profile
            slug = config.name.replace(" ", "")
            attempts: list[dict[str, Any]] = []
            for attempt in range(1 + args.retries):
                gc_seen = server.gc_log.stat().st_size
                result = run_step(
                    server,
                    streams,
                    ramp=args.ramp,
                    window=args.window,
                    probes_per_s=args.probes if config.product else 0.0,
                    client_procs=args.client_procs,
                    profile=args.py_spy if profiled and attempt == 0 else None,
                    profile_out=RESULTS / f"system-profile-{slug}-{streams}.txt",
                    profile_rate=args.profile_rate,
                )
                result["gc_pauses"] = gc_pauses(server.gc_log, gc_seen)
                attempts.append(result)
                print(step_line(result), flush=True)
                time.sleep(2)
                # The machine may be shared: a step that failed on delay alone (no error,
                # no wrong answer) is run again; it passes if one of its runs passes.
                if result["ok"] or result["errors"] or result["problems"]:
                    break
            result = attempts[-1]
            result["attempt"] = len(attempts)
            result["earlier_attempts"] = attempts[:-1]
            steps.append(result)
            if not result["ok"]:
                break
    finally:
        server.stop()
    return steps


def paired(
    configs: list[Config], args: argparse.Namespace, workdir: Path, levels: list[int]
) -> dict[str, Any]:
    """CPU per chunk of each configuration against plain streaming, from steps that
    alternate between them (``--paired ROUNDS`` rounds per level, the order rotating each
    round), all servers up at once (an idle one costs nothing). This machine's speed drifts
    over minutes, so a ratio of steps run minutes apart (as in the capacity runs) can be off
    by more than what is measured; here each round's ratio compares neighbouring steps.

    Each round also keeps every step's p99 delivery delay (``delay_p99``), so delays are
    compared within a round too."""
    others = [c for c in configs if c is not PLAIN]
    servers = {c.name: Server(c, args, workdir) for c in [PLAIN, *others]}
    out: dict[str, Any] = {}
    try:
        for server in servers.values():
            server.start()
        names = list(servers)
        for streams in levels:
            rounds: list[dict[str, float]] = []
            delays: list[dict[str, float]] = []
            for round_ in range(args.paired):
                cpu: dict[str, float] = {}
                p99: dict[str, float] = {}
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    result = run_step(
                        servers[name],
                        streams,
                        ramp=args.ramp,
                        window=args.window,
                        client_procs=args.client_procs,
                    )
                    print(step_line(result) + f"  (paired, round {round_ + 1})", flush=True)
                    cpu[name] = result["cpu_us_per_chunk"]
                    p99[name] = result["delay_ms"]["p99"]
                    time.sleep(2)
                rounds.append(cpu)
                delays.append(p99)
            ratios = {c.name: [r[c.name] / r[PLAIN.name] for r in rounds] for c in others}
            level: dict[str, Any] = {"rounds": rounds, "delay_p99": delays, "ratios": ratios}
            for key, baseline in BASELINE_KEYS[1:]:
                if baseline.name in servers:
                    # The cost of resumability alone: the same service, streaming plainly.
                    level[key] = {
                        c.name: [r[c.name] / r[baseline.name] for r in rounds]
                        for c in others
                        if c.product
                    }
            out[str(streams)] = level
    finally:
        for server in servers.values():
            server.stop()
    return out


#: Where `paired` keeps each configuration's ratios to each baseline.
BASELINE_KEYS = (
    ("ratios", PLAIN),
    ("ratios_to_stored_plain", STORED_PLAIN),
    ("ratios_to_stored_plain_postgres", STORED_PLAIN_PG),
)
#: The Redis path's targets: CPU per chunk against stored-plain on the same database, and
#: its p99 delivery delay against the embedded backend's in the same round.
REDIS_CPU_RATIO_TARGET = 1.4
REDIS_DELAY_RATIO_TARGET = 2.0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else math.nan


def paired_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for streams, level in results.get("paired", {}).items():
        for key, baseline in BASELINE_KEYS:
            for name, ratios in level.get(key, {}).items():
                median = _median(ratios)
                target = CPU_RATIO_TARGET
                if name.startswith("redis") and key != "ratios":
                    target = REDIS_CPU_RATIO_TARGET
                verdict = "met" if median <= target else "MISSED"
                cpu = [f"{r[name]:.1f}/{r[baseline.name]:.1f}" for r in level["rounds"]]
                lines.append(
                    f"paired CPU per chunk {name} / {baseline.name} at {streams} streams: median "
                    f"{median:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)}; us "
                    f"{', '.join(cpu)}); target <= {target}x: {verdict}"
                )
        delays = level.get("delay_p99", [])
        if not delays:
            continue
        for name in delays[0]:
            values = [d[name] for d in delays]
            lines.append(
                f"paired p99 delivery delay {name} at {streams} streams: median "
                f"{_median(values):.1f} ms (rounds: {', '.join(f'{v:.1f}' for v in values)})"
            )
        for name in (n for n in delays[0] if n.startswith("redis")):
            for memory in (MEMORY.name, MEMORY_PG.name):
                if memory not in delays[0]:
                    continue
                ratios = [d[name] / d[memory] for d in delays]
                median = _median(ratios)
                verdict = "met" if median <= REDIS_DELAY_RATIO_TARGET else "MISSED"
                lines.append(
                    f"paired p99 delivery delay {name} / {memory} at {streams} streams: median "
                    f"{median:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)}); target "
                    f"<= {REDIS_DELAY_RATIO_TARGET}x: {verdict}"
                )
    return lines


def storm(config: Config, args: argparse.Namespace, workdir: Path, streams: int) -> dict[str, Any]:
    server = Server(config, args, workdir)
    try:
        server.start()
        result = run_step(
            server,
            streams,
            ramp=args.ramp,
            window=args.storm_seconds,
            storm_fraction=0.2,
            client_procs=args.client_procs,
        )
    finally:
        server.stop()
    return result


def sustained(steps: list[dict[str, Any]]) -> int:
    return max((s["streams"] for s in steps if s["ok"]), default=0)


def summarize(results: dict[str, Any]) -> list[str]:
    """The targets, each said plainly: met or missed."""
    cap = results["capacity"]
    lines = []
    plain = {s["streams"]: s for s in cap.get("plain", [])}
    for name in (MEMORY.name, MEMORY_FLUSH.name):
        mem = {s["streams"]: s for s in cap.get(name, [])}
        both = [n for n in mem if n in plain and mem[n]["ok"] and plain[n]["ok"]]
        if not both:
            continue
        n = max(both)
        ratio = mem[n]["cpu_us_per_chunk"] / plain[n]["cpu_us_per_chunk"]
        added = mem[n]["delay_ms"]["p99"] - plain[n]["delay_ms"]["p99"]
        results.setdefault("cpu_ratio", {})[name] = {
            "streams": n,
            "ratio": ratio,
            "p99_added_ms": added,
        }
        verdict = "met" if ratio <= CPU_RATIO_TARGET else "MISSED"
        lines.append(
            f"CPU per chunk, resumable ({name}) / plain at {n} streams: {ratio:.2f}x "
            f"({mem[n]['cpu_us_per_chunk']:.1f} vs {plain[n]['cpu_us_per_chunk']:.1f} us); "
            f"target <= {CPU_RATIO_TARGET}x: {verdict}"
        )
        lines.append(
            f"p99 delivery delay added by resumability ({name}) at {n} streams: "
            f"{added:+.1f} ms ({mem[n]['delay_ms']['p99']:.1f} vs "
            f"{plain[n]['delay_ms']['p99']:.1f} ms)"
        )
    baselines = {c.name for c in CONFIGS if not c.product}
    for name, steps in cap.items():
        best = sustained(steps)
        workers = steps[0]["workers"] if steps else 1
        per_worker = best / workers
        verdict = "met" if per_worker >= STREAMS_TARGET else "MISSED"
        if name in baselines:
            verdict = "- (baseline, no target)"
        lines.append(
            f"most concurrent answers at 30 tokens/s with p99 < {DELAY_TARGET_MS:.0f} ms, "
            f"{name}: {best} ({per_worker:.0f} per worker); target >= {STREAMS_TARGET} per "
            f"worker: {verdict}"
        )
        if steps:
            at = ([s for s in steps if s["ok"]] or steps[:1])[-1]
            us = at["cpu_us_per_chunk"]
            lines.append(
                f"  CPU bound for {name}: {at['cpu_us_per_chunk']:.0f} us of server CPU per "
                f"chunk at {at['streams']} streams -> one fully available core could serve "
                f"~{1e6 / (us * TOKENS_PER_SECOND):.0f} answers at 30 "
                "tokens/s"
            )
        if name not in baselines and steps:
            ok = [s for s in steps if s["ok"]] or steps[:1]
            at = ok[-1]
            p99 = at["resume"]["first_byte_p99_ms"]
            verdict = "met" if p99 < RESUME_TARGET_MS else "MISSED"
            lines.append(
                f"resume -> first byte under load ({name}, {at['streams']} streams): p50 "
                f"{at['resume']['first_byte_p50_ms']:.1f} ms, p99 {p99:.1f} ms; first event "
                f"p99 {at['resume']['first_event_p99_ms']:.1f} ms; target p99 < "
                f"{RESUME_TARGET_MS:.0f} ms: {verdict}"
            )
    for name, r in results["storm"].items():
        broken = sum(r["problems"].values())
        lines.append(
            f"reconnect storm ({name}, {r['streams']} clients, 20 %/s for {r['window_s']:.0f} s): "
            f"{r['reconnects']} reconnects, {r['answers']} answers, gaps/duplicates: {broken}, "
            f"errors: {sum(r['errors'].values())}; delay p50/p99 {r['delay_ms']['p50']:.1f}/"
            f"{r['delay_ms']['p99']:.1f} ms; reconnect -> first byte p50/p99 "
            f"{r['reconnect']['first_byte_p50_ms']:.1f}/{r['reconnect']['first_byte_p99_ms']:.1f}"
            f" ms, -> first event p99 {r['reconnect']['first_event_p99_ms']:.1f} ms"
        )
    return lines


def chart_paired(results: dict[str, Any], path: Path) -> None:
    """Left: each round's CPU ratio to plain, per configuration and level, with the target.
    Right: what each configuration trades, its CPU per chunk against its stored-plain
    baseline's and its p99 delivery delay, one point per round and level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, trade) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = sorted({name for level in results["paired"].values() for name in level["rounds"][0]})
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    labelled: set[str] = set()
    for streams, level in results["paired"].items():
        for (key, baseline), marker in zip(BASELINE_KEYS, "oxs", strict=True):
            for name, ratios in level.get(key, {}).items():
                label = name if baseline is PLAIN else f"{name} / {baseline.name}"
                shown = None if label in labelled else label
                labelled.add(label)
                x = [int(streams)] * len(ratios)
                ax.plot(x, ratios, marker, color=colors.get(name), label=shown)
        for name in names:
            ratios = level.get("ratios_to_stored_plain_postgres", {}).get(name) or level.get(
                "ratios_to_stored_plain", {}
            ).get(name)
            delays = [d[name] for d in level.get("delay_p99", []) if name in d]
            if ratios and len(delays) == len(ratios):
                trade.plot(delays, ratios, "o", color=colors[name], label=f"{name} ({streams})")
    ax.axhline(CPU_RATIO_TARGET, color="red", linestyle="--", linewidth=1, label="target")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent answers at 30 tokens/s")
    ax.set_ylabel("server CPU per chunk / the baseline's")
    ax.set_title("CPU per chunk against plain (o), stored-plain (x, s: postgres)")
    ax.legend(fontsize=7)
    trade.axhline(REDIS_CPU_RATIO_TARGET, color="red", linestyle="--", linewidth=1)
    trade.set_xscale("log")
    trade.set_xlabel("p99 delivery delay, ms (log scale)")
    trade.set_ylabel("server CPU per chunk / stored-plain's (same database)")
    trade.set_title(f"what each one trades (dashed: the Redis target, {REDIS_CPU_RATIO_TARGET}×)")
    trade.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = {c.name: f"C{i}" for i, c in enumerate(CONFIGS)}
    for name, steps in results["capacity"].items():
        if not steps:
            continue
        x = [s["streams"] for s in steps]
        style = {"color": colors.get(name), "label": name}
        axes[0].plot(x, [s["delay_ms"]["p99"] for s in steps], "o-", **style)
        axes[1].plot(x, [s["cpu_us_per_chunk"] for s in steps], "o-", **style)
        if steps[0]["resume"]["count"]:
            axes[2].plot(x, [s["resume"]["first_byte_p99_ms"] for s in steps], "o-", **style)
    axes[0].axhline(DELAY_TARGET_MS, color="red", linestyle="--", linewidth=1, label="target")
    axes[0].set_yscale("log")
    axes[0].set_title("p99 delivery delay (ms)")
    axes[1].set_title("server CPU per chunk delivered (us)")
    axes[1].set_ylim(bottom=0)
    axes[2].axhline(RESUME_TARGET_MS, color="red", linestyle="--", linewidth=1, label="target")
    axes[2].set_yscale("log")
    axes[2].set_title("resume -> first byte p99 (ms)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("concurrent answers at 30 tokens/s")
        ax.legend(fontsize=8)
    fig.suptitle("unbroken chat service under load (demo model, uvicorn, loopback)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _source_version() -> dict[str, Any]:
    """The commit measured, and whether src/ had uncommitted changes."""
    try:
        run = {"cwd": HERE.parent, "capture_output": True, "text": True, "check": True}
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], **run).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit, "src_uncommitted_changes": bool(dirty)}


def run_configs(
    configs: list[Config],
    args: argparse.Namespace,
    workdir: Path,
    levels: list[int],
    results: dict[str, Any],
) -> None:
    """The paired steps, or each configuration's capacity steps and then the storms."""
    if args.paired:
        results["paired"] = paired(configs, args, workdir, levels)
        return
    for config in configs:
        results["capacity"][config.name] = capacity(config, args, workdir, levels)
    if args.no_storm:
        return
    storm_configs = [c for c in configs if c.product and (c is MEMORY or c is REDIS_2)]
    if args.quick:
        storm_configs = storm_configs[:1]
    for config in storm_configs:
        streams = args.storm_streams or min(
            1000, max(100, sustained(results["capacity"][config.name]))
        )
        r = storm(config, args, workdir, streams)
        results["storm"][config.name] = r
        print(step_line(r).replace("FAIL", "    ") + "  (reconnect storm)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis-url",
        help="the Redis of the redis configurations (default: a private redis-server the "
        "script starts on a free port, so its CPU is this benchmark's alone)",
    )
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter steps: a smoke run")
    parser.add_argument("--levels", help="comma-separated concurrency steps")
    parser.add_argument(
        "--configs",
        default="plain,memory-sqlite,redis-postgres,redis-postgres x2",
        help="which configurations to run (comma-separated)",
    )
    parser.add_argument(
        "--redis-windows",
        metavar="SECONDS",
        help="also run redis-postgres with each of these write windows (comma-separated "
        "UNBROKEN_REDIS_WRITE_GATHER values), as 'redis-postgres <ms> ms': what each window "
        "trades, delay against CPU, in the same run",
    )
    parser.add_argument("--client-procs", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--auth",
        choices=["key", "cookie"],
        default="key",
        help="how the clients authenticate: an API key (default) or a guest session cookie",
    )
    parser.add_argument("--storm-streams", type=int, help="clients in the reconnect storm")
    parser.add_argument("--no-storm", action="store_true")
    parser.add_argument(
        "--output", default="system", help="results/<OUTPUT>.json and .png (default: system)"
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="re-runs of a step that failed on delay alone"
    )
    parser.add_argument(
        "--probes",
        type=float,
        default=10.0,
        help="resume probes per second in the second half of each window (a p99 needs a few "
        "hundred: 40/s gives 300 per step)",
    )
    parser.add_argument(
        "--paired",
        type=int,
        metavar="ROUNDS",
        help="instead of capacity steps: CPU per chunk of each configuration against plain "
        "streaming, alternating steps at each level for ROUNDS rounds",
    )
    parser.add_argument(
        "--before",
        metavar="SRC",
        help="also run each configuration of the service on the unbroken source tree SRC "
        "(e.g. a git worktree's src/ at an earlier commit), as '<name> before'",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="STREAMS",
        help="py-spy the server during the step at this concurrency (raw stacks to results/)",
    )
    parser.add_argument(
        "--profile-rate",
        type=int,
        default=200,
        metavar="HZ",
        help="py-spy samples per second (more: finer figures, a little more overhead)",
    )
    args = parser.parse_args()
    # Clean up (servers, databases, Redis keys) on Ctrl-C and on kill, even when started in
    # the background by a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.ramp, args.window, args.storm_seconds = 4.0, 6.0, 10.0
        levels = [10, 50, 100, 250, 500]
    else:
        # Slots start evenly over one answer's length (~15 s), so answers start and end at a
        # steady rate, as in a real service; then a 15 s window is measured.
        args.ramp, args.window, args.storm_seconds = 15.0, 15.0, 60.0
        levels = [10, 50, 100, 150, 250, 500, 1000, 1500, 2000, 3000]
    if args.levels:
        levels = [int(v) for v in args.levels.split(",")]
    args.py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(PYTHON).parent))
    if args.profile is not None and not args.py_spy:
        parser.error("--profile needs py-spy (pip install py-spy)")
    wanted = [name.strip() for name in args.configs.split(",")]
    configs = [c for c in CONFIGS if c.name in wanted]
    for window in (args.redis_windows or "").split(","):
        if window.strip():
            configs.append(redis_with_window(float(window)))
    if args.before:
        # Each configuration of the service once more, on the other source tree: before and
        # after a change, in the same run (paired: in the same rounds).
        src = str(Path(args.before).resolve())
        configs += [
            dataclasses.replace(c, name=f"{c.name} before", src=src) for c in configs if c.product
        ]
    workdir = Path(tempfile.mkdtemp(prefix="unbroken-sysbench-"))
    RESULTS.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "tokens_per_second": TOKENS_PER_SECOND,
        "ramp_s": args.ramp,
        "window_s": args.window,
        "levels": levels,
        "capacity": {},
        "storm": {},
    }
    print(HEADER, flush=True)
    with contextlib.ExitStack() as stack:
        if args.redis_url is None and any(c.redis for c in configs):
            args.redis_url, _ = stack.enter_context(redis_server())
        try:
            run_configs(configs, args, workdir, levels, results)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    lines = summarize(results) + paired_lines(results)
    results["summary"] = lines
    results["source"] = _source_version()
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average_at_end": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    results["auth"] = args.auth
    (RESULTS / f"{args.output}.json").write_text(json.dumps(results, indent=2))
    (chart_paired if args.paired else chart)(results, RESULTS / f"{args.output}.png")
    print("\n".join(lines))
    print(
        "\ncolumns: deliv = chunks delivered / chunks due; srv, load = CPU cores used by the "
        "server and by the load generator; us/chk = server CPU per chunk delivered; p50/p99/"
        "max = delivery delay; resume = first byte p50/p99 ms, ev p99 = first event p99 ms"
    )
    print(f"\nwrote {RESULTS / (args.output + '.json')} and {RESULTS / (args.output + '.png')}")


if __name__ == "__main__":
    main()
