"""Garbage in unbroken's Redis keys and channels, written in the middle of answers.

Formats: `unbroken.backends.redis._keys` (meta hash, log stream ``0-<seq+1>`` with ``data``
and ``offset``, lease string, ``events``/``ends`` channels with compact JSON notifications).

What must hold: garbage in one stream's keys gives that stream a clear error (readers end
with an ``error`` event that says so; the stored answer is not left ``streaming``) and
touches nothing else; garbage on the notification channels changes nothing at all (the log
is the source of truth); the processes go on serving every other stream.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from redis.exceptions import ResponseError

from tests._util import uid
from tests.chat._client import expected_answer, v5_body
from tests.faults._harness import (
    Deployment,
    V5Transcript,
    chat_json,
    check_v5_transcript,
    new_browser,
    post_v5_into,
    resume_v5_into,
    settled_chat,
    stored_text,
    wait_until,
)
from unbroken.backends.redis._keys import StreamKeys, stream_keys

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.redis,
    pytest.mark.postgres,
]

HUGE = 4 * 1024 * 1024  # bytes: a value far larger than anything unbroken writes

Corrupt = Callable[[Any, StreamKeys], Awaitable[None]]


async def replace(redis: Any, key: str, write: Callable[[Any], Any]) -> None:
    """Delete ``key`` and ``write`` it anew in one transaction: between two separate
    commands the producer's next append or lease renewal may write it again (then the
    write fails with WRONGTYPE, or the key ends up as unbroken wrote it)."""
    async with redis.pipeline(transaction=True) as pipe:
        write(pipe.delete(key))
        await pipe.execute()


async def meta_wrong_type(redis: Any, keys: StreamKeys) -> None:
    await replace(redis, keys.meta, lambda pipe: pipe.set(keys.meta, "not a hash"))


async def meta_bad_fields(redis: Any, keys: StreamKeys) -> None:
    await redis.hset(keys.meta, mapping={"state": "bogus", "chunks": "many"})


async def meta_huge_error(redis: Any, keys: StreamKeys) -> None:
    await redis.hset(keys.meta, mapping={"state": "??", "error": "E" * HUGE})


async def log_wrong_type(redis: Any, keys: StreamKeys) -> None:
    await replace(redis, keys.log, lambda pipe: pipe.set(keys.log, "not a stream"))


async def log_foreign_entry(redis: Any, keys: StreamKeys) -> None:
    await redis.xadd(keys.log, {"hello": "world"})  # an id of the form <ms>-0, not ours


async def append_foreign_chunk(redis: Any, keys: StreamKeys, data: str) -> None:
    """Add ``data`` as the next chunk, numbered and placed as the producer would (retried
    when the producer appends first)."""
    for _ in range(20):
        [(last_id, fields)] = await redis.xrevrange(keys.log, count=1)
        seq = int(last_id.split(b"-")[1]) - 1  # the entry's last chunk
        offset = int(fields[b"o"]) + len(fields[b"d"].decode())
        entry = {"o": offset, "n": len(data), "d": data}
        try:
            await redis.xadd(keys.log, entry, id=f"0-{seq + 2}")
            return
        except ResponseError:  # the producer got there first: number it again
            await anyio.lowlevel.checkpoint()
    raise AssertionError("could not append a chunk: the producer kept appending")


async def log_truncated_json(redis: Any, keys: StreamKeys) -> None:
    """The next chunk, as the producer would number it, holding half a JSON event."""
    await append_foreign_chunk(redis, keys, '{"type":"text-delta","id":"te')


async def log_huge_entry(redis: Any, keys: StreamKeys) -> None:
    """The next chunk: 4 MiB that are not an event at all."""
    await append_foreign_chunk(redis, keys, "x" * HUGE)


async def lease_wrong_type(redis: Any, keys: StreamKeys) -> None:
    await replace(redis, keys.lease, lambda pipe: pipe.hset(keys.lease, mapping={"a": "b"}))


CHANNEL_GARBAGE = [
    b"garbage",
    b"",
    b"\xff\xfe\x00",
    b'{"a": [[',
    b'{"a": "x"}',
    b'{"a": [[-1, 0, "x"]]}',
    b'{"a": [[0, 0, 5]]}',
    b'{"e": "bogus"}',
    b'{"e": "active"}',
    b"[1, 2, 3]",
    b"null",
    b"9" * 5000,
]
# Well-formed notifications that do not match the log: readers must trust the log.
CHANNEL_MISLEADING = [
    b'{"a": [[1000000, 0, "from the future"]]}',  # a gap: read the log instead
    b'{"a": [[0, 0, "' + b"x" * HUGE + b'"]]}',  # a chunk every reader already has
]


async def channel_garbage(redis: Any, keys: StreamKeys) -> None:
    for _ in range(3):
        for payload in CHANNEL_GARBAGE + CHANNEL_MISLEADING:
            await redis.publish(keys.channel, payload)
            await redis.publish(keys.ends_channel, payload)
        await anyio.sleep(0.05)


async def false_end_for_readers(redis: Any, keys: StreamKeys) -> None:
    """A well-formed end on the events channel (what readers elsewhere listen to)."""
    await redis.publish(keys.channel, b'{"e":"done"}')


async def false_end_for_the_producer(redis: Any, keys: StreamKeys) -> None:
    """A well-formed end on the ends channel (what the producer listens to for stops)."""
    await redis.publish(keys.ends_channel, b'{"e":"cancelled"}')


KEY_GARBAGE: dict[str, Corrupt] = {
    "meta-wrong-type": meta_wrong_type,
    "meta-bad-fields": meta_bad_fields,
    "meta-huge-error": meta_huge_error,
    "log-wrong-type": log_wrong_type,
    "log-foreign-entry": log_foreign_entry,
    "log-truncated-json": log_truncated_json,
    "log-huge-entry": log_huge_entry,
    "lease-wrong-type": lease_wrong_type,
}
HARMLESS: dict[str, Corrupt] = {"channel-garbage": channel_garbage}


async def test_garbage_in_redis_breaks_only_its_own_stream(
    deployment: Deployment, redis_url: str
) -> None:
    cases = {"healthy": None, **KEY_GARBAGE, **HARMLESS}
    await run_cases(deployment, redis_url, deployment.prefix, cases)


async def test_a_false_end_notification_neither_stops_nor_truncates_the_answer(
    deployment: Deployment, redis_url: str
) -> None:
    """Well-formed end notifications (``{"e":"done"}`` on the events channel,
    ``{"e":"cancelled"}`` on the ends channel) for a stream that has not ended. The backend
    state is the truth: the producer must not stop (nobody called cancel) and readers must
    not end early (and never with a ``finish`` the model did not send). Besides a forged
    message, a Redis failover that loses the terminal write but not the notification does
    the same."""
    cases: dict[str, Corrupt | None] = {
        "false-end-for-readers": false_end_for_readers,
        "false-end-for-the-producer": false_end_for_the_producer,
    }
    await run_cases(deployment, redis_url, deployment.prefix, cases)


async def run_cases(
    deployment: Deployment,
    redis_url: str,
    key_prefix: str,
    cases: dict[str, Corrupt | None],
) -> None:
    import redis.asyncio as aioredis

    producer, other = await deployment.start(2, UNBROKEN_DEMO_TOKENS_PER_SECOND="60")
    chats = {name: uid() for name in cases}
    prompts = {name: f"garbage test: {name}" for name in cases}
    asked = {name: V5Transcript() for name in cases}  # readers on the producing instance
    followed = {name: V5Transcript() for name in cases}  # readers on the other one
    client = aioredis.from_url(redis_url)
    try:
        async with new_browser() as browser:
            assert (await browser.get(f"{other.url}/api/chats")).status_code == 200

            async def ask(name: str) -> None:
                body = v5_body(chats[name], uid("m"), prompts[name])
                await post_v5_into(browser, producer.url, body, asked[name])

            async def follow(name: str) -> None:
                await resume_v5_into(
                    browser, other.url, chats[name], followed[name], from_start=True
                )

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for name in cases:
                        tg.start_soon(ask, name)
                    await wait_until(
                        lambda: all(len(t.text()) > 30 for t in asked.values()),
                        within=20,
                        what="every answer under way",
                    )
                    for name in cases:
                        tg.start_soon(follow, name)
                    await wait_until(
                        lambda: all(len(t.events) > 3 for t in followed.values()),
                        within=20,
                        what="every follower under way",
                    )
                    for name, corrupt in cases.items():
                        if corrupt is not None:
                            chat = await chat_json(browser, other.url, chats[name])
                            stream_id = chat["activeStream"]["id"]
                            await corrupt(client, stream_keys(key_prefix, stream_id))

            problems: list[str] = []
            for name in cases:
                reasoning, text = expected_answer(prompts[name])
                seen = {}
                for where, transcript in (("asked", asked[name]), ("followed", followed[name])):
                    label = f"{name} ({where})"
                    end = transcript.terminal
                    seen[where] = transcript.text("reasoning") + transcript.text()
                    print(f"{label}: ended {end} after {len(seen[where])} chars")
                    if not transcript.done:
                        problems.append(f"{label}: the response ended without [DONE]")
                        continue
                    # A clear error (for a broken stream only), or the whole answer.
                    broken_ok = name in KEY_GARBAGE and end is not None and end["type"] == "error"
                    if broken_ok and not end.get("errorText"):
                        problems.append(f"{label}: an error without a message")
                    try:
                        check_v5_transcript(transcript, reasoning, text, complete=not broken_ok)
                    except AssertionError as exc:
                        problems.append(f"{label}: ended {end} and {str(exc)[:240]}")

                # The stored answer: never left streaming; the whole answer where nothing
                # was broken; for a broken stream, an error with (a prefix of) the answer.
                try:
                    chat = await settled_chat(browser, other.url, chats[name], within=15)
                except AssertionError as exc:
                    problems.append(f"{name}: {exc}")
                    continue
                answer = chat["messages"][-1]
                stored = stored_text(answer, "reasoning") + stored_text(answer)
                print(f"{name}: stored {answer['status']!r} with {len(stored)} chars")
                if answer["status"] == "done" or name not in KEY_GARBAGE:
                    if answer["status"] != "done" or stored != reasoning + text:
                        problems.append(f"{name}: stored {answer['status']!r}, not the answer")
                elif answer["status"] not in ("error", "interrupted"):
                    problems.append(f"{name}: stored {answer['status']!r} for a broken stream")
                elif not (reasoning + text).startswith(stored):
                    problems.append(f"{name}: stored text that is not the model's")

            # Both instances still answer new questions in full.
            for instance in (producer, other):
                again = V5Transcript()
                prompt = f"after the garbage on {instance.name}"
                await post_v5_into(
                    browser, instance.url, v5_body(uid(), uid("m"), prompt), again, stop_after=40
                )
                check_v5_transcript(again, *expected_answer(prompt), complete=False)
            assert not problems, "\n".join(problems)
    finally:
        await client.aclose()
    assert producer.alive and other.alive
    assert not deployment.crashes(), deployment.crashes()


def test_garbage_payloads_are_what_they_claim() -> None:
    """The channel payloads are garbage to unbroken's parser (a guard against a payload
    that accidentally is a valid notification and would make the test meaningless)."""
    from unbroken.backends.redis._codec import parse_notification as _parse_notification

    for payload in CHANNEL_GARBAGE:
        with pytest.raises((ValueError, TypeError, UnicodeError, json.JSONDecodeError)):
            _parse_notification(payload)
