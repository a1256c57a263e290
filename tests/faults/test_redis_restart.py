"""Redis dies in the middle of an answer and comes back empty (a private redis-server on its
own port, killed with SIGKILL and started again without persistence).

What must hold (ARCHITECTURE "fail open on the hot path"): the client that asked keeps
receiving the answer from the producing process; a resume meanwhile gets a clean 503 (not a
500), while a new question is still answered (the engine fails open at start); once Redis is
back the producers write their streams again and resume works on every instance; the stored
answers are complete; no process crashes.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests._services import free_port, port_answers, redis_server_process
from tests._util import uid
from tests.chat._client import expected_answer, v5_body
from tests.faults._harness import (
    Deployment,
    V5Transcript,
    check_v5_transcript,
    new_browser,
    post_v5_into,
    resume_v5_into,
    settled_chat,
    stored_text,
    wait_until,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.redis,
    pytest.mark.postgres,
]

OUTAGE = 2.0  # seconds Redis stays down (two lease periods of the deployment)
DOWN_PROMPT = "asked while redis is down"


class PrivateRedis:
    """A redis-server on a port of its own that the test may kill and start again."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.args = list(proc.args)  # type: ignore[arg-type]
        self.restarted: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        current = self.restarted or self.proc
        current.kill()
        current.wait(timeout=10)

    async def start_again(self) -> None:
        self.restarted = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await wait_until(lambda: port_answers("127.0.0.1", self.port), within=10, what="redis")

    def close(self) -> None:
        if self.restarted is not None and self.restarted.poll() is None:
            self.restarted.terminate()
            self.restarted.wait(timeout=10)


@pytest.fixture
def private_redis() -> Iterator[tuple[str, PrivateRedis]]:
    port = free_port()
    with redis_server_process(port) as (url, proc):
        redis = PrivateRedis(proc, port)
        try:
            yield url, redis
        finally:
            redis.close()


async def test_redis_restarted_mid_answer(
    private_redis: tuple[str, PrivateRedis], private_database_url: str, tmp_path: Path
) -> None:
    url, redis = private_redis
    deployment = Deployment(
        tmp_path,
        database_url=private_database_url,
        redis_url=url,
        prefix="faults",
        env={"UNBROKEN_LEASE_TTL": "1.0", "UNBROKEN_DEMO_TOKENS_PER_SECOND": "40"},
        migrated=True,
    )
    try:
        await run_redis_restart(deployment, redis)
    finally:
        deployment.close()
        print(deployment.logs())


async def run_redis_restart(deployment: Deployment, redis: PrivateRedis) -> None:
    t0 = time.monotonic()

    def step(what: str) -> None:
        print(f"[{time.monotonic() - t0:6.2f}s] {what}")

    producer, other = await deployment.start(2)
    step("started")
    chat_id, prompt = uid(), "what if redis restarts?"
    reasoning, text = expected_answer(prompt)
    asked = V5Transcript()
    asked_ok: list[bool] = []

    async with new_browser() as browser:
        assert (await browser.get(f"{other.url}/api/chats")).status_code == 200

        async def ask() -> None:
            body = v5_body(chat_id, uid("m"), prompt)
            asked_ok.append(await post_v5_into(browser, producer.url, body, asked))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                await wait_until(lambda: len(asked.text()) > 50, within=20, what="the answer")
                # A reader on the other instance, from the start, until Redis goes away.
                follower = V5Transcript()
                await resume_v5_into(
                    browser, other.url, chat_id, follower, from_start=True, stop_after=20
                )
                step("follower read")
                redis.kill()
                step("redis killed")
                down_at, seen_at_kill = time.monotonic(), len(asked.events)
                # The client that asked keeps receiving while Redis is down.
                await wait_until(
                    lambda: len(asked.events) >= seen_at_kill + 20,
                    within=10,
                    what="the asking client to keep receiving with Redis down",
                )
                # Requests that need Redis get a clean 503 meanwhile (never a 500).
                step("asker kept receiving")
                during = await browser.get(f"{other.url}/api/chat/{chat_id}/stream")
                assert during.status_code == 503, (during.status_code, during.text)
                assert during.json()["error"]["code"] == "unavailable"
                # A new answer asked meanwhile starts anyway (fail open): its client gets it.
                down_chat = uid()
                down_seen = V5Transcript()
                body = v5_body(down_chat, uid("m"), DOWN_PROMPT)
                await post_v5_into(browser, other.url, body, down_seen, stop_after=30)
                check_v5_transcript(down_seen, *expected_answer(DOWN_PROMPT), complete=False)
                assert len(down_seen.events) == 30
                step("503 for a resume, fail-open for a new answer")
                assert time.monotonic() - down_at < 10
                # Keep Redis down for two lease periods: the lease cannot be renewed.
                await anyio.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
                await redis.start_again()
                step("redis restarted")
            step("asker done")
            # The asking client got the whole answer, without gap or duplicate.
            assert asked_ok == [True]
            check_v5_transcript(asked, reasoning, text, complete=True)

            # Resume works again on the other instance: from where the follower stopped...
            await resume_v5_into(browser, other.url, chat_id, follower)
            step("follower resumed")
            check_v5_transcript(follower, reasoning, text, complete=True)
            # ... and from the start.
            replay = V5Transcript()
            await resume_v5_into(browser, other.url, chat_id, replay, from_start=True)
            check_v5_transcript(replay, reasoning, text, complete=True)
            assert replay.message_ids() == asked.message_ids()

        step("replayed")
        # The answer started during the outage is resumable now, and stored in full.
        down_replay = V5Transcript()
        with anyio.fail_after(30):
            await resume_v5_into(browser, producer.url, down_chat, down_replay, from_start=True)
        check_v5_transcript(down_replay, *expected_answer(DOWN_PROMPT), complete=True)
        down_stored = await settled_chat(browser, producer.url, down_chat, within=15)
        assert down_stored["messages"][-1]["status"] == "done"
        assert stored_text(down_stored["messages"][-1]) == expected_answer(DOWN_PROMPT)[1]
        step("the answer started while Redis was down")
        chat = await settled_chat(browser, other.url, chat_id, within=15)
        step("settled")
        answer = chat["messages"][-1]
        assert answer["status"] == "done"
        assert stored_text(answer) == text and stored_text(answer, "reasoning") == reasoning

        # New answers start on both instances again (their beginnings are enough).
        for instance in (producer, other):
            again = V5Transcript()
            prompt = f"after the restart on {instance.name}"
            await post_v5_into(
                browser, instance.url, v5_body(uid(), uid("m"), prompt), again, stop_after=20
            )
            check_v5_transcript(again, *expected_answer(prompt), complete=False)
            assert len(again.events) == 20
        step("new answers")
        health = [await browser.get(f"{p.url}/healthz") for p in (producer, other)]
        assert [r.status_code for r in health] == [200, 200]
    assert producer.alive and other.alive
    assert not deployment.crashes(), deployment.crashes()


async def test_live_reader_on_another_instance_across_a_redis_restart(
    private_redis: tuple[str, PrivateRedis], private_database_url: str, tmp_path: Path
) -> None:
    """A reader following live on the non-producing instance when Redis dies: it may be
    cut (and resume), but it must not be told the answer failed: a v5 ``error`` chunk is
    terminal for useChat, which would then show an error for an answer that completes."""
    url, redis = private_redis
    deployment = Deployment(
        tmp_path,
        database_url=private_database_url,
        redis_url=url,
        prefix="faults-live",
        env={"UNBROKEN_LEASE_TTL": "1.0", "UNBROKEN_DEMO_TOKENS_PER_SECOND": "40"},
        migrated=True,
    )
    try:
        producer, other = await deployment.start(2)
        chat_id, prompt = uid(), "follow me through a redis restart"
        reasoning, text = expected_answer(prompt)
        async with new_browser() as browser:
            asked = V5Transcript()
            follower = V5Transcript()
            cuts = 0
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    body = v5_body(chat_id, uid("m"), prompt)
                    tg.start_soon(post_v5_into, browser, producer.url, body, asked)
                    await wait_until(lambda: len(asked.text()) > 50, within=20, what="text")

                    async def follow() -> None:
                        nonlocal cuts
                        # Like the page: reconnect from the last event id until the end.
                        while not follower.done:
                            try:
                                ended = await resume_v5_into(browser, other.url, chat_id, follower)
                            except (AssertionError, httpx.TransportError):
                                ended = False  # 503 or refused while Redis is down
                            if not ended:
                                cuts += 1
                                await anyio.sleep(0.2)

                    tg.start_soon(follow)
                    await wait_until(lambda: len(follower.events) > 5, within=10, what="follow")
                    redis.kill()
                    await anyio.sleep(OUTAGE)  # the fault itself: how long Redis is away
                    await redis.start_again()
            errors = [e for e in follower.events if e["type"] == "error"]
            assert not errors, (
                f"the follower was sent {errors} while Redis restarted (reconnects: {cuts})"
            )
            check_v5_transcript(follower, reasoning, text, complete=True)
            check_v5_transcript(asked, reasoning, text, complete=True)
        assert producer.alive and other.alive
        assert not deployment.crashes(), deployment.crashes()
    finally:
        deployment.close()
        print(deployment.logs())


async def test_opening_the_chat_while_redis_comes_back_keeps_the_answer(
    private_redis: tuple[str, PrivateRedis], private_database_url: str, tmp_path: Path
) -> None:
    """Redis restarts empty under an answer that has run for a while; the user reloads the
    page at once (GET /api/chats/{id} on the other instance, every 50 ms). For a moment the
    stream is missing from Redis (its producer writes it again within about a second), and
    a missing stream must not be taken for a lost one: the answer completes, and what is
    stored is the whole answer, ``done``."""
    url, redis = private_redis
    deployment = Deployment(
        tmp_path,
        database_url=private_database_url,
        redis_url=url,
        prefix="faults-window",
        env={"UNBROKEN_LEASE_TTL": "1.0", "UNBROKEN_DEMO_TOKENS_PER_SECOND": "40"},
        migrated=True,
    )
    try:
        producer, other = await deployment.start(2)
        chat_id, prompt = uid(), "reload while redis comes back"
        reasoning, text = expected_answer(prompt)
        asked = V5Transcript()
        seen_states: list[str | None] = []
        async with new_browser() as browser:
            assert (await browser.get(f"{other.url}/api/chats")).status_code == 200
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    body = v5_body(chat_id, uid("m"), prompt)
                    tg.start_soon(post_v5_into, browser, producer.url, body, asked)
                    # Past the service's claim grace for new streams (5 s): an old answer.
                    await anyio.sleep(6)
                    assert not asked.done
                    redis.kill()
                    # Long enough for the producer's write retries to back off to 1 s.
                    await anyio.sleep(OUTAGE + 0.5)
                    await redis.start_again()
                    for _ in range(60):  # 3 s of reloads
                        response = await browser.get(f"{other.url}/api/chats/{chat_id}")
                        if response.status_code == 200:
                            active = response.json()["activeStream"]
                            seen_states.append(active and active["state"])
                        await anyio.sleep(0.05)
            print("states the page saw:", seen_states)
            check_v5_transcript(asked, reasoning, text, complete=True)
            chat = await settled_chat(browser, other.url, chat_id, within=15)
            answer = chat["messages"][-1]
            assert (answer["status"], stored_text(answer)) == ("done", text), (
                f"stored {answer['status']!r} with {len(stored_text(answer))} chars "
                f"({answer.get('error')!r}); the page saw {sorted(set(map(str, seen_states)))}"
            )
        assert producer.alive and other.alive
        assert not deployment.crashes(), deployment.crashes()
    finally:
        deployment.close()
        print(deployment.logs())
