"""The instance producing an answer dies with SIGKILL (no shutdown code runs at all).

What must hold: readers on the surviving instance see ``interrupted`` within the lease
bound (``lease_ttl * 5/3``) with exactly the partial text that was written; the client that
was reading from the dead instance resumes on the other one without gap or duplicate; and
the stored assistant message ends up ``interrupted`` with that same partial text, never
``streaming`` forever, whether or not anyone was reading when the producer died.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from tests._util import uid
from tests.chat._client import expected_answer, v4_body, v5_body
from tests.faults._harness import (
    Deployment,
    V4Transcript,
    V5Transcript,
    chat_json,
    check_v5_transcript,
    new_browser,
    post_v5_into,
    resume_v4_into,
    resume_v5_into,
    settled_chat,
    stored_text,
    wait_until,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.redis,
    pytest.mark.postgres,
]

SLACK = 3.0  # seconds of scheduling slack on a loaded 2-core machine


def detection_bound(lease: float) -> float:
    """How long after a producer dies its readers may take to see ``interrupted``."""
    return lease * 5 / 3


def repair_grace(lease: float) -> float:
    """How long after a stream ended the chat service takes over storing its answer
    (`unbroken.chat.answers.Answers.orphaned`: the producer's own end callback had its chance)."""
    return max(1.0, 2 * lease)


SWEEP_INTERVAL = 10.0  # the chat service's default UNBROKEN_SWEEP_INTERVAL


async def message_status(database_url: str, message_id: str) -> str | None:
    """The stored message's status, read straight from the database (no API call, so
    nothing in the service is prompted to repair anything)."""
    import asyncpg

    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval("SELECT status FROM messages WHERE id = $1", message_id)
    finally:
        await conn.close()
    return None if value is None else str(value)


async def test_sigkill_mid_answer_readers_elsewhere_see_interrupted(
    deployment: Deployment,
) -> None:
    # The service's real default lease (UNBROKEN_LEASE_TTL unset: 3 s).
    lease = 3.0
    producer, survivor = await deployment.start(
        2, UNBROKEN_LEASE_TTL="", UNBROKEN_DEMO_TOKENS_PER_SECOND="40"
    )
    chat_id, prompt = uid(), "what happens when the server is killed?"
    reasoning, text = expected_answer(prompt)
    on_producer = V5Transcript()  # the tab that asked; its server is about to die
    follower_v5 = V5Transcript()  # another tab, load-balanced to the survivor
    follower_v4 = V4Transcript()  # an ai@4 tab on the survivor
    ends: dict[str, float] = {}
    cut: list[bool] = []

    async with new_browser() as browser:

        async def ask() -> None:
            cut.append(
                not await post_v5_into(
                    browser, producer.url, v5_body(chat_id, uid("m"), prompt), on_producer
                )
            )

        async def follow_v5() -> None:
            await resume_v5_into(browser, survivor.url, chat_id, follower_v5, from_start=True)
            ends["v5"] = time.monotonic()

        async def follow_v4() -> None:
            await resume_v4_into(browser, survivor.url, chat_id, follower_v4)
            ends["v4"] = time.monotonic()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                await wait_until(
                    lambda: len(on_producer.text()) > 50, within=20, what="some answer text"
                )
                tg.start_soon(follow_v5)
                tg.start_soon(follow_v4)
                await wait_until(
                    lambda: len(follower_v5.events) > 3 and len(follower_v4.lines) > 3,
                    within=20,
                    what="the followers on the surviving instance",
                )
                producer.kill()
                killed = time.monotonic()
            # The tab on the dead instance reconnects to the survivor from its last event.
            assert cut == [True], "the connection to the killed instance must be cut"
            before = len(on_producer.events)
            ended = await resume_v5_into(browser, survivor.url, chat_id, on_producer)
            assert ended is not None, "the resume must not be a 204 while the answer is open"
            resumed = time.monotonic()

        # Every stream ended, in interrupted, within the lease bound.
        bound = detection_bound(lease) + SLACK
        for name, at in ends.items():
            assert at - killed <= bound, f"{name} follower saw the end {at - killed:.1f} s late"
        assert resumed - killed <= bound + 1
        for transcript in (follower_v5, on_producer):
            assert transcript.done
            assert transcript.terminal is not None
            assert transcript.terminal["type"] == "error", transcript.terminal
        assert follower_v4.terminal == "3", follower_v4.codes()[-3:]
        # Partial, and the same partial for everyone: no gap, no duplicate.
        check_v5_transcript(follower_v5, reasoning, text, complete=False)
        check_v5_transcript(on_producer, reasoning, text, complete=False)
        assert len(on_producer.events) > before or on_producer.text() == follower_v5.text()
        partial = follower_v5.text()
        assert partial and partial != text, "killed mid-answer: some text, not all of it"
        assert on_producer.text() == partial
        assert follower_v4.text() == partial and follower_v4.reasoning() == reasoning

        # The stored message: interrupted, exactly the partial text (whoever stores it).
        chat = await settled_chat(
            browser,
            survivor.url,
            chat_id,
            within=detection_bound(lease) + repair_grace(lease) + SLACK,
        )
        answer = chat["messages"][-1]
        assert answer["role"] == "assistant"
        assert answer["id"] == on_producer.message_ids()[0]
        assert answer["status"] == "interrupted", answer
        assert stored_text(answer) == partial
        assert stored_text(answer, "reasoning") == reasoning
        assert survivor.alive
        assert not deployment.crashes()


async def test_sigkill_then_the_chat_goes_on_on_the_other_instance(
    deployment: Deployment,
) -> None:
    """After the crash the user sends the next message through the survivor: it is
    answered in full, and the crashed answer keeps its place (never 'streaming')."""
    producer, survivor = await deployment.start(2)
    chat_id = uid()
    async with new_browser() as browser:
        first = V5Transcript()
        await post_v5_into(
            browser, producer.url, v5_body(chat_id, uid("m"), "first"), first, stop_after=30
        )
        producer.kill()
        reasoning, text = expected_answer("second")
        second = V5Transcript()
        with anyio.fail_after(30):
            await post_v5_into(browser, survivor.url, v5_body(chat_id, uid("m"), "second"), second)
        check_v5_transcript(second, reasoning, text, complete=True)
        chat = await settled_chat(browser, survivor.url, chat_id, within=15)
        statuses = [(m["role"], m["status"]) for m in chat["messages"]]
        assert statuses[0] == ("user", "done") and statuses[-2:] == [
            ("user", "done"),
            ("assistant", "done"),
        ]
        assert "streaming" not in {s for _, s in statuses}
        assert not deployment.crashes()


async def test_sigkill_with_nobody_reading_the_answer_is_still_marked_interrupted(
    deployment: Deployment, faults_database_url: str
) -> None:
    """Nobody is reading when the producer dies. Two chats, two ways of finding out:

    - ``opened``: later the user opens the chat (GET /api/chats/{id}, what the page does
      first). The answer must be reported and stored as interrupted within the lease bound
      plus the service's repair grace, not stay "being generated" until the stream's keys
      expire (active_ttl, 1 h) -- after which its partial text is gone too.
    - ``untouched``: nobody reads, nobody opens the chat. The surviving instance must still
      mark the answer interrupted in the database in bounded time; a message that stays
      ``streaming`` in the store is an answer no one will ever finish.
    """
    lease = 1.0
    producer, survivor = await deployment.start(2)
    chats = {"opened": uid(), "untouched": uid()}
    seen = {name: V5Transcript() for name in chats}
    async with new_browser() as browser:
        assert (await browser.get(f"{survivor.url}/api/chats")).status_code == 200
        for name, chat_id in chats.items():
            body = v5_body(chat_id, uid("m"), f"nobody reads {name}")
            await post_v5_into(browser, producer.url, body, seen[name], stop_after=30)
        message_ids = {name: t.message_ids()[0] for name, t in seen.items()}
        for message_id in message_ids.values():
            assert await message_status(faults_database_url, message_id) == "streaming"
        producer.kill()
        killed = time.monotonic()
        # Opening the chat finds out once the lease has lapsed; the sweeper of every
        # instance finds out within one sweep interval after that.
        within = {
            "opened": detection_bound(lease) + repair_grace(lease) + SLACK,
            "untouched": lease + repair_grace(lease) + SWEEP_INTERVAL + SLACK,
        }
        found: dict[str, Any] = {}
        found_after: dict[str, float] = {}
        while len(found) < 2 and time.monotonic() - killed < max(within.values()):
            if "opened" not in found:
                chat = await chat_json(browser, survivor.url, chats["opened"])
                if chat["activeStream"] is None:
                    found["opened"] = chat["messages"][-1]
                    found_after["opened"] = time.monotonic() - killed
            if "untouched" not in found:
                status = await message_status(faults_database_url, message_ids["untouched"])
                if status != "streaming":
                    found["untouched"] = status
                    found_after["untouched"] = time.monotonic() - killed
            await anyio.sleep(0.25)
    assert survivor.alive
    print(f"stored after (s): {found_after}")
    failures = [
        f"{name}: stored only {after:.1f} s after the crash (bound {within[name]:g} s)"
        for name, after in found_after.items()
        if after > within[name]
    ]
    if "opened" not in found:
        failures.append(
            f"opened: GET /api/chats/{{id}} still reports the answer as being generated "
            f"(activeStream.state={chat['activeStream']['state']!r}) "
            f"{within['opened']:g} s after the crash"
        )
    if found.get("untouched", "streaming") != "interrupted":
        failures.append(
            f"untouched: the message is still {found.get('untouched', 'streaming')!r} in the "
            f"database {within['untouched']:g} s after the crash, with no request touching it"
        )
    if "opened" in found:
        answer = found["opened"]
        reasoning, text = expected_answer("nobody reads opened")
        stored = stored_text(answer, "reasoning") + stored_text(answer)
        got = seen["opened"].text("reasoning") + seen["opened"].text()
        if answer["status"] != "interrupted" or not (reasoning + text).startswith(stored):
            failures.append(f"opened: stored {answer['status']!r} {stored[:80]!r}")
        elif not stored.startswith(got):
            failures.append("opened: the stored answer lacks text the client saw")
    assert not failures, "\n".join(failures)


async def test_sigkill_v4_resume_on_the_survivor_ends_interrupted(
    deployment: Deployment,
) -> None:
    """An ai@4 client resumes (GET /api/chat?chatId=) only after the crash."""
    lease = 1.0
    producer, survivor = await deployment.start(2)
    chat_id, prompt = uid(), "v4 after a crash"
    reasoning, text = expected_answer(prompt)
    async with new_browser() as browser:
        async with browser.stream(
            "POST", f"{producer.url}/api/chat", json=v4_body(chat_id, uid("m"), prompt)
        ) as response:
            assert response.status_code == 200
            text_lines = 0
            async for line in response.aiter_lines():
                text_lines += line.startswith("0:")
                if text_lines >= 10:  # into the answer text (past the reasoning)
                    break
        producer.kill()
        killed = time.monotonic()
        resumed = V4Transcript()
        with anyio.fail_after(detection_bound(lease) + SLACK + 2):
            await resume_v4_into(browser, survivor.url, chat_id, resumed)
        assert time.monotonic() - killed <= detection_bound(lease) + SLACK
        assert resumed.terminal == "3", resumed.codes()[-3:]
        assert resumed.reasoning() == reasoning
        assert text.startswith(resumed.text()) and resumed.text() != text
        chat: dict[str, Any] = await chat_json(browser, survivor.url, chat_id)
        assert chat["activeStream"] is None or chat["activeStream"]["state"] == "interrupted"
