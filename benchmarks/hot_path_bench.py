"""The per-chunk hot path in one process: what the engine adds to streaming a chunk.

Run:  .venv/bin/python benchmarks/hot_path_bench.py [--streams 100] [--rounds 5]

No HTTP, no timers, no database: the CPU of exactly the code a chunk runs through, so a
change of a few microseconds shows (the system benchmark's noise is larger than that). Each
of ``--streams`` concurrent answers is the demo model's answer, one token per pass of the
event loop (``asyncio.sleep(0)``: every stream is ready every pass, as at a steady 30
tokens/s under load, but with no timer in the way). Written to an ASGI ``send`` that
only counts:

- ``plain`` (the baseline, in the same run): ``system_apps.plain_frames``, what the system
  benchmark's plain streaming app sends (the model's events through `ui_chunks`,
  `encode_event` and a v5 encoder, one write per chunk), minus HTTP;
- ``engine``: the same source started in a `StreamEngine` (memory backend) and read by a
  `UIMessageStreamResponse`, with 1 and with 2 readers per stream.

CPU is this process's (``time.process_time``) per chunk written, the best of ``--rounds``.
Prints a table, writes results/hot_path.json and hot_path.png.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import uvloop
from _results import save_results
from system_apps import plain_frames

from unbroken import StreamEngine
from unbroken.chat.events import ui_chunks
from unbroken.chat.models import Finish, ModelEvent, TextDelta
from unbroken.chat.models.demo import compose, tokenize
from unbroken.protocols.ai_sdk import UIMessageStreamResponse, encode_event

TOKENS = tokenize(compose("what does the hot path cost?")[1])


class Sink:
    """An ASGI ``send`` that counts body writes; a ``receive`` that never disconnects."""

    def __init__(self) -> None:
        self.writes = 0

    async def send(self, message: Any) -> None:
        if message.get("body"):
            self.writes += 1

    async def receive(self) -> Any:
        await anyio.sleep_forever()


async def model() -> AsyncIterator[ModelEvent]:
    for token in TOKENS:
        await asyncio.sleep(0)  # the next token arrives after one pass of the loop
        yield TextDelta(token)
    yield Finish("stop")


async def plain_answer(sink: Sink) -> None:
    await sink.send({"type": "http.response.start", "status": 200})
    async for frame in plain_frames("msg", model()):
        await sink.send({"type": "http.response.body", "body": frame.encode(), "more_body": True})


async def engine_answer(engine: StreamEngine, stream_id: str, sink: Sink, readers: int) -> None:
    async def source() -> AsyncIterator[str]:
        async for event in ui_chunks("msg", model()):
            yield encode_event(event)

    await engine.start(stream_id, source())
    scope = {"type": "http", "state": {}}
    async with anyio.create_task_group() as task_group:
        for _ in range(readers):
            response = UIMessageStreamResponse(engine, stream_id)
            task_group.start_soon(response, scope, sink.receive, sink.send)


async def measure(kind: str, streams: int, rounds: int, readers: int = 1) -> float:
    """Best CPU µs per chunk written over ``rounds`` rounds of ``streams`` answers."""
    sink = Sink()
    best = float("inf")
    async with StreamEngine(retention=60) as engine:
        for round_ in range(rounds):
            cpu, writes = time.process_time(), sink.writes
            async with anyio.create_task_group() as task_group:
                for i in range(streams):
                    if kind == "plain":
                        task_group.start_soon(plain_answer, sink)
                    else:
                        stream_id = f"r{round_}-s{i}"
                        task_group.start_soon(engine_answer, engine, stream_id, sink, readers)
            best = min(best, (time.process_time() - cpu) / (sink.writes - writes) * 1e6)
    return best


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"streams": args.streams, "rounds": args.rounds}
    results["plain_us"] = await measure("plain", args.streams, args.rounds)
    results["engine_us"] = await measure("engine", args.streams, args.rounds)
    results["engine_2_readers_us"] = await measure("engine", args.streams, args.rounds, 2)
    return results


def report(r: dict[str, Any]) -> str:
    plain = r["plain_us"]
    rows = [
        ("plain: model -> encoder -> send (baseline)", plain),
        ("engine: producer -> memory backend -> response -> send", r["engine_us"]),
        ("engine, 2 readers per stream (per chunk written)", r["engine_2_readers_us"]),
    ]
    lines = [
        f"{r['streams']} concurrent answers, best of {r['rounds']} rounds; "
        "CPU per chunk written (µs)",
        f"{'path':58} {'µs/chunk':>9} {'x plain':>8}",
    ]
    lines += [f"{name:58} {us:9.2f} {us / plain:8.2f}" for name, us in rows]
    lines.append(f"engine adds {r['engine_us'] - plain:.2f} µs per chunk")
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["plain", "engine", "engine,\n2 readers"]
    values = [r["plain_us"], r["engine_us"], r["engine_2_readers_us"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, values, color=["#999999", "#3366cc", "#6699ee"])
    ax.set_ylabel("CPU per chunk written (µs)")
    ax.set_title(f"hot path, {r['streams']} concurrent answers (in process, no HTTP)")
    for i, value in enumerate(values):
        ax.text(i, value, f"{value:.1f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = uvloop.run(run(args))
    print(report(results))
    save_results("hot_path", results, chart)


if __name__ == "__main__":
    main()
