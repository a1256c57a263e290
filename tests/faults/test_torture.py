"""Randomised refresh torture: hundreds of answers, each cut at random points, resumed after
random delays on a random instance, by v4 and v5 clients.

Three client kinds, as the AI SDK clients behave:

- ``v5-offset``: reconnects with ``Last-Event-ID`` (what an SSE client does); the pieces it
  gets must join into the answer exactly: no gap, no duplicate, ids strictly increasing.
- ``v5-replay``: ``useChat({resume: true})`` after a refresh: a full replay each time, with
  the same ``messageId``; the last replay must be the whole answer.
- ``v4``: ``experimental_resume()``: a full replay of the running answer, or the stored
  message as ``append-message`` once it is finished.

Every answer must end (no hang: each request has a deadline), and the stored message must
be the answer. The seed is printed; set ``UNBROKEN_FAULTS_SEED`` to replay a run's choices
(the interleaving with the server's timing will differ). ``UNBROKEN_TORTURE_ANSWERS`` sets
the number of answers (default 300).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from tests.chat._client import expected_answer, v4_body, v5_body
from tests.faults._harness import (
    ChatProcess,
    Deployment,
    Unavailable,
    V4Transcript,
    V5Transcript,
    check_v5_transcript,
    new_browser,
    post_v4_into,
    post_v5_into,
    resume_v4_into,
    resume_v5_into,
    settled_chat,
    stored_text,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.redis,
    pytest.mark.postgres,
]

ANSWERS = int(os.environ.get("UNBROKEN_TORTURE_ANSWERS", "300"))
CONCURRENCY = 12
REQUEST_DEADLINE = 30.0  # one request (one connection) may take this long, at most
MAX_RESUMES = 6
KINDS = ("v5-offset", "v5-replay", "v4")


def seed() -> int:
    raw = os.environ.get("UNBROKEN_FAULTS_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


@dataclass
class Outcome:
    kind: str
    resumes: int
    problem: str | None = None
    retried: int = 0  # requests answered 503 and sent again (``retry_unavailable``)


async def torture_one(
    index: int,
    run_seed: int,
    browser: httpx.AsyncClient,
    instances: list[ChatProcess],
    *,
    retry_unavailable: bool = False,
) -> Outcome:
    """One answer asked, cut and resumed by a random client kind; checks what it saw and
    what was stored. ``retry_unavailable``: a 503 is sent again after its Retry-After (as a
    real client does while Redis fails over) instead of failing the answer."""
    rng = random.Random(f"{run_seed}-{index}")
    kind = rng.choice(KINDS)
    chat_id = f"t{uuid.uuid4().hex[:20]}"
    prompt = f"torture {run_seed} #{index}"
    reasoning, text = expected_answer(prompt)
    outcome = Outcome(kind, 0)

    async def connect(request: Any, *args: Any, **kwargs: Any) -> Any:
        """One connection, hung up at a random event count or moment, except the last
        allowed one, which reads to the end. Fails if it takes over the deadline."""
        final = outcome.resumes > MAX_RESUMES
        stop_after = None
        if not final and rng.random() < 0.5:
            stop_after = rng.randint(1, 40) if rng.random() < 0.5 else rng.randint(1, 400)
        # A refresh at a random moment of a ~0.6 s answer, or none.
        moment = None if final else rng.choice((None, rng.uniform(0, 0.2), rng.uniform(0, 0.8)))
        with anyio.fail_after(REQUEST_DEADLINE):
            while True:
                try:
                    return await request(
                        browser, *args, stop_after=stop_after, hang_up_after=moment, **kwargs
                    )
                except Unavailable as exc:
                    if not retry_unavailable:
                        raise
                    outcome.retried += 1
                    await anyio.sleep(exc.retry_after)

    async def pause() -> None:
        outcome.resumes += 1
        await anyio.sleep(rng.choice((0.0, rng.uniform(0, 0.05), rng.uniform(0, 0.4))))

    def anywhere() -> str:
        return rng.choice(instances).url

    if kind == "v5-offset":
        transcript = V5Transcript()
        await connect(post_v5_into, anywhere(), v5_body(chat_id, f"m{index}", prompt), transcript)
        while not transcript.done:
            await pause()
            got = await connect(resume_v5_into, anywhere(), chat_id, transcript)
            assert got is not None, "204 while the client had not seen the end"
        check_v5_transcript(transcript, reasoning, text, complete=True)
        message_id = transcript.message_ids()[0]
    elif kind == "v5-replay":
        replay = V5Transcript()
        await connect(post_v5_into, anywhere(), v5_body(chat_id, f"m{index}", prompt), replay)
        message_id = replay.message_ids()[0] if replay.events else None
        while not replay.done:
            await pause()
            replay = V5Transcript()  # the page reloads: it starts from nothing
            got = await connect(resume_v5_into, anywhere(), chat_id, replay, from_start=True)
            assert got is not None, "204 within the resume window"
            if replay.events:
                message_id = message_id or replay.message_ids()[0]
                assert replay.message_ids() == [message_id], "a replay with another messageId"
                check_v5_transcript(replay, reasoning, text, complete=False)
        check_v5_transcript(replay, reasoning, text, complete=True)
    else:

        def v4_ended(v4: V4Transcript) -> bool:
            """Whether the v4 client is done: the body ended normally. A body that ends
            without a terminal line is an answer cut short while Redis fails over (the v4
            client has no reconnect): with ``retry_unavailable`` the user reloads."""
            return v4.complete and (v4.terminal is not None or not retry_unavailable)

        v4 = V4Transcript()
        await connect(post_v4_into, anywhere(), v4_body(chat_id, f"m{index}", prompt), v4)
        message_id = v4.message_id()
        finished = v4_ended(v4)
        while not finished:
            await pause()
            v4 = V4Transcript()
            await connect(resume_v4_into, anywhere(), chat_id, v4)
            if v4.codes()[:1] == ["2"]:
                # Finished and stored: the seed's append-message fallback.
                [item] = v4.lines[0][1]
                assert item["type"] == "append-message", item
                stored = json.loads(item["message"])
                message_id = message_id or stored["id"]
                assert stored["id"] == message_id and stored["content"] == text
                finished = True
            elif v4.lines:
                message_id = message_id or v4.message_id()
                assert v4.message_id() == message_id, "a replay with another messageId"
                assert reasoning.startswith(v4.reasoning())
                assert text.startswith(v4.text()), "a v4 replay that is not the answer"
                finished = v4_ended(v4)
            else:
                assert v4.status == 200
                assert not v4_ended(v4), "an empty v4 resume within the resume window"
        if v4.codes()[:1] != ["2"]:
            assert v4.terminal == "d", f"the v4 answer ended with {v4.lines[-1:]}"
            assert v4.text() == text and v4.reasoning() == reasoning
    chat = await settled_chat(
        browser, instances[index % 2].url, chat_id, within=20, retry_unavailable=retry_unavailable
    )
    answer = chat["messages"][-1]
    assert message_id is None or answer["id"] == message_id, "stored under another id"
    assert answer["status"] == "done", answer["status"]
    assert stored_text(answer) == text and stored_text(answer, "reasoning") == reasoning
    return outcome


async def test_refresh_torture(deployment: Deployment) -> None:
    run_seed = seed()
    print(f"torture seed: {run_seed} (UNBROKEN_FAULTS_SEED={run_seed} to replay)")
    instances = await deployment.start(
        2, UNBROKEN_DEMO_TOKENS_PER_SECOND="800", UNBROKEN_LEASE_TTL="2.0"
    )
    outcomes: list[Outcome] = []
    limiter = anyio.CapacityLimiter(CONCURRENCY)
    started = time.monotonic()

    async def run(index: int, browser: httpx.AsyncClient) -> None:
        async with limiter:
            try:
                outcomes.append(await torture_one(index, run_seed, browser, instances))
            except TimeoutError:
                outcomes.append(Outcome("?", 0, f"#{index}: a request hung (> deadline)"))
            except AssertionError as exc:
                outcomes.append(Outcome("?", 0, f"#{index}: {str(exc)[:300]}"))

    # A handful of browsers (users), each with several chats at once.
    browsers = [new_browser() for _ in range(4)]
    try:
        for browser in browsers:
            assert (await browser.get(f"{instances[0].url}/api/chats")).status_code == 200
        async with anyio.create_task_group() as tg:
            for index in range(ANSWERS):
                tg.start_soon(run, index, browsers[index % len(browsers)])
    finally:
        for browser in browsers:
            await browser.aclose()
    took = time.monotonic() - started
    resumed_by_kind = await server_resumes(instances)
    problems = [o.problem for o in outcomes if o.problem]
    kinds = Counter(o.kind for o in outcomes)
    resumes = sum(o.resumes for o in outcomes)
    print(f"{len(outcomes)} answers in {took:.1f} s, {resumes} resumes, kinds {dict(kinds)}")
    print(f"resumes served, by what they found: {resumed_by_kind}")
    assert len(outcomes) == ANSWERS
    assert not problems, f"seed {run_seed}: {len(problems)} answers broke:\n" + "\n".join(
        problems[:20]
    )
    assert all(p.alive for p in instances)
    assert not deployment.crashes(), deployment.crashes()


async def server_resumes(instances: list[ChatProcess]) -> dict[str, float]:
    """``unbroken_chat_resumes_total`` summed over the instances, by protocol and kind
    (``live``: the answer was still being generated when the client came back)."""
    totals: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=10) as client:
        for instance in instances:
            for line in (await client.get(f"{instance.url}/metrics")).text.splitlines():
                if line.startswith("unbroken_chat_resumes_total{"):
                    labels, _, value = line.rpartition(" ")
                    totals[labels.removeprefix("unbroken_chat_resumes_total")] += float(value)
    return dict(totals)
