"""What only the in-process backend has to get right: memory that a long retention makes
large, and leases that lapse by its own clock. (The contract every backend keeps is tested
through the engine in tests/engine; what only Redis can get wrong, in test_redis_backend.py.)"""

from __future__ import annotations

import gc
import time

import pytest

from unbroken import Chunk, MemoryBackend, StreamState
from unbroken._models import ChunkLog
from unbroken.backends.base import StreamTimes

pytestmark = pytest.mark.anyio

TIMES = StreamTimes(lease=5.0, active=60.0, retention=600.0)


async def test_a_finished_streams_log_is_out_of_the_garbage_collectors_sight() -> None:
    """A finished stream is kept for its retention (thousands of answers, in a busy chat
    service): its chunks must not be traversed by every full collection, which pauses every
    stream of the process for as long as it walks them."""
    backend = MemoryBackend()
    now = time.time()
    texts = [f"chunk {seq} " for seq in range(430)]
    chunks, offset = [], 0
    for seq, text in enumerate(texts):
        chunks.append(Chunk(seq, text, offset))
        offset += len(text)
    assert await backend.claim("s", token="t", times=TIMES, now=now)
    assert await backend.append("s", token="t", chunks=chunks, times=TIMES, now=now) is (
        StreamState.ACTIVE
    )
    done = await backend.finish(
        "s", state=StreamState.DONE, error=None, token="t", times=TIMES, now=now
    )
    assert done is StreamState.DONE
    gc.collect()
    log = backend._streams["s"].log
    packed = log._segments  # what holds the stream's chunks once it has ended
    assert log._growing is None and len(packed) == 2 and not gc.is_tracked(packed)
    # Everything is still there, and a late append is refused as for any ended stream.
    assert await backend.read("s", after=-1, limit=1000) == chunks
    late = Chunk(430, "late", offset)
    assert await backend.append("s", token="t", chunks=[late], times=TIMES, now=now) is (
        StreamState.DONE
    )


def test_a_sealed_log_takes_no_more_chunks() -> None:
    log = ChunkLog()
    log.add("a")
    log.seal()
    log.seal()  # idempotent
    with pytest.raises(ValueError, match="sealed"):
        log.add("b")
    assert [(c.seq, c.data, c.offset) for c in log.chunks(0, 10)] == [(0, "a", 0)]


async def test_finish_only_if_lease_expired() -> None:
    """A dead producer is detected by its lease lapsing: until then, the stream stays its own."""
    clock = [1000.0]
    backend = MemoryBackend(clock=lambda: clock[0])
    assert await backend.claim("s", token="t", times=TIMES, now=clock[0])

    async def finish_if_expired() -> StreamState | None:
        return await backend.finish(
            "s",
            state=StreamState.INTERRUPTED,
            error="lost",
            token=None,
            times=TIMES,
            now=clock[0],
            only_if_lease_expired=True,
        )

    clock[0] += TIMES.lease - 1
    assert await finish_if_expired() is StreamState.ACTIVE
    renewed = await backend.renew_lease("s", token="t", times=TIMES, now=clock[0])
    assert renewed is StreamState.ACTIVE
    clock[0] += TIMES.lease - 1  # past the first lease, within the renewed one
    assert await finish_if_expired() is StreamState.ACTIVE
    clock[0] += 2
    assert await finish_if_expired() is StreamState.INTERRUPTED
    status = await backend.status("s")
    assert status is not None
    assert (status.state, status.error) == (StreamState.INTERRUPTED, "lost")
