"""Why `_loadgen.py` parses SSE in an `asyncio.Protocol` rather than with httpx.

Run:  .venv/bin/python benchmarks/_load_client_cost.py [--streams 200] [--seconds 8]

Starts the plain-streaming app (`system_apps.plain_app`), then reads the same number of
concurrent answers twice, in this process: once with one ``httpx.AsyncClient`` stream per
answer (``aiter_lines``, the way tests/chat/_client.py reads), once with `_loadgen.Http`.
Prints the load generator's own CPU per SSE event for each. At 1,000+ streams of 30
events/s the client has one core for 30,000+ events a second, so this cost decides whether
the load generator or the server is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _loadgen
import system_bench


def body(prompt: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "trigger": "submit-message",
        "messages": [
            {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": prompt}]}
        ],
    }


async def with_httpx(url: str, streams: int, seconds: float) -> tuple[float, int]:
    events = 0
    limits = httpx.Limits(max_connections=streams + 10)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(i: int) -> None:
            nonlocal events
            async with client.stream("POST", "/api/chat", json=body(f"httpx {i}")) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        json.loads(line[6:])
                        events += 1

        tasks = [asyncio.ensure_future(one(i)) for i in range(streams)]
        await asyncio.sleep(2)  # every stream started
        cpu0, count0 = time.process_time(), events
        await asyncio.sleep(seconds)
        cpu, count = time.process_time() - cpu0, events - count0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return cpu, count


class _Counter:
    def __init__(self) -> None:
        self.events = 0
        self.status = 0

    def response(self, status: int, t: float) -> None:
        self.status = status

    def frame(self, frame: bytes, t: float) -> bool:
        if frame[:4] == b"id: ":
            eol = frame.find(b"\n")
            int(frame[4:eol])
            data = frame[eol + 7 :]
            if data[:22] == b'{"type":"text-delta","':
                json.loads(data)
            self.events += 1
        return False


async def with_protocol(port: int, streams: int, seconds: float) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    sinks = [_Counter() for _ in range(streams)]
    transports = []
    for i, sink in enumerate(sinks):
        raw = json.dumps(body(f"protocol {i}")).encode()
        transport, _ = await loop.create_connection(
            lambda sink=sink: _loadgen.Http(sink), "127.0.0.1", port
        )
        transport.write(
            f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        transports.append(transport)
    await asyncio.sleep(2)
    cpu0, count0 = time.process_time(), sum(s.events for s in sinks)
    await asyncio.sleep(seconds)
    cpu, count = time.process_time() - cpu0, sum(s.events for s in sinks) - count0
    for transport in transports:
        transport.abort()
    return cpu, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    args.redis_url = args.pg_url = None
    args.auth = "key"
    server = system_bench.Server(system_bench.PLAIN, args, Path(tempfile.mkdtemp()))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        try:
            import uvloop

            runner: Any = uvloop.run  # what _loadgen.py runs on
        except ImportError:
            runner = asyncio.run
        n, seconds = args.streams, args.seconds
        for name, run in (
            ("httpx, one stream per answer", lambda: with_httpx(url, n, seconds)),
            ("asyncio.Protocol (_loadgen)", lambda: with_protocol(server.port, n, seconds)),
        ):
            cpu, events = runner(run())
            print(
                f"{name:<30} {events / args.seconds:>8,.0f} events/s  "
                f"client CPU {cpu / events * 1e6:6.1f} us/event"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
