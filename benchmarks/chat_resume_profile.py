"""Where the chat service's v5 resume spends its time before the first byte, on worker B.

Run:  .venv/bin/python benchmarks/chat_resume_profile.py [--resumes 200] [--others 0]
      [--every 0.1] [--py-spy] [--chat-db postgres|sqlite] [--src SRC]

The same set-up as the chat section of `peers_bench.py` (two workers, a private redis-server,
a PostgreSQL database made for the run, the demo model at 30 tokens/s, answers posted to A
and resumed on B once 2 s old, a new connection per resume), with worker B run through
`_chat_probe.py`, which stamps each timed resume's moments. Prints, per step, the median,
p90 and p99 of its time (ms), and for the slowest resumes each step's time and the garbage
collections that overlapped them. ``--others N``: N other answers streaming meanwhile, each
followed live through B. ``--every``: seconds between resumes (peers_bench's by default).
``--py-spy``: also sample worker B's CPU (py-spy, non-blocking) and print where it went.
``--src SRC``: run the workers from another source tree.

A diagnostic, not a benchmark: the probe's stamps and wrappers cost a little time of their
own; compare trees with ``--src`` in runs close together, or use peers_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers_bench import (
    CHAT_AGE,
    CHAT_EVERY,
    CHAT_LIFE,
    ChatClient,
    ChatService,
    _Response,
    chat_service,
    cpu_seconds,
    percentile,
    redis_server,
    stop_followers,
)

HERE = Path(__file__).resolve().parent
#: (label, from, to): the steps of a resume, between the probe's stamps.
STEPS = [
    ("client write → worker reads it", "sent", "recv"),
    ("read → app called (event loop)", "recv", "app"),
    ("app → identify (middleware, routing)", "app", "identify_start"),
    ("identify (auth)", "identify_start", "identify_end"),
    ("identify → database", "identify_end", "db_start"),
    ("database: chat + active stream", "db_start", "db_end"),
    ("  call → connection checked out", "db_start", "sql_checkout"),
    ("  checked out → statement sent", "sql_checkout", "sql_execute"),
    ("  statement (round trip)", "sql_execute", "sql_executed"),
    ("  rows → connection checked in", "sql_executed", "sql_checkin"),
    ("  checked in → call returns", "sql_checkin", "db_end"),
    ("database → reader", "db_end", "open_start"),
    ("reader opens (Redis)", "open_start", "open_end"),
    ("  first pipelined call", "redis_call_start", "redis_call_end"),
    ("  first pipelined calls (many)", "redis_call_many_start", "redis_call_many_end"),
    # The reader subscribes after its first batch, so this one is off the first byte's path.
    (
        "subscription confirmed (after the first batch)",
        "redis_subscribe_start",
        "redis_subscribe_end",
    ),
    ("reader → head sent", "open_end", "head"),
    ("head written", "head", "head_sent"),
    ("head → client reads it", "head_sent", "client_head"),
    ("total: first byte", "sent", "client_head"),
]
#: py-spy: a sample's category is that of its innermost frame that matches one (in order).
CATEGORIES = [
    ("gc", ("(garbage collection)",)),
    ("SQL (SQLAlchemy, asyncpg)", ("sqlalchemy/", "asyncpg/")),
    ("Redis (redis-py)", ("redis/", "hiredis")),
    ("engine + backend", ("unbroken/_engine", "unbroken/backends")),
    ("encoding (AI SDK, SSE)", ("unbroken/protocols",)),
    ("response (unbroken.asgi)", ("unbroken/asgi.py",)),
    ("chat service (routes, auth, answers)", ("unbroken/chat",)),
    ("FastAPI + Starlette", ("fastapi/", "starlette/", "pydantic")),
    ("uvicorn (HTTP)", ("uvicorn/", "httptools")),
    ("anyio", ("anyio/",)),
    ("event loop", ("asyncio/", "uvloop")),
]


class ProbedClient(ChatClient):
    async def probed_resume(self, chat_id: str, sink: _Response, probe: str) -> float:
        head = (
            f"GET /api/chat/{chat_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.auth}"
            f"x-probe: {probe}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        return await self.request(self.service.ports[1], head, sink)


async def drive(
    service: ChatService, resumes: int, others: int, every: float = CHAT_EVERY
) -> dict[str, Any]:
    """Timed resumes on B as `peers_bench._chat_run` makes them, ``others`` answers
    streaming meanwhile; what the client saw of each."""
    client = ProbedClient(service)
    stop = asyncio.Event()
    running: set[str] = set()

    async def other() -> None:
        while not stop.is_set():
            chat_id, _ = await client.start_answer()
            running.add(chat_id)
            await client.resume(chat_id, _Response(keep=0))

    followers = [asyncio.ensure_future(other()) for _ in range(others)]
    seen: list[dict[str, Any]] = []
    try:
        if others:
            await asyncio.sleep(2.0)
        chat_id, born = await client.start_answer()
        running.add(chat_id)
        age = CHAT_AGE
        for i in range(resumes + 1):
            if time.monotonic() - born > CHAT_LIFE:
                chat_id, born = await client.start_answer()
                running.add(chat_id)
            await asyncio.sleep(max(0.0, born + age - time.monotonic()))
            sink = _Response()
            sent = await client.probed_resume(chat_id, sink, str(i))
            if i == 0:
                cpu = cpu_seconds(service.pids[1])
            elif sink.status == 200:
                seen.append({"id": str(i), "sent": sent, "client_head": sink.head})
            await asyncio.sleep(every)
        cpu_ms = (cpu_seconds(service.pids[1]) - cpu) * 1000 / max(resumes, 1)
    finally:
        await stop_followers(stop, followers, client, running)
    return {"seen": seen, "cpu_ms": cpu_ms}


def steps_table(resumes: list[dict[str, Any]]) -> str:
    lines = ["| step | median (ms) | p90 (ms) | p99 (ms) |", "|---|---:|---:|---:|"]
    for label, start, end in STEPS:
        values = [(r[end] - r[start]) * 1000 for r in resumes if r.get(start) and r.get(end)]
        if values:
            cells = [statistics.median(values), percentile(values, 0.9), percentile(values, 0.99)]
            lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def slowest(resumes: list[dict[str, Any]], pauses: list[list[float]], count: int = 6) -> str:
    """The slowest resumes, step by step, with the collections that overlapped each."""
    done = [r for r in resumes if r.get("client_head")]
    done.sort(key=lambda r: r["client_head"] - r["sent"], reverse=True)
    lines = []
    for r in done[:count]:
        parts = [
            f"{label.split(' (')[0]} {(r[end] - r[start]) * 1000:.2f}"
            for label, start, end in STEPS[:-1]
            if r.get(start) and r.get(end)
        ]
        overlapping = [
            f"gen{int(gen)} {seconds * 1000:.1f} ms"
            for start, seconds, gen in pauses
            if start < r["client_head"] and start + seconds > r["sent"]
        ]
        total = (r["client_head"] - r["sent"]) * 1000
        gcs = ", ".join(overlapping) or "none"
        lines.append(f"- {total:.2f} ms: " + "; ".join(parts) + f" | gc: {gcs}")
    return "\n".join(lines)


def gc_summary(pauses: list[list[float]], seconds: float) -> str:
    by_gen: dict[int, list[float]] = collections.defaultdict(list)
    for _start, took, gen in pauses:
        by_gen[int(gen)].append(took * 1000)
    lines = []
    for gen, took in sorted(by_gen.items()):
        lines.append(
            f"- generation {gen}: {len(took)} collections ({len(took) / seconds:.1f}/s), "
            f"median {statistics.median(took):.2f} ms, max {max(took):.2f} ms"
        )
    return "\n".join(lines)


def py_spy_summary(raw: Path) -> str:
    """Worker B's sampled CPU by category (innermost matching frame), and the busiest
    functions by own time."""
    categories: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        functions[frames[-1]] += count
        for frame in reversed(frames):
            found = next((name for name, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if found is not None:
                categories[found] += count
                break
        else:
            categories["other"] += count
    lines = [f"{total} samples; share by category:"]
    lines += [f"- {name}: {100 * n / total:.1f}%" for name, n in categories.most_common()]
    lines.append("busiest functions (own time):")
    lines += [f"- {100 * n / total:.1f}% {name}" for name, n in functions.most_common(25)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--resumes", type=int, default=200)
    parser.add_argument("--others", type=int, default=0)
    parser.add_argument(
        "--every", type=float, default=CHAT_EVERY, help="seconds between timed resumes"
    )
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--chat-db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--src", help="run the workers from this source tree (its src folder)")
    args = parser.parse_args()
    args.stem = "chat-resume-profile"
    pythonpath = str(Path(args.src).resolve()) if args.src else None
    with tempfile.TemporaryDirectory(prefix="chat-profile-") as scratch:
        folder = Path(scratch)
        probe_out = str(folder / "probe")
        worker = [sys.executable, str(HERE / "_chat_probe.py")]
        spy: subprocess.Popen[bytes] | None = None
        raw = folder / "py-spy.txt"
        with (
            redis_server() as (url, _process),
            chat_service(
                url, folder, args, pythonpath, worker=worker, worker_env={"PROBE_OUT": probe_out}
            ) as service,
        ):
            if args.py_spy:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                     str(service.pids[1]), "--rate", "500", "--nonblocking", "--format",
                     "raw", "--output", str(raw)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            seen = asyncio.run(drive(service, args.resumes, args.others, args.every))
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            pid_b = service.pids[1]
        probed = json.loads((folder / f"probe.{pid_b}.json").read_text())
        spied = py_spy_summary(raw) if spy is not None and raw.exists() else None
    server = {r["id"]: r for r in probed["requests"]}
    resumes = [{**server.get(r["id"], {}), **r} for r in seen["seen"]]
    print(f"worker B, {len(resumes)} resumes, {args.others} other answers streaming")
    print(f"worker B's CPU per resume: {seen['cpu_ms']:.2f} ms\n")
    print(steps_table(resumes))
    print("\nslowest resumes (ms):")
    print(slowest(resumes, probed["gc"]))
    begun, ended = min(r["sent"] for r in resumes), max(r["sent"] for r in resumes)
    timed = [pause for pause in probed["gc"] if begun <= pause[0] <= ended]
    print("\nworker B's garbage collections while the resumes were timed:")
    print(gc_summary(timed, ended - begun))
    if spied is not None:
        print("\npy-spy, worker B:\n" + spied)


if __name__ == "__main__":
    main()
