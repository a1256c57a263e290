"""The seed's cases end to end, for v4 and v5+ clients, on the memory backend with SQLite
and on Redis with PostgreSQL: refresh at random points, resume right after the end and much
later, another user's chat, no stream, stop from a second connection, two workers."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from tests._util import uid
from tests.chat._client import (
    expected_answer,
    new_client,
    post_v4,
    post_v5,
    resume_v4,
    resume_v5,
    v4_body,
    v5_body,
)
from tests.chat.conftest import Server
from unbroken import StreamState
from unbroken.chat.settings import Settings
from unbroken.chat.store import Started, StreamRecord

pytestmark = pytest.mark.anyio

# For tests whose second request must reach a running answer: ~4 s of answer leaves ample
# margin on a loaded machine, and these tests end the answer early anyway (stop, supersede)
# or take only its first part.
SLOW_TPS = 100.0


async def settled_chat(client: httpx.AsyncClient, chat_id: str) -> dict[str, Any]:
    """The chat once no answer is being generated (its answer stored)."""
    with anyio.fail_after(15):
        while True:
            response = await client.get(f"/api/chats/{chat_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["activeStream"] is None:
                return body
            await anyio.sleep(0.02)


def stored_text(message: dict[str, Any], kind: str = "text") -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == kind)


async def test_v5_refresh_at_random_points_gives_the_answer_exactly_once(server: Server) -> None:
    rng = random.Random(20250101)
    async with new_client(server.url) as client:
        for round_ in range(3):
            chat_id, prompt = uid(), f"round {round_}: what survives a refresh?"
            reasoning, text = expected_answer(prompt)
            first = await post_v5(
                client, v5_body(chat_id, uid("m"), prompt), stop_after=rng.randint(1, 200)
            )
            assert first.status == 200 and first.message_id is not None
            # What the page does after a refresh: load the chat, then resume (full replay).
            page = (await client.get(f"/api/chats/{chat_id}")).json()
            assert page["messages"][0]["role"] == "user"
            partial = await resume_v5(client, chat_id, stop_after=rng.randint(1, 100))
            assert partial.status == 200
            assert partial.message_id == first.message_id
            full = await resume_v5(client, chat_id)
            assert full.status == 200 and full.done
            assert full.message_id == first.message_id  # the client replaces, never appends
            assert full.text() == text
            assert full.text("reasoning") == reasoning
            assert full.types()[0] == "start" and full.types()[-1] == "finish"
            chat = await settled_chat(client, chat_id)
            assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
            answer = chat["messages"][1]
            assert answer["id"] == first.message_id and answer["status"] == "done"
            assert stored_text(answer) == text and stored_text(answer, "reasoning") == reasoning


async def test_v5_resume_with_last_event_id_sends_only_what_was_missed(server: Server) -> None:
    rng = random.Random(7)
    async with new_client(server.url) as client:
        for _ in range(3):
            chat_id, prompt = uid(), f"tell me about offsets {rng.random()}"
            _, text = expected_answer(prompt)
            got = await post_v5(
                client, v5_body(chat_id, uid("m"), prompt), stop_after=rng.randint(5, 150)
            )
            pieces, seen = [got], got
            while not seen.done:
                assert seen.last_id is not None
                # Alternate the two ways of saying where the client is.
                where = (
                    {"last_event_id": seen.last_id} if len(pieces) % 2 else {"after": seen.last_id}
                )
                seen = await resume_v5(client, chat_id, stop_after=rng.randint(1, 120), **where)
                assert seen.status == 200
                pieces.append(seen)
            assert "".join(p.text() for p in pieces) == text
            ids = [i for p in pieces for i in p.ids if i is not None]
            assert ids == sorted(set(ids))  # strictly increasing: nothing twice


async def test_v4_refresh_gives_the_answer_exactly_once(server: Server) -> None:
    rng = random.Random(4)
    async with new_client(server.url) as client:
        for _ in range(2):
            chat_id, prompt = uid(), f"v4 question {rng.random()}"
            reasoning, text = expected_answer(prompt)
            first = await post_v4(
                client, v4_body(chat_id, uid("m"), prompt), stop_after=rng.randint(1, 150)
            )
            assert first.status == 200
            assert first.lines[0][0] == "f"
            resumed = await resume_v4(client, chat_id)
            assert resumed.status == 200
            if resumed.codes() and resumed.codes()[0] == "2":
                # Finished and stored in between: the seed's append-message fallback.
                message = resumed.lines[0][1][0]
                assert message["type"] == "append-message"
            else:
                assert resumed.text() == text and resumed.reasoning() == reasoning
                assert resumed.codes()[-1] == "d"
                assert resumed.lines[0] == first.lines[0]  # same messageId in f:


async def test_resume_right_after_the_end(server: Server) -> None:
    async with new_client(server.url) as client:
        chat_id, prompt = uid(), "resume right after the end"
        _, text = expected_answer(prompt)
        first = await post_v5(client, v5_body(chat_id, uid("m"), prompt))
        assert first.done and first.text() == text
        again = await resume_v5(client, chat_id)
        assert again.status == 200 and again.done
        assert again.message_id == first.message_id and again.text() == text

        v4_chat = uid()
        v4_first = await post_v4(client, v4_body(v4_chat, uid("m"), prompt))
        assert v4_first.text() == text
        v4_again = await resume_v4(client, v4_chat)
        assert v4_again.status == 200
        if v4_again.codes()[0] == "2":
            [item] = v4_again.lines[0][1]
            assert item["type"] == "append-message"
            import json

            message = json.loads(item["message"])
            assert message["role"] == "assistant" and message["content"] == text
        else:
            assert v4_again.text() == text
        # Once stored, the v4 resume is the append-message fallback.
        await settled_chat(client, v4_chat)
        stored = await resume_v4(client, v4_chat)
        assert stored.codes() == ["2"]


async def test_resume_much_later(start_server: Callable[..., Server]) -> None:
    server = start_server(resume_window=0.3)
    async with new_client(server.url) as client:
        v5_chat, v4_chat = uid(), uid()
        await post_v5(client, v5_body(v5_chat, uid("m"), "later"))
        await post_v4(client, v4_body(v4_chat, uid("m"), "later"))
        await settled_chat(client, v5_chat)
        await settled_chat(client, v4_chat)
        await anyio.sleep(0.4)
        response = await client.get(f"/api/chat/{v5_chat}/stream")
        assert response.status_code == 204 and response.content == b""
        response = await client.get("/api/chat", params={"chatId": v4_chat})
        assert response.status_code == 200 and response.content == b""
        assert response.headers["x-vercel-ai-data-stream"] == "v1"


async def test_another_users_chat_is_answered_like_a_missing_one(server: Server) -> None:
    async with new_client(server.url) as owner, new_client(server.url) as other:
        chat_id = uid()
        got = await post_v5(owner, v5_body(chat_id, uid("m"), "mine"), stop_after=3)
        assert got.status == 200
        missing = uid()
        for method, path, params in [
            ("GET", "/api/chats/{}", None),
            ("DELETE", "/api/chats/{}", None),
            ("GET", "/api/chat/{}/stream", None),
            ("POST", "/api/chat/{}/stop", None),
            ("GET", "/api/chat", "chatId"),
        ]:
            answers = []
            for target in (chat_id, missing):
                url = path.format(target)
                query = {params: target} if params else None
                response = await other.request(method, url, params=query)
                answers.append((response.status_code, response.json()))
            assert answers[0] == answers[1], (method, path)
            assert answers[0][0] == 404
        # Posting into someone else's chat id does not reach it either.
        response = await other.post("/api/chat", json=v5_body(chat_id, uid("m"), "hijack"))
        assert response.status_code == 404
        assert (await other.get("/api/chats")).json() == {"chats": [], "nextCursor": None}
        # ... and the owner's answer is untouched.
        chat = await settled_chat(owner, chat_id)
        assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
        assert chat["messages"][1]["status"] == "done"


async def test_no_stream_is_404_for_v4_and_204_for_v5(server: Server) -> None:
    from unbroken.chat.store import Store

    async with Store.from_url(server.settings.database_url) as store:
        user = await store.create_user(kind="user", name="tester")
        key, _ = await store.create_api_key(user.id)
        # A chat whose only answer could not be started: it has no stream at all.
        begun = await store.start_answer(uid(), user.id, title="empty", message_id="m1", parts=[])
        assert isinstance(begun, Started)
        await store.abandon_generation(begun.record)
        chat = await store.get_chat(begun.record.chat_id, user.id)
        assert chat is not None and chat.active_stream_id is None
    headers = {"Authorization": f"Bearer {key}"}
    async with new_client(server.url, headers=headers) as client:
        response = await client.get("/api/chat", params={"chatId": chat.id})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        response = await client.get(f"/api/chat/{chat.id}/stream")
        assert response.status_code == 204
        response = await client.get("/api/chat", params={"chatId": uid()})
        assert response.status_code == 404
        response = await client.get("/api/chat")
        assert response.status_code == 400


async def test_stop_from_a_second_connection(start_server: Callable[..., Server]) -> None:
    server = start_server(demo_tokens_per_second=SLOW_TPS)
    async with new_client(server.url) as client, new_client(server.url) as second_tab:
        chat_id, prompt = uid(), "stop me halfway"
        _, text = expected_answer(prompt)
        async with client.stream(
            "POST", "/api/chat", json=v5_body(chat_id, uid("m"), prompt)
        ) as response:
            from tests.chat._client import read_v5

            head = await read_v5(response, stop_after=80)
            second_tab.cookies = client.cookies  # the same browser, another tab
            # The first reader keeps reading while the second connection stops the answer.
            stop = await second_tab.post(f"/api/chat/{chat_id}/stop")
            assert stop.status_code == 200, stop.text
            assert stop.json()["stopped"] is True and stop.json()["state"] == "cancelled"
            rest = await read_v5(response)
        assert rest.done and rest.types()[-1] == "abort"
        seen = head.text() + rest.text()
        assert seen and text.startswith(seen) and seen != text
        chat = await settled_chat(client, chat_id)
        answer = chat["messages"][-1]
        assert answer["role"] == "assistant" and answer["status"] == "stopped"
        assert stored_text(answer) == seen  # what was stored is exactly what was shown
        assert chat["activeStreamId"] is None
        # Idempotent: a second stop changes nothing.
        again = await second_tab.post(f"/api/chat/{chat_id}/stop")
        assert again.status_code == 200 and again.json()["stopped"] is False
        # A resume now replays the stopped answer (it just ended) and ends with abort.
        replay = await resume_v5(client, chat_id)
        assert replay.text() == seen and replay.types()[-1] == "abort"


async def test_stop_a_v4_answer(start_server: Callable[..., Server]) -> None:
    server = start_server(demo_tokens_per_second=SLOW_TPS)
    async with new_client(server.url) as client:
        chat_id = uid()
        async with client.stream(
            "POST", "/api/chat", json=v4_body(chat_id, uid("m"), "x")
        ) as response:
            from tests.chat._client import read_v4

            await read_v4(response, stop_after=30)
            async with new_client(server.url, cookies=client.cookies) as other_tab:
                stop = await other_tab.post(f"/api/chat/{chat_id}/stop")
            assert stop.json()["stopped"] is True
            rest = await read_v4(response)
        assert rest.codes()[-1] == "d"  # v4 has no abort: the message just finishes
        chat = await settled_chat(client, chat_id)
        assert chat["messages"][-1]["status"] == "stopped"


async def test_the_answer_is_stored_when_nobody_listens(server: Server) -> None:
    async with new_client(server.url) as client:
        chat_id, prompt = uid(), "nobody is listening"
        reasoning, text = expected_answer(prompt)
        await post_v5(client, v5_body(chat_id, uid("m"), prompt), stop_after=1)
        chat = await settled_chat(client, chat_id)
        answer = chat["messages"][-1]
        assert answer["status"] == "done"
        assert stored_text(answer) == text and stored_text(answer, "reasoning") == reasoning


async def test_a_repeated_post_attaches_to_the_running_answer(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(demo_tokens_per_second=SLOW_TPS)
    async with new_client(server.url) as client:
        chat_id, message_id, prompt = uid(), uid("m"), "ask twice"
        _, text = expected_answer(prompt)
        body = v5_body(chat_id, message_id, prompt)
        first = await post_v5(client, body, stop_after=20)
        second = await post_v5(client, body, stop_after=40)  # a client retry
        assert second.message_id == first.message_id
        assert text.startswith(second.text()) and second.text().startswith(first.text())
        await client.post(f"/api/chat/{chat_id}/stop")
        chat = await settled_chat(client, chat_id)
        assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
        metrics = (await client.get("/metrics")).text
        assert 'unbroken_chat_streams_started_total{protocol="v5"} 1.0' in metrics
        assert "unbroken_chat_attaches_total 1.0" in metrics


async def test_a_new_message_supersedes_the_running_answer(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(demo_tokens_per_second=SLOW_TPS)
    async with new_client(server.url) as client:
        chat_id = uid()
        await post_v5(client, v5_body(chat_id, "m1", "first question"), stop_after=10)
        _, text = expected_answer("second question")
        second = await post_v5(client, v5_body(chat_id, "m2", "second question"), stop_after=20)
        assert text.startswith(second.text())
        await client.post(f"/api/chat/{chat_id}/stop")
        chat = await settled_chat(client, chat_id)
        roles = [(m["role"], m["status"]) for m in chat["messages"]]
        assert roles == [
            ("user", "done"),
            ("assistant", "stopped"),
            ("user", "done"),
            ("assistant", "stopped"),
        ]
        assert chat["messages"][3]["id"] == second.message_id


@pytest.mark.parametrize("placement", ["stream", "worker"])
@pytest.mark.parametrize("chat_config", ["redis-postgres"])  # workers share through Redis
async def test_two_workers_share_streams(
    start_server: Callable[..., Server], placement: str
) -> None:
    # ~1.8 s answers: stoppable, quick. Placed by worker, each worker's streams form a group
    # of their own, and the other worker reads and stops them all the same.
    one = start_server(demo_tokens_per_second=250, redis_placement=placement)
    two = start_server(demo_tokens_per_second=250, redis_placement=placement)
    async with new_client(one.url) as on_one, new_client(two.url) as on_two:
        chat_id, prompt = uid(), "two workers"
        _, text = expected_answer(prompt)
        first = await post_v5(on_one, v5_body(chat_id, uid("m"), prompt), stop_after=30)
        on_two.cookies = on_one.cookies  # the same browser, load-balanced to worker two
        resumed = await resume_v5(on_two, chat_id)
        assert resumed.done and resumed.message_id == first.message_id
        assert resumed.text() == text
        v4 = await resume_v4(on_two, chat_id)
        assert v4.status == 200

        # Stop on worker two an answer generated on worker one.
        chat_id = uid()
        async with on_one.stream("POST", "/api/chat", json=v5_body(chat_id, uid("m"), "stop")) as r:
            from tests.chat._client import read_v5

            head = await read_v5(r, stop_after=40)
            stop = await on_two.post(f"/api/chat/{chat_id}/stop")
            assert stop.json()["stopped"] is True
            rest = await read_v5(r)
        assert rest.types()[-1] == "abort"
        chat = await settled_chat(on_two, chat_id)
        assert chat["messages"][-1]["status"] == "stopped"
        assert stored_text(chat["messages"][-1]) == head.text() + rest.text()
    # The streams' keys: grouped under worker one's group, or each under its own id.
    import redis.asyncio as aioredis

    settings = one.settings
    assert settings.redis_url is not None
    async with aioredis.from_url(settings.redis_url) as raw:
        metas = [k async for k in raw.scan_iter(match=f"{{{settings.redis_key_prefix}:*:meta")]
    assert len(metas) == 2
    grouped = [key.decode().split("}", 1)[1].startswith("/s_") for key in metas]
    assert grouped == [placement == "worker"] * 2


async def test_a_worker_names_its_streams_after_its_group(tmp_path: Any) -> None:
    async with (
        _in_process_app(tmp_path, redis_placement="worker", drain_timeout=0.1) as app,
        _in_process_app(tmp_path, redis_placement="worker", drain_timeout=0.1) as other,
    ):
        services = app.state.services
        group = services.answers.stream_group
        assert group and group != other.state.services.answers.stream_group
        record = await _begin_answer(services)
        assert record.id.startswith(f"{group}/s_")
        async with services.engine.open(record.id) as reader:
            assert reader.state is StreamState.ACTIVE
    async with _in_process_app(tmp_path, drain_timeout=0.1) as app:  # each stream its own
        assert app.state.services.answers.stream_group is None
        assert "/" not in (await _begin_answer(app.state.services)).id


async def _begin_answer(services: Any) -> StreamRecord:
    """Start an answer to "hi" in a new chat as the POST route does (`Answers.begin`)."""
    message = {"id": uid("m"), "role": "user", "parts": [{"type": "text", "text": "hi"}]}
    record, attached = await services.answers.begin(
        uid(), uid("u"), message, trigger="submit-message", guest=True
    )
    assert not attached
    return record


async def test_shutdown_stores_the_answers_it_interrupts(
    make_settings: Callable[..., Settings],
) -> None:
    from sqlalchemy import select

    from tests.chat.conftest import serve
    from unbroken.chat.store import Store
    from unbroken.chat.store.tables import chats

    settings = make_settings(demo_tokens_per_second=SLOW_TPS, drain_timeout=0.2)
    chat_id = uid()
    with serve(settings) as server:
        async with new_client(server.url) as client:
            head = await post_v5(client, v5_body(chat_id, "m1", "shut down now"), stop_after=30)
    # The server is gone: the answer it was generating was stored, as interrupted.
    async with Store.from_url(settings.database_url) as store:
        user, answer = await store.list_messages(chat_id)
        async with store.engine.connect() as connection:
            active = await connection.scalar(
                select(chats.c.active_stream_id).where(chats.c.id == chat_id)
            )
    assert user.role == "user" and answer.role == "assistant"
    assert answer.status == "interrupted" and answer.error
    assert stored_text(answer.to_ui_message()).startswith(head.text())
    assert active is None


@asynccontextmanager
async def _in_process_app(tmp_path: Any, **settings: Any) -> AsyncIterator[Any]:
    """The chat service as `create_app` builds it, started in this process (SQLite in
    ``tmp_path``, no sweeper), for tests that look inside it."""
    from unbroken.chat.app import create_app

    app = create_app(
        Settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", sweep_interval=0, **settings
        )
    )
    async with app.router.lifespan_context(app):
        yield app


async def _start_answer(services: Any, chat_id: str, owner: str) -> StreamRecord:
    """Start an answer to "hi" in ``owner``'s new chat ``chat_id``, as the POST route does,
    without a client reading it."""
    begun = await services.store.start_answer(
        chat_id, owner, title="t", message_id="u1", parts=[{"type": "text", "text": "hi"}]
    )
    assert isinstance(begun, Started)
    history = [m.to_ui_message() for m in begun.history]
    await services.answers.start(begun.record, history, owner=owner)
    return begun.record


def _record_sql(store: Any) -> list[str]:
    """Every SQL statement ``store`` runs from now on, in order."""
    from sqlalchemy import event

    statements: list[str] = []
    event.listen(
        store.sql_engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: statements.append(statement),
    )
    return statements


async def test_the_sweep_skips_answers_produced_here_without_a_query(tmp_path: Any) -> None:
    """The sweeper looks for answers whose producer died; an answer this process is
    producing is alive, so it costs the sweep nothing but the listing query."""
    # 5 tokens/s: still running while the test looks
    async with _in_process_app(tmp_path, demo_tokens_per_second=5.0, lease_ttl=0.3) as app:
        services = app.state.services
        store = services.store
        user = await store.create_user()
        record = await _start_answer(services, "c_sweep", user.id)
        await anyio.sleep(1.2)  # older than the sweep's grace (1 s at least)
        listed = await store.chats_with_active_stream(older_than=1.0, limit=10)
        assert [c.id for c in listed] == [record.chat_id]  # the sweep will look at it
        statements = _record_sql(store)
        assert await services.answers.sweep() == 0
        assert len(statements) == 1 and "active_stream_id" in statements[0]  # the listing
        await services.engine.cancel(record.id)


async def _first_bytes(
    app: Any, path: str, api_key: str | None, query: bytes = b"", *, cookie: str | None = None
) -> tuple[int, bytes]:
    """GET ``path`` on ``app`` in process, with ``api_key`` (or the session ``cookie``): its
    status and first body bytes, then the client leaves (a live answer's body never ends by
    itself)."""
    sent: list[dict[str, Any]] = []
    got_body = anyio.Event()
    credential = (
        (b"authorization", f"Bearer {api_key}".encode())
        if api_key is not None
        else (b"cookie", f"unbroken_session={cookie}".encode())
    )

    async def receive() -> dict[str, Any]:
        await got_body.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            got_body.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"host", b"test"), credential],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "state": {},
    }
    with anyio.fail_after(10):
        await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


async def _resumes_live(
    app: Any, record: StreamRecord, api_key: str | None, *, cookie: str | None = None
) -> None:
    """Resuming ``record``'s chat on ``app`` as ai 5+ and as ai 4.x both start its answer."""
    path = f"/api/chat/{record.chat_id}/stream"
    status, body = await _first_bytes(app, path, api_key, cookie=cookie)
    assert status == 200 and f'"messageId":"{record.message_id}"' in body.decode()
    v4_query = f"chatId={record.chat_id}".encode()
    status, body = await _first_bytes(app, "/api/chat", api_key, v4_query, cookie=cookie)
    assert status == 200 and f'f:{{"messageId":"{record.message_id}"}}' in body.decode()


async def test_a_live_answer_is_resumed_from_the_producing_process_without_sql(
    tmp_path: Any,
) -> None:
    """The worker that generates an answer knows its chat's active stream and owner, so the
    commonest resume (a refresh reaching that worker) asks the database nothing for a
    session cookie, and only the key's check for an API key (no process trusts a key it
    looked up before); another user still gets the missing chat's 404, and once the answer
    ends the database answers."""
    async with _in_process_app(tmp_path, demo_tokens_per_second=20.0) as app:
        services = app.state.services
        store = services.store
        owner, other = await store.create_user(), await store.create_user()
        owner_key, _ = await store.create_api_key(owner.id)
        other_key, _ = await store.create_api_key(other.id)
        record = await _start_answer(services, "c_live", owner.id)
        chat_id = record.chat_id
        path = f"/api/chat/{chat_id}/stream"
        for key in (owner_key, other_key):  # last_used_at fresh: no write follows a check
            await _first_bytes(app, "/api/chats", key)

        statements = _record_sql(store)
        await _resumes_live(app, record, None, cookie=services.sessions.sign(owner.id))
        assert statements == []
        await _resumes_live(app, record, owner_key)
        assert len(statements) == 2 and all("api_keys" in s for s in statements)
        v4_query = f"chatId={chat_id}".encode()
        assert (await _first_bytes(app, path, other_key))[0] == 404
        assert (await _first_bytes(app, "/api/chat", other_key, v4_query))[0] == 404
        other_cookie = services.sessions.sign(other.id)
        assert (await _first_bytes(app, path, None, cookie=other_cookie))[0] == 404

        await services.engine.cancel(record.id)
        await services.engine.wait(record.id)
        with anyio.fail_after(5):
            while services.engine.produces(record.id):  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.01)
        assert services.answers.producing(chat_id, owner.id) is None
        statements.clear()
        status, _ = await _first_bytes(app, path, owner_key)
        assert status in (200, 204) and statements  # from the database now


async def test_a_stop_on_the_producing_process_stores_the_answer_once(tmp_path: Any) -> None:
    """The producer's end callback stores a stopped answer anyway; a stop reaching the
    producing process waits for it instead of writing the same rows at the same moment
    (on SQLite, two writers per stop made bursts of stops queue on the write lock)."""
    async with _in_process_app(tmp_path, demo_tokens_per_second=20.0) as app:
        services = app.state.services
        store = services.store
        user = await store.create_user()
        key, _ = await store.create_api_key(user.id)
        record = await _start_answer(services, "c_stop", user.id)
        chat_id = record.chat_id
        await anyio.sleep(0.3)  # a few tokens in

        statements = _record_sql(store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(
                f"/api/chat/{chat_id}/stop", headers={"authorization": f"Bearer {key}"}
            )
        assert response.status_code == 200, response.text
        assert response.json()["stopped"] is True and response.json()["state"] == "cancelled"
        updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE MESSAGES")]
        assert len(updates) == 1, updates  # the end callback's, not the stop's as well
        answer = (await store.list_messages(chat_id))[-1]
        assert answer.role == "assistant" and answer.status == "stopped"
        assert stored_text(answer.to_ui_message(), "reasoning")  # what was generated
        assert (await store.get_chat(chat_id, user.id)).active_stream_id is None  # type: ignore[union-attr]


async def test_another_worker_resumes_a_live_answer_without_asking_its_status(
    tmp_path: Any, redis_url: str, key_prefix: str
) -> None:
    """A resume (v5 or v4) that reaches a worker not producing the answer finds the chat's
    stream in the database, then opens it: the reader's first look says it is live, so the
    route asks the backend no status of its own (a round trip fewer before the first byte).
    A stream not there yet (the POST's worker has not claimed it) takes the slow path, which
    waits for the claim as before."""
    from tests._services import delete_redis_keys

    shared = {"redis_url": redis_url, "redis_key_prefix": key_prefix, "lease_ttl": 1.0}
    try:
        async with (
            _in_process_app(tmp_path, demo_tokens_per_second=20.0, **shared) as one,
            _in_process_app(tmp_path, demo_tokens_per_second=20.0, **shared) as two,
        ):
            producer, other = one.state.services, two.state.services
            user = await producer.store.create_user()
            key, _ = await producer.store.create_api_key(user.id)
            asked: list[str] = []
            real_status = other.engine.status

            async def status(stream_id: str) -> Any:
                asked.append(stream_id)
                return await real_status(stream_id)

            other.engine.status = status
            record = await _start_answer(producer, "c_other", user.id)
            await _resumes_live(two, record, key)
            assert asked == []

            # Begun in the database, claimed in the backend a moment later.
            begun = await producer.store.start_answer(
                "c_late", user.id, title="t", message_id="u2", parts=[{"type": "text", "text": "x"}]
            )
            assert isinstance(begun, Started)
            history = [m.to_ui_message() for m in begun.history]

            async def claim_later() -> None:
                await anyio.sleep(0.3)
                await producer.answers.start(begun.record, history, owner=user.id)

            async with anyio.create_task_group() as claims:
                claims.start_soon(claim_later)
                code, body = await _first_bytes(two, "/api/chat/c_late/stream", key)
            assert code == 200 and f'"messageId":"{begun.record.message_id}"' in body.decode()
            assert begun.record.id in asked  # the slow path asked, and waited
            for stream_id in (record.id, begun.record.id):
                await producer.engine.cancel(stream_id)
    finally:
        await delete_redis_keys(redis_url, key_prefix)


async def _age_stream_record(store: Any, stream_id: str, seconds: float) -> None:
    """Make the stream's row ``seconds`` older (an answer begun that long ago)."""
    import datetime as dt

    from sqlalchemy import select, update

    from unbroken.chat.store.tables import streams

    async with store.engine.begin() as connection:
        created = (
            await connection.execute(select(streams.c.created_at).where(streams.c.id == stream_id))
        ).scalar_one()
        older = created - dt.timedelta(seconds=seconds)
        await connection.execute(
            update(streams).where(streams.c.id == stream_id).values(created_at=older)
        )


async def test_a_stream_the_backend_lost_is_not_stored_while_its_producer_lives(
    tmp_path: Any, redis_url: str, key_prefix: str
) -> None:
    """Right after a Redis restart without persistence, every stream is missing until its
    producer writes it again (within a lease period). A repair on another worker meanwhile
    (its sweep, a resume, a new message) must not store the answer as interrupted: a
    missing stream is gone for good only once missing for two lease periods, as the
    engine's readers decide. The answer goes on, and is stored as it really ends."""
    from tests._services import delete_redis_keys

    # 1 token/s and a 3 s lease: the producer writes to Redis about once a second, so it
    # does not write the stream back between the loss and the repair just after it.
    shared = {"redis_url": redis_url, "redis_key_prefix": key_prefix, "lease_ttl": 3.0}
    try:
        async with (
            _in_process_app(tmp_path, demo_tokens_per_second=1.0, **shared) as one,
            _in_process_app(tmp_path, demo_tokens_per_second=1.0, **shared) as two,
        ):
            producer, other = one.state.services, two.state.services
            user = await producer.store.create_user()
            record = await _start_answer(producer, "c_lost", user.id)
            await _age_stream_record(producer.store, record.id, 60)  # begun a minute ago
            chat = await other.store.get_chat(record.chat_id, user.id)
            assert chat is not None and chat.active_stream_id == record.id

            await delete_redis_keys(redis_url, key_prefix)  # the backend lost everything
            assert (await other.answers.repair(chat)).active_stream_id == record.id
            with anyio.fail_after(10):  # the producer writes it back
                while await other.engine.status(record.id) is None:  # noqa: ASYNC110 - no event
                    await anyio.sleep(0.05)
            assert (await other.answers.repair(chat)).active_stream_id == record.id

            assert await producer.answers.stop(record) is StreamState.CANCELLED
            answer = (await producer.store.list_messages(record.chat_id))[-1]
            assert answer.status == "stopped"
    finally:
        await delete_redis_keys(redis_url, key_prefix)


async def test_a_stream_missing_for_two_lease_periods_is_stored_as_interrupted(
    tmp_path: Any,
) -> None:
    """A stream nobody will write again (its producer died with the backend's copy) is
    stored as interrupted once it has been missing for two lease periods."""
    async with _in_process_app(tmp_path, lease_ttl=0.2) as app:
        services = app.state.services
        user = await services.store.create_user()
        begun = await services.store.start_answer(
            "c_gone", user.id, title="t", message_id="u1", parts=[{"type": "text", "text": "x"}]
        )
        assert isinstance(begun, Started)  # in the database; never claimed in the backend
        await _age_stream_record(services.store, begun.record.id, 60)
        chat = await services.store.get_chat("c_gone", user.id)
        assert chat is not None
        assert (await services.answers.repair(chat)).active_stream_id == begun.record.id
        await anyio.sleep(0.45)  # two lease periods later
        assert (await services.answers.repair(chat)).active_stream_id is None
        answer = (await services.store.list_messages("c_gone"))[-1]
        assert answer.status == "interrupted"
