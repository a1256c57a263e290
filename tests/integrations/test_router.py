"""`unbroken.fastapi.ResumableChat` on the memory backend, over a real uvicorn server: post,
cut, resume (v5 and v4), a second message, stop, on_finish, owners, and bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from tests._util import uid
from tests.chat._client import post_v5, read_v5, resume_v5, v4_body, v5_body
from tests.integrations._app import TEXT, create_app
from tests.integrations.conftest import serve
from unbroken import MemoryBackend
from unbroken.fastapi import ChatTurn, ResumableChat

pytestmark = pytest.mark.anyio

WATCHDOG = 20.0


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(create_app(MemoryBackend(), delay=0.01)) as base:
        yield base


@pytest.fixture
async def client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(20.0)) as http:
        yield http


async def finished_of(client: httpx.AsyncClient, chat_id: str, count: int = 1) -> list[Any]:
    """What on_finish received for ``chat_id`` (waits until ``count`` answers ended)."""
    with anyio.fail_after(WATCHDOG):
        while True:
            found = [f for f in (await client.get("/finished")).json() if f["chatId"] == chat_id]
            if len(found) >= count:
                return found
            await anyio.sleep(0.02)


async def read_v4(
    client: httpx.AsyncClient, method: str, path: str, *, stop_after: int | None = None, **kw: Any
) -> list[tuple[str, Any]]:
    """The v4 data stream lines ``(code, value)`` of one request (hanging up after
    ``stop_after`` lines)."""
    lines: list[tuple[str, Any]] = []
    async with client.stream(method, path, **kw) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line:
                code, _, payload = line.partition(":")
                lines.append((code, json.loads(payload)))
                if stop_after is not None and len(lines) >= stop_after:
                    break
    return lines


def v4_text(lines: list[tuple[str, Any]]) -> str:
    return "".join(value for code, value in lines if code == "0")


async def test_cut_then_resume_gets_the_rest_exactly_once(client: httpx.AsyncClient) -> None:
    chat_id = uid()
    with anyio.fail_after(WATCHDOG):
        cut = await post_v5(client, v5_body(chat_id, "u1", "hello"), stop_after=8)
        assert cut.status == 200 and cut.last_id is not None
        rest = await resume_v5(client, chat_id, last_event_id=cut.last_id)
        assert rest.done
        assert rest.types()[0] != "start"  # nothing the client has is sent again
        assert cut.text() + rest.text() == TEXT
        replay = await resume_v5(client, chat_id)  # from scratch: the whole answer
    assert replay.message_id == cut.message_id
    assert replay.text() == TEXT
    assert replay.types()[-1] == "finish"
    (finished,) = await finished_of(client, chat_id)
    assert finished["state"] == "done" and finished["hasTurn"]
    assert finished["message"]["id"] == cut.message_id
    assert finished["message"]["parts"][-1]["text"] == TEXT


async def test_v4_resume_then_append_message_after_the_end(client: httpx.AsyncClient) -> None:
    chat_id = uid()
    with anyio.fail_after(WATCHDOG):
        body = v4_body(chat_id, "u1", "hello")
        cut = await read_v4(client, "POST", "/api/chat", json=body, stop_after=6)
        assert 0 < len(v4_text(cut)) < len(TEXT)
        resume = {"params": {"chatId": chat_id}}
        resumed = await read_v4(client, "GET", "/api/chat", **resume)  # from the start
        assert v4_text(resumed) == TEXT
        assert resumed[-1][0] == "d"
        await finished_of(client, chat_id)
        after = await read_v4(client, "GET", "/api/chat", **resume)
    ((code, parts),) = after
    assert code == "2" and parts[0]["type"] == "append-message"
    assert '"content":"' + TEXT in parts[0]["message"]


async def test_a_second_message_gets_a_new_stream(client: httpx.AsyncClient) -> None:
    chat_id = uid()
    streams = []
    with anyio.fail_after(WATCHDOG):
        for number in (1, 2):
            body = v5_body(chat_id, f"u{number}", f"message {number}")
            async with client.stream("POST", "/api/chat", json=body) as response:
                streams.append(response.headers["x-unbroken-stream-id"])
                read = await read_v5(response)
            assert read.done and read.text() == TEXT
    assert streams[0] != streams[1]
    first, second = await finished_of(client, chat_id, 2)
    assert (first["streamId"], second["streamId"]) == tuple(streams)


async def test_the_same_message_again_attaches_to_its_running_answer(
    client: httpx.AsyncClient,
) -> None:
    chat_id = uid()
    body = v5_body(chat_id, "u1", "hello")
    with anyio.fail_after(WATCHDOG):
        async with client.stream("POST", "/api/chat", json=body) as first:
            await read_v5(first, stop_after=3)
            async with client.stream("POST", "/api/chat", json=body) as again:
                assert (
                    again.headers["x-unbroken-stream-id"] == (first.headers["x-unbroken-stream-id"])
                )
                assert (await read_v5(again)).text() == TEXT
    assert len(await finished_of(client, chat_id)) == 1


async def test_a_new_message_while_an_answer_runs_stops_that_answer(
    client: httpx.AsyncClient,
) -> None:
    chat_id = uid()
    with anyio.fail_after(WATCHDOG):
        cut = await post_v5(client, v5_body(chat_id, "u1", "first"), stop_after=5)
        second = await post_v5(client, v5_body(chat_id, "u2", "second"))
    assert cut.status == 200 and second.text() == TEXT
    first, last = await finished_of(client, chat_id, 2)
    assert first["state"] == "cancelled" and last["state"] == "done"


async def test_stop_cancels_the_answer_and_on_finish_sees_it(client: httpx.AsyncClient) -> None:
    chat_id = uid()
    body = v5_body(chat_id, "u1", "hello")
    with anyio.fail_after(WATCHDOG):
        async with client.stream("POST", "/api/chat", json=body) as response:
            stream_id = response.headers["x-unbroken-stream-id"]
            await read_v5(response, stop_after=5)
            stale = await client.post(f"/api/chat/{chat_id}/stop", json={"streamId": "s-older"})
            assert stale.json()["stopped"] is False
            stop = await client.post(f"/api/chat/{chat_id}/stop", json={"streamId": stream_id})
            rest = await read_v5(response)
        again = await client.post(f"/api/chat/{chat_id}/stop")
    assert stop.status_code == 200
    assert stop.json() == {
        "chatId": chat_id,
        "stopped": True,
        "streamId": stream_id,
        "state": "cancelled",
    }
    assert again.json()["state"] == "cancelled"  # idempotent
    assert rest.types()[-1] == "abort" and rest.done
    (finished,) = await finished_of(client, chat_id)
    assert finished["state"] == "cancelled"
    assert TEXT.startswith(finished["message"]["parts"][-1]["text"])


class SlowClaims(MemoryBackend):
    """The memory backend, with each claim landing ``delay`` seconds late: the moment
    between a chat's pointer being set and its answer's stream existing, made wide."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def claim(self, stream_id: str, **kwargs: Any) -> bool:
        await anyio.sleep(self.delay)
        return await super().claim(stream_id, **kwargs)


async def test_a_stop_right_after_the_post_stops_the_answer() -> None:
    """A stop that comes before the answer's stream is claimed waits for the claim."""
    chat_id = uid()
    with serve(create_app(SlowClaims(0.3), delay=0.05)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(20.0)) as http:
            with anyio.fail_after(WATCHDOG):
                async with anyio.create_task_group() as posting:
                    body = v5_body(chat_id, "u1", "hi")
                    posting.start_soon(partial(http.post, "/api/chat", json=body))
                    await anyio.sleep(0.1)  # the pointer is set, the claim is not
                    stop = await http.post(f"/api/chat/{chat_id}/stop")
            (finished,) = await finished_of(http, chat_id)
    assert stop.json()["stopped"] is True and stop.json()["state"] == "cancelled"
    assert finished["state"] == "cancelled"


async def test_nothing_to_resume(client: httpx.AsyncClient) -> None:
    new = uid()
    assert (await client.get(f"/api/chat/{new}/stream")).status_code == 204
    idle = await client.get("/api/chat", params={"chatId": new})
    assert idle.status_code == 200 and idle.content == b""
    stop = await client.post(f"/api/chat/{new}/stop")
    assert stop.status_code == 404


async def test_an_answer_that_fails_ends_in_error_with_a_safe_message(
    client: httpx.AsyncClient,
) -> None:
    tired, crashed = uid(), uid()
    with anyio.fail_after(WATCHDOG):
        failed = await post_v5(client, v5_body(tired, "u1", "please fail"))
        hidden = await post_v5(client, v5_body(crashed, "u1", "please crash"))
    assert failed.events[-1] == {"type": "error", "errorText": "the model is tired"}
    assert hidden.events[-1]["type"] == "error"
    assert "secret" not in hidden.events[-1]["errorText"]
    assert (await finished_of(client, tired))[0]["state"] == "error"
    assert (await finished_of(client, crashed))[0]["error"] == hidden.events[-1]["errorText"]


async def test_another_owners_chat_looks_missing_on_every_route(
    client: httpx.AsyncClient,
) -> None:
    chat_id, missing = uid(), uid()
    alice, bob = {"x-user": "alice"}, {"x-user": "bob"}
    with anyio.fail_after(WATCHDOG):
        async with client.stream(
            "POST", "/api/chat", json=v5_body(chat_id, "u1", "hello"), headers=alice
        ) as response:
            await read_v5(response, stop_after=3)
            post = await client.post("/api/chat", json=v5_body(chat_id, "u9", "x"), headers=bob)
            not_found = {"error": {"code": "not_found", "message": "chat not found"}}
            assert (post.status_code, post.json()) == (404, not_found)
            for target in (chat_id, missing):
                stop = await client.post(f"/api/chat/{target}/stop", headers=bob)
                assert (stop.status_code, stop.json()) == (404, not_found)
                v5 = await client.get(f"/api/chat/{target}/stream", headers=bob)
                assert (v5.status_code, v5.content) == (204, b"")
                v4 = await client.get("/api/chat", params={"chatId": target}, headers=bob)
                assert (v4.status_code, v4.content) == (200, b"")
            # No owner at all is nobody's chat either.
            assert (await client.post(f"/api/chat/{chat_id}/stop")).status_code == 404
            await read_v5(response)
    (finished,) = await finished_of(client, chat_id)
    assert finished["owner"] == "alice" and finished["state"] == "done"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/api/chat", {"content": b"{"}, 400),
        ("POST", "/api/chat", {"content": b""}, 400),
        ("POST", "/api/chat", {"content": b"[1, 2]"}, 400),
        ("POST", "/api/chat", {"json": {"id": "bad id!", "messages": []}}, 400),
        ("POST", "/api/chat", {"json": {"id": "c1", "trigger": "submit-message"}}, 400),
        ("POST", "/api/chat", {"json": {"id": "c1", "trigger": "nope", "messages": []}}, 400),
        (
            "POST",
            "/api/chat",
            {"json": {"id": "c1", "trigger": "submit-message", "messages": []}},
            400,
        ),
        ("POST", "/api/chat", {"json": {"id": "c1", "messages": [{"role": "user"}]}}, 400),
        ("POST", "/api/chat", {"content": b"[" * 100_000}, 400),
        ("POST", "/api/chat", {"content": b" " * (4 * 1024 * 1024 + 1)}, 413),
        ("POST", "/api/chat?target=abc", {"json": v5_body("c1", "u1", "hi")}, 400),
        ("GET", "/api/chat/c1/stream", {"headers": {"Last-Event-ID": "x"}}, 400),
        ("GET", "/api/chat/c1/stream", {"headers": {"Last-Event-ID": "-2"}}, 400),
        ("GET", "/api/chat/c1/stream?after=1.5", {}, 400),
        ("GET", "/api/chat/bad%20id/stream", {}, 400),
        ("GET", "/api/chat", {}, 400),
        ("GET", "/api/chat?chatId=bad%7Bid", {}, 400),
        ("POST", "/api/chat/c1/stop", {"content": b"{"}, 400),
        ("POST", "/api/chat/c1/stop", {"json": [1]}, 400),
        ("POST", "/api/chat/c1/stop", {"json": {"streamId": 7}}, 400),
    ],
)
async def test_bad_input_is_a_json_4xx(
    client: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"code", "message"}


async def test_a_chat_that_is_not_running_answers_503() -> None:
    async def answer(turn: ChatTurn) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "finish"}

    chat = ResumableChat(answer)
    app = FastAPI()  # the lifespan is missing
    app.include_router(chat.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post("/api/chat", json=v5_body("c1", "u1", "hi"))
    assert response.status_code == 503
    assert "chat.lifespan" in response.json()["error"]["message"]


async def test_running_inside_the_apps_own_lifespan() -> None:
    async def answer(turn: ChatTurn) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "text-start", "id": "t"}
        yield {"type": "text-delta", "id": "t", "delta": f"hi {turn.owner}"}
        yield {"type": "text-end", "id": "t"}

    chat = ResumableChat(answer, owner=lambda: "me", prefix="/v1/")
    async with chat.running():
        app = FastAPI()
        app.include_router(chat.router)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            read = await post_v5(http, v5_body("c1", "u1", "hi"))  # /api is not served
            assert read.status == 404
            async with http.stream("POST", "/v1/chat", json=v5_body("c1", "u1", "hi")) as resp:
                read = await read_v5(resp)
    assert read.text() == "hi me"
    assert read.types() == ["start", "text-start", "text-delta", "text-end", "finish"]
