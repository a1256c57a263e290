"""The whole chat service in one process: what an answer costs per chunk, HTTP aside.

Run:  .venv/bin/python benchmarks/chat_path_bench.py [--answers 100] [--rounds 3]

``--answers`` concurrent answers are posted over raw ASGI (no sockets) to:

- ``plain`` (the baseline, in the same run): `system_apps.plain_app`, the system benchmark's
  plain streaming app (the demo model through `ui_chunks` and the v5 encoder, straight
  to a Starlette `StreamingResponse`);
- ``chat``: `create_app` as ``unbroken chat`` builds it (SQLite in a temporary directory,
  memory backend, an API key), POST ``/api/chat``: authentication, the SQL of an answer,
  the engine, the stored answer.

The demo model runs with every token already due (one pass of the event loop per token), so
nothing waits on a timer. CPU is this process's (``time.process_time``: the SQLite store's
threads included) and the event loop thread's (``time.thread_time``), per body write, the
best of ``--rounds`` rounds after one warm-up round. Unlike the system benchmark, the
socket write and the event loop's own work per connection are absent, so this ratio shows
what the chat layer adds without the ~30-40 µs per chunk both paths pay over HTTP.

Then what a live answer holds, with ``--answers`` answers streaming slowly on each app:
objects the garbage collector tracks (what every full collection walks), tasks, and KiB
allocated (tracemalloc), each per answer.
Prints a table, writes results/chat_path.json and chat_path.png.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import system_apps
import uvloop
from _results import save_results, thread_split_chart

from unbroken.chat.app import create_app
from unbroken.chat.settings import Settings
from unbroken.cli import tuned_for_serving

TOKENS_PER_SECOND = 1e7  # every token already due
FOOTPRINT_TOKENS_PER_SECOND = 0.5  # the answers stay live while they are counted


class Sink:
    """An ASGI ``send`` that counts body writes; ``started`` is set once ``expect``
    responses have started."""

    def __init__(self, expect: int = 1) -> None:
        self.writes = 0
        self.statuses: list[int] = []
        self.expect = expect
        self.started = anyio.Event()

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.statuses.append(message["status"])
            if len(self.statuses) >= self.expect:
                self.started.set()
        elif message.get("body"):
            self.writes += 1


async def post_answer(app: Any, api_key: str, sink: Sink) -> None:
    """POST one new chat's first message, as `useChat` does, and read the whole answer."""
    body = json.dumps(
        {
            "id": uuid.uuid4().hex,
            "trigger": "submit-message",
            "messages": [
                {
                    "id": uuid.uuid4().hex,
                    "role": "user",
                    "parts": [{"type": "text", "text": "what does an answer cost?"}],
                }
            ],
        }
    ).encode()
    sent = False

    async def receive() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/chat",
        "raw_path": b"/api/chat",
        "query_string": b"",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {api_key}".encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "state": {},
    }
    await app(scope, receive, sink.send)


async def measure(app: Any, api_key: str, answers: int, rounds: int) -> dict[str, float]:
    """Best CPU µs per body write (process and event-loop thread) over ``rounds`` rounds."""
    best = {"process_us": float("inf"), "loop_thread_us": float("inf")}
    for round_ in range(rounds + 1):  # the first round warms up
        sink = Sink()
        cpu, loop_cpu = time.process_time(), time.thread_time()
        async with anyio.create_task_group() as task_group:
            for _ in range(answers):
                task_group.start_soon(post_answer, app, api_key, sink)
        if set(sink.statuses) != {200}:
            raise RuntimeError(f"unexpected statuses {set(sink.statuses)}")
        if round_:
            best["process_us"] = min(
                best["process_us"], (time.process_time() - cpu) / sink.writes * 1e6
            )
            best["loop_thread_us"] = min(
                best["loop_thread_us"], (time.thread_time() - loop_cpu) / sink.writes * 1e6
            )
        best["writes_per_round"] = sink.writes
    return best


async def footprint(app: Any, api_key: str, answers: int) -> dict[str, float]:
    """Per live answer: GC-tracked objects, tasks and KiB allocated, with ``answers``
    answers streaming (counted against one answer already streaming)."""

    def census() -> tuple[int, int, int]:
        gc.collect()
        return len(gc.get_objects()), len(asyncio.all_tasks()), tracemalloc.get_traced_memory()[0]

    async with anyio.create_task_group() as task_group:
        warm = Sink()
        task_group.start_soon(post_answer, app, api_key, warm)
        await warm.started.wait()
        await anyio.sleep(0.5)
        tracemalloc.start()
        before = census()
        sink = Sink(expect=answers)
        for _ in range(answers):
            task_group.start_soon(post_answer, app, api_key, sink)
        with anyio.fail_after(60):
            await sink.started.wait()  # every answer is streaming
        await anyio.sleep(0.5)
        after = census()
        tracemalloc.stop()
        task_group.cancel_scope.cancel()
    objects, tasks, allocated = (now - then for now, then in zip(after, before, strict=True))
    return {
        "objects": objects / answers,
        "tasks": tasks / answers,
        "kib": allocated / answers / 1024,
    }


@asynccontextmanager
async def chat_app(tokens_per_second: float) -> AsyncIterator[tuple[Any, str]]:
    """`create_app` as ``unbroken chat`` serves it (`tuned_for_serving`; SQLite in a temporary
    directory, the demo model at ``tokens_per_second``), started, with an API key of a new
    user."""
    with tempfile.TemporaryDirectory(prefix="unbroken-chat-path-") as workdir:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{workdir}/chat.sqlite3",
            demo_tokens_per_second=tokens_per_second,
            sweep_interval=0,
            max_concurrent_answers=0,  # every answer is one user's: no per-user limits
            answers_per_minute=0,
        )
        app = tuned_for_serving(create_app(settings))
        async with app.router.lifespan_context(app):
            store = app.state.services.store
            user = await store.create_user()
            api_key, _ = await store.create_api_key(user.id)
            yield app, api_key


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"answers": args.answers, "rounds": args.rounds}
    os.environ["UNBROKEN_DEMO_TOKENS_PER_SECOND"] = str(TOKENS_PER_SECOND)  # plain_app reads it
    results["plain"] = await measure(system_apps.plain_app(), "", args.answers, args.rounds)
    async with chat_app(TOKENS_PER_SECOND) as (app, api_key):
        results["chat"] = await measure(app, api_key, args.answers, args.rounds)
    os.environ["UNBROKEN_DEMO_TOKENS_PER_SECOND"] = str(FOOTPRINT_TOKENS_PER_SECOND)
    results["plain_footprint"] = await footprint(system_apps.plain_app(), "", args.answers)
    async with chat_app(FOOTPRINT_TOKENS_PER_SECOND) as (app, api_key):
        results["chat_footprint"] = await footprint(app, api_key, args.answers)
    return results


def report(r: dict[str, Any]) -> str:
    plain = r["plain"]["process_us"]
    rows = [
        ("plain app: model -> encoder -> StreamingResponse", r["plain"]),
        ("chat service: auth, SQL, engine, stored answer", r["chat"]),
    ]
    lines = [
        f"{r['answers']} concurrent answers over raw ASGI, best of {r['rounds']} rounds; "
        "CPU per body write (µs)",
        f"{'path':50} {'process':>8} {'loop thread':>12} {'x plain':>8}",
    ]
    lines += [
        f"{name:50} {m['process_us']:8.2f} {m['loop_thread_us']:12.2f} "
        f"{m['process_us'] / plain:8.2f}"
        for name, m in rows
    ]
    lines.append(
        f"the chat service adds {r['chat']['process_us'] - plain:.2f} µs per chunk "
        f"({r['chat']['process_us'] - r['chat']['loop_thread_us']:.2f} of it in the store's "
        "threads)"
    )
    lines += [
        "",
        f"per live answer ({r['answers']} streaming)        GC objects    tasks      KiB",
    ]
    for name, key in (("plain app", "plain_footprint"), ("chat service", "chat_footprint")):
        f = r[key]
        lines.append(f"{name:40} {f['objects']:12.0f} {f['tasks']:8.1f} {f['kib']:8.1f}")
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    loop = [r["plain"]["loop_thread_us"], r["chat"]["loop_thread_us"]]
    thread_split_chart(
        path,
        ["plain app", "chat service"],
        loop,
        [r["plain"]["process_us"] - loop[0], r["chat"]["process_us"] - loop[1]],
        other_label="other threads (the SQLite store)",
        ylabel="CPU per chunk written (µs)",
        title=f"chat service in process, {r['answers']} answers (no sockets)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = uvloop.run(run(args))
    print(report(results))
    save_results("chat_path", results, chart)


if __name__ == "__main__":
    main()
