"""What a pipeline and a command cost a busy Redis: the part of an append paid per pipeline.

Run:  .venv/bin/python benchmarks/redis_pipeline_cost.py [--pipelines 1,2,4,8,16]
          [--clients 50] [--commands 400000]

`redis_cost.py` fits a lightly loaded server's CPU as a fixed part per second (paid per
pipeline: each producer process sends one per write window) plus a part per chunk. A server
that is mostly idle pays for each pipeline's wake-up too; a busy one shares its wake-ups
between many clients. This script measures the busy case: ``redis-benchmark`` (shipped with
Redis) keeps a private redis-server busy from ``--clients`` connections, sending the
commands of an append (``XADD`` of a 20-byte chunk with its two fields, ``PUBLISH`` of it
to a channel one connection is subscribed to) in pipelines of each size of
``--pipelines``. Redis's CPU time (from /proc) over the pipelines it answered is fitted as a
cost per pipeline plus a cost per command (least squares over the sizes), for each command.

Prints a table, writes benchmarks/results/redis-pipeline-cost.json and .png. Skipped with a
message when redis-benchmark is not installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _redis_targets import cpu_seconds, single_server
from _results import save_results
from redis_cost import _line_fit

CHUNK = "x" * 20
#: What one append sends per stream, as redis-benchmark arguments (``__rand_int__`` spreads
#: the appends over many streams and channels, as an engine's streams are).
COMMANDS = {
    "XADD": ["XADD", "log:__rand_int__", "*", "o", "1", "d", CHUNK],
    "PUBLISH": ["PUBLISH", "ch", CHUNK],
}


@contextmanager
def subscriber(cli: str, port: int) -> Iterator[None]:
    """A connection subscribed to the channel the PUBLISHes go to, reading them all (a reader
    on another worker), so each PUBLISH is written to a subscriber as in a real append.
    redis-cli keeps up with a busy server where a Python client would fall behind."""
    process = subprocess.Popen(
        [cli, "-p", str(port), "SUBSCRIBE", "ch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with redis.Redis(port=port) as client:
            deadline = time.monotonic() + 10
            while client.pubsub_numsub("ch")[0][1] < 1:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-cli did not subscribe")
                time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def measure(
    binary: str, port: int, pid: int, command: list[str], size: int, clients: int, total: int
) -> dict[str, Any]:
    """One redis-benchmark run: ``total`` commands in pipelines of ``size``."""
    argv = [
        *(binary, "-p", str(port), "-c", str(clients), "-n", str(total), "-P", str(size)),
        *("-r", "1000", "-q", "--csv", *command),
    ]
    before = cpu_seconds(pid)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    cpu = cpu_seconds(pid) - before
    rate = float(done.stdout.strip().splitlines()[-1].split(",")[1].strip('"'))
    seconds = total / rate
    return {
        "pipeline": size,
        "commands": total,
        "pipelines": total / size,
        "commands_per_s": rate,
        "redis_cpu_s": cpu,
        "redis_busy": cpu / seconds,
        "us_per_pipeline": cpu / (total / size) * 1e6,
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        f"## A busy redis-server ({results['clients']} connections), per pipeline of N commands",
        "| command | N | commands/s | Redis busy | Redis CPU per pipeline (µs) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in results["runs"].items():
        for run in runs:
            lines.append(
                f"| {name} | {run['pipeline']} | {run['commands_per_s']:,.0f} |"
                f" {run['redis_busy']:.0%} | {run['us_per_pipeline']:.1f} |"
            )
    lines += ["", "| command | per pipeline (µs) | per command (µs) | worst residual |"]
    lines.append("|---|---:|---:|---:|")
    for name, fit in results["fits"].items():
        lines.append(
            f"| {name} | {fit['us_per_pipeline']:.1f} | {fit['us_per_command']:.2f} |"
            f" {fit['worst_residual']:.0%} |"
        )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for number, (name, runs) in enumerate(results["runs"].items()):
        sizes = [run["pipeline"] for run in runs]
        ax.plot(sizes, [run["us_per_pipeline"] for run in runs], "o", color=f"C{number}")
        fit = results["fits"][name]
        ax.plot(
            sizes,
            [fit["us_per_pipeline"] + fit["us_per_command"] * size for size in sizes],
            "-",
            color=f"C{number}",
            label=f"{name}: {fit['us_per_pipeline']:.1f} µs + {fit['us_per_command']:.2f} µs × N",
        )
    ax.set_xlabel("commands per pipeline (N)")
    ax.set_ylabel("Redis CPU per pipeline (µs)")
    ax.set_title("a busy redis-server: cost per pipeline and per command", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pipelines", default="1,2,4,8,16", help="commands per pipeline")
    parser.add_argument("--clients", type=int, default=50, help="redis-benchmark connections")
    parser.add_argument("--commands", type=int, default=400_000, help="commands per run")
    args = parser.parse_args()
    sizes = [int(v) for v in args.pipelines.split(",")]
    if len(sizes) < 2 or min(sizes) < 1:
        raise SystemExit("--pipelines: two sizes or more, each at least 1")
    binary, cli = shutil.which("redis-benchmark"), shutil.which("redis-cli")
    if binary is None or cli is None:
        print("skipped: redis-benchmark and redis-cli are not installed (they ship with Redis)")
        return
    runs: dict[str, list[dict[str, Any]]] = {}
    with single_server() as target:
        node = target.masters[0]
        with subscriber(cli, node.port):
            for name, command in COMMANDS.items():
                runs[name] = []
                for size in sizes:
                    print(f"{name}, pipelines of {size} ...", file=sys.stderr, flush=True)
                    run = measure(
                        binary, node.port, node.pid, command, size, args.clients, args.commands
                    )
                    runs[name].append(run)
                    target.flush()
    fits = {}
    for name, measured in runs.items():
        fixed, per_command, worst = _line_fit(
            [(run["pipeline"], run["us_per_pipeline"]) for run in measured]
        )
        fits[name] = {
            "us_per_pipeline": fixed,
            "us_per_command": per_command,
            "worst_residual": worst,
        }
    results = {"clients": args.clients, "commands": args.commands, "runs": runs, "fits": fits}
    print(report(results))
    save_results("redis-pipeline-cost", results, chart)


if __name__ == "__main__":
    main()
