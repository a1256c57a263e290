"""The `Backend` contract itself, on the in-process backends, with a clock the test moves.

``memory`` is `unbroken.MemoryBackend`; ``plain`` is the conformance suite's third backend,
written only against the ABC: these tests are what shows it keeps the contract, so that the
engine suite running on it proves the engine's plain paths and not a lenient backend. (Redis
keeps the same contract; tests/backends/test_redis_backend.py checks it on real servers.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from tests.engine._plain_backend import PlainBackend
from tests.engine.conftest import ASYNC_LIBRARIES
from unbroken import Chunk, MemoryBackend, StreamState
from unbroken.backends.base import (
    Appended,
    Backend,
    Ended,
    GatheredAppends,
    InlineAppends,
    Lagged,
    Listener,
    Notification,
    StreamTimes,
)
from unbroken.exceptions import CorruptStreamError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

TIMES = StreamTimes(lease=5.0, active=60.0, retention=600.0)
BUFFER = 4  # each listener's capacity


class Clock:
    """Unix time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=ASYNC_LIBRARIES)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "plain"])
async def backend(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Backend]:
    store: Backend = (
        MemoryBackend(reader_buffer=BUFFER, clock=clock)
        if request.param == "memory"
        else PlainBackend(reader_buffer=BUFFER, clock=clock)
    )
    async with store:
        yield store


def texts(*pieces: str, seq: int = 0, offset: int = 0) -> list[Chunk]:
    chunks = []
    for piece in pieces:
        chunks.append(Chunk(seq, piece, offset))
        seq, offset = seq + 1, offset + len(piece)
    return chunks


class Calls:
    """The backend's methods with this test's times, ``now`` from its clock."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self.backend, self.clock = backend, clock

    async def claim(self, stream_id: str, token: str = "t") -> bool:
        return await self.backend.claim(stream_id, token=token, times=TIMES, now=self.clock())

    async def append(
        self, stream_id: str, chunks: list[Chunk], token: str = "t"
    ) -> StreamState | None:
        return await self.backend.append(
            stream_id, token=token, chunks=chunks, times=TIMES, now=self.clock()
        )

    async def renew(self, stream_id: str, token: str = "t") -> StreamState | None:
        return await self.backend.renew_lease(stream_id, token=token, times=TIMES, now=self.clock())

    async def finish(
        self,
        stream_id: str,
        state: StreamState = StreamState.DONE,
        *,
        token: str | None = "t",
        error: str | None = None,
        only_if_lease_expired: bool = False,
    ) -> StreamState | None:
        return await self.backend.finish(
            stream_id,
            state=state,
            error=error,
            token=token,
            times=TIMES,
            now=self.clock(),
            only_if_lease_expired=only_if_lease_expired,
        )

    async def log(self, stream_id: str) -> list[Chunk]:
        return await self.backend.read(stream_id, after=-1, limit=1_000)


@pytest.fixture
def calls(backend: Backend, clock: Clock) -> Calls:
    return Calls(backend, clock)


async def receive(listener: Listener) -> Notification:
    with anyio.fail_after(5):
        return await listener.receive()


async def test_claim_is_exclusive_in_every_state(calls: Calls) -> None:
    assert await calls.claim("s")
    assert not await calls.claim("s", token="other")
    assert await calls.finish("s") is StreamState.DONE
    assert not await calls.claim("s", token="other")
    assert await calls.backend.status("missing") is None


async def test_appends_continue_the_log_exactly(calls: Calls) -> None:
    assert await calls.claim("s")
    assert await calls.append("s", texts("a", "bc")) is StreamState.ACTIVE
    assert await calls.append("s", texts("déf", seq=2, offset=3)) is StreamState.ACTIVE
    assert await calls.append("s", []) is StreamState.ACTIVE
    with pytest.raises(CorruptStreamError):
        await calls.append("s", texts("gap", seq=4, offset=6))
    with pytest.raises(CorruptStreamError):
        await calls.append("s", [Chunk(3, "x", 6), Chunk(5, "y", 7)])
    assert await calls.log("s") == texts("a", "bc", "déf")
    assert await calls.backend.read("s", after=0, limit=1) == texts("bc", seq=1, offset=1)
    assert await calls.backend.read("s", after=2, limit=10) == []
    assert await calls.backend.read("missing", after=-1, limit=10) == []


async def test_appends_are_fenced_by_owner_and_state(calls: Calls) -> None:
    assert await calls.append("missing", texts("a")) is None
    assert await calls.claim("s")
    assert await calls.append("s", texts("a"), token="intruder") is StreamState.INTERRUPTED
    assert await calls.finish("s", StreamState.CANCELLED) is StreamState.CANCELLED
    assert await calls.append("s", texts("a")) is StreamState.CANCELLED
    assert await calls.log("s") == []


async def test_status_counts_code_points_and_bytes(calls: Calls, clock: Clock) -> None:
    created = clock()
    assert await calls.claim("s")
    clock.advance(1)
    assert await calls.append("s", texts("héllo ", "👩‍👩‍👧")) is StreamState.ACTIVE
    status = await calls.backend.status("s")
    assert status is not None
    text = "héllo 👩‍👩‍👧"
    assert (status.state, status.chunk_count) == (StreamState.ACTIVE, 2)
    assert (status.char_count, status.byte_count) == (len(text), len(text.encode()))
    assert (status.created_at, status.updated_at, status.finished_at) == (
        created,
        created + 1,
        None,
    )
    clock.advance(1)
    assert await calls.finish("s", StreamState.ERROR, error="it broke") is StreamState.ERROR
    status = await calls.backend.status("s")
    assert status is not None
    assert (status.state, status.error, status.finished_at) == (
        StreamState.ERROR,
        "it broke",
        created + 2,
    )


async def test_renew_lease_only_for_the_owner_of_an_active_stream(calls: Calls) -> None:
    assert await calls.renew("missing") is None
    assert await calls.claim("s")
    assert await calls.renew("s") is StreamState.ACTIVE
    assert await calls.renew("s", token="intruder") is StreamState.INTERRUPTED
    assert await calls.finish("s") is StreamState.DONE
    assert await calls.renew("s") is StreamState.DONE


async def test_finish_first_terminal_state_wins(calls: Calls) -> None:
    assert await calls.finish("missing") is None
    assert await calls.claim("s")
    with pytest.raises(ValueError, match="terminal"):
        await calls.finish("s", StreamState.ACTIVE)
    assert await calls.finish("s", token="intruder") is StreamState.ACTIVE  # not the owner's
    assert await calls.finish("s", StreamState.CANCELLED, token=None) is StreamState.CANCELLED
    assert await calls.finish("s", StreamState.DONE) is StreamState.CANCELLED


async def test_only_a_lapsed_lease_lets_anyone_interrupt(calls: Calls, clock: Clock) -> None:
    async def interrupt() -> StreamState | None:
        """What a reader that suspects a dead producer does."""
        return await calls.finish(
            "s", StreamState.INTERRUPTED, token=None, only_if_lease_expired=True
        )

    assert await calls.claim("s")
    clock.advance(TIMES.lease - 1)
    assert await interrupt() is StreamState.ACTIVE
    assert await calls.append("s", texts("a")) is StreamState.ACTIVE  # renews the lease
    clock.advance(TIMES.lease - 1)
    assert await interrupt() is StreamState.ACTIVE
    assert await calls.renew("s") is StreamState.ACTIVE
    clock.advance(TIMES.lease + 1)
    assert await interrupt() is StreamState.INTERRUPTED


async def test_active_ttl_slides_and_retention_follows_the_end(calls: Calls, clock: Clock) -> None:
    assert await calls.claim("abandoned")
    assert await calls.claim("kept")
    for _ in range(3):
        clock.advance(TIMES.active * 0.6)
        assert await calls.renew("kept") is StreamState.ACTIVE
    assert await calls.backend.status("abandoned") is None
    assert await calls.claim("abandoned", token="new life")  # the id is free again
    assert await calls.append("kept", texts("a")) is StreamState.ACTIVE
    assert await calls.finish("kept") is StreamState.DONE
    clock.advance(TIMES.retention - 1)
    assert await calls.log("kept") == texts("a")
    clock.advance(2)
    assert await calls.backend.status("kept") is None
    assert await calls.log("kept") == []


async def test_listeners_hear_every_change_after_they_subscribe(calls: Calls) -> None:
    assert await calls.claim("s")
    assert await calls.append("s", texts("before")) is StreamState.ACTIVE
    async with (
        calls.backend.listen("s") as listener,
        calls.backend.listen("s", ends_only=True) as ends,
    ):
        assert await calls.append("s", texts("a", "b", seq=1, offset=6)) is StreamState.ACTIVE
        assert await calls.append("s", []) is StreamState.ACTIVE  # nothing to hear
        assert await calls.finish("s") is StreamState.DONE
        assert await receive(listener) == Appended(tuple(texts("a", "b", seq=1, offset=6)))
        assert await receive(listener) == Ended(StreamState.DONE)
        assert await receive(ends) == Ended(StreamState.DONE)


async def test_a_listener_that_falls_behind_gets_lagged_then_goes_on(calls: Calls) -> None:
    assert await calls.claim("s")
    async with calls.backend.listen("s") as listener:
        chunks = texts(*(f"{seq} " for seq in range(BUFFER + 2)))
        for chunk in chunks[:-1]:  # one more than the listener holds
            assert await calls.append("s", [chunk]) is StreamState.ACTIVE
        assert await receive(listener) == Lagged()
        # What was dropped is in the log; what comes next is heard again.
        assert await calls.log("s") == chunks[:-1]
        assert await calls.append("s", chunks[-1:]) is StreamState.ACTIVE
        assert await calls.finish("s") is StreamState.DONE
        assert await receive(listener) == Appended((chunks[-1],))
        assert await receive(listener) == Ended(StreamState.DONE)


async def test_plain_backend_offers_no_capability() -> None:
    """What makes ``plain`` the engine's plain path: nothing but the ABC."""
    backend = PlainBackend()
    assert not isinstance(backend, InlineAppends | GatheredAppends)
    async with backend.listen("s") as listener:
        assert not listener.pokeable()
