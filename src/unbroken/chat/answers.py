"""The life of an answer's stream as the chat sees it: running, stopped, orphaned, repaired.

Shared by the routes and by the sweeper, which every instance runs in the background: an
answer whose producer died (a killed worker, a crashed machine) is stored as
``interrupted`` by whichever instance notices first, whether or not anyone opens the chat.
"""

from __future__ import annotations

import datetime as dt
import logging

import anyio

from unbroken import StreamState, StreamStatus
from unbroken.chat.deps import Services
from unbroken.chat.store import Chat, StreamRecord, utcnow

__all__ = [
    "orphaned",
    "repair",
    "seconds_since",
    "stop_stream",
    "stream_status",
    "sweep",
    "sweep_forever",
]

logger = logging.getLogger("unbroken.chat")


def seconds_since(moment: dt.datetime | float | None) -> float:
    if moment is None:
        return float("inf")
    if isinstance(moment, dt.datetime):
        return (utcnow() - moment).total_seconds()
    return utcnow().timestamp() - moment


# A stream row is written just before the engine claims the stream: for this long a missing
# stream may simply not be claimed yet (by this or another process).
_CLAIM_GRACE = 5.0


async def stream_status(services: Services, record: StreamRecord) -> StreamStatus | None:
    """The engine's status of ``record``'s stream; for a stream begun moments ago that is
    not claimed yet, waits for the claim (up to ``_CLAIM_GRACE`` after its creation)."""
    status = await services.engine.status(record.id)
    while status is None and seconds_since(record.created_at) < _CLAIM_GRACE:
        await anyio.sleep(0.02)
        status = await services.engine.status(record.id)
    return status


async def orphaned(services: Services, record: StreamRecord) -> bool:
    """Whether the chat calls ``record`` active but nobody will ever store its end: the
    stream is gone from the backend, or it is terminal for longer than its producer's end
    callback could take, or it is active with its producer's lease lapsed (the producing
    process died and no reader has noticed yet)."""
    status = await stream_status(services, record)
    if status is None:
        return True
    if status.is_terminal:
        grace = max(1.0, 2 * services.settings.lease_ttl)
        return seconds_since(status.finished_at) > grace
    # The producer renews its lease every lease_ttl/3; a lapsed lease means it is gone
    # (and the engine records the stream as interrupted).
    return await services.engine.check_producer(record.id) is not StreamState.ACTIVE


async def repair(services: Services, chat: Chat) -> Chat:
    """Store the answer of an orphaned active stream (see `orphaned`) and release it.

    For a dead producer this reads the stream, and the read records it ``interrupted``
    (within a third of a lease period); the partial answer is stored as such.
    """
    if chat.active_stream_id is None:
        return chat
    record = await services.store.get_stream(chat.active_stream_id)
    if record is None:
        await services.store.clear_active_stream(chat.id, chat.active_stream_id)
    elif await orphaned(services, record):
        logger.warning("storing orphaned stream %r of chat %r", record.id, chat.id)
        with anyio.move_on_after(max(5.0, 4 * services.settings.lease_ttl)):
            await services.generator.finalize(record, None, None)
    else:
        return chat
    return await services.store.get_chat(chat.id, chat.user_id) or chat


async def stop_stream(services: Services, record: StreamRecord) -> StreamState | None:
    """Cancel the generation wherever it runs, then store its partial answer as stopped
    and release the chat's active stream (both compare-and-set, so racing the producer's
    own end callback is harmless). Returns the stream's final state.

    When this process produces the answer, its end callback stores it anyway: the stop
    waits for that instead of writing the same rows at the same moment (on SQLite, two
    writers per stop made a burst of stops queue on the write lock)."""
    production = services.generator.production(record.id)  # (the cancel may end it)
    state = await services.engine.cancel(record.id)
    with anyio.move_on_after(10):
        if production is not None and (stored := await production.wait_stored()) is not None:
            return stored
        # A stop that loses the race with the end is stored (and reported) as done.
        state = await services.generator.finalize(record, state, None)
    return state


async def sweep(services: Services, *, limit: int = 1000) -> int:
    """Repair orphaned answers of every chat (checking at most ``limit`` running answers,
    oldest first); returns how many were stored. Safe in every instance at once (the
    store's compare-and-set)."""
    grace = max(1.0, 2 * services.settings.lease_ttl)
    repaired = 0
    for chat in await services.store.chats_with_active_stream(older_than=grace, limit=limit):
        if chat.active_stream_id is not None and services.engine.produces(chat.active_stream_id):
            # Produced here, so alive: no query, no backend call (every running answer of
            # this process would otherwise cost both, every sweep).
            continue
        if (await repair(services, chat)).active_stream_id != chat.active_stream_id:
            repaired += 1
    return repaired


async def sweep_forever(services: Services, interval: float) -> None:
    """`sweep` every ``interval`` seconds until cancelled; failures are logged, not fatal."""
    while True:
        await anyio.sleep(interval)
        try:
            if count := await sweep(services):
                logger.info("stored %d orphaned answer(s)", count)
        except Exception:
            logger.exception("sweeping orphaned answers failed; will retry")
