"""The SQL store on SQLite and PostgreSQL: migrations, access rules, compare-and-set."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, update

from tests._util import uid
from tests.chat.conftest import temporary_postgres_database
from unbroken.chat.store import (
    Chat,
    ChatNotFoundError,
    ChatPosition,
    Message,
    Started,
    Store,
    utcnow,
)
from unbroken.chat.store.migrate import current_revision, head_revision
from unbroken.chat.store.tables import chats, metadata, users

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        with temporary_postgres_database() as url:
            yield url


@pytest.fixture
async def store(fresh_database_url: str) -> AsyncIterator[Store]:
    async with Store.from_url(fresh_database_url) as store:
        await store.upgrade()
        yield store


async def test_migrations_create_exactly_the_declared_schema(fresh_database_url: str) -> None:
    async with Store.from_url(fresh_database_url) as store:
        assert await current_revision(store.engine) is None
        assert await store.upgrade() is True
        assert await current_revision(store.engine) == head_revision()
        assert await store.upgrade() is False  # already at head: nothing written

        def diff(connection: Any) -> list[Any]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))

        def tables(connection: Any) -> set[str]:
            return set(inspect(connection).get_table_names())

        async with store.engine.connect() as connection:
            assert await connection.run_sync(diff) == []
            assert {"users", "api_keys", "chats", "messages", "streams", "app_config"} <= (
                await connection.run_sync(tables)
            )


async def test_concurrent_upgrades_apply_once(fresh_database_url: str) -> None:
    """Three apps of one process, each in its own thread and event loop (as workers started
    together would be), upgrade one database at once: exactly one applies the migration."""

    def upgrade_in_own_loop() -> bool:
        async def run() -> bool:
            store = Store.from_url(fresh_database_url)
            try:
                return await store.upgrade()
            finally:
                await store.close()

        return asyncio.run(run())

    results: list[bool] = []
    async with anyio.create_task_group() as tg:
        for _ in range(3):

            async def one() -> None:
                results.append(await anyio.to_thread.run_sync(upgrade_in_own_loop))

            tg.start_soon(one)
    assert sorted(results) == [False, False, True]


# Run by each process of the test below: upgrade the file named by argv[1] once told to go.
_UPGRADE_WHEN_TOLD = """
import asyncio, sys
from unbroken.chat.store import Store

async def upgrade() -> bool:
    async with Store.from_url(sys.argv[1]) as store:
        return await store.upgrade()

print("ready", flush=True)
sys.stdin.readline()
print(asyncio.run(upgrade()), flush=True)
"""


def test_concurrent_upgrades_from_processes_apply_once(tmp_path: Path) -> None:
    """Two processes upgrade one fresh SQLite file at once (as two services pointed at one
    file would): the process lock cannot help, so SQLite's own locking must. One applies the
    migration; the other waits for it and then finds the file at head."""
    path = tmp_path / "store.sqlite3"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _UPGRADE_WHEN_TOLD, f"sqlite+aiosqlite:///{path}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        # Both are started (imports done) before either is told to go, so the upgrades overlap.
        for process in processes:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert [process.returncode for process in processes] == [0, 0], [e[-800:] for _, e in outputs]
    assert sorted(out.strip() for out, _ in outputs) == ["False", "True"]
    with closing(sqlite3.connect(path)) as connection:
        versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert versions == [(head_revision(),)]


async def test_streams_belong_to_chats_and_refuse_other_users(store: Store) -> None:
    alice, bob = await store.create_user(), await store.create_user()
    chat_id = uid()
    first = (await _start(store, chat_id, alice.id, "m1")).record
    await store.finalize_message(
        chat_id, first.message_id, parts=[], status="done", release_stream=first.id
    )
    second = (await _start(store, chat_id, alice.id, "m2")).record
    assert first.id != second.id and len(first.id) >= 32  # unguessable
    streams = await store.get_streams_by_chat_id(chat_id, alice.id)
    assert {s.id for s in streams} == {first.id, second.id}
    assert all(s.chat_id == chat_id for s in streams)
    with pytest.raises(ChatNotFoundError):
        await store.get_streams_by_chat_id(chat_id, bob.id)
    with pytest.raises(ChatNotFoundError):
        await store.get_streams_by_chat_id(uid(), alice.id)
    # Bob cannot take over the id either.
    taken = await store.start_answer(chat_id, bob.id, title="mine now", message_id="m3", parts=[])
    assert taken is None
    assert await store.get_chat(chat_id, bob.id) is None


async def _start(store: Store, chat_id: str, user_id: str, message_id: str) -> Started:
    begun = await store.start_answer(
        chat_id, user_id, title="t", message_id=message_id, parts=[{"type": "text", "text": "hi"}]
    )
    assert isinstance(begun, Started)
    return begun


async def _message(store: Store, chat_id: str, message_id: str) -> Message | None:
    """The chat's message ``message_id``, stored or still being generated."""
    listed = await store.list_messages(chat_id, include_streaming=True)
    return next((message for message in listed if message.id == message_id), None)


async def test_starting_an_answer_is_compare_and_set(store: Store) -> None:
    user, other = await store.create_user(), await store.create_user()
    chat_id = uid()
    begun = await _start(store, chat_id, user.id, "m1")  # creates the chat
    record = begun.record
    assert [(m.id, m.parts) for m in begun.history] == [("m1", [{"type": "text", "text": "hi"}])]
    chat = await store.get_chat(chat_id, user.id)
    assert chat is not None and chat.title == "t" and chat.active_stream_id == record.id
    # One answer at a time: a second start gets the chat as it is and writes nothing.
    assert await store.start_answer(chat_id, user.id, title="x", message_id="m2", parts=[]) == chat
    # Another user's chat is missing to them.
    assert await store.start_answer(chat_id, other.id, title="x", message_id="m2", parts=[]) is None
    # What a resume reads first: the chat and its active stream, in one query.
    assert await store.get_chat_and_active_stream(chat_id, user.id) == (
        chat,
        await store.get_stream(record.id),
    )
    assert await store.get_chat_and_active_stream(chat_id, other.id) is None
    # The answer in progress keeps its place but is not listed.
    assert [m.id for m in await store.list_messages(chat_id)] == ["m1"]
    listed = await store.list_messages(chat_id, include_streaming=True)
    assert [(m.id, m.status) for m in listed] == [("m1", "done"), (record.message_id, "streaming")]

    parts = [{"type": "text", "text": "hello"}]
    assert await store.finalize_message(chat_id, record.message_id, parts=parts, status="stopped")
    assert not await store.finalize_message(chat_id, record.message_id, parts=[], status="done")
    answer = await _message(store, chat_id, record.message_id)
    assert answer is not None and answer.status == "stopped" and answer.parts == parts
    assert answer.finished_at is not None

    assert not await store.clear_active_stream(chat_id, "s_stale")  # a stale stop: no effect
    assert await store.clear_active_stream(chat_id, record.id)
    assert not await store.clear_active_stream(chat_id, record.id)
    assert (await store.get_chat(chat_id, user.id)).active_stream_id is None  # type: ignore[union-attr]
    assert await store.get_chat_and_active_stream(chat_id, user.id) == (
        await store.get_chat(chat_id, user.id),
        None,
    )

    # Asking again from m1 (a regenerate) drops what came after it.
    again = await _start(store, chat_id, user.id, "m1")
    assert [m.id for m in again.history] == ["m1"]
    listed = await store.list_messages(chat_id, include_streaming=True)
    assert [m.id for m in listed] == ["m1", again.record.message_id]


async def test_concurrent_first_messages_start_one_answer(store: Store) -> None:
    """Many requests starting the first answer of one new chat at once (a client retrying, or
    two tabs): the chat is created once, one answer starts, the others see it running; and
    the id stays its owner's."""
    user, other = await store.create_user(), await store.create_user()
    chat_id = uid()
    results: list[Started | Chat | None] = []

    async def start(user_id: str) -> None:
        results.append(
            await store.start_answer(chat_id, user_id, title="t", message_id="m1", parts=[])
        )

    async with anyio.create_task_group() as task_group:
        for _ in range(8):
            task_group.start_soon(start, user.id)
    (begun,) = [r for r in results if isinstance(r, Started)]
    others = [r for r in results if not isinstance(r, Started)]
    assert len(others) == 7
    assert all(isinstance(r, Chat) and r.active_stream_id == begun.record.id for r in others)
    assert await store.start_answer(chat_id, other.id, title="t", message_id="m1", parts=[]) is None
    listed = await store.list_messages(chat_id, include_streaming=True)
    assert [m.id for m in listed] == ["m1", begun.record.message_id]


async def test_api_keys_are_stored_hashed(store: Store) -> None:
    user = await store.create_user(kind="user", name="cli")
    key, record = await store.create_api_key(user.id, name="laptop")
    assert key.startswith("ub_") and record.user_id == user.id
    found = await store.user_for_api_key(key)
    assert found is not None and found.id == user.id
    assert await store.user_for_api_key(key + "x") is None
    async with store.engine.connect() as connection:
        from sqlalchemy import select

        from unbroken.chat.store.tables import api_keys

        stored = (await connection.execute(select(api_keys.c.key_hash))).scalars().all()
    assert key not in stored and len(stored[0]) == 64


async def test_a_deleted_key_stops_working_at_once(store: Store) -> None:
    """No process remembers a key it looked up: once its row is gone (and with it any way
    a user could lose a key), the very next request with it is refused."""
    from sqlalchemy import delete

    from unbroken.chat.store.tables import api_keys

    user = await store.create_user(kind="user", name="cli")
    key, record = await store.create_api_key(user.id)
    chat_id = uid()
    await _start(store, chat_id, user.id, "m1")
    assert await store.user_for_api_key(key) is not None
    assert await store.chat_for_api_key(key, chat_id) is not None
    async with store.engine.begin() as connection:
        await connection.execute(delete(api_keys).where(api_keys.c.id == record.id))
    assert await store.user_for_api_key(key) is None
    assert await store.chat_for_api_key(key, chat_id) is None


async def test_a_key_and_its_users_chat_are_found_in_one_query(store: Store) -> None:
    """`chat_for_api_key`: the key's user with the chat and its active stream, one
    statement; another user's chat is found exactly like a missing one."""
    from sqlalchemy import event

    owner, other = await store.create_user(kind="user"), await store.create_user(kind="user")
    key, _ = await store.create_api_key(owner.id)
    other_key, _ = await store.create_api_key(other.id)
    chat_id = uid()
    record = (await _start(store, chat_id, owner.id, "m1")).record
    await store.user_for_api_key(key)  # last_used_at is fresh: no write follows
    statements: list[str] = []
    event.listen(
        store.sql_engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: statements.append(statement),
    )
    found = await store.chat_for_api_key(key, chat_id)
    assert found is not None and found.user.id == owner.id and found.active == record
    assert found.chat is not None and found.chat.active_stream_id == record.id
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT")
    foreign = await store.chat_for_api_key(other_key, chat_id)
    missing = await store.chat_for_api_key(other_key, uid())
    assert foreign is not None and missing is not None and foreign.user.id == other.id
    assert (foreign.chat, foreign.active) == (missing.chat, missing.active) == (None, None)
    assert await store.chat_for_api_key(key + "x", chat_id) is None


async def test_storing_an_answer_can_release_its_stream_at_once(store: Store) -> None:
    user = await store.create_user()
    record = (await _start(store, uid(), user.id, "m1")).record
    chat = await store.get_chat(record.chat_id, user.id)
    assert chat is not None and chat.active_stream_id == record.id
    # Another stream's release changes nothing about this one; the answer is stored.
    assert await store.finalize_message(
        chat.id, record.message_id, parts=[], status="done", release_stream="s_other"
    )
    assert (await store.get_chat(chat.id, user.id)).active_stream_id == record.id  # type: ignore[union-attr]
    # A later (losing) store still releases the stream it names.
    assert not await store.finalize_message(
        chat.id, record.message_id, parts=[], status="stopped", release_stream=record.id
    )
    assert (await store.get_chat(chat.id, user.id)).active_stream_id is None  # type: ignore[union-attr]
    answer = await _message(store, chat.id, record.message_id)
    assert answer is not None and answer.status == "done"


async def test_config_values_are_created_once(store: Store) -> None:
    first = await store.get_or_create_config("session_secret", "one")
    assert await store.get_or_create_config("session_secret", "two") == first == "one"


async def test_delete_chat_removes_everything(store: Store) -> None:
    user, other = await store.create_user(), await store.create_user()
    chat_id = (await _start(store, uid(), user.id, "m1")).record.chat_id
    assert not await store.delete_chat(chat_id, other.id)
    assert await store.delete_chat(chat_id, user.id)
    assert await store.get_chat(chat_id, user.id) is None
    assert await store.list_messages(chat_id, include_streaming=True) == []
    assert await store.list_chats(user.id) == []


async def test_chats_are_listed_a_page_at_a_time(store: Store) -> None:
    """Pages of the list never overlap nor skip a chat, chats updated at the same moment
    included (ordered by id), and hold only the caller's chats."""
    user, other = await store.create_user(), await store.create_user()
    ids = [(await _start(store, uid(), user.id, "m1")).record.chat_id for _ in range(7)]
    theirs = (await _start(store, uid(), other.id, "m1")).record.chat_id
    # Three of them updated at one moment, which a page ends in the middle of.
    moment = utcnow() + timedelta(hours=1)
    tied = sorted(ids[:3])

    def set_moment(connection: Any) -> None:
        connection.execute(update(chats).where(chats.c.id.in_(tied)).values(updated_at=moment))

    async with store.engine.begin() as connection:
        await connection.run_sync(set_moment)
    expected = tied + list(reversed(ids[3:]))  # newest first, then the others newest first
    assert [chat.id for chat in await store.list_chats(user.id)] == expected
    for size in (1, 2, 3, 7):
        listed: list[str] = []
        after: ChatPosition | None = None
        while True:
            page = await store.list_chats(user.id, limit=size, after=after)
            listed += [chat.id for chat in page]
            if len(page) < size:
                break
            after = page[-1].position
        assert listed == expected, size
    assert [chat.id for chat in await store.list_chats(other.id)] == [theirs]


async def test_api_keys_are_listed_and_revoked(store: Store) -> None:
    alice, bob = await store.create_user(kind="user"), await store.create_user(kind="user")
    key_a, record_a = await store.create_api_key(alice.id, name="laptop")
    key_b, record_b = await store.create_api_key(bob.id)
    listed = await store.list_api_keys()
    assert [(k.id, k.user_id, k.name) for k in listed] == [
        (record_a.id, alice.id, "laptop"),
        (record_b.id, bob.id, None),
    ]
    assert listed[0].last_used_at is None
    assert await store.user_for_api_key(key_a) is not None
    assert (await store.list_api_keys(alice.id))[0].last_used_at is not None
    assert [k.id for k in await store.list_api_keys(bob.id)] == [record_b.id]
    revoked = await store.delete_api_key(record_a.id)
    assert revoked is not None and revoked.user_id == alice.id
    assert await store.user_for_api_key(key_a) is None  # refused at once
    assert await store.delete_api_key(record_a.id) is None
    assert await store.user_for_api_key(key_b) is not None


async def test_idle_guests_are_deleted_with_their_chats(store: Store) -> None:
    now = utcnow()
    idle_since = now - timedelta(days=30)

    async def guest_with_chat(age: timedelta, *, running: bool = False) -> tuple[str, str]:
        user_id, chat_id = uid("u"), uid()
        begun = await store.start_answer(
            chat_id, user_id, title="t", message_id="m1", parts=[], guest=True
        )
        assert isinstance(begun, Started)
        if not running:
            await store.finalize_message(
                chat_id,
                begun.record.message_id,
                parts=[],
                status="done",
                release_stream=begun.record.id,
            )
        await _age(store, user_id, chat_id, now - age)
        return user_id, chat_id

    idle, idle_chat = await guest_with_chat(timedelta(days=40))
    recent, recent_chat = await guest_with_chat(timedelta(days=2))
    running, running_chat = await guest_with_chat(timedelta(days=40), running=True)
    keyed = await store.create_user(kind="user")
    keyed_chat = (await _start(store, uid(), keyed.id, "m1")).record.chat_id
    await _age(store, keyed.id, keyed_chat, now - timedelta(days=90))

    given_a_key, _ = await guest_with_chat(timedelta(days=40))
    await store.create_api_key(given_a_key)  # (`create-key --user-id`): kept as a user
    found = await store.idle_guests(idle_since=idle_since)
    assert found == [idle]
    assert await store.count_idle_guests(idle_since=idle_since) == 1
    everyone = [idle, recent, running, given_a_key]
    assert await store.delete_idle_guests(everyone, idle_since=idle_since) == 1
    assert await store.get_user(idle) is None
    assert await store.get_chat(idle_chat, idle) is None
    assert await store.list_messages(idle_chat, include_streaming=True) == []
    with pytest.raises(ChatNotFoundError):
        await store.get_streams_by_chat_id(idle_chat, idle)
    for user_id, chat_id in (
        (recent, recent_chat),
        (running, running_chat),
        (keyed.id, keyed_chat),
    ):
        assert await store.get_chat(chat_id, user_id) is not None
    assert await store.idle_guests(idle_since=idle_since) == []
    assert await store.get_user(given_a_key) is not None
    # A guest who comes back with its cookie starts again, with no chats.
    again = await store.start_answer(uid(), idle, title="t", message_id="m1", parts=[], guest=True)
    assert isinstance(again, Started)


async def _age(store: Store, user_id: str, chat_id: str, moment: datetime) -> None:
    """Move the user's creation and the chat's last update back to ``moment``."""

    def move(connection: Any) -> None:
        connection.execute(update(users).where(users.c.id == user_id).values(created_at=moment))
        connection.execute(update(chats).where(chats.c.id == chat_id).values(updated_at=moment))

    async with store.engine.begin() as connection:
        await connection.run_sync(move)


@pytest.fixture
def own_postgres_url() -> Iterator[str]:
    """A PostgreSQL database no other test uses (this one closes its connections)."""
    with temporary_postgres_database() as url:
        yield url


async def test_reads_and_writes_go_on_after_the_server_closed_the_pools_connections(
    own_postgres_url: str,
) -> None:
    """Pooled connections are used without a ping first; when the server has closed them (a
    restart, a failover, an idle timeout), a read runs again once on a new connection and
    a write finds out with its first statement, before it did anything, and runs again:
    neither fails."""
    import asyncpg  # type: ignore[import-untyped]

    postgres_url = own_postgres_url
    async with Store.from_url(postgres_url) as store:
        await store.upgrade()
        user = await store.create_user()

        async def close_every_connection() -> None:
            admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
            try:
                closed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            finally:
                await admin.close()
            assert closed  # the store had one open

        await close_every_connection()
        assert await store.get_user(user.id) == user
        await close_every_connection()
        chat_id = uid()
        await _start(store, chat_id, user.id, "m1")
        assert await store.get_chat(chat_id, user.id) is not None
