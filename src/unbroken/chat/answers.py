"""The life of an answer, in one place: started, produced, read, stopped, stored, repaired.

The producer runs in the engine (not in the request that asked for it), so an answer is
finished and stored whether or not any client is still reading. How an answer ends:

==============  ==================  ============================================
stream state    message status      who stores it
==============  ==================  ============================================
done            done                the producing process (its end callback)
error           error               the producing process (its end callback)
cancelled       stopped             `Answers.stop`, and the end callback; the
                                    first wins
interrupted     interrupted         the end callback (shutdown), or
                                    `Answers.repair` for a producer that died
                                    without one
==============  ==================  ============================================

Whoever stores it uses the stream's own log (the producer, the events it knows the log
holds), so the stored message is exactly what every reader saw, and all of them write the
same thing; the store's compare-and-set keeps the first.

Every instance also sweeps in the background: an answer whose producer died (a killed
worker, a crashed machine) is stored as ``interrupted`` by whichever instance notices
first, whether or not anyone opens the chat.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from unbroken import Chunk, StreamEnd, StreamEngine, StreamState, StreamStatus
from unbroken.chat.errors import ApiError, database_unreachable, not_found
from unbroken.chat.events import (
    AssembledAnswer,
    ProducedAnswer,
    decode_events,
    settled,
    ui_chunks,
)
from unbroken.chat.limits import AnswerLimits, Slot
from unbroken.chat.metrics import ChatMetrics
from unbroken.chat.models import ChatModel, ModelError, ModelEvent, message_text
from unbroken.chat.settings import Settings
from unbroken.chat.store import (
    Chat,
    MessageStatus,
    Started,
    Store,
    StreamRecord,
    new_id,
    utcnow,
)
from unbroken.exceptions import StreamNotFoundError
from unbroken.protocols.ai_sdk import encode_event

__all__ = ["MESSAGE_STATUS", "Answers", "seconds_since"]

logger = logging.getLogger("unbroken.chat")

MESSAGE_STATUS: dict[StreamState, MessageStatus] = {
    StreamState.DONE: "done",
    StreamState.ERROR: "error",
    StreamState.CANCELLED: "stopped",
    StreamState.INTERRUPTED: "interrupted",
}

#: The chunks metric grows by this many at a time (and by the rest when an answer ends).
_CHUNKS_COUNTED_EVERY = 32
# A stream row is written just before the engine claims the stream: for this long a missing
# stream may simply not be claimed yet (by this or another process).
_CLAIM_GRACE = 5.0
#: How many missing streams `Answers.orphaned` remembers when it first found them missing.
_MISSING_REMEMBERED = 10_000
#: How often `Answers.begin` asks the store again after ending the chat's running answer.
_BEGIN_ATTEMPTS = 5
#: How long the producing process keeps trying to store an ended answer while the database
#: cannot be reached (a restart, a failover); after that the sweep stores it from the log.
_STORE_RETRY_FOR = 30.0
_STORE_RETRY_PAUSE = (0.1, 2.0)  # the first pause between attempts, and the longest


def seconds_since(moment: dt.datetime | float | None) -> float:
    """Seconds from ``moment`` (a datetime or a Unix timestamp) to now; infinite for None."""
    if moment is None:
        return float("inf")
    if isinstance(moment, dt.datetime):
        return (utcnow() - moment).total_seconds()
    return utcnow().timestamp() - moment


#: A title is cut (at a word) to at most this many characters.
TITLE_CHARS = 60
_MARKUP_START = re.compile(r"^(?:#{1,6}\s+|>\s*|[-*+]\s+|\d{1,9}[.)]\s+)+")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MARKERS = re.compile(r"`+|\*\*|__|~~")


def title_of(text: str) -> str:
    """A chat's title from its first message: the first line that says something, without
    markdown markers, cut at a word to `TITLE_CHARS` (the page makes the same one)."""
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            continue
        cleaned = _MARKERS.sub("", _LINK.sub(r"\1", _MARKUP_START.sub("", line.strip())))
        cleaned = " ".join(cleaned.split())
        if cleaned:
            break
    else:
        return "New chat"
    if len(cleaned) <= TITLE_CHARS:
        return cleaned
    cut = cleaned[: TITLE_CHARS - 1]
    space = cut.rfind(" ")
    if space >= TITLE_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


@dataclass(eq=False)
class _Production:
    """An answer this process produces: whose chat it is, and once its end callback has
    stored it (``stored``), the state it was stored under (None if that failed)."""

    owner: str
    record: StreamRecord
    stored: anyio.Event = field(default_factory=anyio.Event)
    state: StreamState | None = None

    async def wait_stored(self) -> StreamState | None:
        """Wait until the end callback has stored the answer; the state it was stored
        under, or None if storing it failed (the caller then stores it itself)."""
        await self.stored.wait()
        return self.state


class Answers:
    """Every answer of one chat app: starts them in the engine, knows which ones this
    process produces, reads their status, stops them, and stores each one when it ends,
    including those whose producer died (`repair`, `sweep`)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        engine: StreamEngine,
        model: ChatModel,
        metrics: ChatMetrics,
        limits: AnswerLimits | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.model = model
        self.metrics = metrics
        self.limits = limits if limits is not None else AnswerLimits()
        #: The placement group of the streams this process starts (None: each its own).
        self.stream_group = new_id("w", 6) if settings.redis_placement == "worker" else None
        # The answers this process produces now: by chat id until each ends (for resumes),
        # by stream id until each is stored (for stops).
        self._producing: dict[str, _Production] = {}
        self._storing: dict[str, _Production] = {}
        # stream id -> when `orphaned` first found the stream missing from the backend
        self._missing_since: dict[str, float] = {}

    @property
    def _orphan_grace(self) -> float:
        """How long a terminal stream may wait for its producer to store it."""
        return max(1.0, 2 * self.settings.lease_ttl)

    # -- the answers this process produces -------------------------------------------------

    def producing(self, chat_id: str, user_id: str) -> StreamRecord | None:
        """The answer this process is generating in ``user_id``'s chat ``chat_id``, if any.

        A resume of a live answer asks here before the database: the producing process knows
        the chat's active stream (it set it) and its owner, so the commonest resume, a
        client reconnecting to the worker that produces its answer, costs no SQL. None for a
        chat of another user, like a missing one."""
        entry = self._producing.get(chat_id)
        if entry is None or entry.owner != user_id or not self.engine.produces(entry.record.id):
            return None
        return entry.record

    def _production(self, stream_id: str) -> _Production | None:
        """The stream's answer if this process produces it and has not stored it yet."""
        production = self._storing.get(stream_id)
        if production is None or not self.engine.produces(stream_id):
            return None  # (an end callback that never ran: the caller stores the answer)
        return production

    def _forget(self, record: StreamRecord) -> None:
        entry = self._producing.get(record.chat_id)
        if entry is not None and entry.record is record:  # not a newer answer of the chat
            del self._producing[record.chat_id]

    # -- starting --------------------------------------------------------------------------

    async def begin(
        self,
        chat_id: str,
        user_id: str,
        user_message: dict[str, Any],
        *,
        trigger: str,
        guest: bool = False,
    ) -> tuple[StreamRecord, bool]:
        """Start the answer to ``user_message`` in ``user_id``'s chat ``chat_id`` (created on
        first use), or find the one already being generated.

        Returns (stream, attached). A repeated submit of the message whose answer is running
        attaches to it (a client retry must not pay for a second generation). Any other
        running answer in the chat is stopped first, so its partial answer keeps its place
        before the new message; one whose producer died is stored first (`repair`). Raises
        the 404 `ApiError` for another user's chat, a 409 if the chat stays busy, the 429
        of `AnswerLimits` (before anything is stored) when the user may not start one now.
        A ``guest`` is stored with its first chat.
        """
        slot = await self.limits.acquire(user_id)
        try:
            begun = await self._begin(chat_id, user_id, user_message, trigger, guest, slot)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.limits.release(slot, refund=True)
            raise
        if begun[1]:  # attached: nothing new was started
            await self.limits.release(slot, refund=True)
        return begun

    async def _begin(
        self,
        chat_id: str,
        user_id: str,
        user_message: dict[str, Any],
        trigger: str,
        guest: bool,
        slot: Slot,
    ) -> tuple[StreamRecord, bool]:
        store = self.store
        title = title_of(message_text(user_message))
        for _ in range(_BEGIN_ATTEMPTS):
            begun = await store.start_answer(
                chat_id,
                user_id,
                title=title,
                message_id=user_message["id"],
                parts=user_message.get("parts", []),
                metadata=user_message.get("metadata"),
                guest=guest,
                stream_group=self.stream_group,
            )
            if begun is None:
                raise not_found()
            if isinstance(begun, Started):
                history = [message.to_ui_message() for message in begun.history]
                try:
                    await self.start(begun.record, history, owner=user_id, slot=slot)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await store.abandon_generation(begun.record)
                    raise
                return begun.record, False
            # The chat has an active stream: attach to it, or end it and ask again.
            chat = await self.repair(begun)
            if chat.active_stream_id is None:
                continue
            active = await store.get_stream(chat.active_stream_id)
            if active is None:
                await store.clear_active_stream(chat.id, chat.active_stream_id)
            elif (
                trigger == "submit-message"
                and active.user_message_id == user_message["id"]
                and await self.status(active) is not None
            ):
                return active, True
            else:
                await self.stop(active)
        raise ApiError(409, "conflict", "another answer is starting in this chat; try again")

    async def start(
        self,
        record: StreamRecord,
        history: Sequence[dict[str, Any]],
        *,
        owner: str,
        slot: Slot | None = None,
    ) -> None:
        """Start generating the answer ``record`` stands for, in ``owner``'s chat. Returns
        once the stream is claimed (readers may attach); the generation then runs in the
        engine, and its end callback stores the answer however it ends, then gives back
        its ``slot`` in the user's limits."""
        started = time.monotonic()
        produced = ProducedAnswer(record)
        production = _Production(owner, record)

        async def on_end(end: StreamEnd) -> None:
            # First: from now on a resume asks the database, which the answer is stored in.
            self._forget(record)
            try:
                self.metrics.active_streams.dec()
                self.metrics.stream_outcomes.labels(end.state.value).inc()
                self.metrics.generation_seconds.labels(end.state.value).observe(
                    time.monotonic() - started
                )
                # The log is the first `chunk_count` events produced (each event is one
                # chunk, in order): no need to read it back and decode it.
                answer = produced.as_logged(end.chunk_count)
                production.state = await self._store_end(record, end, answer)
            finally:
                self._storing.pop(record.id, None)
                if slot is not None:  # before a stop waiting for the answer hears it ended
                    await self.limits.release(slot)
                production.stored.set()

        self.metrics.active_streams.inc()
        self._producing[record.chat_id] = production
        self._storing[record.id] = production
        try:
            await self.engine.start(
                record.id, self._source(record, history, produced), on_end=on_end
            )
        except BaseException:
            self._forget(record)
            self._storing.pop(record.id, None)
            self.metrics.active_streams.dec()
            raise

    async def _store_end(
        self, record: StreamRecord, end: StreamEnd, answer: AssembledAnswer
    ) -> StreamState:
        """`finalize` the ended answer; while the database cannot be reached, again after a
        pause that doubles each time, for up to ``_STORE_RETRY_FOR`` seconds (then raises).
        Meanwhile the stream stays readable, and resumes that need the database get a 503."""
        pause, longest = _STORE_RETRY_PAUSE
        deadline = time.monotonic() + _STORE_RETRY_FOR
        while True:
            try:
                return await self.finalize(record, end.state, end.error, answer=answer)
            except Exception as exc:
                if not database_unreachable(exc) or time.monotonic() + pause > deadline:
                    raise
                logger.warning(
                    "storing the answer of stream %r failed (%s); trying again in %.1f s",
                    record.id, exc, pause,
                )  # fmt: skip
            await anyio.sleep(pause)
            pause = min(2 * pause, longest)

    def _instructed(self, history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation as the model gets it: after the service's system prompt."""
        prompt = self.settings.system_prompt
        if prompt is None:
            return list(history)
        system = {"id": "system", "role": "system", "parts": [{"type": "text", "text": prompt}]}
        return [system, *history]

    async def _source(
        self,
        record: StreamRecord,
        history: Sequence[dict[str, Any]],
        produced: ProducedAnswer,
    ) -> AsyncIterator[str]:
        """The stream's chunks: the model's answer to ``history`` as encoded UI events."""
        started = time.monotonic()
        first = True
        uncounted = 0  # the chunks counter is a locked value: add to it in steps
        events = self.model.stream(self._instructed(history))
        if self.settings.max_answer_seconds:
            events = _ended_after(events, self.settings.max_answer_seconds)
        try:
            async for chunk in ui_chunks(record.message_id, events):
                if first and chunk["type"] not in ("start", "start-step"):
                    first = False
                    self.metrics.first_chunk_seconds.observe(time.monotonic() - started)
                uncounted += 1
                if uncounted == _CHUNKS_COUNTED_EVERY:
                    self.metrics.chunks.inc(uncounted)
                    uncounted = 0
                encoded = encode_event(chunk)
                produced.add(chunk, encoded)
                yield encoded
        finally:
            if uncounted:
                self.metrics.chunks.inc(uncounted)
            await _close_shielded(events)

    # -- how a stream stands ---------------------------------------------------------------

    async def status(self, record: StreamRecord) -> StreamStatus | None:
        """The engine's status of ``record``'s stream; for a stream begun moments ago that is
        not claimed yet, waits for the claim (up to ``_CLAIM_GRACE`` after its creation)."""
        status = await self.engine.status(record.id)
        while status is None and seconds_since(record.created_at) < _CLAIM_GRACE:
            await anyio.sleep(0.02)
            status = await self.engine.status(record.id)
        return status

    async def orphaned(self, record: StreamRecord) -> bool:
        """Whether the chat calls ``record`` active but nobody will ever store its end: the
        stream is gone from the backend for good, or it is terminal for longer than its
        producer's end callback could take, or it is active with its producer's lease lapsed
        (the producing process died and no reader has noticed yet).

        A stream missing from the backend is gone for good once it has been missing for two
        lease periods, as the engine's readers decide: a backend that lost it (a Redis
        restart without persistence) gets it back from its producer within a lease period,
        if the producer lives. Until then it is not orphaned (this call does not wait).
        """
        status = await self.status(record)
        if status is None:
            return self._missing_for_good(record.id)
        self._missing_since.pop(record.id, None)
        if status.is_terminal:
            return seconds_since(status.finished_at) > self._orphan_grace
        # The producer renews its lease every lease_ttl/3; a lapsed lease means it is gone
        # (and the engine records the stream as interrupted).
        return await self.engine.check_producer(record.id) is not StreamState.ACTIVE

    def _missing_for_good(self, stream_id: str) -> bool:
        """Whether ``stream_id``, missing from the backend now, has been missing for longer
        than two lease periods (since an earlier call first found it missing)."""
        now = time.monotonic()
        if len(self._missing_since) >= _MISSING_REMEMBERED:
            self._missing_since.clear()  # (streams of chats nobody looks at again)
        since = self._missing_since.setdefault(stream_id, now)
        if now - since <= 2 * self.settings.lease_ttl:
            return False
        del self._missing_since[stream_id]
        return True

    # -- ending and storing ----------------------------------------------------------------

    async def stop(self, record: StreamRecord) -> StreamState | None:
        """Cancel the generation wherever it runs, then store its partial answer as stopped
        and release the chat's active stream (both compare-and-set, so racing the producer's
        own end callback is harmless). Returns the stream's final state.

        When this process produces the answer, its end callback stores it anyway: the stop
        waits for that instead of writing the same rows at the same moment (on SQLite, two
        writers per stop would queue a burst of stops on the write lock)."""
        production = self._production(record.id)  # (the cancel may end it)
        state = await self.engine.cancel(record.id)
        with anyio.move_on_after(10):
            if production is not None and (stored := await production.wait_stored()) is not None:
                return stored
            # A stop that loses the race with the end is stored (and reported) as done.
            state = await self.finalize(record, state, None)
        return state

    async def repair(self, chat: Chat) -> Chat:
        """Store the answer of an orphaned active stream (see `orphaned`) and release it;
        returns the chat as it is then.

        For a dead producer this reads the stream, and the read records it ``interrupted``
        (within a third of a lease period); the partial answer is stored as such.
        """
        if chat.active_stream_id is None:
            return chat
        record = await self.store.get_stream(chat.active_stream_id)
        if record is None:
            await self.store.clear_active_stream(chat.id, chat.active_stream_id)
        elif await self.orphaned(record):
            logger.warning("storing orphaned stream %r of chat %r", record.id, chat.id)
            with anyio.move_on_after(max(5.0, 4 * self.settings.lease_ttl)):
                await self.finalize(record, None, None)
        else:
            return chat
        return await self.store.get_chat(chat.id, chat.user_id) or chat

    async def finalize(
        self,
        record: StreamRecord,
        state: StreamState | None,
        error: str | None,
        *,
        answer: AssembledAnswer | None = None,
    ) -> StreamState:
        """Store the answer of a terminal stream and release the chat's active stream.

        Idempotent and safe to race: only the first call for a stream changes anything.
        ``state`` None means "read it from the stream" (interrupted if the stream is gone).
        ``answer``: what the stream's log holds, assembled (the producer knows it);
        otherwise the log is read.
        Returns the state the answer is stored under (by this call or an earlier one).
        """
        end: StreamEnd | None = None
        if answer is None:
            events, end = await self._read_events(record.id)
            answer = AssembledAnswer.of(record.message_id, events)
        if end is not None and state is None:
            state, error = end.state, end.error
        if state is None:
            state, error = StreamState.INTERRUPTED, "the answer was lost"
        if state is StreamState.CANCELLED and answer.last_type == "finish":
            # A stop that lost the race with the end: the answer is complete, and every
            # reader was sent its own `finish`, so store what they saw.
            state, error = StreamState.DONE, None
        message = settled(answer.message)
        await self.store.finalize_message(
            record.chat_id,
            record.message_id,
            parts=message.get("parts", []),
            status=MESSAGE_STATUS[state],
            error=error,
            metadata=message.get("metadata"),
            release_stream=record.id,
        )
        return state

    async def _read_events(self, stream_id: str) -> tuple[list[dict[str, Any]], StreamEnd | None]:
        """Every event in the stream's log and how it ended (waits for the end).

        ([], None) if the stream no longer exists.
        """
        encoded: list[str] = []
        try:
            async for item in self.engine.read(stream_id, after=-1):
                if isinstance(item, Chunk):
                    encoded.append(item.data)
                else:
                    return decode_events(stream_id, encoded), item
        except StreamNotFoundError:
            return [], None
        return decode_events(stream_id, encoded), None

    # -- the sweep -------------------------------------------------------------------------

    async def sweep(self, *, limit: int = 1000) -> int:
        """Repair orphaned answers of every chat (checking at most ``limit`` running answers,
        oldest first); returns how many were stored. Safe in every instance at once (the
        store's compare-and-set)."""
        repaired = 0
        listed = await self.store.chats_with_active_stream(
            older_than=self._orphan_grace, limit=limit
        )
        for chat in listed:
            if chat.active_stream_id is not None and self.engine.produces(chat.active_stream_id):
                # Produced here, so alive: no query, no backend call (every running answer of
                # this process would otherwise cost both, every sweep).
                continue
            if (await self.repair(chat)).active_stream_id != chat.active_stream_id:
                repaired += 1
        return repaired

    async def sweep_forever(self, interval: float) -> None:
        """`sweep` every ``interval`` seconds until cancelled; failures are logged, not fatal."""
        while True:
            await anyio.sleep(interval)
            try:
                if count := await self.sweep():
                    logger.info("stored %d orphaned answer(s)", count)
            except Exception:
                logger.exception("sweeping orphaned answers failed; will retry")


async def _ended_after(
    events: AsyncIterator[ModelEvent], seconds: float
) -> AsyncIterator[ModelEvent]:
    """``events`` until the first one that comes ``seconds`` after the start, then a
    `ModelError` (the answer ends in error with its text so far, see `ui_chunks`) and the
    model's stream closed, which closes its request to the provider.

    The clock is read per event (a cancel scope around each wait would cost more than the
    event itself): a model that sends nothing at all is ended by its client's own read
    timeout instead."""
    deadline = time.monotonic() + seconds
    try:
        async for event in events:
            if time.monotonic() >= deadline:
                raise ModelError(f"the answer took longer than {seconds:g} s and was ended there")
            yield event
    finally:
        await _close_shielded(events)


async def _close_shielded(events: AsyncIterator[ModelEvent]) -> None:
    """Close the model's stream (which closes its request to the provider), even while the
    answer is being cancelled."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()
