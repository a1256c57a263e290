"""Where a Redis append's cost goes: the script call, its fencing read, its writes, or the
commands themselves.

Run:  .venv/bin/python benchmarks/append_script_cost.py [--streams 1000] [--rounds 60]
      [--chunks 1,3,8] [--subscribed]

Drives a redis-server the script starts on a free port directly (no engine): every round
appends to each of ``--streams`` streams through the shipped ``append_many.lua`` with the
backend's own codec (100 streams per call, as the engine sends them), each append carrying
``--chunks`` 20-byte chunks in its one log entry. Redis's CPU time (from /proc) is read
around each pipeline, so only Redis's work on the appends is counted. The same appends also
go through cut-down copies of the script, to see where the time goes:

- ``shipped``: the script as the backend runs it (fencing, the log's last entry, XADD,
  counts, TTLs, PUBLISH), which it now sends for a stream's first append, the one append
  per liveness tick that renews the lease, and any append after a doubt;
- ``call only``: the same call with the script returning before any work (parsing the
  arguments, the Lua call itself);
- ``fencing read``: returning after reading and checking the stream's metadata and the
  log's last entry;
- ``plain (shipped)``: what the backend sends for every other append, no script: XADD
  NOMKSTREAM of the entry (with its byte offset) and PUBLISH of the notification, exactly
  as the backend builds them;
- ``no script``: a bare pipelined XADD + PUBLISH of the same entry and notification, the
  floor.

``--subscribed``: one more connection subscribes to every stream's channel (and reads what
comes), as a reader on another engine does: PUBLISH to a subscriber costs Redis more than
to nobody.

Prints a table and writes benchmarks/results/append-script-cost.json and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results
from peers_bench import redis_server

CHUNK = "x" * 19 + " "


def redis_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cut_down(source: str, marker: str, returning: str) -> str:
    """``source`` with ``returning`` inserted before ``marker`` (which must be there)."""
    if source.count(marker) != 1:
        raise SystemExit(f"the append script changed: {marker!r} is not in it once")
    return source.replace(marker, returning + marker)


PLAIN = "plain"  # the backend's own plain commands
BARE = "bare"  # a bare XADD + PUBLISH


def variants() -> dict[str, str]:
    from unbroken.backends.redis._pipeliner import SCRIPTS

    shipped = SCRIPTS["append_many"].source
    early = "  if true then return 'active' end\n"
    return {
        "shipped": shipped,
        "call only": cut_down(shipped, "  local token = args[first]\n", early),
        "fencing read": cut_down(shipped, "  if tonumber(args[first + 4]) ~= chunks then\n", early),
        "plain (shipped)": PLAIN,
        "no script": BARE,
    }


@contextlib.contextmanager
def subscribed(url: str, channels: list[str]) -> Iterator[None]:
    """A connection subscribed to every channel, reading what comes until the block ends."""
    import redis

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    for start in range(0, len(channels), 500):
        pubsub.subscribe(*channels[start : start + 500])
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            pubsub.get_message(timeout=0.05)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join()
        pubsub.close()
        client.close()


def measure(
    client: Any, pid: int, source: str, prefix: str, streams: int, rounds: int, per_entry: int
) -> float:
    """Redis CPU seconds for ``rounds`` appends of ``per_entry`` chunks to each stream (after
    one append through the shipped script, not counted, which creates the logs)."""
    from unbroken._models import Chunk
    from unbroken.backends.base import Append, StreamTimes
    from unbroken.backends.redis._codec import (
        PackedAppend,
        append_args,
        append_many_command,
        fast_append_commands,
        script_calls,
    )
    from unbroken.backends.redis._keys import stream_keys
    from unbroken.backends.redis._pipeliner import SCRIPTS

    times = StreamTimes(lease=30, active=600, retention=600)
    ids = [f"s{k}" for k in range(streams)]
    keys = [stream_keys(prefix, stream_id) for stream_id in ids]
    claim = SCRIPTS["claim"]
    client.script_load(claim.source)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.delete(key.meta, key.log, key.lease)
        pipe.evalsha(claim.sha, 3, *key.script_keys, "tok", time.time(), 30_000, 600_000)
    pipe.execute()
    shipped = client.script_load(SCRIPTS["append_many"].source)
    sha = client.script_load(source) if source not in (PLAIN, BARE) else None
    spent = 0.0
    for round_ in range(rounds + 1):
        first = round_ * per_entry
        chunks = [Chunk(first + k, CHUNK, (first + k) * len(CHUNK)) for k in range(per_entry)]
        appends = [
            Append(stream_id, "tok", chunks, times, time.time(), renew_lease=False)
            for stream_id in ids
        ]
        pipe = client.pipeline(transaction=False)
        if round_ == 0 or sha is not None:
            packed = [
                PackedAppend(
                    index, append.stream_id, key, append_args(append, key, sharded=False), 1
                )
                for index, (append, key) in enumerate(zip(appends, keys, strict=True))
            ]
            for call in script_calls(packed):
                pipe.evalsha(shipped if round_ == 0 else sha, *append_many_command(call))
        else:
            for append, key in zip(appends, keys, strict=True):
                xadd, publish, _ = fast_append_commands(
                    append, key, first * len(CHUNK), sharded=False
                )
                if source == BARE:  # without NOMKSTREAM and the byte offset
                    xadd = ("XADD", key.log, *xadd[3:10])
                pipe.execute_command(*xadd)
                pipe.execute_command(*publish)
        before = redis_cpu_seconds(pid)
        replies = pipe.execute()
        if round_ > 0:
            spent += redis_cpu_seconds(pid) - before
        if sha is not None or round_ == 0:  # one list of replies per script call
            replies = [reply for call_replies in replies for reply in call_replies]
        refused = [
            reply
            for reply in replies
            if reply is None or isinstance(reply, Exception) or reply == b"interrupted"
        ]
        if refused:
            raise SystemExit(f"an append was refused: {refused[:3]!r}")
    client.delete(*(name for key in keys for name in (key.meta, key.log, key.lease)))
    return spent


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(results["variants"])
    width = 0.8 / len(results["chunks_per_entry"])
    for offset, per_entry in enumerate(results["chunks_per_entry"]):
        values = [results["variants"][name][str(per_entry)]["us_per_chunk"] for name in names]
        positions = [k + offset * width for k in range(len(names))]
        ax.bar(positions, values, width, label=f"{per_entry} chunk(s) per entry")
    ax.set_xticks(
        [k + width * (len(results["chunks_per_entry"]) - 1) / 2 for k in range(len(names))]
    )
    ax.set_xticklabels(names)
    ax.set_ylabel("Redis CPU per chunk (µs)")
    ax.set_title(f"One append to each of {results['streams']:,} streams, per chunk")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--chunks", default="1,3,8", help="chunks per log entry, comma-separated")
    parser.add_argument(
        "--subscribed", action="store_true", help="a connection subscribed to every channel"
    )
    parser.add_argument("--stem", default="append-script-cost")
    args = parser.parse_args()
    import redis

    per_entries = [int(value) for value in args.chunks.split(",")]
    results: dict[str, Any] = {
        "streams": args.streams,
        "rounds": args.rounds,
        "chunks_per_entry": per_entries,
        "subscribed": args.subscribed,
        "variants": {},
    }
    from unbroken.backends.redis._keys import stream_keys

    prefix = f"asc-{uuid.uuid4().hex[:8]}"
    channels = [stream_keys(prefix, f"s{k}").channel for k in range(args.streams)]
    with (
        redis_server() as (url, process),
        subscribed(url, channels) if args.subscribed else contextlib.nullcontext(),
    ):
        client = redis.Redis.from_url(url)
        for name, source in variants().items():
            row: dict[str, Any] = {}
            for per_entry in per_entries:
                seconds = measure(
                    client, process.pid, source, prefix, args.streams, args.rounds, per_entry
                )
                appends = args.streams * args.rounds
                row[str(per_entry)] = {
                    "us_per_append": seconds / appends * 1e6,
                    "us_per_chunk": seconds / appends / per_entry * 1e6,
                }
            results["variants"][name] = row
        client.close()
    header = " | ".join(f"{n} chunk(s) per entry" for n in per_entries)
    heard = ", every channel subscribed" if args.subscribed else ""
    print(
        f"\nRedis CPU per append (per chunk), {args.streams:,} streams × {args.rounds} rounds"
        f"{heard}\n"
    )
    print(f"| variant | {header} |")
    print("|---|" + "---:|" * len(per_entries))
    for name, row in results["variants"].items():
        cells = " | ".join(
            f"{row[str(n)]['us_per_append']:.1f} µs ({row[str(n)]['us_per_chunk']:.1f})"
            for n in per_entries
        )
        print(f"| {name} | {cells} |")
    save_results(args.stem, results, chart)


if __name__ == "__main__":
    main()
