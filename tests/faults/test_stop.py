"""Stop, in the awkward moments: racing the end of an answer, before the first token,
twice at once, from the other instance, racing the request that starts the answer.

Whatever the interleaving, the reader's terminal event, the stop's reply and the stored
message agree: ``finish`` + ``done`` + the whole text, or ``abort`` + ``stopped`` + exactly
the text the reader saw; nothing is left ``streaming``.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import httpx
import pytest

from tests._util import uid
from tests.chat._client import expected_answer, v4_body, v5_body
from tests.faults._harness import (
    ChatProcess,
    Deployment,
    V4Transcript,
    V5Transcript,
    check_v5_transcript,
    new_browser,
    post_v4_into,
    post_v5_into,
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

SEED = 1234
RACES = 40


async def stop(
    browser: httpx.AsyncClient, instance: ChatProcess, chat_id: str, **body: Any
) -> dict[str, Any]:
    response = await browser.post(
        f"{instance.url}/api/chat/{chat_id}/stop", json=body if body else None
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def check_agreement(
    transcript: V5Transcript, answer: dict[str, Any], prompt: str, stop_reply: dict[str, Any]
) -> str:
    """The reader's end, the stored message and the stop's reply tell one story."""
    reasoning, text = expected_answer(prompt)
    assert transcript.done and transcript.terminal is not None, transcript.types()[-3:]
    end = transcript.terminal["type"]
    if end == "finish":
        check_v5_transcript(transcript, reasoning, text, complete=True)
        assert answer["status"] == "done", answer
        assert stored_text(answer) == text
        assert stop_reply["stopped"] is False, stop_reply
    else:
        assert end == "abort", transcript.terminal
        check_v5_transcript(transcript, reasoning, text, complete=False)
        assert answer["status"] == "stopped", answer
        assert stored_text(answer) == transcript.text()
        assert stored_text(answer, "reasoning") == transcript.text("reasoning")
        assert stop_reply["stopped"] is True and stop_reply["state"] == "cancelled"
    return end


async def test_stop_racing_the_end_of_the_answer(deployment: Deployment) -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    one, two = await deployment.start(2, UNBROKEN_DEMO_TOKENS_PER_SECOND="200")
    async with new_browser() as browser:
        assert (await browser.get(f"{one.url}/api/chats")).status_code == 200
        outcomes: list[str] = []

        async def race(index: int) -> None:
            chat_id, prompt = uid(), f"race the end {index}"
            _, text = expected_answer(prompt)
            # Stop when 0-400 characters (0-60 tokens, 0-300 ms) are left, mostly within the
            # last two tokens (the end is recorded a few ms after the last chunk), from
            # either instance.
            left = rng.choice((0, rng.randint(0, 10), rng.randint(0, 10), rng.randint(0, 400)))
            where = rng.choice((one, two))
            transcript = V5Transcript()
            reply: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:
                body = v5_body(chat_id, uid("m"), prompt)
                tg.start_soon(post_v5_into, browser, one.url, body, transcript)
                await wait_until(
                    lambda: len(transcript.text()) >= len(text) - left or transcript.done,
                    within=30,
                    what="the end of the answer",
                )
                reply = await stop(browser, where, chat_id)
            chat = await settled_chat(browser, two.url, chat_id, within=15)
            outcomes.append(check_agreement(transcript, chat["messages"][-1], prompt, reply))

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for index in range(RACES):
                    tg.start_soon(race, index)
        print("outcomes", sorted(outcomes))
        assert len(outcomes) == RACES
    assert not deployment.crashes()


async def test_stop_before_the_first_token(deployment: Deployment) -> None:
    """Stopped right after ``start``, while the model has produced nothing (2 tokens/s)."""
    producer, other = await deployment.start(2, UNBROKEN_DEMO_TOKENS_PER_SECOND="2")
    async with new_browser() as browser:
        for protocol, stopper in (("v5", producer), ("v5", other), ("v4", other)):
            chat_id, prompt = uid(), f"stop before anything {protocol} {stopper.name}"
            if protocol == "v5":
                transcript = V5Transcript()
                async with anyio.create_task_group() as tg:
                    body = v5_body(chat_id, uid("m"), prompt)
                    tg.start_soon(post_v5_into, browser, producer.url, body, transcript)
                    await wait_until(lambda t=transcript: "start" in t.types(), within=10, what="s")
                    assert not transcript.text("reasoning")
                    reply = await stop(browser, stopper, chat_id)
                assert reply["stopped"] is True, reply
                assert transcript.terminal == {"type": "abort"}, transcript.types()
                assert transcript.text("reasoning") == "" and transcript.text() == ""
            else:
                v4 = V4Transcript()
                async with anyio.create_task_group() as tg:
                    body = v4_body(chat_id, uid("m"), prompt)
                    tg.start_soon(post_v4_into, browser, producer.url, body, v4)
                    await wait_until(lambda t=v4: "f" in t.codes(), within=10, what="f:")
                    reply = await stop(browser, stopper, chat_id)
                assert reply["stopped"] is True, reply
                assert v4.complete and v4.terminal == "d"
                assert v4.lines[-1][1] == {"finishReason": "other"}
                assert v4.text() == "" and v4.reasoning() == ""
            chat = await settled_chat(browser, other.url, chat_id, within=10)
            answer = chat["messages"][-1]
            assert answer["role"] == "assistant" and answer["status"] == "stopped"
            assert stored_text(answer) == "" and stored_text(answer, "reasoning") == ""
    assert not deployment.crashes()


async def test_stop_twice_at_once_from_both_instances(deployment: Deployment) -> None:
    one, two = await deployment.start(2)
    async with new_browser() as browser:
        chat_id, prompt = uid(), "stop me twice"
        transcript = V5Transcript()
        replies: list[dict[str, Any]] = []

        async def stop_into(instance: ChatProcess) -> None:
            replies.append(await stop(browser, instance, chat_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                post_v5_into, browser, one.url, v5_body(chat_id, uid("m"), prompt), transcript
            )
            await wait_until(lambda: len(transcript.text()) > 20, within=10, what="text")
            async with anyio.create_task_group() as stops:
                stops.start_soon(stop_into, one)
                stops.start_soon(stop_into, two)
        assert any(r["stopped"] for r in replies), replies
        assert all(r["state"] in (None, "cancelled") for r in replies), replies
        chat = await settled_chat(browser, two.url, chat_id, within=10)
        check_agreement(
            transcript, chat["messages"][-1], prompt, next(r for r in replies if r["stopped"])
        )
        # A third stop, afterwards, changes nothing.
        third = await stop(browser, two, chat_id)
        assert third["stopped"] is False and third["streamId"] is None
        assert (await settled_chat(browser, one.url, chat_id, within=5)) == chat
    assert not deployment.crashes()


async def test_stop_from_the_other_instance_cancels_within_a_second(
    deployment: Deployment,
) -> None:
    """The producer on instance one is cancelled promptly by a stop sent to instance two,
    for a v5 and a v4 reader; the answer does not grow after the stop."""
    one, two = await deployment.start(2, UNBROKEN_DEMO_TOKENS_PER_SECOND="50")
    async with new_browser() as browser:
        chat_id, prompt = uid(), "stop from afar"
        v5, v4 = V5Transcript(), V4Transcript()
        ended: dict[str, float] = {}

        async def ask() -> None:
            await post_v5_into(browser, one.url, v5_body(chat_id, uid("m"), prompt), v5)
            ended["v5"] = time.monotonic()

        async def follow_v4() -> None:
            async with browser.stream(
                "GET", f"{one.url}/api/chat", params={"chatId": chat_id}
            ) as response:
                from tests.faults._harness import read_v4_into

                await read_v4_into(response, v4)
            ended["v4"] = time.monotonic()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await wait_until(lambda: len(v5.text()) > 40, within=10, what="text")
            tg.start_soon(follow_v4)
            await wait_until(lambda: len(v4.lines) > 3, within=10, what="v4 lines")
            sent = time.monotonic()
            reply = await stop(browser, two, chat_id, streamId=None)
            replied = time.monotonic()
        assert reply["stopped"] is True
        assert replied - sent < 5, "the stop itself took too long"
        for name, at in ended.items():
            assert at - sent < 2.0, f"the {name} reader ended {at - sent:.2f} s after the stop"
        chat = await settled_chat(browser, two.url, chat_id, within=10)
        answer = chat["messages"][-1]
        check_agreement(v5, answer, prompt, reply)
        assert v4.terminal == "d" and v4.text() == v5.text()
        # The producer really stopped: the stream's log does not grow any more.
        count = await replayed_length(browser, two, chat_id)
        await anyio.sleep(0.5)  # 25 tokens' worth at 50 tokens/s
        assert await replayed_length(browser, two, chat_id) == count
    assert not deployment.crashes()


async def replayed_length(browser: httpx.AsyncClient, instance: ChatProcess, chat_id: str) -> int:
    """The text length of a full v5 replay of the chat's last answer (-1: nothing)."""
    replay = V5Transcript()
    async with browser.stream("GET", f"{instance.url}/api/chat/{chat_id}/stream") as response:
        if response.status_code == 204:
            return -1
        from tests.faults._harness import read_v5_into

        await read_v5_into(response, replay)
    return len(replay.text())


async def test_stop_racing_the_request_that_starts_the_answer(deployment: Deployment) -> None:
    """POST and stop sent at the same moment, many times: whatever wins, the reader and the
    stored message agree and nothing stays 'streaming'."""
    one, two = await deployment.start(2, UNBROKEN_DEMO_TOKENS_PER_SECOND="1000")
    rng = random.Random(SEED + 1)
    async with new_browser() as browser:
        assert (await browser.get(f"{one.url}/api/chats")).status_code == 200
        problems: list[str] = []

        async def attempt(index: int) -> None:
            chat_id, prompt = uid(), f"stop at once {index}"
            transcript = V5Transcript()
            # The chat must exist for the stop to find it: a first answer, then the race
            # against the second one.
            await post_v5_into(
                browser, one.url, v5_body(chat_id, uid("m"), "first"), V5Transcript()
            )
            await settled_chat(browser, one.url, chat_id, within=15)
            reply: dict[str, Any] = {}

            async def stop_soon() -> None:
                nonlocal reply
                await anyio.sleep(rng.uniform(0, 0.03))
                reply = await stop(browser, rng.choice((one, two)), chat_id)

            async with anyio.create_task_group() as tg:
                body = v5_body(chat_id, uid("m"), prompt)
                tg.start_soon(post_v5_into, browser, one.url, body, transcript)
                tg.start_soon(stop_soon)
            chat = await settled_chat(browser, two.url, chat_id, within=15)
            answer = chat["messages"][-1]
            end = transcript.terminal["type"] if transcript.terminal else None
            expected = {"finish": "done", "abort": "stopped"}.get(end or "", "?")
            if answer["status"] != expected or stored_text(answer) != transcript.text():
                problems.append(
                    f"#{index}: reader ended {end!r} with {len(transcript.text())} chars; "
                    f"stored {answer['status']!r} with {len(stored_text(answer))} chars; "
                    f"stop replied {reply}"
                )

        with anyio.fail_after(90):
            for batch in range(3):
                async with anyio.create_task_group() as tg:
                    for index in range(8):
                        tg.start_soon(attempt, batch * 8 + index)
        assert not problems, "\n".join(problems)
    assert not deployment.crashes()
