"""unbroken.asgi: raw ASGI calls for disconnects, keep-alives and slow clients; httpx's
ASGITransport for finished responses; a real uvicorn server for a live cut and resume of the
example app."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from examples.ai_sdk_app import create_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.protocols._streams import weather_answer
from unbroken import (
    BackendUnavailableError,
    Chunk,
    MemoryBackend,
    MissingDependencyError,
    OpenedStream,
    ProtocolError,
    StreamEnd,
    StreamEngine,
    StreamNotFoundError,
    StreamState,
)
from unbroken.asgi import (
    SHUTDOWN_STATE_KEY,
    DataStreamResponse,
    EngineStreamResponse,
    Instead,
    UIMessageStreamResponse,
    append_message_response,
    resume_after,
)
from unbroken.protocols.ai_sdk import UIMessageAssembler, UIMessageStreamEncoder, encode_event

WATCHDOG = 10.0
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "root_path": "",
    "headers": [],
    "server": ("testserver", 80),
    "client": ("testclient", 50000),
}


@pytest.fixture
async def engine() -> AsyncIterator[StreamEngine]:
    async with StreamEngine(MemoryBackend()) as engine:
        yield engine


async def gated(events: Sequence[dict[str, Any]], gate: anyio.Event, at: int) -> AsyncIterator[str]:
    """Yield the events, pausing before event ``at`` until ``gate`` is set."""
    for index, event in enumerate(events):
        if index == at:
            await gate.wait()
        yield encode_event(event)


async def finished_stream(engine: StreamEngine, stream_id: str) -> list[dict[str, Any]]:
    events = weather_answer()

    async def source() -> AsyncIterator[str]:
        for event in events:
            yield encode_event(event)

    await engine.start(stream_id, source())
    await engine.wait(stream_id)
    return events


class RawClient:
    """The server side of one HTTP exchange: what the app sent, and a disconnect switch.

    ``stall``: body sends block forever (a client that stopped reading).
    ``fail_after``: body sends after this many raise OSError (a vanished client).
    """

    def __init__(self, *, stall: bool = False, fail_after: int | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.body = ""
        self.stall = stall
        self.fail_after = fail_after
        self.disconnected = anyio.Event()
        self._changed = anyio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            if self.stall:
                await anyio.sleep_forever()
            bodies = sum(m["type"] == "http.response.body" for m in self.messages)
            if self.fail_after is not None and bodies >= self.fail_after:
                raise OSError("client disconnected")
            self.body += message["body"].decode()
        self.messages.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, text: str) -> None:
        while text not in self.body:
            await self._changed.wait()

    @property
    def complete(self) -> bool:
        last = self.messages[-1] if self.messages else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)


async def run(response: EngineStreamResponse, client: RawClient, done: anyio.Event) -> None:
    await response(SCOPE, client.receive, client.send)
    done.set()


# -- raw ASGI: the response only reads -----------------------------------------------------


@pytest.mark.anyio
async def test_client_disconnect_does_not_cancel_the_producer(engine: StreamEngine) -> None:
    events = weather_answer()
    gate = anyio.Event()
    await engine.start("s1", gated(events, gate, at=3))
    response = UIMessageStreamResponse(engine, "s1")
    client, done = RawClient(), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, response, client, done)
            await client.wait_for("id: 2\n")
            client.disconnected.set()
            await done.wait()
        assert response.outcome == "disconnect"
        assert not client.complete
        assert (await engine.status("s1")).state is StreamState.ACTIVE  # type: ignore[union-attr]
        gate.set()
        end = await engine.wait("s1")
    assert (end.state, end.chunk_count) == (StreamState.DONE, len(events))


@pytest.mark.anyio
async def test_a_send_error_ends_only_the_response(engine: StreamEngine) -> None:
    events = weather_answer()
    gate = anyio.Event()
    await engine.start("s1", gated(events, gate, at=3))
    response = UIMessageStreamResponse(engine, "s1")
    client, done = RawClient(), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, response, client, done)
            await client.wait_for("id: 2\n")
            client.fail_after = 0  # the next write fails: the client is gone
            gate.set()
            await done.wait()
        end = await engine.wait("s1")
    assert response.outcome == "disconnect"
    assert (end.state, end.chunk_count) == (StreamState.DONE, len(events))


@pytest.mark.anyio
async def test_keepalive_comment_while_idle(engine: StreamEngine) -> None:
    events = weather_answer()
    gate = anyio.Event()
    await engine.start("s1", gated(events, gate, at=1))
    response = UIMessageStreamResponse(engine, "s1", keepalive=0.01)
    client, done = RawClient(), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, response, client, done)
            await client.wait_for(": keep-alive\n\n")
            gate.set()
            await done.wait()
    assert client.body.startswith(
        'id: 0\ndata: {"type":"start","messageId":"msg-1"}\n\n: keep-alive'
    )
    assert client.body.endswith("data: [DONE]\n\n")
    assert client.complete
    assert response.outcome == "end"


@pytest.mark.anyio
async def test_v4_keepalive_is_an_empty_line(engine: StreamEngine) -> None:
    gate = anyio.Event()
    await engine.start("s1", gated(weather_answer(), gate, at=2))
    response = DataStreamResponse(engine, "s1", keepalive=0.01)
    client, done = RawClient(), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, response, client, done)
            await client.wait_for('f:{"messageId":"msg-1"}\n\n')
            gate.set()
            await done.wait()
    assert client.body.endswith('d:{"finishReason":"stop"}\n')


@pytest.mark.anyio
async def test_a_client_that_stops_reading_is_dropped(engine: StreamEngine) -> None:
    events = weather_answer()
    gate = anyio.Event()
    await engine.start("s1", gated(events, gate, at=3))
    response = UIMessageStreamResponse(engine, "s1", send_timeout=0.05)
    client, done = RawClient(stall=True), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, response, client, done)
            await done.wait()
        assert response.outcome == "timeout"
        assert [m["type"] for m in client.messages] == ["http.response.start"]
        gate.set()
        end = await engine.wait("s1")
    assert (end.state, end.chunk_count) == (StreamState.DONE, len(events))


@pytest.mark.anyio
async def test_server_shutdown_ends_open_responses_without_an_end(engine: StreamEngine) -> None:
    """Noticed on the engine's liveness tick: the body ends cleanly with no terminal event
    (the client resumes elsewhere) and the answer goes on."""
    gate, shutdown = anyio.Event(), anyio.Event()
    await engine.start("s1", gated(weather_answer(), gate, at=3))
    response = UIMessageStreamResponse(engine, "s1")
    client = RawClient()
    scope = {**SCOPE, "state": {SHUTDOWN_STATE_KEY: shutdown}}
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(response, scope, client.receive, client.send)
            await client.wait_for("id: 2\n")
            shutdown.set()
        assert response.outcome == "shutdown"
        assert client.complete and "[DONE]" not in client.body
        assert (await engine.status("s1")).state is StreamState.ACTIVE  # type: ignore[union-attr]
    assert not engine._tick_checks  # the response stopped watching the ticks
    gate.set()


@pytest.mark.anyio
async def test_cancel_reaches_a_live_reader_as_abort(engine: StreamEngine) -> None:
    gate = anyio.Event()
    await engine.start("s1", gated(weather_answer(), gate, at=3))
    response = UIMessageStreamResponse(engine, "s1", target="6.0.15")
    client, done = RawClient(), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, response, client, done)
            await client.wait_for("id: 2\n")
            assert await engine.cancel("s1") is StreamState.CANCELLED
            await done.wait()
    assert client.body.endswith('data: {"type":"abort","reason":"cancelled"}\n\ndata: [DONE]\n\n')


async def paced_text(deltas: int, every: float) -> AsyncIterator[str]:
    """A text answer of ``deltas`` one-word deltas, one every ``every`` seconds."""
    for event in (
        {"type": "start", "messageId": "m"},
        {"type": "text-start", "id": "t"},
    ):
        yield encode_event(event)
    for index in range(deltas):
        await anyio.sleep(every)
        yield encode_event({"type": "text-delta", "id": "t", "delta": f"w{index} "})
    yield encode_event({"type": "text-end", "id": "t"})
    yield encode_event({"type": "finish"})


@pytest.mark.anyio
@pytest.mark.parametrize("flush_interval", [0.0, 0.06])
async def test_flush_interval_sends_what_arrived_meanwhile_in_one_write(
    engine: StreamEngine, flush_interval: float
) -> None:
    """With a flush interval a live stream goes out in fewer, larger writes, deltas merged,
    and still exactly once: every word in order, event ids increasing, the last id the last
    chunk's (so a resume from it continues exactly)."""
    deltas = 30
    await engine.start("s1", paced_text(deltas, every=0.01))
    response = UIMessageStreamResponse(engine, "s1", flush_interval=flush_interval)
    client, done = RawClient(), anyio.Event()
    started = time.monotonic()
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, response, client, done)
            await done.wait()
    elapsed = time.monotonic() - started
    writes = [m for m in client.messages if m["type"] == "http.response.body" and m["body"]]
    frames = [f for f in client.body.split("\n\n") if f.startswith("id: ")]
    ids = [int(f.split("\n", 1)[0][4:]) for f in frames]
    assert ids == sorted(set(ids)) and ids[-1] == deltas + 3  # start, text-start, 30, end, finish
    events = [json.loads(f.split("data: ", 1)[1]) for f in frames]
    text = "".join(e["delta"] for e in events if e["type"] == "text-delta")
    assert text == "".join(f"w{index} " for index in range(deltas))
    assert client.body.endswith("data: [DONE]\n\n") and response.outcome == "end"
    if flush_interval:
        # A write at most every 0.06 s (~0.3 s of deltas: ~6 writes, not ~33).
        assert len(writes) <= elapsed / flush_interval + 2, (len(writes), elapsed)
        assert len(events) < deltas
    else:
        assert len(writes) >= deltas  # one write per wake-up, each delta on its own


def test_flush_interval_must_be_a_finite_non_negative_number() -> None:
    engine = StreamEngine(MemoryBackend())
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="flush_interval"):
            UIMessageStreamResponse(engine, "s1", flush_interval=bad)


class BrokenEngine:
    """Finds the stream, then loses it while reading (an expired stream)."""

    async def open_batches(
        self, stream_id: str, *, after: int = -1, heartbeat: float | None = None
    ) -> OpenedStream:
        async def rest() -> AsyncGenerator[list[Chunk | StreamEnd], None]:
            raise StreamNotFoundError(stream_id)
            yield []  # an async generator

        first: list[Chunk | StreamEnd] = [
            Chunk(0, encode_event({"type": "start", "messageId": "m"}), 0)
        ]
        return OpenedStream(StreamState.ACTIVE, None, first, rest())

    def on_tick(self, check: Callable[[], None]) -> Callable[[], None]:
        return lambda: None  # (no ticks: the response ends before one would come)


@pytest.mark.anyio
async def test_a_stream_lost_while_reading_ends_in_error() -> None:
    response = UIMessageStreamResponse(BrokenEngine(), "gone")  # type: ignore[arg-type]
    client, done = RawClient(), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        await run(response, client, done)
    assert client.body == (
        'id: 0\ndata: {"type":"start","messageId":"m"}\n\n'
        'data: {"type":"error","errorText":"the stream is no longer available"}\n\n'
        "data: [DONE]\n\n"
    )


class UnreachableEngine:
    """Its backend cannot be reached."""

    async def open_batches(
        self, stream_id: str, *, after: int = -1, heartbeat: float | None = None
    ) -> OpenedStream:
        raise BackendUnavailableError("connection refused")


@pytest.mark.anyio
async def test_a_backend_unreachable_before_the_headers_is_a_503() -> None:
    response = UIMessageStreamResponse(UnreachableEngine(), "s1")  # type: ignore[arg-type]
    client, done = RawClient(), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        await run(response, client, done)
    head = client.messages[0]
    assert head["status"] == 503 and (b"retry-after", b"1") in head["headers"]
    assert json.loads(client.body)["error"]["code"] == "unavailable"
    assert response.outcome == "unavailable"


@pytest.mark.anyio
async def test_instead_sees_the_stream_as_opened_and_may_answer_otherwise(
    engine: StreamEngine,
) -> None:
    await engine.start("live", gated(weather_answer(), anyio.Event(), at=2))
    await finished_stream(engine, "over")
    seen: dict[str, tuple[StreamState, bool] | None] = {}

    def hook(stream_id: str) -> Instead:
        async def instead(opened: OpenedStream | None) -> Response | None:
            seen[stream_id] = None if opened is None else (opened.state, bool(opened.first))
            if opened is not None and opened.state is StreamState.ACTIVE:
                return None
            return Response(status_code=204)

        return instead

    results: dict[str, RawClient] = {}
    for stream_id in ("live", "over", "missing"):
        response = UIMessageStreamResponse(engine, stream_id, instead=hook(stream_id))
        client, done = RawClient(), anyio.Event()
        results[stream_id] = client
        with anyio.fail_after(WATCHDOG):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, response, client, done)
                if stream_id == "live":
                    await client.wait_for("id: 1\n")
                    client.disconnected.set()
                await done.wait()
        assert response.outcome == ("disconnect" if stream_id == "live" else "instead")
    assert seen == {
        "live": (StreamState.ACTIVE, True),
        "over": (StreamState.DONE, True),
        "missing": None,
    }
    assert results["live"].messages[0]["status"] == 200
    assert [c.messages[0]["status"] for c in (results["over"], results["missing"])] == [204, 204]
    await engine.cancel("live")


# -- finished responses through httpx.ASGITransport ---------------------------------------


def app_for(engine: StreamEngine) -> Starlette:
    async def ui(request: Request) -> Response:
        return UIMessageStreamResponse(
            engine,
            request.path_params["stream_id"],
            after=resume_after(request),
            target=request.query_params.get("target", "5.0.0"),
            merge_replay=request.query_params.get("merge", "1") == "1",
        )

    async def data(request: Request) -> Response:
        return DataStreamResponse(
            engine, request.path_params["stream_id"], after=resume_after(request)
        )

    async def append(request: Request) -> Response:
        message = {"id": "m1", "role": "assistant", "parts": [{"type": "text", "text": "Hi"}]}
        return append_message_response(message)

    return Starlette(
        routes=[
            Route("/ui/{stream_id}", ui),
            Route("/data/{stream_id}", data),
            Route("/append", append),
        ]
    )


@pytest.fixture
async def http(engine: StreamEngine) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_for(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.mark.anyio
async def test_finished_stream_full_replay(engine: StreamEngine, http: httpx.AsyncClient) -> None:
    events = await finished_stream(engine, "s1")
    response = await http.get("/ui/s1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-length" not in response.headers
    expected = UIMessageStreamEncoder().encode(
        [*(Chunk(i, encode_event(e), 0) for i, e in enumerate(events)), _end(len(events))]
    )
    assert response.text == expected


@pytest.mark.anyio
async def test_offset_resume_by_header_and_query(
    engine: StreamEngine, http: httpx.AsyncClient
) -> None:
    await finished_stream(engine, "s1")
    by_header = await http.get("/ui/s1", headers={"Last-Event-ID": "18"})
    by_query = await http.get("/ui/s1?after=18")
    expected = (
        'id: 19\ndata: {"type":"text-end","id":"text-4"}\n\n'
        'id: 20\ndata: {"type":"finish-step"}\n\n'
        'id: 21\ndata: {"type":"finish"}\n\n'
        "data: [DONE]\n\n"
    )
    assert by_header.text == by_query.text == expected
    # The client already has the stream's own `finish`: only [DONE] is left.
    assert (await http.get("/ui/s1?after=21")).text == "data: [DONE]\n\n"


@pytest.mark.anyio
async def test_replay_ids_let_a_resume_continue_exactly(
    engine: StreamEngine, http: httpx.AsyncClient
) -> None:
    events = await finished_stream(engine, "s1")
    merged = (await http.get("/ui/s1")).text
    ids = [int(line[4:]) for line in merged.splitlines() if line.startswith("id: ")]
    assert len(ids) < len(events)  # deltas were merged
    frames = merged.split("\n\n")
    for index, frame in enumerate(frames):
        if not frame.startswith("id: "):
            continue
        cut = int(frame.split("\n")[0][4:])
        head = "\n\n".join(frames[: index + 1]) + "\n\n"
        tail = (await http.get(f"/ui/s1?after={cut}")).text
        tail_ids = [int(line[4:]) for line in tail.splitlines() if line.startswith("id: ")]
        assert all(seq > cut for seq in tail_ids)
        assert _assemble(head + tail) == _assemble(merged)


@pytest.mark.anyio
async def test_data_stream_response(engine: StreamEngine, http: httpx.AsyncClient) -> None:
    await finished_stream(engine, "s1")
    response = await http.get("/data/s1")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-vercel-ai-data-stream"] == "v1"
    assert response.text.startswith('f:{"messageId":"msg-1"}\ng:"Checking the weather."\n')
    assert response.text.endswith('d:{"finishReason":"stop"}\n')


@pytest.mark.anyio
async def test_unknown_stream_is_404_json(http: httpx.AsyncClient) -> None:
    for path in ("/ui/nope", "/data/nope", "/ui/bad{id}"):
        response = await http.get(path)
        assert response.status_code == 404
        assert response.json() == {
            "error": {"code": "stream_not_found", "message": "the stream is no longer available"}
        }


@pytest.mark.anyio
async def test_append_message_response(http: httpx.AsyncClient) -> None:
    response = await http.get("/append")
    assert response.headers["x-vercel-ai-data-stream"] == "v1"
    line = response.text
    assert line.startswith('2:[{"type":"append-message","message":"') and line.endswith("\n")
    message = json.loads(json.loads(line[2:])[0]["message"])
    assert (message["id"], message["content"], message["parts"]) == (
        "m1",
        "Hi",
        [{"type": "text", "text": "Hi"}],
    )


@pytest.mark.parametrize(
    ("headers", "query", "after"),
    [
        ([], b"", -1),
        ([(b"last-event-id", b"7")], b"", 7),
        ([(b"last-event-id", b" 7 ")], b"after=3", 7),
        ([(b"last-event-id", b"")], b"after=3", 3),
        ([], b"after=-1", -1),
        ([], b"after=0", 0),
    ],
)
def test_resume_after(headers: list[tuple[bytes, bytes]], query: bytes, after: int) -> None:
    assert resume_after(Request({**SCOPE, "headers": headers, "query_string": query})) == after


@pytest.mark.parametrize("value", [b"x", b"-2", b"1.5", b"9" * 19, b"1e3"])
def test_resume_after_rejects(value: bytes) -> None:
    with pytest.raises(ProtocolError, match="sequence number"):
        resume_after(Request({**SCOPE, "query_string": b"after=" + value}))
    with pytest.raises(ProtocolError):
        resume_after(Request({**SCOPE, "headers": [(b"last-event-id", value)]}))


def _end(n: int) -> StreamEnd:
    return StreamEnd(StreamState.DONE, None, n, 0)


def _events(sse: str) -> list[dict[str, Any]]:
    out = []
    for line in sse.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def _assemble(sse: str) -> dict[str, Any]:
    return UIMessageAssembler().feed_all(_events(sse))


# -- a real server: the example app, cut and resumed ------------------------------------------


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread, on a free port; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WATCHDOG
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.001)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WATCHDOG)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(create_app(delay_ms=20, words=60)) as url:
        yield url


def _read_frames(
    response: httpx.Response, limit: int | None = None
) -> list[tuple[int | None, str]]:
    """(id, data) per SSE frame, until [DONE] or ``limit`` frames."""
    frames: list[tuple[int | None, str]] = []
    frame_id: int | None = None
    for line in response.iter_lines():
        if line.startswith("id: "):
            frame_id = int(line[4:])
        elif line.startswith("data: "):
            frames.append((frame_id, line[6:]))
            frame_id = None
            if line == "data: [DONE]" or (limit is not None and len(frames) >= limit):
                break
    return frames


def test_live_cut_and_resume_with_last_event_id(server: str) -> None:
    body = {
        "id": "live-1",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}],
        "trigger": "submit-message",
    }
    with httpx.Client(base_url=server, timeout=WATCHDOG) as client:
        with client.stream("POST", "/api/chat", json=body) as response:
            assert response.status_code == 200
            before = _read_frames(response, limit=6)
        # The connection is cut; the answer goes on in the engine.
        last_id = before[-1][0]
        assert last_id is not None
        message_id = json.loads(before[0][1])["messageId"]

        # A new reader with nothing gets a full replay, with the same message id.
        with client.stream("GET", "/api/chat/live-1/stream") as replay:
            assert replay.status_code == 200
            first = _read_frames(replay, limit=1)
        assert json.loads(first[0][1]) == {
            "type": "start",
            "messageId": message_id,
            "messageMetadata": {"model": "demo"},
        }

        # The cut client resumes from its last event id and gets exactly the rest.
        headers = {"Last-Event-ID": str(last_id)}
        with client.stream("GET", "/api/chat/live-1/stream", headers=headers) as resumed:
            assert resumed.status_code == 200
            after = _read_frames(resumed)
        assert after[-1] == (None, "[DONE]")
        ids = [frame_id for frame_id, _ in after if frame_id is not None]
        assert ids == sorted(ids) and ids[0] > last_id
        assert not any('"type":"start"' in data for _, data in after)

        events = [json.loads(data) for _, data in before + after if data != "[DONE]"]
        assembled = UIMessageAssembler().feed_all(events)

        # Once the answer is stored the chat has nothing to resume.
        deadline = time.monotonic() + WATCHDOG
        while (stored := client.get("/api/chat/live-1/messages").json())["activeStreamId"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert stored["messages"][-1] == assembled
        assert client.get("/api/chat/live-1/stream").status_code == 204


def test_live_v4_resume_and_stop(server: str) -> None:
    body = {"id": "live-4", "messages": [{"id": "u1", "role": "user", "content": "Hi"}]}
    with httpx.Client(base_url=server, timeout=WATCHDOG) as client:
        with client.stream("POST", "/api/chat", json=body) as response:
            assert response.headers["x-vercel-ai-data-stream"] == "v1"
            first = next(response.iter_lines())
        assert first.startswith("8:") or first.startswith("f:")
        with client.stream("GET", "/api/chat", params={"chatId": "live-4"}) as resumed:
            lines = resumed.iter_lines()
            assert next(lines).startswith("8:")
            assert client.post("/api/chat/live-4/stop").json() == {"stopped": True}
            rest = list(lines)
        assert rest[-1] == 'd:{"finishReason":"other"}'
        assert client.post("/api/chat/live-4/stop").json() == {"stopped": False}
        deadline = time.monotonic() + WATCHDOG
        while client.get("/api/chat/live-4/messages").json()["activeStreamId"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        after_stop = client.get("/api/chat", params={"chatId": "live-4"})
        assert after_stop.status_code == 200
        assert after_stop.text.startswith('2:[{"type":"append-message"')
        assert client.get("/api/chat").status_code == 400
        unknown = client.get("/api/chat", params={"chatId": "nope"})
        assert (unknown.status_code, unknown.text) == (200, "")
        assert client.get("/api/chat", params={"chatId": "bad id"}).status_code == 400
        invalid = client.post("/api/chat", json={"id": "x"})
        assert invalid.status_code == 400
        assert invalid.json()["error"]["code"] == "invalid_request"


def test_missing_starlette_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "unbroken.asgi")
    for name in ("starlette", "starlette.requests", "starlette.responses", "starlette.types"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"unbroken\[fastapi\]"):
        importlib.import_module("unbroken.asgi")
