"""Writing a stream out with retries: what a stream's own writer and its end do.

Everything here runs for one stream whose `LocalStream.writer` is taken by the caller, so
nothing else writes it meanwhile. The backend may be unreachable (retry with backoff,
serving local readers from memory), may have lost a reply (resync from its log's length),
or may have lost the stream (claim it again and write it from the start).
"""

from __future__ import annotations

import logging
import time

import anyio

from unbroken._engine.local import CORRUPT, DATA_LOST, PRODUCER_LOST, LocalStream
from unbroken._models import StreamState, StreamStatus
from unbroken.backends.base import Backend, PacksEndedLogs
from unbroken.exceptions import BackendError, BackendUnavailableError, CorruptStreamError

__all__ = ["WRITE_BATCH", "Backoff", "apply_append", "flush", "record_end", "status_quietly"]

logger = logging.getLogger("unbroken")

WRITE_BATCH = 512  # chunks per backend append at most
_RETRY_MIN, _RETRY_MAX = 0.05, 1.0  # backoff bounds while the backend is unreachable


class Backoff:
    """Waits between attempts at an unreachable backend: doubling, within bounds."""

    __slots__ = ("_delay",)

    def __init__(self) -> None:
        self._delay = _RETRY_MIN

    async def wait(self) -> None:
        await anyio.sleep(self._delay)
        self._delay = min(self._delay * 2, _RETRY_MAX)

    def reset(self) -> None:
        self._delay = _RETRY_MIN


def apply_append(
    local: LocalStream, count: int, result: StreamState | None, *, lease_renewed: bool = True
) -> bool:
    """Apply the backend's answer to an append of ``count`` chunks (``lease_renewed``: the
    append renewed the lease too). Returns False if the producer must stop (the stream
    ended or another producer owns it)."""
    if result is StreamState.ACTIVE:
        local.acknowledged(count, lease_renewed=lease_renewed)
    elif result is None:
        local.lost = True  # forgotten by the backend: claim it again, write it all again
    else:
        local.stop(result, PRODUCER_LOST if result is StreamState.INTERRUPTED else None)
        return False
    return True


async def status_quietly(backend: Backend, stream_id: str) -> StreamStatus | None:
    """The stream's status, or None if the backend cannot say within a few seconds."""
    with anyio.move_on_after(5):
        try:
            return await backend.status(stream_id)
        except BackendError:
            pass
    return None


async def flush(backend: Backend, local: LocalStream, upto: int | None = None) -> bool:
    """Write every chunk not yet durable (``upto``: those before it; the writer of a stream
    whose gathered append failed stops there and gives the stream back). Returns False if
    the producer lost the stream.

    Retries (with backoff) while the backend is unreachable; meanwhile local readers are
    served from memory. If the backend lost the stream (a restarted Redis without
    persistence), claims it again under the same token and writes it again from chunk 0.
    """
    backoff = Backoff()
    while local.unwritten and (upto is None or local.lost or local.durable < upto):
        batch = local.log.chunks(local.durable, local.durable + WRITE_BATCH)
        try:
            if local.lost:
                if not await _reclaim(backend, local):
                    return False
                continue
            result = await backend.append(
                local.stream_id, token=local.token, chunks=batch, times=local.times, now=time.time()
            )
        except CorruptStreamError:
            # A write whose reply was lost (cancelled, timed out) may have landed: trust the
            # log's length if it is one we could have written, else give up.
            synced = await _resync(backend, local)
            if synced is None:
                await backoff.wait()
            elif not synced:
                logger.error("stream %r is corrupt in the backend", local.stream_id)
                local.stop(StreamState.ERROR, CORRUPT)
                return False
            continue
        except BackendError:
            if not local.degraded:
                logger.warning(
                    "backend unreachable; stream %r continues from memory", local.stream_id
                )
                local.degraded = True
                local.wake_readers()
            await backoff.wait()
            continue
        if not apply_append(local, len(batch), result):
            return False
        backoff.reset()
    return True


async def _resync(backend: Backend, local: LocalStream, *, owned: bool = False) -> bool | None:
    """After a refused append, adopt the log's length if we could have written it: beyond
    what we know to be durable, or (``owned``: the stream is known to be ours under our
    token) any length up to what we have.

    None: the backend cannot tell right now (try again later).
    """
    try:
        status = await backend.status(local.stream_id)
    except BackendUnavailableError:
        return None
    except BackendError:
        return False
    if status is None or not status.chunk_count <= len(local.log):
        return False
    if not owned and status.chunk_count <= local.durable:
        if status.chunk_count == local.durable or status.state is not StreamState.ACTIVE:
            return False
        # Fewer chunks than the backend acknowledged: a failover to a replica that had not
        # received the newest writes yet (replication is asynchronous). If the stream is
        # still ours, write them again; readers drop what they already have by seq.
        try:
            ours = await backend.renew_lease(
                local.stream_id, token=local.token, times=local.times, now=time.time()
            )
        except BackendUnavailableError:
            return None
        except BackendError:
            return False
        if ours is not StreamState.ACTIVE:
            return False
        logger.warning(
            "stream %r: the backend lost its last %d chunks (a failover?); writing them again",
            local.stream_id,
            local.durable - status.chunk_count,
        )
    local.durable = status.chunk_count
    local.wake_readers()
    return True


async def _reclaim(backend: Backend, local: LocalStream) -> bool:
    """The backend forgot the stream: claim it again and write it again from the start.

    A claim of ours may already have landed (its reply lost to a cancellation): then the
    stream is ours, and writing continues from what the log holds.
    """
    claimed = await backend.claim(
        local.stream_id, token=local.token, times=local.times, now=time.time()
    )
    if claimed:
        logger.warning("stream %r was lost by the backend; writing it again", local.stream_id)
        local.durable = 0
    elif await backend.renew_lease(
        local.stream_id, token=local.token, times=local.times, now=time.time()
    ) is not StreamState.ACTIVE or not await _resync(backend, local, owned=True):
        local.stop(StreamState.INTERRUPTED, DATA_LOST)
        return False
    local.lost = False
    return True


async def record_end(
    backend: Backend,
    local: LocalStream,
    state: StreamState,
    error: str | None,
    *,
    retry_for: float,
) -> None:
    """Write what is left and record the terminal state (the first terminal state wins),
    retrying an unreachable backend for up to ``retry_for`` seconds. The caller holds the
    stream's write (`Writer.END`)."""
    recorded: StreamState | None = None
    with anyio.move_on_after(retry_for) as scope:
        if state is StreamState.DONE or state is StreamState.ERROR:
            await flush(backend, local)
        backoff = Backoff()
        while True:
            try:
                recorded = await backend.finish(
                    local.stream_id,
                    state=state,
                    error=error,
                    token=local.token,
                    times=local.times,
                    now=time.time(),
                )
            except BackendUnavailableError:
                await backoff.wait()
                continue
            except BackendError:
                logger.exception("recording the end of stream %r failed", local.stream_id)
                break
            if recorded is None:
                # Forgotten by the backend: write it all again, then record the end.
                local.lost = True
                if await flush(backend, local):
                    continue
            break
    in_backend = not scope.cancelled_caught and recorded is not None
    if recorded is None or scope.cancelled_caught:
        logger.error("could not record the end of stream %r in the backend", local.stream_id)
        recorded = state
    else:
        # The final log may hold more than we know to be durable: a write cancelled on its
        # way back (the stop cancelled the writer) may still have landed.
        status = await status_quietly(backend, local.stream_id)
        if status is not None:
            if local.durable < status.chunk_count <= len(local.log):
                local.durable = status.chunk_count
            if recorded is not state:
                error = status.error
    if recorded is StreamState.INTERRUPTED and error is None:
        error = PRODUCER_LOST
    local.state, local.error = recorded, error
    # Once the end is recorded, what the backend holds is final and every reader sees
    # exactly that (chunks it refused, e.g. after a stop, are dropped here too). If the
    # backend never took the end, what this process has is all there is.
    local.degraded = not in_backend
    local.wake_readers()
    if in_backend and local.durable == len(local.log) and isinstance(backend, PacksEndedLogs):
        await _pack_ended(backend, local)


async def _pack_ended(backend: PacksEndedLogs, local: LocalStream) -> None:
    """Have the backend keep the ended log packed (best effort: readers see the same chunks
    either way, and a log that stays unpacked only costs more room)."""
    with anyio.move_on_after(5):
        try:
            await backend.pack_ended(local.stream_id, token=local.token, log=local.log)
        except BackendError as exc:
            logger.debug("packing the ended log of %r failed: %s", local.stream_id, exc)
