"""What a finished answer costs to keep for its retention, in each backend.

Run:  .venv/bin/python benchmarks/retention_bench.py [--answers 300] [--backends memory,redis]

Each answer is the chat service's own encoding of a demo-model answer (``unbroken.chat``'s
offline model, its UI message chunks encoded as the service stores them: one JSON event per
token), produced through a `StreamEngine` to its end, exactly as the service does. Then:

- memory: in a fresh process, the answers are produced into a `MemoryBackend` and kept; the
  growth of ``tracemalloc``'s traced memory (after a full collection) is their cost. The RSS
  growth of a second fresh process, without tracemalloc, is printed as a cross-check (it moves
  in whole pages and arenas, so it is coarse). The time to read a whole kept answer back
  (``backend.read`` of all its chunks, what every resume of a finished answer starts with)
  is measured there too.
- redis: against a redis-server this script starts on a free port, ``INFO memory``'s
  ``used_memory`` before and after.

Per kept answer: bytes, and their ratio to the answer's text (UTF-8 bytes of what the model
wrote) and to its raw chunk data (UTF-8 bytes of the stored events). The floor: the same
answers' texts as plain strings in a list, measured the same way. Prints a table and writes
benchmarks/results/retention.json and retention.png.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results
from peers_bench import redis_server

BATCH = 25  # answers produced at once
# Answers produced before the baseline: lazily made structures, and the memory that a batch
# of answers being produced needs, are there before it, so only what is kept is counted.
WARMUP = BATCH


def prompt(number: int) -> str:
    return f"Question {number}: how does a resumable stream survive a reload?"


async def encoded_answer(number: int) -> AsyncIterator[str]:
    """The chat service's stored chunks of the demo model's answer to ``prompt(number)``."""
    from unbroken.chat.events import ui_chunks
    from unbroken.chat.models.demo import DemoModel
    from unbroken.protocols.ai_sdk import encode_event

    model = DemoModel(tokens_per_second=1e9)  # as fast as it goes: the pace is not measured
    messages = [{"role": "user", "parts": [{"type": "text", "text": prompt(number)}]}]
    async for chunk in ui_chunks(f"msg-{number}", model.stream(messages)):
        yield encode_event(chunk)


def answer_text(number: int) -> str:
    """What the model wrote for ``prompt(number)``: its reasoning and its answer."""
    from unbroken.chat.models.demo import compose

    reasoning, answer = compose(prompt(number))
    return reasoning + answer


async def answer_shape(numbers: range) -> dict[str, float]:
    """Mean text bytes, chunk-data bytes and chunks per answer."""
    text = chunks = data = 0
    for number in numbers:
        text += len(answer_text(number).encode())
        async for chunk in encoded_answer(number):
            chunks += 1
            data += len(chunk.encode())
    count = len(numbers)
    return {"text_bytes": text / count, "chunk_bytes": data / count, "chunks": chunks / count}


async def produce(engine: Any, numbers: range, run: str) -> None:
    """Produce the answers ``numbers`` through ``engine``, BATCH at a time, to their end."""
    for at in range(numbers.start, numbers.stop, BATCH):
        batch = range(at, min(at + BATCH, numbers.stop))
        for number in batch:
            await engine.start(f"{run}-{number}", encoded_answer(number))
        for number in batch:
            end = await engine.wait(f"{run}-{number}")
            if end.state.value != "done":
                raise SystemExit(f"answer {number} ended {end.state.value}")


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


async def memory_child(answers: int, trace: bool) -> dict[str, Any]:
    """In this fresh process: the growth of memory while ``answers`` answers are kept."""
    import tracemalloc

    from unbroken import Chunk, StreamEngine
    from unbroken.backends.memory import MemoryBackend

    def used() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if trace else rss_bytes()

    if trace:
        tracemalloc.start()
    backend = MemoryBackend()
    result: dict[str, Any] = {}
    async with StreamEngine(backend, retention=3600.0) as engine:
        await produce(engine, range(-WARMUP, 0), "warm")
        before = used()
        await produce(engine, range(answers), "kept")
        result["backend"] = (used() - before) / answers
        if trace:  # the floor: the same answers' texts, as strings in a list
            before = used()
            texts = [answer_text(number) for number in range(answers)]
            result["floor"] = (used() - before) / answers
            del texts
            tracemalloc.stop()
        # Reading a kept answer back whole: what each resume of a finished answer starts with.
        timings = []
        for number in range(answers):
            started = time.perf_counter()
            chunks = await backend.read(f"kept-{number}", after=-1, limit=100_000)
            timings.append(time.perf_counter() - started)
            if not chunks or not isinstance(chunks[-1], Chunk):
                raise SystemExit(f"answer {number} is missing")
        result["read_us"] = statistics.median(timings) * 1e6
    return result


async def redis_run(answers: int) -> dict[str, Any]:
    """Bytes of redis-server's ``used_memory`` per kept answer, in a private server."""
    import redis.asyncio as aioredis

    from unbroken import StreamEngine
    from unbroken.backends.redis import RedisBackend

    with redis_server() as (url, _process):
        client = aioredis.Redis.from_url(url)
        try:
            prefix = f"retention-{uuid.uuid4().hex[:8]}"
            backend = RedisBackend(url, key_prefix=prefix)
            async with StreamEngine(backend, retention=3600.0) as engine:
                await produce(engine, range(-WARMUP, 0), "warm")
                before = (await client.info("memory"))["used_memory"]
                await produce(engine, range(answers), "kept")
                after = (await client.info("memory"))["used_memory"]
                keys = await client.dbsize()
        finally:
            await client.aclose()
    return {"backend": (after - before) / answers, "keys": keys}


def child(answers: int, trace: bool) -> dict[str, Any]:
    """Run `memory_child` in a fresh interpreter (so nothing else's memory is counted)."""
    role = "trace" if trace else "rss"
    done = subprocess.run(
        [sys.executable, __file__, "--role", role, "--answers", str(answers)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the memory child failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    labels = [row["what"] for row in rows]
    values = [row["bytes_per_answer"] / 1024 for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(labels, values, color="#3366cc")
    text_kib = results["answer"]["text_bytes"] / 1024
    ax.axvline(text_kib, color="#999999", linestyle=":", label="the answer's text")
    ax.axvline(3 * text_kib, color="#cc3333", linestyle="--", label="3x its text")
    ax.set_xlabel("KiB per kept answer")
    ax.set_title(f"What a finished answer costs to keep ({results['answers']} answers)")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=300)
    parser.add_argument("--backends", default="memory,redis")
    parser.add_argument("--role", choices=["trace", "rss"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:
        print(json.dumps(asyncio.run(memory_child(args.answers, args.role == "trace"))))
        return

    backends = args.backends.split(",")
    shape = asyncio.run(answer_shape(range(args.answers)))
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}

    def row(what: str, value: float) -> None:
        rows.append(
            {
                "what": what,
                "bytes_per_answer": value,
                "x_text": value / shape["text_bytes"],
                "x_chunk_data": value / shape["chunk_bytes"],
            }
        )

    if "memory" in backends:
        traced = child(args.answers, trace=True)
        rss = child(args.answers, trace=False)
        row("floor: texts in a list (tracemalloc)", traced["floor"])
        row("memory backend (tracemalloc)", traced["backend"])
        row("memory backend (RSS)", rss["backend"])
        extra["memory_read_whole_answer_us"] = rss["read_us"]
    if "redis" in backends:
        measured = asyncio.run(redis_run(args.answers))
        row("redis (used_memory)", measured["backend"])
        extra["redis_keys"] = measured["keys"]

    print(
        f"{args.answers} answers of {shape['chunks']:.0f} chunks, {shape['text_bytes']:.0f} B "
        f"of text, {shape['chunk_bytes']:.0f} B of chunk data each\n"
    )
    print(f"{'':<40} {'B/answer':>10} {'x text':>8} {'x chunks':>9}")
    for item in rows:
        print(
            f"{item['what']:<40} {item['bytes_per_answer']:>10,.0f} {item['x_text']:>8.2f} "
            f"{item['x_chunk_data']:>9.2f}"
        )
    if "memory_read_whole_answer_us" in extra:
        print(
            f"\nmemory backend: reading a kept answer whole (backend.read), median "
            f"{extra['memory_read_whole_answer_us']:.0f} µs"
        )
    results = {"answers": args.answers, "answer": shape, "rows": rows, **extra}
    save_results("retention", results, chart)


if __name__ == "__main__":
    main()
