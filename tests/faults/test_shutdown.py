"""Graceful shutdown (SIGTERM, what every deploy does) in the middle of answers.

``unbroken chat`` gives open responses uvicorn's graceful window (5 s), then the engine
drains running generations (``UNBROKEN_DRAIN_TIMEOUT``: 10 s by default, 4 s here) and
records the rest as ``interrupted``. So: an answer that can finish within the deadline
finishes and is stored ``done``; a longer one ends ``interrupted`` with its partial text
stored; a reader connected to the stopping instance is let go (and resumes elsewhere); no
reader hangs; the process exits cleanly.
"""

from __future__ import annotations

import signal
import time

import anyio
import pytest

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

GRACEFUL = 5.0  # uvicorn's timeout_graceful_shutdown in the CLI
DRAIN = 4.0  # UNBROKEN_DRAIN_TIMEOUT of the stopped instances (default 10 s)
SLACK = 4.0
CLEAN_EXIT = frozenset({0, -signal.SIGTERM})


async def test_sigterm_mid_answer_finishes_or_interrupts_within_the_drain_deadline(
    deployment: Deployment,
) -> None:
    # Two producing instances, stopped together: on "quick" the answer can finish within the
    # deadline (372 tokens at 150 tokens/s); on "slow" it cannot (at 12 tokens/s). Open
    # responses end at the signal, so the drain deadline runs from the signal itself.
    drain = str(DRAIN)
    (quick,) = await deployment.start(
        1, UNBROKEN_DEMO_TOKENS_PER_SECOND="150", UNBROKEN_DRAIN_TIMEOUT=drain
    )
    (slow,) = await deployment.start(
        1, UNBROKEN_DEMO_TOKENS_PER_SECOND="12", UNBROKEN_DRAIN_TIMEOUT=drain
    )
    (survivor,) = await deployment.start(1)
    chats = {"quick": uid(), "slow": uid()}
    prompts = {"quick": "finish before the deadline", "slow": "too long for the deadline"}
    producers = {"quick": quick, "slow": slow}
    on_producer = {name: V5Transcript() for name in chats}
    followers = {name: V5Transcript() for name in chats}
    ended_at: dict[str, float] = {}
    cut_at: dict[str, float] = {}

    async with new_browser() as browser:
        # One guest session first: two concurrent first requests would make two guests.
        assert (await browser.get(f"{survivor.url}/api/chats")).status_code == 200

        async def ask(name: str) -> None:
            body = v5_body(chats[name], uid("m"), prompts[name])
            if not await post_v5_into(browser, producers[name].url, body, on_producer[name]):
                cut_at[name] = time.monotonic()
            else:
                ended_at[f"{name}-producer"] = time.monotonic()

        async def follow(name: str) -> None:
            await resume_v5_into(
                browser, survivor.url, chats[name], followers[name], from_start=True
            )
            ended_at[name] = time.monotonic()

        with anyio.fail_after(GRACEFUL + DRAIN + 40):
            async with anyio.create_task_group() as tg:
                for name in chats:
                    tg.start_soon(ask, name)
                await wait_until(
                    lambda: (
                        len(on_producer["quick"].text()) > 50
                        and len(on_producer["slow"].events) > 5
                    ),
                    within=20,
                    what="both answers under way",
                )
                for name in chats:
                    tg.start_soon(follow, name)
                await wait_until(
                    lambda: all(len(f.events) > 3 for f in followers.values()),
                    within=20,
                    what="the followers",
                )
                quick.signal(signal.SIGTERM)
                slow.signal(signal.SIGTERM)
                stopped = time.monotonic()
            # Readers that were cut off by the stopping instances resume on the survivor.
            for name, transcript in on_producer.items():
                if not transcript.done:
                    assert await resume_v5_into(browser, survivor.url, chats[name], transcript)
            statuses = {
                name: await producers[name].wait_exit(GRACEFUL + DRAIN + SLACK) for name in chats
            }

        # Nobody hung: everything ended within the graceful window plus the drain deadline.
        limit = GRACEFUL + DRAIN + SLACK
        for name, at in ended_at.items():
            assert at - stopped <= limit, f"{name} ended {at - stopped:.1f} s after SIGTERM"
        for name, at in cut_at.items():
            assert at - stopped <= GRACEFUL + SLACK, f"{name}'s reader was held {at - stopped:.1f}s"
        # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM is a clean exit.
        assert set(statuses.values()) <= CLEAN_EXIT, statuses

        reasoning, text = expected_answer(prompts["quick"])
        for transcript in (on_producer["quick"], followers["quick"]):
            check_v5_transcript(transcript, reasoning, text, complete=True)
        reasoning, text = expected_answer(prompts["slow"])
        for transcript in (on_producer["slow"], followers["slow"]):
            check_v5_transcript(transcript, reasoning, text, complete=False)
            assert transcript.done and transcript.terminal is not None
            assert transcript.terminal["type"] == "error", transcript.terminal
        partial = followers["slow"].text("reasoning") + followers["slow"].text()
        assert on_producer["slow"].text("reasoning") + on_producer["slow"].text() == partial

        quick_chat = await settled_chat(browser, survivor.url, chats["quick"], within=10)
        answer = quick_chat["messages"][-1]
        assert (
            answer["status"] == "done"
            and stored_text(answer) == expected_answer(prompts["quick"])[1]
        )
        slow_chat = await settled_chat(browser, survivor.url, chats["slow"], within=10)
        answer = slow_chat["messages"][-1]
        assert answer["status"] == "interrupted", answer
        assert stored_text(answer, "reasoning") + stored_text(answer) == partial
        assert not deployment.crashes()


async def test_sigterm_while_idle_exits_promptly(deployment: Deployment) -> None:
    """No answer running and an idle keep-alive client: the instance exits at once."""
    (instance,) = await deployment.start(1)
    async with new_browser() as browser:
        assert (await browser.get(f"{instance.url}/api/chats")).status_code == 200
        instance.signal(signal.SIGTERM)
        started = time.monotonic()
        assert await instance.wait_exit(GRACEFUL + SLACK) in CLEAN_EXIT
    assert time.monotonic() - started < GRACEFUL + SLACK
