"""Redis a few milliseconds away: every command both workers send is delayed 2 ms, then 5 ms,
by a fault proxy (the reply comes back at once, so each round trip grows by that much).

At 5 ms the randomised refresh torture (tests/faults/test_torture.py, fewer answers) must pass
with no gap and no duplicate (2 ms is the same test with less room for a race). The test also
prints, with Redis 0, 2 and 5 ms away, what a reader on the other worker waits: the first
event of a resume (``resume``) and how much later than the asking client it receives each
event (``delivery``); docs/benchmarks.md has the figures and this command::

    .venv/bin/python -m pytest tests/faults/test_latency.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import os
import random
import time

import anyio
import httpx
import pytest

from tests._util import uid
from tests.chat._client import v5_body
from tests.faults._harness import Deployment, new_browser, wait_until
from tests.faults._proxy import fault_proxy
from tests.faults.test_partition import redis_port
from tests.faults.test_torture import Outcome, torture_one

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(150),
    pytest.mark.redis,
    pytest.mark.postgres,
]

ANSWERS = int(os.environ.get("UNBROKEN_LATENCY_ANSWERS", "20"))  # of the torture at 5 ms
TORTURE_LATENCY = 0.005
PROBES = int(os.environ.get("UNBROKEN_LATENCY_PROBES", "8"))  # resumes timed per latency
PROBE_EVENTS = 120  # events each probe's two clients read before hanging up


async def test_torture_with_redis_milliseconds_away(deployment: Deployment, redis_url: str) -> None:
    with fault_proxy(redis_port(redis_url)) as proxy:
        instances = await deployment.start(
            2,
            REDIS_URL=proxy.url,
            UNBROKEN_DEMO_TOKENS_PER_SECOND="800",
            UNBROKEN_LEASE_TTL="2.0",
        )
        rows = []
        for latency in (0.0, 0.002, 0.005):
            proxy.set_latency(latency)
            if latency == TORTURE_LATENCY:
                outcomes = await torture(instances, latency)
                problems = [o.problem for o in outcomes if o.problem]
                assert not problems, f"at +{latency * 1000:g} ms: " + "\n".join(problems[:10])
            rows.append((latency, *await reader_delays(instances)))
        print("\nredis +ms | resume first event p50 / p95 ms | delivery delay p50 / p95 ms")
        for latency, resume, delivery in rows:
            print(
                f"{latency * 1000:9g} | {pct(resume, 50):14.1f} / {pct(resume, 95):5.1f} "
                f"| {pct(delivery, 50):13.1f} / {pct(delivery, 95):5.1f}"
            )
        assert all(p.alive for p in instances)
        assert not deployment.crashes(), deployment.crashes()


async def torture(instances: list, latency: float) -> list[Outcome]:  # type: ignore[type-arg]
    run_seed = random.SystemRandom().randrange(2**32)
    print(f"latency +{latency * 1000:g} ms, torture seed {run_seed}")
    outcomes: list[Outcome] = []
    limiter = anyio.CapacityLimiter(8)
    browsers = [new_browser() for _ in range(2)]

    async def run(index: int) -> None:
        async with limiter:
            try:
                browser = browsers[index % 2]
                outcomes.append(await torture_one(index, run_seed, browser, instances))
            except (TimeoutError, AssertionError) as exc:
                outcomes.append(Outcome("?", 0, f"#{index}: {str(exc)[:300]}"))

    try:
        for browser in browsers:  # one guest session each before the concurrent requests
            assert (await browser.get(f"{instances[0].url}/api/chats")).status_code == 200
        async with anyio.create_task_group() as tg:
            for index in range(ANSWERS):
                tg.start_soon(run, index)
    finally:
        for browser in browsers:
            await browser.aclose()
    assert len(outcomes) == ANSWERS
    return outcomes


async def reader_delays(instances: list) -> tuple[list[float], list[float]]:  # type: ignore[type-arg]
    """Seconds to a resume's first event on the other worker; seconds each event reaches a
    follower on the other worker after it reached the asking client."""
    producer, other = instances
    resume: list[float] = []
    delivery: list[float] = []
    async with new_browser() as browser:
        assert (await browser.get(f"{producer.url}/api/chats")).status_code == 200
        for _ in range(PROBES):
            chat_id = uid()
            asked_at: dict[str, float] = {}
            followed_at: dict[str, float] = {}
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    body = v5_body(chat_id, uid("m"), "how far away is redis?")
                    tg.start_soon(timed_events, browser, "POST", f"{producer.url}/api/chat",
                                  asked_at, body)  # fmt: skip
                    # (the answer goes on in the engine after both clients hang up)
                    await wait_until(lambda a=asked_at: len(a) > 5, within=10, what="text")
                    started = time.monotonic()
                    first = await timed_events(
                        browser, "GET", f"{other.url}/api/chat/{chat_id}/stream", followed_at
                    )
                    resume.append(first - started)
            # Live events only: those the asking client got after the follower caught up.
            delivery += [
                followed_at[key] - asked_at[key]
                for key in followed_at
                if asked_at.get(key, 0.0) > first + 0.05
            ]
    return resume, delivery


async def timed_events(
    browser: httpx.AsyncClient, method: str, url: str, seen: dict[str, float], body: object = None
) -> float:
    """Read an answer's first `PROBE_EVENTS` events, noting when each SSE ``data:`` line
    arrived; the first one's time."""
    first = 0.0
    async with browser.stream(method, url, json=body) as response:
        assert response.status_code == 200, response.status_code
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                now = time.monotonic()
                first = first or now
                seen.setdefault(line, now)
                if len(seen) >= PROBE_EVENTS:
                    break
    return first


def pct(values: list[float], at: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, len(ordered) * at // 100)]
