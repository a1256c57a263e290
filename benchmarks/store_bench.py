"""What the chat store costs per answer: the SQL that begins an answer and stores it.

Run:  .venv/bin/python benchmarks/store_bench.py [--answers 100] [--rounds 4]
      [--database-url postgresql+asyncpg://…]

``--answers`` concurrent answers, each in a new chat, make the store calls of one answer as
the chat service does: `Store.start_answer` (the chat created, the stream claimed, the user
message, the stream and assistant rows, the history) and, at the end, `finalize_message`
(a ~2 KB answer stored, the stream released). CPU per answer of this process
(``time.process_time``: the store's threads included) and of the event loop's thread
(``time.thread_time``): the best of ``--rounds`` rounds after one warm-up round. SQLite in a
temporary directory unless ``--database-url`` is given (its tables are created in it).

The baseline, in the same run: the same two transactions as plain `sqlite3` calls on one
connection (SQLite only): what the statements themselves cost, without SQLAlchemy, the
threads or the event loop. Prints a table, writes results/store.json and store.png.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import uvloop
from _results import save_results, thread_split_chart

from unbroken.chat.store import Started, Store

PARTS = [{"type": "text", "text": "what does an answer cost?"}]
ANSWER = [{"type": "text", "text": "word " * 400}]
#: Chunks in one of the demo model's answers: the per-chunk figure spreads an answer's SQL.
CHUNKS_PER_ANSWER = 430


async def one_answer(store: Store, user_id: str) -> None:
    begun = await store.start_answer(
        uuid.uuid4().hex, user_id, title="bench", message_id=uuid.uuid4().hex, parts=PARTS
    )
    if not isinstance(begun, Started):
        raise RuntimeError(f"no answer started: {begun!r}")
    record = begun.record
    await store.finalize_message(
        record.chat_id, record.message_id, parts=ANSWER, status="done", release_stream=record.id
    )


async def measure_store(url: str, answers: int, rounds: int) -> dict[str, float]:
    best = {"process_ms": float("inf"), "loop_thread_ms": float("inf")}
    async with Store.from_url(url) as store:
        await store.upgrade()
        user = await store.create_user()
        for round_ in range(rounds + 1):  # the first round warms up
            cpu, loop_cpu = time.process_time(), time.thread_time()
            async with anyio.create_task_group() as task_group:
                for _ in range(answers):
                    task_group.start_soon(one_answer, store, user.id)
            if round_:
                process = (time.process_time() - cpu) / answers * 1e3
                loop = (time.thread_time() - loop_cpu) / answers * 1e3
                best["process_ms"] = min(best["process_ms"], process)
                best["loop_thread_ms"] = min(best["loop_thread_ms"], loop)
    return best


def measure_sqlite3(path: Path, answers: int, rounds: int) -> dict[str, float]:
    """The same two transactions per answer with the sqlite3 module alone, one connection."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous=NORMAL")
    user_id = connection.execute("SELECT id FROM users LIMIT 1").fetchone()[0]
    answer = json.dumps(ANSWER)
    best = float("inf")
    for round_ in range(rounds + 1):
        cpu = time.process_time()
        for _ in range(answers):
            chat_id, message_id = uuid.uuid4().hex, uuid.uuid4().hex
            stream_id, reply_id, now = uuid.uuid4().hex, uuid.uuid4().hex, "2026-11-21 00:00:00"
            connection.execute("BEGIN")
            connection.execute(
                "SELECT * FROM chats WHERE id = ? AND user_id = ?", (chat_id, user_id)
            ).fetchone()
            connection.execute(
                "INSERT INTO chats (id, user_id, title, visibility, active_stream_id, "
                "created_at, updated_at) VALUES (?, ?, 'bench', 'private', ?, ?, ?)",
                (chat_id, user_id, stream_id, now, now),
            )
            connection.execute(
                "SELECT pk FROM messages WHERE chat_id = ? AND id = ?", (chat_id, message_id)
            ).fetchone()
            connection.execute(
                "INSERT INTO messages (id, chat_id, role, parts, status, created_at, "
                "finished_at) VALUES (?, ?, 'user', ?, 'done', ?, ?)",
                (message_id, chat_id, json.dumps(PARTS), now, now),
            )
            connection.execute(
                "INSERT INTO streams (id, chat_id, message_id, user_message_id, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (stream_id, chat_id, reply_id, message_id, now),
            )
            connection.execute(
                "INSERT INTO messages (id, chat_id, role, parts, status, stream_id, "
                "created_at) VALUES (?, ?, 'assistant', '[]', 'streaming', ?, ?)",
                (reply_id, chat_id, stream_id, now),
            )
            connection.execute(
                "SELECT * FROM messages WHERE chat_id = ? AND status != 'streaming' ORDER BY pk",
                (chat_id,),
            ).fetchall()
            connection.execute("COMMIT")
            connection.execute("BEGIN")
            connection.execute(
                "UPDATE messages SET parts = ?, status = 'done', finished_at = ? "
                "WHERE chat_id = ? AND id = ? AND status = 'streaming'",
                (answer, now, chat_id, reply_id),
            )
            connection.execute(
                "UPDATE chats SET active_stream_id = NULL, updated_at = ? "
                "WHERE id = ? AND active_stream_id = ?",
                (now, chat_id, stream_id),
            )
            connection.execute("COMMIT")
        if round_:
            best = min(best, (time.process_time() - cpu) / answers * 1e3)
    connection.close()
    return {"process_ms": best, "loop_thread_ms": best}


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"answers": args.answers, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="unbroken-store-bench-") as workdir:
        path = Path(workdir) / "store.sqlite3"
        url = args.database_url or f"sqlite+aiosqlite:///{path}"
        results["database"] = "sqlite" if url.startswith("sqlite") else url.split(":", 1)[0]
        results["store"] = uvloop.run(measure_store(url, args.answers, args.rounds))
        if args.database_url is None:
            results["sqlite3"] = measure_sqlite3(path, args.answers, args.rounds)
    return results


def report(r: dict[str, Any]) -> str:
    rows = [("the chat store (Store.start_answer + finalize_message)", r["store"])]
    if "sqlite3" in r:
        rows.append(("the same SQL, bare sqlite3 on one connection", r["sqlite3"]))
    lines = [
        f"{r['answers']} concurrent answers on {r['database']}, best of {r['rounds']} rounds; "
        "CPU per answer",
        f"{'':56} {'process ms':>10} {'loop ms':>8} {'us/chunk':>9}",
    ]
    lines += [
        f"{name:56} {m['process_ms']:10.2f} {m['loop_thread_ms']:8.2f} "
        f"{m['process_ms'] * 1e3 / CHUNKS_PER_ANSWER:9.2f}"
        for name, m in rows
    ]
    lines.append(f"(us/chunk: the answer's SQL spread over a {CHUNKS_PER_ANSWER}-chunk answer)")
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    names = [name for name in ("store", "sqlite3") if name in r]
    labels = {"store": "chat store", "sqlite3": "bare sqlite3"}
    thread_split_chart(
        path,
        [labels[name] for name in names],
        [r[name]["loop_thread_ms"] for name in names],
        [r[name]["process_ms"] - r[name]["loop_thread_ms"] for name in names],
        other_label="other threads",
        ylabel="CPU per answer (ms)",
        title=f"SQL of one answer, {r['answers']} concurrent ({r['database']})",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    results = run(args)
    print(report(results))
    save_results("store", results, chart)


if __name__ == "__main__":
    main()
