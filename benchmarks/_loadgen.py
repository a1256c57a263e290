"""Load generator for `system_bench.py`: one process, many AI SDK v5 chat clients.

Run by the benchmark as ``python benchmarks/_loadgen.py CONFIG.json``; writes RESULT.json
(and the delivery delays, one float64 per chunk, to RESULT.json's ``delays_path``).

Why raw asyncio protocols rather than httpx: at 1,000+ streams of 30 chunks/s the client has
to take 30,000+ SSE events a second on one core. An `asyncio.Protocol` parses them in its
``data_received`` callback (no task wake-up per event): 23 µs of client CPU per event on the
2-core benchmark machine, against 53 µs with one httpx stream per answer
(`_load_client_cost.py` measures both), so with httpx the load generator would need more
than a core for the load one server worker is asked to carry.

Each client slot runs answers back to back, each in a new chat, from its start time (slots
start evenly over ``ramp`` seconds) until the end of the window, then hangs up. Per answer it
checks what the user would see: the reasoning and text are exactly the demo model's answer
to its prompt, or a prefix of it for an answer cut by the end of the run (no gap, no
duplicate), and no ``id:`` ever repeats across reconnections.

Delivery delay of a chunk = the time this process received the frame that carries it minus
the time the model produced it (the stamped demo model's start + token index / rate; see
`system_apps.py`). The same clock (CLOCK_MONOTONIC) is read on both sides.

Options (in CONFIG): ``probes_per_s`` resume probes (a second connection GETs
``/api/chat/{id}/stream`` with ``Last-Event-ID`` a few chunks back, timed to the response's
first byte and first event, then closed); ``storm_fraction`` of the clients drop their
connection every second and reconnect with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from unbroken.chat.events import ui_chunks
from unbroken.chat.models import Finish, ReasoningDelta, TextDelta
from unbroken.chat.models.demo import compose, tokenize

monotonic = time.monotonic
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- what the demo model produces --------------------------------------------------------

_TICKS: dict[tuple[int, int], list[int]] = {}


def chunk_ticks(reasoning_tokens: int, text_tokens: int) -> list[int]:
    """For each chunk (by seq) the index of the model token whose arrival produced it.

    Computed by running the product's own `ui_chunks` over a model that emits the right
    number of tokens: token ``k`` is due at ``started + k / rate``.
    """
    key = (reasoning_tokens, text_tokens)
    if key in _TICKS:
        return _TICKS[key]
    tick = 0

    async def events() -> AsyncIterator[Any]:
        nonlocal tick
        for kind, count in ((ReasoningDelta, reasoning_tokens), (TextDelta, text_tokens)):
            for _ in range(count):
                tick += 1
                yield kind("x")
        yield Finish("stop")

    ticks: list[int] = []
    agen = ui_chunks("m", events())
    while True:  # drive the async generator by hand: it never really awaits
        try:
            agen.__anext__().send(None)
        except StopIteration:
            ticks.append(tick)
        except StopAsyncIteration:
            break
    _TICKS[key] = ticks
    return ticks


# -- server CPU from /proc ---------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (uvicorn's supervisor and its workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def redis_cpu(url: str | None) -> float | None:
    if not url:
        return None
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


# -- HTTP/1.1 + chunked + SSE, parsed in data_received -----------------------------------


class Http(asyncio.Protocol):
    """One request on its own connection; the response body is de-chunked and split into
    SSE frames, each handed to ``sink.frame(frame, t)`` with the receive time ``t``."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.head = True
        self.buf = b""
        self.sse = b""
        self.need = -1  # bytes left in the current HTTP chunk; -1: reading its size line
        self.skip = 0  # CRLF after a chunk's data
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        t = monotonic()
        buf = self.buf + data if self.buf else data
        self.buf = b""
        if self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = int(buf[9:12])
            self.head = False
            self.sink.response(status, t)
            if status != 200:
                self.close()
                return
            pos = end + 4
        else:
            pos = 0
        n = len(buf)
        pieces = []
        while pos < n:
            if self.skip:
                step = min(self.skip, n - pos)
                pos += step
                self.skip -= step
                continue
            if self.need < 0:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol], 16)
                pos = eol + 2
                if size == 0:
                    self.close()  # end of the body
                    pos = n
                    break
                self.need = size
            take = min(self.need, n - pos)
            pieces.append(buf[pos : pos + take])
            pos += take
            self.need -= take
            if self.need == 0:
                self.need = -1
                self.skip = 2
        if pos < n:
            self.buf = buf[pos:]
        if not pieces:
            return
        sse = self.sse + b"".join(pieces) if self.sse else b"".join(pieces)
        frames = sse.split(b"\n\n")
        self.sse = frames.pop()
        sink = self.sink
        for frame in frames:
            if sink.frame(frame, t):
                self.close()
                return


# -- one answer ---------------------------------------------------------------------------


class Answer:
    """One chat answer as a client reads it, possibly over several connections."""

    def __init__(self, gen: LoadGen, slot: int, number: int) -> None:
        self.gen = gen
        self.prompt = f"bench {gen.tag} {slot} {number}"
        self.chat_id = uuid.uuid4().hex
        self.seqs = array("l")
        self.times = array("d")
        self.last = -1
        self.deltas: dict[bytes, list[str]] = {b"r": [], b"t": []}
        self.done = False
        self.dups = 0
        self.status: int | None = None
        self.http: Http | None = None
        self.kicked = False
        self.reading = False
        self.request_sent = 0.0
        self.first_frame = True
        self.resumes = 0

    # sink interface
    def response(self, status: int, t: float) -> None:
        self.status = status
        if self.resumes:
            self.gen.reconnect_head.append((t - self.request_sent) * 1000)

    def frame(self, frame: bytes, t: float) -> bool:
        if frame[:4] == b"id: ":
            eol = frame.find(b"\n")
            seq = int(frame[4:eol])
            data = frame[eol + 7 :]
            if seq <= self.last:
                self.dups += 1
                return False
            self.last = seq
            self.seqs.append(seq)
            self.times.append(t)
        elif frame[:6] == b"data: ":
            data = frame[6:]
            if data == b"[DONE]":
                self.done = True
                return True
        else:
            return False  # a comment (keep-alive)
        if self.first_frame:
            self.first_frame = False
            if self.resumes:
                self.gen.reconnect_first.append((t - self.request_sent) * 1000)
        if data[:22] == b'{"type":"text-delta","':
            self.deltas[b"t"].append(json.loads(data)["delta"])
        elif data[:27] == b'{"type":"reasoning-delta","':
            self.deltas[b"r"].append(json.loads(data)["delta"])
        return False

    async def _request(self, raw: bytes) -> None:
        gen = self.gen
        transport, http = await gen.loop.create_connection(lambda: Http(self), gen.host, gen.port)
        self.http = http
        self.first_frame = True
        self.request_sent = monotonic()
        transport.write(raw)
        self.reading = True
        try:
            await http.lost
        finally:
            self.reading = False
            self.http = None
            http.close()  # cancelled at the end of the run: hang up

    async def run(self) -> None:
        gen = self.gen
        body = json.dumps(
            {
                "id": self.chat_id,
                "trigger": "submit-message",
                "messages": [
                    {
                        "id": uuid.uuid4().hex,
                        "role": "user",
                        "parts": [{"type": "text", "text": self.prompt}],
                    }
                ],
            }
        ).encode()
        await self._request(gen.post_head(len(body)) + body)
        while not self.done:
            if not self.kicked:
                if self.status != 200:
                    gen.errors[f"http {self.status}"] += 1
                else:
                    gen.errors["connection closed before the end"] += 1
                return
            self.kicked = False
            self.resumes += 1
            gen.reconnects += 1
            self.status = None
            await self._request(gen.resume_head(self.chat_id, self.last))

    @property
    def streaming(self) -> bool:
        """Reading a 200 response that has delivered at least one event."""
        return self.http is not None and self.reading and self.status == 200 and self.last >= 0

    def kick(self) -> None:
        """Drop the connection now; `run` reconnects with Last-Event-ID."""
        if self.streaming and self.http is not None:
            self.kicked = True
            self.http.close()

    def check(self) -> str | None:
        """What is wrong with what this client received, if anything."""
        reasoning, answer = compose(self.prompt)
        got_r, got_t = "".join(self.deltas[b"r"]), "".join(self.deltas[b"t"])
        if self.dups:
            return "duplicate"
        if self.done:
            return None if (got_r, got_t) == (reasoning, answer) else "content"
        if (got_t and got_r != reasoning) or not answer.startswith(got_t):
            return "content"
        return None if reasoning.startswith(got_r) else "content"


class Probe:
    """A resume probe: GET the stream a few chunks back, time first byte and first event."""

    def __init__(self, gen: LoadGen) -> None:
        self.gen = gen
        self.sent = 0.0

    def response(self, status: int, t: float) -> None:
        if status == 200:
            self.gen.probe_head.append((t - self.sent) * 1000)
        else:
            self.gen.errors[f"probe http {status}"] += 1

    def frame(self, frame: bytes, t: float) -> bool:
        if frame[:1] == b":":
            return False
        self.gen.probe_first.append((t - self.sent) * 1000)
        return True

    async def run(self, answer: Answer) -> None:
        gen = self.gen
        try:
            transport, http = await gen.loop.create_connection(
                lambda: Http(self), gen.host, gen.port
            )
        except OSError as exc:
            gen.errors[f"probe connect: {type(exc).__name__}"] += 1
            return
        self.sent = monotonic()
        transport.write(gen.resume_head(answer.chat_id, max(answer.last - 8, 0)))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(http.lost, 10)
        finally:
            http.close()


# -- the run -------------------------------------------------------------------------------


class LoadGen:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.host: str = config["host"]
        self.port: int = config["port"]
        self.tag: str = config["tag"]
        key, cookie = config.get("api_key"), config.get("cookie")
        self.auth = (
            f"Authorization: Bearer {key}\r\n" if key else f"Cookie: {cookie}\r\n" if cookie else ""
        )
        self.answers: list[Answer] = []
        self.active: set[Answer] = set()
        self.errors: Counter[str] = Counter()
        self.probe_head: list[float] = []
        self.probe_first: list[float] = []
        self.reconnect_head: list[float] = []
        self.reconnect_first: list[float] = []
        self.reconnects = 0
        self.stopping = False
        self.stop_seconds = 0.0  # the slowest stop at the end of the window

    def post_head(self, length: int) -> bytes:
        return (
            f"POST /api/chat HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.auth}"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    def resume_head(self, chat_id: str, last: int) -> bytes:
        return (
            f"GET /api/chat/{chat_id}/stream HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"{self.auth}Accept: text/event-stream\r\nLast-Event-ID: {last}\r\n\r\n"
        ).encode()

    async def slot(self, index: int, start: float, end: float) -> None:
        await asyncio.sleep(max(0.0, start - monotonic()))
        number = 0
        while monotonic() < end and not self.stopping:
            answer = Answer(self, index, number)
            number += 1
            self.answers.append(answer)
            self.active.add(answer)
            try:
                await answer.run()
            except OSError as exc:
                self.errors[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
            finally:
                self.active.discard(answer)

    async def every(self, period: float, until: float, action: Callable[[], None]) -> None:
        next_at = monotonic()
        while True:
            next_at += period
            await asyncio.sleep(max(0.0, next_at - monotonic()))
            if monotonic() >= until:
                return
            action()

    async def run(self) -> dict[str, Any]:
        c = self.config
        t0: float = c["t0"]
        ramp, window = float(c["ramp"]), float(c["window"])
        w0, w1 = t0 + ramp, t0 + ramp + window
        first, count = int(c["first_slot"]), int(c["streams"])
        total = int(c["total_streams"])
        tasks: set[asyncio.Task[Any]] = set()
        for i in range(first, first + count):
            start = t0 + ramp * i / total
            tasks.add(asyncio.ensure_future(self.slot(i, start, w1)))
        probes: set[asyncio.Task[Any]] = set()

        def probe() -> None:
            candidates = [a for a in self.active if a.streaming and a.last >= 12]
            if candidates:
                task = asyncio.ensure_future(Probe(self).run(random.choice(candidates)))
                probes.add(task)
                task.add_done_callback(probes.discard)

        def storm() -> None:
            # This second's share of the clients, each at a random moment within it.
            streaming = [a for a in self.active if a.streaming]
            for answer in random.sample(streaming, round(len(streaming) * c["storm_fraction"])):
                self.loop.call_later(random.random(), answer.kick)

        # CPU is measured from w0 to wm: the whole window, or its first half when the second
        # half has resume probes (their requests are not chunks delivered).
        wm = (w0 + w1) / 2 if c.get("probes_per_s") else w1
        await asyncio.sleep(max(0.0, w0 - monotonic()))
        pids = process_tree(c["server_pid"]) if c.get("measure_cpu") else []
        before = self.cpu_sample(pids, c.get("redis"))
        helpers = [asyncio.sleep(max(0.0, w1 - monotonic()))]
        if c.get("storm_fraction"):
            helpers.append(self.every(1.0, w1, storm))

        async def measure_then_probe() -> None:
            nonlocal after
            await asyncio.sleep(max(0.0, wm - monotonic()))
            after = self.cpu_sample(pids, c.get("redis"))
            if c.get("probes_per_s"):
                await self.every(1 / c["probes_per_s"], w1, probe)

        after: dict[str, float] = {}
        await asyncio.gather(*helpers, measure_then_probe())
        # End of the window: hang up everything, then stop what is still generating so the
        # server is idle for the next step (the plain app stops on disconnect by itself).
        self.stopping = True
        for task in tasks | probes:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, *probes, return_exceptions=True):
            if isinstance(outcome, Exception):
                self.errors[f"client: {type(outcome).__name__}: {outcome}"[:120]] += 1
        unfinished = [a for a in self.answers if not a.done and a.status == 200]
        if c.get("stop_unfinished"):
            await self.stop_all(unfinished)
        used = {k: after[k] - before[k] for k in before}
        return self.report(w0, w1, wm, used)

    @staticmethod
    def cpu_sample(pids: list[int], redis_url: str | None) -> dict[str, float]:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        sample = {
            "wall": monotonic(),
            "server": cpu_seconds(pids),
            "client": time.process_time(),
            "machine_busy": (sum(fields[:8]) - idle) / CLK_TCK,
        }
        redis = redis_cpu(redis_url)
        if redis is not None:
            sample["redis"] = redis
        return sample

    async def stop_all(self, answers: list[Answer]) -> None:
        """Stop every answer still generating (32 at a time). A stop that fails or has not
        answered within 60 s is counted in ``errors`` (it would be a fault of the service);
        the slowest stop is reported."""
        limit = asyncio.Semaphore(32)

        async def stop(answer: Answer) -> None:
            async with limit:
                started = monotonic()
                try:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                    writer.write(
                        (
                            f"POST /api/chat/{answer.chat_id}/stop HTTP/1.1\r\n"
                            f"Host: {self.host}:{self.port}\r\n{self.auth}"
                            "Content-Length: 0\r\nConnection: close\r\n\r\n"
                        ).encode()
                    )
                    response = await reader.read()
                    writer.close()
                except OSError as exc:
                    self.errors[f"stop: {type(exc).__name__}"] += 1
                    return
                finally:
                    self.stop_seconds = max(self.stop_seconds, monotonic() - started)
                status = response.split(b" ", 2)[1:2]
                if status != [b"200"]:
                    self.errors[f"stop http {status[0].decode() if status else '?'}"] += 1

        tasks = [asyncio.ensure_future(stop(answer)) for answer in answers]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        if pending:
            self.errors["stop: no answer within 60 s"] += len(pending)
            self.stop_seconds = max(self.stop_seconds, 60.0)
            await asyncio.gather(*pending, return_exceptions=True)

    def report(self, w0: float, w1: float, wm: float, used: dict[str, float]) -> dict[str, Any]:
        anchors: dict[str, float] = {}
        prefix = f"bench {self.tag} "
        with open(self.config["stamps"], encoding="utf-8") as stamps:
            for line in stamps:
                prompt, _, started = line.rstrip("\n").rpartition("\t")
                if prompt.startswith(prefix):
                    anchors[prompt] = float(started)
        interval = 1.0 / float(self.config["tokens_per_second"])
        delays = array("d")
        chunks = frames = cpu_chunks = 0
        problems: Counter[str] = Counter()
        missing_anchor = 0
        for answer in self.answers:
            if answer.status is None and not answer.seqs:
                continue
            problem = answer.check()
            if problem:
                problems[problem] += 1
            anchor = anchors.get(answer.prompt)
            if anchor is None:
                if answer.seqs:
                    missing_anchor += 1
                continue
            reasoning, text = compose(answer.prompt)
            ticks = chunk_ticks(len(tokenize(reasoning)), len(tokenize(text)))
            previous = -1
            for seq, t in zip(answer.seqs, answer.times, strict=True):
                if w0 <= t <= w1:
                    frames += 1
                    for q in range(previous + 1, min(seq + 1, len(ticks))):
                        delays.append((t - anchor - ticks[q] * interval) * 1000)
                        chunks += 1
                        cpu_chunks += t <= wm
                previous = seq
        delays_path = self.config["out"] + ".delays"
        with open(delays_path, "wb") as out:
            delays.tofile(out)
        return {
            "window_s": w1 - w0,
            "cpu_window_s": used["wall"],
            "cpu_chunks": cpu_chunks,
            "server_cpu_s": used["server"],
            "client_cpu_s": used["client"],
            "machine_busy_s": used["machine_busy"],
            "redis_cpu_s": used.get("redis"),
            "chunks": chunks,
            "frames": frames,
            "delays_path": delays_path,
            "answers": len(self.answers),
            "answers_done": sum(a.done for a in self.answers),
            "reconnects": self.reconnects,
            "errors": dict(self.errors),
            "stop_max_s": round(self.stop_seconds, 3),
            "problems": dict(problems),
            "missing_anchor": missing_anchor,
            "probe_head_ms": self.probe_head,
            "probe_first_ms": self.probe_first,
            "reconnect_head_ms": self.reconnect_head,
            "reconnect_first_ms": self.reconnect_first,
        }


async def main_async(config: dict[str, Any]) -> dict[str, Any]:
    return await LoadGen(config).run()


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    try:
        import uvloop

        result = uvloop.run(main_async(config))
    except ImportError:
        result = asyncio.run(main_async(config))
    Path(config["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
