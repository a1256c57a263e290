"""The plain SSE encoder for text streams, snapshot-tested as readable frames."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from textwrap import dedent

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests._util import SseEvent, SseParser
from unbroken import Chunk, MemoryBackend, StreamEnd, StreamEngine, StreamState
from unbroken.asgi import SSEStreamResponse, resume_after
from unbroken.protocols import SSE_HEADERS, SSEEncoder, StreamEncoder

PIECES = ["Hello", ", world.", "\nA second line\nand a third,", " then the end.\n"]


def text_chunks(pieces: Sequence[str], *, start: int = 0) -> list[Chunk]:
    out, offset = [], sum(len(piece) for piece in pieces[:start])
    for seq, piece in enumerate(pieces[start:], start):
        out.append(Chunk(seq, piece, offset))
        offset += len(piece)
    return out


def done(pieces: Sequence[str]) -> StreamEnd:
    return StreamEnd(StreamState.DONE, None, len(pieces), sum(map(len, pieces)))


def frames(text: str) -> str:
    return dedent(text).lstrip("\n")


def parse(text: str) -> list[SseEvent]:
    """The events an ``EventSource`` would dispatch for ``text``."""
    parser = SseParser()
    events = (parser.feed(line) for line in text.split("\n"))
    return [event for event in events if event is not None]


def test_a_whole_stream_one_event_per_chunk_then_end() -> None:
    text = SSEEncoder().encode([*text_chunks(PIECES), done(PIECES)])
    assert text == frames(
        """
        id: 0
        data: Hello

        id: 1
        data: , world.

        id: 2
        data:
        data: A second line
        data: and a third,

        id: 3
        data:  then the end.
        data:

        event: end
        data: {"state":"done","error":null,"chunks":4}

        """
    )


def test_the_text_comes_back_exactly() -> None:
    pieces = [*PIECES, "  two leading spaces", "", "\n\n", "tab\there", "ünïcödé ✓", "data: x"]
    events = parse(SSEEncoder().encode([*text_chunks(pieces), done(pieces)]))
    assert [(event.id, event.data) for event in events[:-1]] == list(enumerate(pieces))


def test_a_cr_or_crlf_line_break_arrives_as_lf_and_starts_no_field() -> None:
    text = SSEEncoder().encode([Chunk(0, "one\r\ntwo\rid: 9\revent: end", 0)])
    assert text == "id: 0\ndata: one\ndata: two\ndata: id: 9\ndata: event: end\n\n"
    assert parse(text) == [SseEvent(0, "one\ntwo\nid: 9\nevent: end")]


def test_a_resume_after_last_event_id_sends_only_what_follows() -> None:
    encoder = SSEEncoder()
    encoder.seen(text_chunks(PIECES)[1])  # the one at Last-Event-ID: 1 writes nothing
    text = encoder.encode([*text_chunks(PIECES, start=2), done(PIECES)])
    assert text == frames(
        """
        id: 2
        data:
        data: A second line
        data: and a third,

        id: 3
        data:  then the end.
        data:

        event: end
        data: {"state":"done","error":null,"chunks":4}

        """
    )


@pytest.mark.parametrize(
    ("state", "error", "data"),
    [
        (StreamState.ERROR, "the model failed", '{"state":"error","error":"the model failed"'),
        (StreamState.CANCELLED, None, '{"state":"cancelled","error":null'),
        (StreamState.INTERRUPTED, "lost", '{"state":"interrupted","error":"lost"'),
    ],
)
def test_the_end_event_says_how_the_stream_ended(
    state: StreamState, error: str | None, data: str
) -> None:
    encoder = SSEEncoder()
    text = encoder.encode([Chunk(0, "Hi", 0), StreamEnd(state, error, 1, 2)])
    assert text == f'id: 0\ndata: Hi\n\nevent: end\ndata: {data},"chunks":1}}\n\n'
    assert encoder.finished


def test_fail_is_an_error_event_and_ends_the_stream() -> None:
    encoder = SSEEncoder()
    assert encoder.fail("the stream is no longer available") == (
        'event: failure\ndata: {"message":"the stream is no longer available"}\n\n'
    )
    assert encoder.finished
    with pytest.raises(RuntimeError, match="already wrote the end"):
        encoder.encode([Chunk(0, "late", 0)])


def test_nothing_after_the_end() -> None:
    encoder = SSEEncoder()
    with pytest.raises(RuntimeError, match="already wrote the end"):
        encoder.encode([done([]), Chunk(0, "late", 0)])
    with pytest.raises(RuntimeError, match="already wrote the end"):
        encoder.fail("x")


def test_keepalive_headers_and_contract() -> None:
    encoder = SSEEncoder()
    assert isinstance(encoder, StreamEncoder)
    assert encoder.keepalive() == ": keep-alive\n\n"
    assert parse(encoder.keepalive()) == []
    assert encoder.encode([]) == ""
    assert not encoder.finished
    assert (
        encoder.headers
        == SSE_HEADERS
        == {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
    )


# -- through the response: a finished text stream, whole and resumed ----------------------


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async def pieces() -> AsyncIterator[str]:
        for piece in PIECES:
            yield piece

    async with StreamEngine(MemoryBackend()) as engine:
        await engine.start("t1", pieces())
        await engine.wait("t1")

        async def read(request: Request) -> Response:
            return SSEStreamResponse(engine, "t1", after=resume_after(request))

        transport = httpx.ASGITransport(app=Starlette(routes=[Route("/t1", read)]))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.mark.anyio
async def test_response_replays_the_stream_and_resumes_after_last_event_id(
    http: httpx.AsyncClient,
) -> None:
    whole = await http.get("/t1")
    assert whole.status_code == 200
    assert {k: whole.headers[k] for k in SSE_HEADERS} == SSE_HEADERS
    assert whole.text == SSEEncoder().encode([*text_chunks(PIECES), done(PIECES)])
    resumed = await http.get("/t1", headers={"Last-Event-ID": "1"})
    assert resumed.text == frames(
        """
        id: 2
        data:
        data: A second line
        data: and a third,

        id: 3
        data:  then the end.
        data:

        event: end
        data: {"state":"done","error":null,"chunks":4}

        """
    )
    last = await http.get("/t1", headers={"Last-Event-ID": "3"})
    assert last.text == 'event: end\ndata: {"state":"done","error":null,"chunks":4}\n\n'
