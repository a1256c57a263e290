"""unbroken.asgi: raw ASGI calls for disconnects, keep-alives and slow clients; httpx's
ASGITransport for finished responses; a real uvicorn server for live cuts and resumes (the
example app, and a plain text stream as SSE)."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
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

from tests._util import SseParser
from tests.protocols._streams import weather_answer
from unbroken import (
    BackendUnavailableError,
    Chunk,
    InvalidStreamIdError,
    MemoryBackend,
    MissingDependencyError,
    ProtocolError,
    StreamEnd,
    StreamEngine,
    StreamNotFoundError,
    StreamState,
)
from unbroken.asgi import (
    SHUTDOWN_STATE_KEY,
    EngineStreamResponse,
    SSEStreamResponse,
    resume_after,
)
from unbroken.protocols.ai_sdk import (
    DataStreamResponse,
    UIMessageAssembler,
    UIMessageStreamEncoder,
    UIMessageStreamResponse,
    append_message_response,
    encode_event,
)

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
async def test_server_shutdown_ends_open_responses_without_an_end(
    engine: StreamEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Noticed on the engine's liveness tick: the body ends cleanly with no terminal event
    (the client resumes elsewhere) and the answer goes on."""
    watching: list[Callable[[], None]] = []
    on_tick = engine.on_tick

    def watch(check: Callable[[], None]) -> Callable[[], None]:
        unwatch = on_tick(check)
        watching.append(check)

        def stop() -> None:
            watching.remove(check)
            unwatch()

        return stop

    monkeypatch.setattr(engine, "on_tick", watch)
    gate, shutdown = anyio.Event(), anyio.Event()
    await engine.start("s1", gated(weather_answer(), gate, at=3))
    response = UIMessageStreamResponse(engine, "s1")
    client = RawClient()
    scope = {**SCOPE, "state": {SHUTDOWN_STATE_KEY: shutdown}}
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(response, scope, client.receive, client.send)
            await client.wait_for("id: 2\n")
            assert len(watching) == 1
            shutdown.set()
        assert response.outcome == "shutdown"
        assert client.complete and "[DONE]" not in client.body
        assert (await engine.status("s1")).state is StreamState.ACTIVE  # type: ignore[union-attr]
    assert not watching  # the response stopped watching the ticks
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


class LostReader:
    """A reader whose stream is lost after its first batch (an expired stream)."""

    state = StreamState.ACTIVE
    finished_at = None

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[list[Chunk | StreamEnd]]:
        yield [Chunk(0, encode_event({"type": "start", "messageId": "m"}), 0)]
        raise StreamNotFoundError(self.stream_id)

    async def aclose(self) -> None:
        self.closed = True


class BrokenEngine:
    """Finds the stream, then loses it while reading."""

    def __init__(self) -> None:
        self.readers: list[LostReader] = []

    async def open(
        self, stream_id: str, *, after: int = -1, heartbeat: float | None = None
    ) -> LostReader:
        self.readers.append(LostReader(stream_id))
        return self.readers[-1]

    def on_tick(self, check: Callable[[], None]) -> Callable[[], None]:
        return lambda: None  # (no ticks: the response ends before one would come)


@pytest.mark.anyio
async def test_a_stream_lost_while_reading_ends_in_error() -> None:
    engine = BrokenEngine()
    response = UIMessageStreamResponse(engine, "gone")  # type: ignore[arg-type]
    client, done = RawClient(), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        await run(response, client, done)
    assert client.body == (
        'id: 0\ndata: {"type":"start","messageId":"m"}\n\n'
        'data: {"type":"error","errorText":"the stream is no longer available"}\n\n'
        "data: [DONE]\n\n"
    )
    assert [reader.closed for reader in engine.readers] == [True]


class UnreachableEngine:
    """Its backend cannot be reached."""

    async def open(
        self, stream_id: str, *, after: int = -1, heartbeat: float | None = None
    ) -> LostReader:
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
async def test_open_raises_what_the_engine_raises() -> None:
    with pytest.raises(BackendUnavailableError):
        await UIMessageStreamResponse(UnreachableEngine(), "s1").open()  # type: ignore[arg-type]
    async with StreamEngine(MemoryBackend()) as engine:
        with pytest.raises(StreamNotFoundError):
            await SSEStreamResponse(engine, "missing").open()
        with pytest.raises(InvalidStreamIdError):
            await DataStreamResponse(engine, "bad{id}").open()


@pytest.mark.anyio
async def test_open_sees_the_stream_before_the_route_answers(engine: StreamEngine) -> None:
    """A route opens the response, looks at how the stream stands, then returns either that
    response or another one: nothing is sent before it decides."""
    await engine.start("live", gated(weather_answer(), anyio.Event(), at=2))
    await finished_stream(engine, "over")
    seen: dict[str, tuple[StreamState, bool] | None] = {}
    opened: dict[str, UIMessageStreamResponse] = {}

    async def route(stream_id: str) -> Response:
        try:
            response = await UIMessageStreamResponse(engine, stream_id).open()
        except StreamNotFoundError:
            seen[stream_id] = None
            return Response(status_code=204)
        opened[stream_id] = response
        if response.reader.state is StreamState.ACTIVE:
            return response
        # The route may still look at the first batch, which is there at once.
        first = await anext(aiter(response.reader))
        seen[stream_id] = (response.reader.state, bool(first))
        await response.aclose()
        await response.aclose()  # idempotent
        return Response(status_code=204)

    results: dict[str, RawClient] = {}
    for stream_id in ("live", "over", "missing"):
        answer = await route(stream_id)
        client = RawClient()
        results[stream_id] = client
        with anyio.fail_after(WATCHDOG):
            async with anyio.create_task_group() as tg:
                tg.start_soon(answer, SCOPE, client.receive, client.send)
                if stream_id == "live":
                    await client.wait_for("id: 1\n")
                    client.disconnected.set()
        if stream_id == "live":
            seen[stream_id] = (opened["live"].reader.state, client.body.startswith("id: 0\n"))
    assert opened["live"].outcome == "disconnect"
    assert opened["over"].outcome is None  # never sent
    assert seen == {
        "live": (StreamState.ACTIVE, True),
        "over": (StreamState.DONE, True),
        "missing": None,
    }
    assert opened["over"].reader.finished_at is not None
    assert opened["live"].reader.finished_at is None
    assert results["live"].messages[0]["status"] == 200
    assert [c.messages[0]["status"] for c in (results["over"], results["missing"])] == [204, 204]
    await engine.cancel("live")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response_type", "ending"),
    [
        (UIMessageStreamResponse, "data: [DONE]\n\n"),
        (DataStreamResponse, 'd:{"finishReason":"stop"}\n'),
        (SSEStreamResponse, 'event: end\ndata: {"state":"done","error":null,"chunks":22}\n\n'),
    ],
)
async def test_an_opened_response_sends_the_stream_and_closes_its_reader(
    engine: StreamEngine, response_type: Any, ending: str
) -> None:
    await finished_stream(engine, "s1")
    response = await response_type(engine, "s1", keepalive=5.0).open()
    assert response.reader.state is StreamState.DONE
    client, done = RawClient(), anyio.Event()
    with anyio.fail_after(WATCHDOG):
        await run(response, client, done)
    assert client.body.endswith(ending) and client.complete
    assert response.outcome == "end"

    await engine.start("s2", gated(weather_answer(), anyio.Event(), at=3))
    live = await response_type(engine, "s2").open()
    assert live.reader.state is StreamState.ACTIVE
    client, done = RawClient(fail_after=0), anyio.Event()  # gone at the first write
    with anyio.fail_after(WATCHDOG):
        await run(live, client, done)
        assert live.outcome == "disconnect"
        with pytest.raises(StopAsyncIteration):
            await anext(aiter(live.reader))  # closed: it no longer waits for the stream
    await engine.cancel("s2")


def test_the_reader_of_a_response_made_directly_is_opened_when_it_runs() -> None:
    response = SSEStreamResponse(StreamEngine(MemoryBackend()), "s1")
    with pytest.raises(RuntimeError, match="open"):
        response.reader  # noqa: B018


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

    async def sse(request: Request) -> Response:
        return SSEStreamResponse(
            engine, request.path_params["stream_id"], after=resume_after(request)
        )

    async def append(request: Request) -> Response:
        message = {"id": "m1", "role": "assistant", "parts": [{"type": "text", "text": "Hi"}]}
        return append_message_response(message)

    return Starlette(
        routes=[
            Route("/ui/{stream_id}", ui),
            Route("/data/{stream_id}", data),
            Route("/sse/{stream_id}", sse),
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
    for path in ("/ui/nope", "/data/nope", "/sse/nope", "/ui/bad{id}"):
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


# -- a real server: a plain text stream as SSE, cut and resumed ------------------------------

#: A text answer in pieces that SSE must carry exactly: a line break inside a piece, one at
#: its end, leading spaces.
TEXT_PIECES = [
    "Plain",
    " text,",
    " two\nlines",
    "  and an indent",
    " ending in a line break\n",
    *(f" word{index}" for index in range(40)),
    ".",
]


async def paced_pieces(every: float) -> AsyncIterator[str]:
    for piece in TEXT_PIECES:
        await anyio.sleep(every)
        yield piece


def text_app() -> Starlette:
    """Starts plain text streams (``POST /text/{id}``) and serves them as SSE."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with StreamEngine(MemoryBackend()) as engine:
            app.state.engine = engine
            yield

    async def start(request: Request) -> Response:
        await request.app.state.engine.start(request.path_params["stream_id"], paced_pieces(0.01))
        return Response(status_code=201)

    async def read(request: Request) -> Response:
        engine = request.app.state.engine
        return SSEStreamResponse(
            engine, request.path_params["stream_id"], after=resume_after(request)
        )

    return Starlette(
        routes=[
            Route("/text/{stream_id}", start, methods=["POST"]),
            Route("/text/{stream_id}", read),
        ],
        lifespan=lifespan,
    )


def _sse_events(response: httpx.Response, limit: int | None = None) -> list[tuple[int | None, str]]:
    """(id, data) per complete event, until the ``end`` event or ``limit`` events."""
    parser, events = SseParser(), []
    for line in response.iter_lines():
        event = parser.feed(line)
        if event is None:
            continue
        events.append((event.id, event.data))
        if event.id is None or (limit is not None and len(events) >= limit):
            break  # the end event has no id
    return events


def test_plain_text_stream_cut_and_resumed_with_last_event_id() -> None:
    with serve_in_thread(text_app()) as url, httpx.Client(base_url=url, timeout=WATCHDOG) as client:
        assert client.post("/text/t1").status_code == 201
        with client.stream("GET", "/text/t1") as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            before = _sse_events(response, limit=8)
        # The connection is cut mid-way; the stream goes on in the engine.
        last_id = before[-1][0]
        assert last_id is not None
        with client.stream("GET", "/text/t1", headers={"Last-Event-ID": str(last_id)}) as resumed:
            assert resumed.status_code == 200
            after = _sse_events(resumed)
    *pieces, (end_id, end_data) = before + after
    assert end_id is None
    assert json.loads(end_data) == {"state": "done", "error": None, "chunks": len(TEXT_PIECES)}
    # Exactly once, no gap: every piece, in order, each with its own sequence number.
    assert [seq for seq, _ in pieces] == list(range(len(TEXT_PIECES)))
    assert [data for _, data in pieces] == TEXT_PIECES
    assert len(after) > 1  # the cut was mid-way: the resume had chunks to send


def test_missing_starlette_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "unbroken.asgi")
    for name in ("starlette", "starlette.requests", "starlette.responses", "starlette.types"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"unbroken\[fastapi\]"):
        importlib.import_module("unbroken.asgi")


def test_the_ai_sdk_package_loads_starlette_only_for_its_responses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name.startswith(("unbroken.protocols", "unbroken.asgi")):
            monkeypatch.delitem(sys.modules, name)
    for name in ("starlette", "starlette.requests", "starlette.responses", "starlette.types"):
        monkeypatch.setitem(sys.modules, name, None)
    ai_sdk = importlib.import_module("unbroken.protocols.ai_sdk")
    assert ai_sdk.UIMessageStreamEncoder().keepalive() == ": keep-alive\n\n"
    assert "UIMessageStreamResponse" in dir(ai_sdk)
    for name in ("UIMessageStreamResponse", "DataStreamResponse", "append_message_response"):
        with pytest.raises(MissingDependencyError, match=r"unbroken\[fastapi\]"):
            getattr(ai_sdk, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        ai_sdk.no_such_name  # noqa: B018
