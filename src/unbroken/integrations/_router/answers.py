"""One answer's life in the router: its turn, its chunks, and the report of its end.

The answer function runs in the engine, not in the request, so it goes on when the client
leaves; only a stop (or the server shutting down) ends it early. Whatever way it ends, the
message it built is handed to ``on_finish`` once (see `Answers`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from unbroken import Chunk, StreamEnd, StreamEngine, StreamState
from unbroken.exceptions import StreamNotFoundError, UnbrokenError
from unbroken.integrations._router.pointers import ChatPointer, ChatPointers
from unbroken.protocols.ai_sdk import (
    BaseChunk,
    UIMessageAssembler,
    decode_event,
    encode_event,
    event_to_dict,
)

__all__ = ["AnswerFunction", "Answers", "ChatTurn", "FinishedAnswer", "OnFinish"]

logger = logging.getLogger("unbroken")

#: What an answer function may yield: a UI message chunk (a mapping with a ``type``, or a
#: chunk object), or a list of them (what `UIMessageStreamBuilder`'s methods return).
AnswerItem = BaseChunk | Mapping[str, Any] | Sequence[BaseChunk | Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One answer to produce: what the client sent, and the ids the router chose.

    ``messages``: the chat's UI messages as the client sent them (v4 bodies are converted),
    oldest first. ``owner``: what the owner dependency returned (None without one).
    ``message_id``: the assistant message's id (sent in the stream's ``start``).
    ``stream_id``: this answer's stream (a new one per answer). ``trigger``:
    ``submit-message`` or ``regenerate-message``. ``protocol``: ``v5`` (UI message stream)
    or ``v4`` (data stream). ``extra``: the body's other top-level keys (an app's own
    fields, e.g. a selected model).
    """

    chat_id: str
    messages: list[dict[str, Any]]
    owner: str | None
    message_id: str
    stream_id: str
    trigger: str = "submit-message"
    protocol: Literal["v4", "v5"] = "v5"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def user_message(self) -> dict[str, Any] | None:
        """The newest message with role ``user``, if any."""
        message: dict[str, Any]
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message
        return None


@dataclass(frozen=True, slots=True)
class FinishedAnswer:
    """How an answer ended, for ``on_finish``.

    ``message``: the assistant UI message its stream built (what every client was shown),
    ``state``: ``done``, ``error``, ``cancelled`` or ``interrupted``; ``error``: the safe
    message of an ``error`` or ``interrupted`` end. ``turn``: the turn it answered, or None
    when this process did not produce it (its producer died and another process noticed).
    """

    chat_id: str
    owner: str | None
    stream_id: str
    message: dict[str, Any]
    state: StreamState
    error: str | None
    turn: ChatTurn | None


AnswerFunction = Callable[[ChatTurn], AsyncIterable[AnswerItem]]
OnFinish = Callable[[FinishedAnswer], Awaitable[None]]


class _Produced:
    """The chunks of one answer as the log holds them, and the message they build."""

    def __init__(self, message_id: str) -> None:
        self.encoded: list[str] = []
        self.assembler = _assembler(message_id)

    def add(self, event: dict[str, Any]) -> str:
        encoded = encode_event(event)  # raises ProtocolError for a chunk that is not one
        self.encoded.append(encoded)
        self.assembler.feed(event)
        return encoded

    def message(self, chunk_count: int) -> dict[str, Any]:
        """The message the log's first ``chunk_count`` chunks build."""
        if chunk_count == len(self.encoded):
            return self.assembler.message
        # A stop or a lost backend kept the last chunks out of the log.
        return assemble(self.assembler.message_id, self.encoded[:chunk_count])


def _assembler(message_id: str) -> UIMessageAssembler:
    # Not strict: an answer is reported even if one of its chunks is malformed.
    return UIMessageAssembler({"id": message_id, "role": "assistant", "parts": []}, strict=False)


def assemble(message_id: str, encoded: Sequence[str]) -> dict[str, Any]:
    """The assistant message a stream's chunks build (chunks that are no event skipped)."""
    assembler = _assembler(message_id)
    for data in encoded:
        try:
            assembler.feed(decode_event(data))
        except UnbrokenError:
            continue
    return assembler.message


async def _chunks(
    answer: AnswerFunction, turn: ChatTurn, produced: _Produced
) -> AsyncIterator[str]:
    """The stream's chunks: ``start`` with the turn's message id, then the answer's."""
    items = answer(turn)
    started = False
    try:
        async for item in items:
            events = [item] if isinstance(item, BaseChunk | Mapping) else item
            for event in events:
                data = event_to_dict(event)
                if not started:
                    started = True
                    if data.get("type") == "start":
                        # One id for the message, whoever made the start: replays then
                        # replace the message in the client instead of adding another.
                        data["messageId"] = turn.message_id
                    else:
                        yield produced.add({"type": "start", "messageId": turn.message_id})
                yield produced.add(data)
        if not started:
            yield produced.add({"type": "start", "messageId": turn.message_id})
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            # Closing the answer's generator is what stops the framework's run under it.
            with anyio.CancelScope(shield=True):
                await aclose()


class Answers:
    """Starts answers in the engine and reports each end to ``on_finish`` once.

    In the producing process every end is reported (``done``, ``error``, ``cancelled``, and
    ``interrupted`` when the server shuts down before the answer is complete). When the
    producing process dies, the next request for that chat in any process (a message, a
    resume or a stop) notices, records it ``interrupted`` and reports it there, with
    ``turn=None``. The pointers' `ChatPointers.claim_finish` makes it once.
    """

    def __init__(
        self,
        engine: StreamEngine,
        pointers: ChatPointers,
        answer: AnswerFunction,
        on_finish: OnFinish | None,
    ) -> None:
        self.engine = engine
        self.pointers = pointers
        self.answer = answer
        self.on_finish = on_finish
        #: How long an ended stream may wait for its own producer to report it.
        self.report_grace = max(5.0, 4 * engine.lease_ttl)

    async def start(self, turn: ChatTurn) -> None:
        """Claim the turn's stream and run the answer in the engine."""
        produced = _Produced(turn.message_id)

        async def on_end(end: StreamEnd) -> None:
            if self.on_finish is None:
                return
            message = produced.message(end.chunk_count)
            await self._report(
                FinishedAnswer(
                    turn.chat_id, turn.owner, turn.stream_id, message, end.state, end.error, turn
                ),
                fail_open=True,
            )

        await self.engine.start(turn.stream_id, _chunks(self.answer, turn, produced), on_end=on_end)

    async def _report(self, finished: FinishedAnswer, *, fail_open: bool) -> None:
        assert self.on_finish is not None
        try:
            claimed = await self.pointers.claim_finish(finished.chat_id, finished.stream_id)
        except UnbrokenError as exc:
            # The producer reports its own answer even so: a missed report loses a message,
            # a doubled one (only if its process died meanwhile) repeats one.
            logger.warning("stream %r: could not mark its end: %s", finished.stream_id, exc)
            claimed = fail_open
        if not claimed:
            return
        try:
            await self.on_finish(finished)
        except Exception:
            logger.exception("on_finish of stream %r failed", finished.stream_id)

    def orphaned(
        self, pointer: ChatPointer, state: StreamState | None, finished_at: float | None
    ) -> bool:
        """Whether the pointer's answer, ended in ``state`` at ``finished_at``, still waits
        for a report its producer will never make: interrupted (its producer died), or
        ended longer ago than its producer could take to report it."""
        stream_id = pointer.stream_id
        if self.on_finish is None or pointer.finished or stream_id is None:
            return False
        if state is None or not state.is_terminal or self.engine.produces(stream_id):
            return False
        if state is StreamState.INTERRUPTED:
            return True
        return finished_at is not None and time.time() - finished_at > self.report_grace

    async def logged(self, stream_id: str) -> tuple[dict[str, Any], StreamEnd] | None:
        """The message an ended stream's log builds, and how it ended (waits for the end);
        None if the stream is gone."""
        encoded: list[str] = []
        try:
            async for item in self.engine.read(stream_id):
                if isinstance(item, Chunk):
                    encoded.append(item.data)
                else:
                    return assemble(_message_id(encoded), encoded), item
        except StreamNotFoundError:
            return None
        return None

    async def report_orphan(self, chat_id: str, pointer: ChatPointer) -> None:
        """Report the end of an answer whose producer died (see `orphaned`), from its log."""
        stream_id = pointer.stream_id
        if self.on_finish is None or stream_id is None:
            return
        logged = await self.logged(stream_id)
        if logged is None:
            return
        message, end = logged
        finished = FinishedAnswer(
            chat_id, pointer.owner or None, stream_id, message, end.state, end.error, None
        )
        await self._report(finished, fail_open=False)


def _message_id(encoded: Sequence[str]) -> str:
    """The message id a stream's ``start`` carries ("" if it has none)."""
    if encoded:
        try:
            first = decode_event(encoded[0])
        except UnbrokenError:
            return ""
        message_id = first.get("messageId")
        if first.get("type") == "start" and isinstance(message_id, str):
            return message_id
    return ""
