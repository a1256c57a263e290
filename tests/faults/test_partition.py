"""The producing worker cut off from Redis (a fault proxy between it and Redis: open
connections closed, new ones refused), while the other worker reaches Redis directly.

- Shorter than the lease: nothing visible happens to anyone but a pause. The asking client
  keeps receiving from the producer's memory; a follower on the other worker waits (the
  lease is still valid), then gets the rest once the producer has written it; the answer is
  stored ``done`` and whole.
- Three times the lease: the other worker sees the lease lapse and records the stream
  ``interrupted`` (its follower ends there, with what Redis held). When the producer gets
  Redis back, its writes are refused (fencing: the stream is no longer its own), it stops
  generating, and what is stored is the interrupted stream as Redis has it, the text every
  other reader got. Its own client had been served from memory meanwhile: it got more text,
  then an ``error`` event saying the answer was interrupted; a reload shows the stored
  message. Nothing is doubled anywhere.
"""

from __future__ import annotations

from functools import partial

import anyio
import httpx
import pytest

from tests._util import uid
from tests.chat._client import expected_answer, v5_body
from tests.faults._harness import (
    ChatProcess,
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
from tests.faults._proxy import fault_proxy
from tests.faults.test_sentinel import follow

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.redis,
    pytest.mark.postgres,
]

#: (seconds cut off, UNBROKEN_LEASE_TTL, demo tokens per second): each answer lasts well
#: beyond its cut, so the producer is still writing when Redis comes back.
CUTS = {
    "shorter-than-the-lease": (1.0, 1.5, 200),
    "3x-lease": (3.0, 1.0, 80),
}


def redis_port(url: str) -> int:
    return httpx.URL(url.replace("redis://", "http://", 1)).port or 6379


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
async def test_producer_cut_off_from_redis(
    deployment: Deployment, redis_url: str, cut: tuple[float, float, int]
) -> None:
    outage, lease, speed = cut
    with fault_proxy(redis_port(redis_url)) as proxy:
        env = {"UNBROKEN_LEASE_TTL": str(lease), "UNBROKEN_DEMO_TOKENS_PER_SECOND": str(speed)}
        started: dict[str, list[ChatProcess]] = {}

        async def start(name: str, **overrides: str) -> None:
            started[name] = await deployment.start(1, **overrides, **env)

        async with anyio.create_task_group() as tg:  # both at once: the database is migrated
            tg.start_soon(partial(start, "producer", REDIS_URL=proxy.url))
            tg.start_soon(partial(start, "other"))
        [producer], [other] = started["producer"], started["other"]
        chat_id, prompt = uid(), f"cut off for {outage:g} s"
        reasoning, text = expected_answer(prompt)
        asked, followed = V5Transcript(), V5Transcript()
        async with new_browser() as browser:
            assert (await browser.get(f"{producer.url}/api/chats")).status_code == 200
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    body = v5_body(chat_id, uid("m"), prompt)
                    tg.start_soon(post_v5_into, browser, producer.url, body, asked)
                    await wait_until(lambda: len(asked.text()) > 40, within=20, what="text")
                    tg.start_soon(follow, browser, other.url, chat_id, followed)
                    await wait_until(lambda: len(followed.events) > 5, within=10, what="follow")
                    with proxy.partition():
                        seen = len(asked.events)
                        await anyio.sleep(outage)
                        # Fail open: the asking client kept receiving from memory.
                        assert len(asked.events) > seen + 10
            stored = (await settled_chat(browser, other.url, chat_id, within=20))["messages"][-1]
            replay = V5Transcript()
            await resume_v5_into(browser, other.url, chat_id, replay, from_start=True)
        if outage < lease:
            check_v5_transcript(asked, reasoning, text, complete=True)
            check_v5_transcript(followed, reasoning, text, complete=True)
            assert (stored["status"], stored_text(stored)) == ("done", text)
        else:
            # Fenced: the other worker ended the stream, the producer's late writes were
            # refused. Every reader of Redis and the store agree, the asking client saw more.
            assert stored["status"] == "interrupted", stored["status"]
            kept = stored_text(stored)
            assert text.startswith(kept) and len(kept) < len(text)
            for transcript in (followed, replay):
                check_v5_transcript(transcript, reasoning, text, complete=False)
                assert transcript.text() == kept
                assert transcript.terminal is not None and transcript.terminal["type"] == "error"
            check_v5_transcript(asked, reasoning, text, complete=False)
            assert len(asked.text()) > len(kept) and asked.done
            assert asked.terminal is not None and asked.terminal["type"] == "error"
        assert producer.alive and other.alive
        assert not deployment.crashes(), deployment.crashes()


async def test_the_health_check_reports_redis_without_failing(
    deployment: Deployment, redis_url: str
) -> None:
    """``/healthz`` says whether Redis answers, and stays 200 while it does not: the
    service goes on from memory, so a load balancer must not take every worker out."""
    with fault_proxy(redis_port(redis_url)) as proxy:
        [instance] = await deployment.start(1, REDIS_URL=proxy.url)
        async with httpx.AsyncClient(base_url=instance.url, timeout=10) as client:
            health = await client.get("/healthz")
            assert (health.status_code, health.json()["redis"]) == (200, "ok")
            with proxy.partition():
                with anyio.fail_after(5):
                    health = await client.get("/healthz")
                assert health.status_code == 200, health.text
                assert health.json()["redis"] == "unreachable"
                assert health.json()["status"] == "ok"
            with anyio.fail_after(10):  # connections are accepted again
                while True:  # polling another process: there is nothing to wait on
                    if (await client.get("/healthz")).json()["redis"] == "ok":
                        break
                    await anyio.sleep(0.1)
