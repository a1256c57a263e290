"""What a finished answer costs the memory backend for its retention: at most 3x its text
(the chat service keeps thousands of answers, each several times its text in chunk data)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from unbroken import Chunk, MemoryBackend, StreamState
from unbroken.backends.base import StreamTimes

pytestmark = pytest.mark.anyio

TIMES = StreamTimes(lease=5.0, active=60.0, retention=600.0)
ANSWERS = 20


def chat_chunks(number: int) -> tuple[str, list[str]]:
    """The demo model's text for one prompt, and its chunks as the chat service encodes them
    (one UI message event per token, between the events that open and close each part)."""
    from unbroken.chat.models.demo import compose, tokenize
    from unbroken.protocols.ai_sdk import encode_event

    reasoning, answer = compose(f"question {number}: what survives a reload?")
    events: list[dict[str, str]] = [
        {"type": "start", "messageId": f"m{number}"},
        {"type": "start-step"},
    ]
    for counter, (kind, part) in enumerate((("reasoning", reasoning), ("text", answer)), 1):
        part_id = f"{kind}-{counter}"
        events.append({"type": f"{kind}-start", "id": part_id})
        events += [{"type": f"{kind}-delta", "id": part_id, "delta": t} for t in tokenize(part)]
        events.append({"type": f"{kind}-end", "id": part_id})
    events += [{"type": "finish-step"}, {"type": "finish", "finishReason": "stop"}]
    return reasoning + answer, [encode_event(event) for event in events]


async def keep_answer(backend: MemoryBackend, number: int, encoded: list[bytes]) -> None:
    """Produce and finish one answer in ``backend`` from its chunks' UTF-8 (decoded here, so
    its strings are new)."""
    datas = [data.decode() for data in encoded]
    stream_id, now = f"answer-{number}", 1000.0
    assert await backend.claim(stream_id, token="t", times=TIMES, now=now)
    chunks, offset = [], 0
    for seq, data in enumerate(datas):
        chunks.append(Chunk(seq, data, offset))
        offset += len(data)
    appended = await backend.append(stream_id, token="t", chunks=chunks, times=TIMES, now=now)
    assert appended is StreamState.ACTIVE
    ended = await backend.finish(
        stream_id, state=StreamState.DONE, error=None, token="t", times=TIMES, now=now
    )
    assert ended is StreamState.DONE


async def test_a_kept_answer_costs_at_most_three_times_its_text() -> None:
    answers = [chat_chunks(number) for number in range(-1, ANSWERS)]
    encoded = [[data.encode() for data in datas] for _, datas in answers]
    text_bytes = sum(len(text.encode()) for text, _ in answers[1:])
    backend = MemoryBackend(clock=lambda: 1000.0)
    await keep_answer(backend, -1, encoded[0])  # the backend's structures, made on first use
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(ANSWERS):
            await keep_answer(backend, number, encoded[number + 1])
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept <= 3 * text_bytes
    for number, (_, datas) in enumerate(answers[1:]):  # and every answer reads back whole
        read = await backend.read(f"answer-{number}", after=-1, limit=10_000)
        assert [chunk.data for chunk in read] == datas
