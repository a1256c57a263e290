"""The ``unbroken`` command: database and key management, and ``unbroken chat`` as real
processes (one worker killed mid-answer; two workers sharing Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import select, update

from tests._services import free_port, port_answers
from tests.chat._client import expected_answer, new_client, post_v5, resume_v5, v5_body
from tests.chat.conftest import Server
from tests.chat.test_resume import settled_chat, stored_text
from unbroken.chat.store import Store, utcnow
from unbroken.chat.store.tables import chats, users
from unbroken.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


CLI = Callable[..., Result]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CLI:
    """Run ``unbroken ARGS`` in this process (quick) with ``env`` set."""

    def run(*args: str, env: dict[str, str]) -> Result:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        try:
            code: object = main(list(args))
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        status = code if isinstance(code, int) else (0 if code is None else 1)
        return Result(status, captured.out, captured.err)

    return run


@contextmanager
def chat_process(env: dict[str, str], *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``unbroken chat`` in a process of its own; yields (base url, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "unbroken.cli", "chat", "--port", str(port), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"unbroken chat exited: {proc.stdout.read() if proc.stdout else ''}"
                )
            if (
                port_answers("127.0.0.1", port)
                and httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("unbroken chat did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_db_upgrade_and_current(cli: CLI, tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite3'}"}
    first = cli("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert "upgraded None -> 0001" in first.stdout
    again = cli("db", "upgrade", env=env)
    assert "already at 0001" in again.stdout
    current = cli("db", "current", env=env)
    assert current.stdout.strip() == "0001 (up to date)"


def test_bad_settings_fail_with_a_message(cli: CLI, tmp_path: Path) -> None:
    result = cli("db", "upgrade", env={"DATABASE_URL": "mysql://x/y"})
    assert result.returncode == 2 and "DATABASE_URL scheme 'mysql'" in result.stderr
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.sqlite3'}", "REDIS_URL": ""}
    result = cli("chat", "--workers", "2", env=env)
    assert result.returncode == 2 and "--workers > 1 needs REDIS_URL" in result.stderr
    assert cli("--version", env={}).stdout.startswith("unbroken ")


# Run in a process of its own (the tuning is for the whole process): starts the app of
# argv[1]'s database as `create_app` makes it, then as `unbroken chat` serves it.
_GC_WHEN_STARTED = """
import asyncio, gc, sys
from unbroken.chat.app import create_app
from unbroken.chat.settings import Settings
from unbroken.cli import FULL_COLLECTION_EVERY, YOUNG_COLLECTION_AFTER, tuned_for_serving

def tuned():
    young, _, full = gc.get_threshold()
    frozen = gc.get_freeze_count() > 0
    return frozen and (young, full) == (YOUNG_COLLECTION_AFTER, FULL_COLLECTION_EVERY)

async def main():
    settings = Settings(database_url=sys.argv[1], sweep_interval=0)
    plain = create_app(settings)
    async with plain.router.lifespan_context(plain):
        print("create_app", tuned())
    served = tuned_for_serving(create_app(settings))
    async with served.router.lifespan_context(served):
        print("served", tuned())

asyncio.run(main())
"""


def test_the_cli_tunes_the_garbage_collector_and_the_app_factory_does_not(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freezing the startup heap and making full collections rarer is a decision for the
    whole process: ``unbroken chat`` makes it (it serves `serving_app`) once the app has
    started; `create_app` alone leaves the garbage collector as it is."""
    import uvicorn

    database_url = f"sqlite+aiosqlite:///{tmp_path / 'gc.sqlite3'}"
    done = subprocess.run(
        [sys.executable, "-c", _GC_WHEN_STARTED, database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["create_app False", "served True"]

    served: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append((app, options)))
    result = cli("chat", env={"DATABASE_URL": database_url, "REDIS_URL": ""})
    assert result.returncode == 0, result.stderr
    [(app, options)] = served
    assert app == "unbroken.cli:serving_app" and options["factory"] is True


@pytest.fixture
def chat_config() -> str:
    return "redis-postgres"


def test_create_key_then_use_it(cli: CLI, start_server: Callable[..., Server]) -> None:
    server = start_server()
    env = {"DATABASE_URL": server.settings.database_url}
    result = cli("users", "create-key", "--name", "script", env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("ub_") and "api key" in result.stderr
    response = httpx.get(f"{server.url}/api/chats", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200 and "set-cookie" not in response.headers


def test_keys_are_listed_and_revoked(cli: CLI, start_server: Callable[..., Server]) -> None:
    server = start_server()
    env = {"DATABASE_URL": server.settings.database_url}
    name = f"laptop-{uuid.uuid4().hex[:6]}"
    created = cli("users", "create-key", "--name", name, env=env)
    key = created.stdout.strip()
    key_id = created.stderr.split("key id:")[1].split()[0]
    listed = cli("users", "list-keys", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "KEY",
        "ID",
        "USER",
        "NAME",
        "CREATED",
        "LAST",
        "USED",
    ]
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
    assert name in line and line.endswith("never") and key not in listed.stdout
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{server.url}/api/chats", headers=headers).status_code == 200
    revoked = cli("users", "revoke-key", key_id, env=env)
    assert revoked.returncode == 0 and key_id in revoked.stdout, revoked.stderr
    assert httpx.get(f"{server.url}/api/chats", headers=headers).status_code == 401
    again = cli("users", "revoke-key", key_id, env=env)
    assert again.returncode == 1 and "no API key" in again.stderr
    assert key_id not in cli("users", "list-keys", env=env).stdout


@pytest.mark.anyio
async def test_idle_guests_are_pruned(cli: CLI, start_server: Callable[..., Server]) -> None:
    server = start_server()
    env = {"DATABASE_URL": server.settings.database_url}

    async def in_thread(run: CLI, *args: str, env: dict[str, str]) -> Result:
        return await anyio.to_thread.run_sync(lambda: run(*args, env=env))  # it runs a loop

    chat_id = uuid.uuid4().hex
    async with new_client(server.url) as guest:
        await post_v5(guest, v5_body(chat_id, "m1", "remember me"))
        await settled_chat(guest, chat_id)
        async with Store.from_url(server.settings.database_url) as store:
            long_ago = utcnow() - timedelta(days=45)
            async with store.engine.begin() as connection:
                owner = select(chats.c.user_id).where(chats.c.id == chat_id).scalar_subquery()
                await connection.execute(
                    update(users).where(users.c.id == owner).values(created_at=long_ago)
                )
                await connection.execute(
                    update(chats).where(chats.c.id == chat_id).values(updated_at=long_ago)
                )
        # Other tests' guests share this database: count only what changes.
        dry = await in_thread(
            cli, "users", "prune-guests", "--idle-days", "30", "--dry-run", env=env
        )
        assert dry.returncode == 0 and "nothing deleted" in dry.stdout, dry.stderr
        assert (await guest.get(f"/api/chats/{chat_id}")).status_code == 200
        kept = await in_thread(cli, "users", "prune-guests", "--idle-days", "60", env=env)
        assert kept.returncode == 0, kept.stderr
        assert (await guest.get(f"/api/chats/{chat_id}")).status_code == 200
        pruned = await in_thread(cli, "users", "prune-guests", "--idle-days", "30", env=env)
        assert pruned.returncode == 0 and pruned.stdout.startswith("deleted "), pruned.stderr
        assert int(pruned.stdout.split()[1]) >= 1
        assert (await guest.get(f"/api/chats/{chat_id}")).status_code == 404
        assert (await guest.get("/api/chats")).json()["chats"] == []
        # The guest's cookie still works: it starts again.
        await post_v5(guest, v5_body(uuid.uuid4().hex, "m1", "back again"))
    for bad in ("0", "-1", "soon", "nan"):
        refused = await in_thread(cli, "users", "prune-guests", "--idle-days", bad, env=env)
        assert refused.returncode == 2 and "--idle-days" in refused.stderr, bad


@pytest.mark.anyio
async def test_a_killed_worker_leaves_an_interrupted_answer(
    start_server: Callable[..., Server],
) -> None:
    settings = start_server().settings
    assert settings.redis_url is not None
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "UNBROKEN_REDIS_PREFIX": settings.redis_key_prefix,
        "UNBROKEN_DEMO_TOKENS_PER_SECOND": "100",
        "UNBROKEN_LEASE_TTL": "1",
        "UNBROKEN_SECRET_KEY": "a-shared-secret-for-both-workers",
    }
    chat_id, prompt = uuid.uuid4().hex, "crash in the middle"
    _, text = expected_answer(prompt)
    with chat_process(env) as (url, proc):
        async with new_client(url) as client:
            head = await post_v5(client, v5_body(chat_id, "m1", prompt), stop_after=60)
            cookies = client.cookies
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Nobody reads, nobody opens the chat: the surviving worker's sweeper finds the dead
    # producer and stores what it made.
    other = start_server(secret_key=env["UNBROKEN_SECRET_KEY"], sweep_interval=0.3)
    async with Store.from_url(settings.database_url) as store:
        with anyio.fail_after(15):
            while True:  # polling the database: there is nothing to wait on across processes
                messages = await store.list_messages(chat_id, include_streaming=True)
                if messages[-1].status != "streaming":
                    break
                await anyio.sleep(0.1)
    async with new_client(other.url, cookies=cookies) as client:
        chat = await settled_chat(client, chat_id)
        answer = chat["messages"][-1]
        assert answer["id"] == head.message_id and answer["status"] == "interrupted"
        stored = stored_text(answer)
        assert stored.startswith(head.text()) and text.startswith(stored) and stored != text
        # A resume now replays exactly that, and ends in error: every stream ends.
        with anyio.fail_after(15):
            resumed = await resume_v5(client, chat_id)
        assert resumed.message_id == head.message_id
        assert resumed.types()[-1] == "error" and resumed.text() == stored


@pytest.mark.anyio
async def test_two_worker_processes_share_streams(start_server: Callable[..., Server]) -> None:
    settings = start_server().settings
    assert settings.redis_url is not None
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "UNBROKEN_REDIS_PREFIX": settings.redis_key_prefix,
        "UNBROKEN_DEMO_TOKENS_PER_SECOND": "1000",
    }
    with chat_process(env, "--workers", "2") as (url, proc):
        async with new_client(url) as client:
            for round_ in range(2):
                chat_id, prompt = uuid.uuid4().hex, f"worker round {round_}"
                _, text = expected_answer(prompt)
                # New connections each time: the kernel spreads them over both workers.
                head = await post_v5(client, v5_body(chat_id, "m1", prompt), stop_after=20)
                async with new_client(url, cookies=client.cookies) as tab:
                    full = await resume_v5(tab, chat_id)
                assert full.message_id == head.message_id and full.text() == text
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    assert "unbroken chat" in output and "workers: 2" in output
    assert "streams: redis" in output and "model:   demo" in output
