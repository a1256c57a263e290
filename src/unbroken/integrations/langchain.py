"""LangChain and LangGraph streams as AI SDK v5 UI message chunks (extra ``unbroken[langchain]``).

::

    from unbroken.integrations.langchain import event_chunks, to_messages

    async def answer(turn):
        inputs = {"messages": to_messages(turn.messages)}
        async for chunk in event_chunks(
            graph.astream_events(inputs, version="v2"), message_id=turn.message_id
        ):
            yield chunk

Two streams are understood:

- `event_chunks`: ``runnable.astream_events(..., version="v2")`` of any runnable (a LangGraph
  graph, an agent, a chain, a chat model). Each chat model call is a step; tools' results
  come from ``on_tool_end`` (a ``ToolMessage``, as LangGraph's ``ToolNode`` returns).
  Narrow it with ``astream_events``' own ``include_names`` / ``include_tags`` filters when
  inner model calls should not be shown.
- `message_chunks`: ``graph.astream(..., stream_mode="messages")`` (also with several
  stream modes, ``subgraphs=True`` or ``version="v2"``: other modes' items are skipped). Each
  AI message is a step.

What the client sees:

=====================================  ==============================================
LangChain                              UI message chunks
=====================================  ==============================================
text content blocks                    ``text-start``, ``text-delta``…, ``text-end``
reasoning blocks (any provider's,      ``reasoning-start``, ``reasoning-delta``…,
through ``content_blocks``)            ``reasoning-end``
tool call chunks                       ``tool-input-start``, ``tool-input-delta``…,
                                       ``tool-input-available`` at the message's end
a ``ToolMessage``                      ``tool-output-available`` (``tool-output-error``
                                       when its ``status`` is ``"error"``)
the end of the stream                  ``finish`` (the last model's finish reason)
an exception                           the open part is closed, then ``error`` with a
                                       safe message (a `StreamSourceError`'s own words)
=====================================  ==============================================

A stop cancels the run: the engine cancels and closes the answer, and this closes the
LangChain stream, which cancels the graph's running nodes, model calls and tools.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from unbroken.exceptions import MissingDependencyError, StreamSourceError
from unbroken.integrations._frameworks import close_shielded, iterate_apart, logger
from unbroken.integrations._providers import history
from unbroken.protocols.ai_sdk import UIEvent, UIMessageStreamBuilder

try:
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        BaseMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
    )
except ImportError as exc:  # pragma: no cover - exercised by a test that hides langchain
    raise MissingDependencyError("langchain-core", "langchain") from exc

__all__ = ["event_chunks", "message_chunks", "to_messages"]

_FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "STOP": "stop",
    "length": "length",
    "max_tokens": "length",
    "MAX_TOKENS": "length",
    "tool_calls": "tool-calls",
    "tool_use": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
    "SAFETY": "content-filter",
}


def to_messages(messages: Sequence[dict[str, Any]]) -> list[BaseMessage]:
    """The chat's UI messages as LangChain messages (a graph's ``{"messages": ...}`` input).

    System and user text, and each answer's steps: its text, the tools it called
    (``AIMessage.tool_calls``) and their results (``ToolMessage``). Unfinished tool calls,
    reasoning, files and data parts are left out.
    """
    out: list[BaseMessage] = []
    for turn in history(messages):
        if turn.role == "system":
            out.append(SystemMessage(turn.text))
        elif turn.role == "user":
            out.append(HumanMessage(turn.text))
        for step in turn.steps:
            calls = [
                {"name": t.tool_name, "args": _args(t.input), "id": t.tool_call_id}
                for t in step.tools
            ]
            out.append(AIMessage(content=step.text, tool_calls=calls))
            out.extend(
                ToolMessage(
                    content=t.output_text,
                    tool_call_id=t.tool_call_id,
                    name=t.tool_name,
                    status="error" if t.is_error else "success",
                )
                for t in step.tools
            )
    return out


def _args(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"input": value}


async def event_chunks(
    events: AsyncIterable[dict[str, Any]], *, message_id: str | None = None
) -> AsyncIterator[UIEvent]:
    """The UI message chunks for ``runnable.astream_events(..., version="v2")``.

    The events are closed when this generator ends, whatever the reason.
    """
    translator = _Translator(UIMessageStreamBuilder(message_id))
    iterator = aiter(events)
    try:
        yield translator.builder.start()[0]
        try:
            async with aclosing(iterate_apart(iterator)) as events_apart:
                async for event in events_apart:
                    for chunk in translator.stream_event(event):
                        yield chunk
        except Exception as exc:
            for chunk in translator.failed(exc):
                yield chunk
            return
        for chunk in translator.finish():
            yield chunk
    finally:
        await close_shielded(getattr(iterator, "aclose", None))


async def message_chunks(
    stream: AsyncIterable[Any], *, message_id: str | None = None
) -> AsyncIterator[UIEvent]:
    """The UI message chunks for ``graph.astream(..., stream_mode="messages")``.

    The stream is closed when this generator ends, whatever the reason.
    """
    translator = _Translator(UIMessageStreamBuilder(message_id))
    iterator = aiter(stream)
    try:
        yield translator.builder.start()[0]
        try:
            async with aclosing(iterate_apart(iterator)) as items:
                async for item in items:
                    message = _streamed_message(item)
                    if message is not None:
                        for chunk in translator.message(message):
                            yield chunk
        except Exception as exc:
            for chunk in translator.failed(exc):
                yield chunk
            return
        for chunk in translator.end_message() + translator.finish():
            yield chunk
    finally:
        await close_shielded(getattr(iterator, "aclose", None))


def _streamed_message(item: Any) -> BaseMessage | None:
    """The message in one item of ``stream_mode="messages"`` (None for other modes' items)."""
    if isinstance(item, dict):  # version="v2": {"type": ..., "ns": ..., "data": ...}
        return _streamed_message(item.get("data")) if item.get("type") == "messages" else None
    if not isinstance(item, tuple):
        return None
    if len(item) == 3:  # (namespace, mode, payload): subgraphs and several modes
        return _streamed_message(item[2]) if item[1] == "messages" else None
    if len(item) != 2:
        return None
    first, second = item
    if isinstance(first, BaseMessage):  # (message, metadata)
        return first
    if first == "messages":  # (mode, payload): several modes
        return _streamed_message(second)
    if isinstance(first, tuple):  # (namespace, payload): subgraphs
        return _streamed_message(second)
    return None


def _output_messages(output: Any) -> Sequence[Any]:
    """The messages in a graph node's output (``{"messages": [...]}`` or a list)."""
    if isinstance(output, dict):
        output = output.get("messages")
    return output if isinstance(output, list | tuple) else ()


class _Translator:
    """What the chunks of one run depend on: the builder, the model call streaming, and the
    tool calls it announced."""

    def __init__(self, builder: UIMessageStreamBuilder) -> None:
        self.builder = builder
        self._finish_reason = "stop"
        # The AI message streaming now (messages mode: its chunks so far; events: its run id).
        self._current: str | None = None
        self._message: AIMessageChunk | None = None
        self._streamed = False  # the current model call sent content as it went
        self._calls: dict[Any, str] = {}  # tool call chunk index -> tool call id
        self._pending_args: dict[Any, str] = {}  # arguments that came before the call's id
        self._announced: set[str] = set()  # tool calls sent with their input
        self._answered: set[str] = set()  # tool calls sent with their output or error

    # -- astream_events ----------------------------------------------------------------------

    def stream_event(self, event: dict[str, Any]) -> list[UIEvent]:
        """The chunks for one ``astream_events`` v2 event."""
        kind = event.get("event")
        data = event.get("data") or {}
        run_id = str(event.get("run_id"))
        if kind == "on_chat_model_start":
            return self._begin(run_id)
        if kind == "on_chat_model_stream" and run_id == self._current:
            chunk = data.get("chunk")
            if isinstance(chunk, AIMessageChunk):
                self._streamed = True
                return self._content(chunk)
        elif kind == "on_chat_model_end" and run_id == self._current:
            output = data.get("output")
            self._current = None
            if isinstance(output, AIMessage):
                return self._complete(output, streamed=self._streamed)
        elif kind == "on_tool_end":
            output = data.get("output")
            if isinstance(output, ToolMessage):
                return self._tool_message(output)
        elif kind == "on_chain_end":
            # A tool that raised has no on_tool_end: the node that ran it (LangGraph's
            # ToolNode with handle_tool_errors) returns its error as a ToolMessage.
            chunks: list[UIEvent] = []
            for message in _output_messages(data.get("output")):
                if isinstance(message, ToolMessage):
                    chunks += self._tool_message(message)
            return chunks
        return []

    # -- stream_mode="messages" --------------------------------------------------------------

    def message(self, message: BaseMessage) -> list[UIEvent]:
        """The chunks for one message of ``stream_mode="messages"``."""
        if isinstance(message, AIMessageChunk):
            # LangChain ends a streamed message with an empty chunk marked "last", whose id
            # may be the run's rather than the provider's: it belongs to the message before.
            # A chunk without an id belongs to the message streaming, if any.
            last = message.chunk_position == "last"
            key = message.id
            chunks: list[UIEvent] = []
            if self._message is None or (
                key is not None and self._current not in (None, key) and not last
            ):
                if last and not (message.content or message.tool_call_chunks):
                    return self.end_message()
                chunks += self.end_message() + self._begin(key)
            elif self._current is None:
                self._current = key
            self._message = message if self._message is None else self._message + message
            chunks += self._content(message)
            return chunks + self.end_message() if last else chunks
        if isinstance(message, AIMessage):
            chunks = self.end_message() + self._begin(message.id)
            self._current = None
            return chunks + self._complete(message, streamed=False)
        if isinstance(message, ToolMessage):
            return self.end_message() + self._tool_message(message)
        return []

    def end_message(self) -> list[UIEvent]:
        """Announce the tool calls of the AI message that was streaming, if any."""
        message, self._message = self._message, None
        self._current = None
        return [] if message is None else self._complete(message, streamed=True)

    # -- shared ------------------------------------------------------------------------------

    def _begin(self, key: str | None) -> list[UIEvent]:
        self._current = key
        self._streamed = False
        self._calls.clear()
        self._pending_args.clear()
        return self.builder.start_step()

    def _content(self, message: AIMessageChunk | AIMessage) -> list[UIEvent]:
        b = self.builder
        chunks: list[UIEvent] = []
        for typed_block in message.content_blocks:
            block: dict[str, Any] = dict(typed_block)
            kind = block.get("type")
            if kind == "text" and block.get("text"):
                chunks += b.text(block["text"])
            elif kind == "reasoning" and block.get("reasoning"):
                chunks += b.reasoning(block["reasoning"])
            elif kind == "tool_call_chunk":
                chunks += self._tool_call_chunk(block)
        response = message.response_metadata or {}
        reason = response.get("finish_reason") or response.get("stop_reason")
        if isinstance(reason, str) and reason:
            self._finish_reason = _FINISH_REASONS.get(reason, "other")
        return chunks

    def _tool_call_chunk(self, block: Any) -> list[UIEvent]:
        index = block.get("index")
        key = index if index is not None else block.get("id")
        args = block.get("args") or ""
        call_id = self._calls.get(key)
        chunks: list[UIEvent] = []
        if call_id is None:
            if not (block.get("id") and block.get("name")):
                self._pending_args[key] = self._pending_args.get(key, "") + args
                return []
            call_id = self._calls[key] = block["id"]
            chunks += self.builder.tool_input_start(call_id, block["name"])
            args = self._pending_args.pop(key, "") + args
        if args:
            chunks += self.builder.tool_input_delta(call_id, args)
        return chunks

    def _complete(self, message: AIMessage, *, streamed: bool) -> list[UIEvent]:
        """A model call's end: its content if it did not stream, and its tool calls' input."""
        chunks = [] if streamed else self._content(message)
        for call in message.tool_calls:
            call_id = call.get("id")
            if call_id and call_id not in self._announced:
                self._announced.add(call_id)
                chunks += self.builder.tool_call(call_id, call["name"], call["args"])
        return chunks + self.builder.close_part()

    def _tool_message(self, message: ToolMessage) -> list[UIEvent]:
        if message.tool_call_id in self._answered:
            return []
        self._answered.add(message.tool_call_id)
        if message.status == "error":
            return self.builder.tool_error(message.tool_call_id, message.text)
        content = message.content
        return self.builder.tool_result(message.tool_call_id, content)

    def finish(self) -> list[UIEvent]:
        """The chunks that end a run that completed."""
        return self.builder.finish(finish_reason=self._finish_reason)

    def failed(self, exc: Exception) -> list[UIEvent]:
        """The chunks that end a run that raised ``exc``: close the open part, then ``error``."""
        if isinstance(exc, StreamSourceError):
            message = str(exc)
        else:
            message = "the model or a tool failed while answering"
            logger.warning("the LangChain run failed", exc_info=exc)
        return self.builder.close_part() + self.builder.error(message)
