"""Generation: model events -> UI message chunks in the engine -> the stored answer.

The producer runs in the engine (not in the request that asked for it), so an answer is
finished and stored whether or not any client is still reading. How an answer ends:

==============  ==================  ============================================
stream state    message status      who stores it
==============  ==================  ============================================
done            done                the producing process (``on_end``)
error           error               the producing process (``on_end``)
cancelled       stopped             the stop route, and ``on_end``; first wins
interrupted     interrupted         ``on_end`` (shutdown), or `Generator.repair`
                                    for a producer that died without one
==============  ==================  ============================================

Whoever stores it uses the stream's own log (the producer, the events it knows the log
holds), so the stored message is exactly what every reader saw, and all of them write the
same thing; the store's compare-and-set keeps the first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from unbroken import Chunk, StreamEnd, StreamEngine, StreamSourceError, StreamState
from unbroken.chat._wire import UIMessageAssembler, decode_event, encode_event
from unbroken.chat.metrics import ChatMetrics
from unbroken.chat.models import (
    ChatModel,
    Finish,
    ModelError,
    ModelEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from unbroken.chat.store import MessageStatus, Store, StreamRecord
from unbroken.exceptions import StreamNotFoundError, UnbrokenError

__all__ = ["MESSAGE_STATUS", "Answer", "Generator", "Production", "assemble", "ui_chunks"]

logger = logging.getLogger("unbroken.chat")

#: The chunks metric grows by this many at a time (and by the rest when an answer ends).
_CHUNKS_COUNTED_EVERY = 32

MESSAGE_STATUS: dict[StreamState, MessageStatus] = {
    StreamState.DONE: "done",
    StreamState.ERROR: "error",
    StreamState.CANCELLED: "stopped",
    StreamState.INTERRUPTED: "interrupted",
}


async def ui_chunks(
    message_id: str, events: AsyncIterator[ModelEvent], *, metadata: dict[str, Any] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The AI SDK v5 UI message chunks for one answer made of ``events``.

    ``start`` (with the server's ``messageId``, so every replay updates the same message),
    ``start-step``, well-nested parts, ``finish-step``, ``finish``. A `ModelError` closes the
    open part and is re-raised as `StreamSourceError` (the stream ends in ``error`` with its
    message, which the wire encoders turn into an ``error`` chunk).
    """
    start: dict[str, Any] = {"type": "start", "messageId": message_id}
    if metadata:
        start["messageMetadata"] = metadata
    yield start
    yield {"type": "start-step"}
    open_part: tuple[str, str] | None = None  # (kind, id) of the text/reasoning part open
    counter = 0

    def close() -> dict[str, Any] | None:
        nonlocal open_part
        if open_part is None:
            return None
        kind, part_id = open_part
        open_part = None
        return {"type": f"{kind}-end", "id": part_id}

    try:
        async for event in events:
            if isinstance(event, TextDelta | ReasoningDelta):
                if not event.text:
                    continue
                kind = "text" if isinstance(event, TextDelta) else "reasoning"
                if open_part is None or open_part[0] != kind:
                    if (end := close()) is not None:
                        yield end
                    counter += 1
                    open_part = (kind, f"{kind}-{counter}")
                    yield {"type": f"{kind}-start", "id": open_part[1]}
                yield {"type": f"{kind}-delta", "id": open_part[1], "delta": event.text}
            elif isinstance(event, ToolCallStart):
                if (end := close()) is not None:
                    yield end
                yield {
                    "type": "tool-input-start",
                    "toolCallId": event.tool_call_id,
                    "toolName": event.tool_name,
                }
            elif isinstance(event, ToolCallDelta):
                yield {
                    "type": "tool-input-delta",
                    "toolCallId": event.tool_call_id,
                    "inputTextDelta": event.args_delta,
                }
            elif isinstance(event, ToolCallEnd):
                yield {
                    "type": "tool-input-available",
                    "toolCallId": event.tool_call_id,
                    "toolName": event.tool_name,
                    "input": event.input,
                }
            elif isinstance(event, Finish):
                if (end := close()) is not None:
                    yield end
                yield {"type": "finish-step"}
                yield {"type": "finish", "finishReason": event.reason}
                return
    except ModelError as exc:
        if (end := close()) is not None:
            yield end
        raise StreamSourceError(str(exc)) from exc
    # The model stopped without saying it finished: end the message cleanly anyway.
    if (end := close()) is not None:
        yield end
    yield {"type": "finish-step"}
    yield {"type": "finish", "finishReason": "stop"}


def assemble(message_id: str, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The assistant ``UIMessage`` that ``events`` build (what ``useChat`` would show)."""
    return Answer.of(message_id, events).message


@dataclass(frozen=True)
class Answer:
    """An answer as stored: the message its events assemble, and the type of its last event
    (a stop that lost the race with the end is stored as done)."""

    message: dict[str, Any]
    last_type: str | None

    @classmethod
    def of(cls, message_id: str, events: Sequence[dict[str, Any]]) -> Answer:
        message: dict[str, Any] = _answer_assembler(message_id).feed_all(events)
        message["id"] = message_id
        last = events[-1].get("type") if events else None
        return cls(message, last if isinstance(last, str) else None)


def _answer_assembler(message_id: str) -> UIMessageAssembler:
    # Not strict: a stored answer is kept even if some event in it is malformed.
    return UIMessageAssembler({"id": message_id, "role": "assistant", "parts": []}, strict=False)


def _decode_events(stream_id: str, encoded: Iterable[str]) -> list[dict[str, Any]]:
    """The events of a stream's chunks, skipping (and logging) any that is not one."""
    events: list[dict[str, Any]] = []
    for data in encoded:
        try:
            events.append(decode_event(data))
        except UnbrokenError:
            logger.warning("stream %r holds a chunk that is not an event", stream_id)
    return events


class _ProducedAnswer:
    """An answer as its producer wrote it, so the producer can store it without reading its
    log back: the message its events assemble, built as they are produced, and the events as
    their JSON text (the strings the log holds too), for an answer whose log ends early."""

    def __init__(self, record: StreamRecord) -> None:
        self._record = record
        self._events: list[str] = []
        self._assembler = _answer_assembler(record.message_id)
        self._last_type: str | None = None

    def add(self, event: dict[str, Any], encoded: str) -> None:
        self._events.append(encoded)
        self._assembler.feed(event)
        self._last_type = event["type"]

    def as_logged(self, chunk_count: int) -> Answer:
        """The answer the log's first ``chunk_count`` chunks make: the first events
        produced, one chunk each, in order."""
        if chunk_count == len(self._events):  # the usual end: the log holds every event
            message: dict[str, Any] = self._assembler.message
            message["id"] = self._record.message_id
            return Answer(message, self._last_type)
        # A stop or a lost backend kept the last events out of the log: assemble the rest.
        events = _decode_events(self._record.id, self._events[:chunk_count])
        return Answer.of(self._record.message_id, events)


@dataclass(eq=False)
class Production:
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


class Generator:
    """Starts answers in the engine and stores them when they end."""

    def __init__(
        self, *, store: Store, engine: StreamEngine, model: ChatModel, metrics: ChatMetrics
    ) -> None:
        self.store = store
        self.engine = engine
        self.model = model
        self.metrics = metrics
        # The answers this process produces now: by chat id until each ends (for resumes),
        # by stream id until each is stored (for stops).
        self._producing: dict[str, Production] = {}
        self._storing: dict[str, Production] = {}

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

    def production(self, stream_id: str) -> Production | None:
        """The stream's answer if this process produces it and has not stored it yet."""
        production = self._storing.get(stream_id)
        if production is None or not self.engine.produces(stream_id):
            return None  # (an end callback that never ran: the caller stores the answer)
        return production

    def _forget(self, record: StreamRecord) -> None:
        entry = self._producing.get(record.chat_id)
        if entry is not None and entry.record is record:  # not a newer answer of the chat
            del self._producing[record.chat_id]

    async def start(
        self, record: StreamRecord, history: Sequence[dict[str, Any]], *, owner: str
    ) -> None:
        """Start generating the answer ``record`` stands for, in ``owner``'s chat. Returns
        once the stream is claimed (readers may attach); the generation then runs in the
        engine."""
        started = time.monotonic()
        produced = _ProducedAnswer(record)
        production = Production(owner, record)

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
                production.state = await self.finalize(record, end.state, end.error, answer=answer)
            finally:
                self._storing.pop(record.id, None)
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

    async def _source(
        self,
        record: StreamRecord,
        history: Sequence[dict[str, Any]],
        produced: _ProducedAnswer,
    ) -> AsyncIterator[str]:
        started = time.monotonic()
        first = True
        uncounted = 0  # the chunks counter is a locked value: add to it in steps
        events = self.model.stream(list(history))
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
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def read_events(self, stream_id: str) -> tuple[list[dict[str, Any]], StreamEnd | None]:
        """Every event in the stream's log and how it ended (waits for the end).

        ([], None) if the stream no longer exists.
        """
        encoded: list[str] = []
        try:
            async for item in self.engine.read(stream_id, after=-1):
                if isinstance(item, Chunk):
                    encoded.append(item.data)
                else:
                    return _decode_events(stream_id, encoded), item
        except StreamNotFoundError:
            return [], None
        return _decode_events(stream_id, encoded), None

    async def finalize(
        self,
        record: StreamRecord,
        state: StreamState | None,
        error: str | None,
        *,
        answer: Answer | None = None,
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
            events, end = await self.read_events(record.id)
            answer = Answer.of(record.message_id, events)
        if end is not None and state is None:
            state, error = end.state, end.error
        if state is None:
            state, error = StreamState.INTERRUPTED, "the answer was lost"
        if state is StreamState.CANCELLED and answer.last_type == "finish":
            # A stop that lost the race with the end: the answer is complete, and every
            # reader was sent its own `finish`, so store what they saw.
            state, error = StreamState.DONE, None
        message = answer.message
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
