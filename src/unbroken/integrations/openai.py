"""The ``openai`` SDK's streams as AI SDK v5 UI message chunks (extra ``unbroken[openai]``).

Chat Completions (any OpenAI-compatible server: OpenAI, vLLM, Ollama, LM Studio, DeepSeek…)::

    from unbroken.integrations.openai import chat_completion_chunks, to_chat_messages

    def answer(turn):
        return chat_completion_chunks(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=to_chat_messages(turn.messages), stream=True
            ),
            message_id=turn.message_id,
        )

and the Responses API: ``responses_chunks(client.responses.create(..., stream=True))`` with
``input=to_responses_input(turn.messages)``.

Each adapter takes the stream (``await ...create(stream=True)``), the call not yet awaited
(so a refused request ends the answer as an ``error`` chunk too), or a stream manager
(``client.chat.completions.stream(...)``, ``client.responses.stream(...)``). It yields
``start``, ``start-step``, the text, reasoning and tool-call parts, ``finish-step`` and
``finish`` with the provider's finish reason mapped to the AI SDK's; a provider failure ends
the chunks with ``error`` and a message safe to show (the HTTP status or the provider's error
code, never its message or the key). Tools run by your code are not called here: a tool call
ends the answer with ``finishReason: "tool-calls"`` and the call's complete input.

When the chunks are closed early (a stop cancels the answer and closes its generator), the
provider's HTTP response is closed too, so the provider stops generating.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from unbroken.exceptions import MissingDependencyError as _MissingDependencyError

try:
    import openai as _openai
except ImportError as exc:  # pragma: no cover - exercised by a test that hides openai
    raise _MissingDependencyError("openai", "openai") from exc

from unbroken.integrations._providers import (
    ProviderStream,
    StreamSource,
    failure_text,
    history,
    parse_arguments,
    safe_code,
)
from unbroken.protocols.ai_sdk import UIEvent, UIMessageStreamBuilder

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam
    from openai.types.responses import ResponseInputParam

__all__ = [
    "ChatCompletionSource",
    "ResponsesSource",
    "chat_completion_chunks",
    "responses_chunks",
    "to_chat_messages",
    "to_responses_input",
]

#: What `chat_completion_chunks` takes: ``ChatCompletionChunk`` items (or the events of
#: ``client.chat.completions.stream``), as a stream, an awaitable of one, or a manager.
ChatCompletionSource: TypeAlias = StreamSource[Any]
#: What `responses_chunks` takes: Responses API stream events, in the same three forms.
ResponsesSource: TypeAlias = StreamSource[Any]

_CHAT_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
}

_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content-filter"}


def _failure(exc: Exception, source: ProviderStream[Any]) -> str:
    return failure_text(exc, opened=source.opened, status_error=_openai.APIStatusError)


# -- Chat Completions ---------------------------------------------------------------------------


@dataclass
class _ToolCall:
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    started: bool = False


async def chat_completion_chunks(
    stream: ChatCompletionSource, *, message_id: str | None = None
) -> AsyncIterator[UIEvent]:
    """The UI message chunks of one Chat Completions stream (see the module docstring).

    Reads text (``content``), reasoning (the ``reasoning_content`` or ``reasoning`` delta
    field that DeepSeek, vLLM, Ollama and others send) and tool calls, whose name and
    arguments may arrive split across chunks.
    """
    builder = UIMessageStreamBuilder(message_id)
    source: ProviderStream[Any] = ProviderStream(stream)
    calls: dict[int, _ToolCall] = {}
    finish_reason: str | None = None
    try:
        for event in builder.start_step():
            yield event
        try:
            items = await source.open()
            async for item in items:
                chunk = getattr(item, "chunk", item)  # the stream manager wraps each chunk
                for choice in getattr(chunk, "choices", None) or ():
                    if choice.index != 0:
                        continue
                    for event in _chat_delta(builder, calls, choice.delta):
                        yield event
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except _openai.APIError as exc:
            for event in builder.close_part() + builder.error(_failure(exc, source)):
                yield event
            return
        for index, call in sorted(calls.items()):
            call_id = call.id or f"call_{index}"
            events = builder.tool_call(
                call_id, call.name or "unknown", parse_arguments(call.arguments)
            )
            for event in events:
                yield event
        reason = _CHAT_FINISH_REASONS.get(finish_reason or "stop", "other")
        for event in builder.finish(finish_reason=reason):
            yield event
    finally:
        await source.aclose()


def _chat_delta(
    builder: UIMessageStreamBuilder, calls: dict[int, _ToolCall], delta: Any
) -> list[UIEvent]:
    events: list[UIEvent] = []
    extra = getattr(delta, "model_extra", None) or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        events += builder.reasoning(reasoning)
    if delta.content:
        events += builder.text(delta.content)
    for tool_delta in delta.tool_calls or ():
        call = calls.setdefault(tool_delta.index, _ToolCall())
        function = tool_delta.function
        call.id = call.id or tool_delta.id
        if function is not None and function.name:
            call.name = call.name or function.name
        if function is not None and function.arguments:
            call.arguments += function.arguments
            if call.started and call.id:
                events += builder.tool_input_delta(call.id, function.arguments)
        if not call.started and call.id and call.name:
            call.started = True
            events += builder.tool_input_start(call.id, call.name)
            if call.arguments:  # arguments that came with or before the name
                events += builder.tool_input_delta(call.id, call.arguments)
    return events


def to_chat_messages(messages: Sequence[dict[str, Any]]) -> list[ChatCompletionMessageParam]:
    """The conversation (AI SDK UI messages) as Chat Completions ``messages``.

    System and user text; each model call of an answer as an assistant message with its text
    and finished tool calls, followed by one ``tool`` message per call. Reasoning is not
    sent back, and unfinished tool calls are left out (the API refuses a call without its
    result).
    """
    out: list[dict[str, Any]] = []
    for turn in history(messages):
        if turn.role != "assistant":
            out.append({"role": turn.role, "content": turn.text})
            continue
        for step in turn.steps:
            entry: dict[str, Any] = {"role": "assistant", "content": step.text or None}
            if step.tools:
                entry["tool_calls"] = [
                    {
                        "id": tool.tool_call_id,
                        "type": "function",
                        "function": {"name": tool.tool_name, "arguments": json.dumps(tool.input)},
                    }
                    for tool in step.tools
                ]
            out.append(entry)
            out.extend(
                {"role": "tool", "tool_call_id": tool.tool_call_id, "content": tool.output_text}
                for tool in step.tools
            )
    return cast("list[ChatCompletionMessageParam]", out)


# -- Responses API -------------------------------------------------------------------------------


@dataclass
class _FunctionCall:
    call_id: str
    name: str
    arguments: str = ""


class _ResponsesReader:
    """Turns Responses API events into chunks, one event at a time."""

    def __init__(self, builder: UIMessageStreamBuilder) -> None:
        self.builder = builder
        self.calls: dict[str, _FunctionCall] = {}  # by output item id
        self.called = False
        self.ending: list[UIEvent] | None = None  # set by the event that ends the response

    def read(self, event: Any) -> list[UIEvent]:
        kind = getattr(event, "type", None)
        b = self.builder
        if kind == "response.output_text.delta":
            return b.text(event.delta)
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return b.reasoning(event.delta)
        if kind in (
            "response.output_text.done",
            "response.reasoning_summary_text.done",
            "response.reasoning_text.done",
        ):
            return b.close_part()
        if kind == "response.output_item.added":
            return self._item_added(event.item)
        if kind == "response.function_call_arguments.delta":
            call = self.calls.get(event.item_id)
            if call is None or not event.delta:
                return []
            call.arguments += event.delta
            return b.tool_input_delta(call.call_id, event.delta)
        if kind == "response.output_item.done":
            return self._item_done(event.item)
        if kind in ("response.completed", "response.incomplete"):
            self.ending = b.finish(finish_reason=self._finish_reason(event.response))
            return []
        if kind == "response.failed":
            error = getattr(event.response, "error", None)
            self.ending = self._error(getattr(error, "code", None))
            return []
        if kind == "error":
            self.ending = self._error(getattr(event, "code", None))
            return []
        return []

    def _item_added(self, item: Any) -> list[UIEvent]:
        if getattr(item, "type", None) != "function_call" or not item.id:
            return []
        call = _FunctionCall(item.call_id, item.name, item.arguments or "")
        self.calls[item.id] = call
        events = self.builder.tool_input_start(call.call_id, call.name)
        if call.arguments:
            events += self.builder.tool_input_delta(call.call_id, call.arguments)
        return events

    def _item_done(self, item: Any) -> list[UIEvent]:
        kind = getattr(item, "type", None)
        if kind in ("message", "reasoning"):
            return self.builder.close_part()
        if kind != "function_call":
            return []
        self.called = True
        call = self.calls.pop(item.id, None) if item.id else None
        arguments = item.arguments if item.arguments is not None else ""
        if call is None:  # a server that sends only the finished item
            return self.builder.tool_call(item.call_id, item.name, parse_arguments(arguments))
        return self.builder.tool_call(call.call_id, call.name, parse_arguments(arguments))

    def _finish_reason(self, response: Any) -> str:
        details = getattr(response, "incomplete_details", None)
        reason = getattr(details, "reason", None)
        if reason:
            return _INCOMPLETE_REASONS.get(reason, "other")
        return "tool-calls" if self.called else "stop"

    def _error(self, code: object) -> list[UIEvent]:
        text = "the model endpoint failed while answering"
        if (safe := safe_code(code)) is not None:
            text += f" ({safe})"
        return self.builder.close_part() + self.builder.error(text)


async def responses_chunks(
    stream: ResponsesSource, *, message_id: str | None = None
) -> AsyncIterator[UIEvent]:
    """The UI message chunks of one Responses API stream (see the module docstring).

    Reads output text, reasoning (summary deltas, and the reasoning text open-weight models
    send) and function calls; ``response.failed`` and ``error`` events end the chunks with
    ``error`` (the provider's error code, if any, in the message).
    """
    builder = UIMessageStreamBuilder(message_id)
    source: ProviderStream[Any] = ProviderStream(stream)
    reader = _ResponsesReader(builder)
    try:
        for event in builder.start_step():
            yield event
        try:
            items = await source.open()
            async for item in items:
                for event in reader.read(item):
                    yield event
                if reader.ending is not None:
                    break
        except _openai.APIError as exc:
            for event in builder.close_part() + builder.error(_failure(exc, source)):
                yield event
            return
        ending = reader.ending
        if ending is None:  # the stream ended without saying how
            ending = builder.finish(finish_reason="tool-calls" if reader.called else "other")
        for event in ending:
            yield event
    finally:
        await source.aclose()


def to_responses_input(messages: Sequence[dict[str, Any]]) -> ResponseInputParam:
    """The conversation (AI SDK UI messages) as Responses API ``input`` items.

    System, user and assistant text as messages; finished tool calls as ``function_call``
    and ``function_call_output`` items. Reasoning is not sent back.
    """
    out: list[dict[str, Any]] = []
    for turn in history(messages):
        if turn.role != "assistant":
            out.append({"role": turn.role, "content": turn.text})
            continue
        for step in turn.steps:
            if step.text:
                out.append({"role": "assistant", "content": step.text})
            for tool in step.tools:
                out.append(
                    {
                        "type": "function_call",
                        "call_id": tool.tool_call_id,
                        "name": tool.tool_name,
                        "arguments": json.dumps(tool.input),
                    }
                )
                out.append(
                    {
                        "type": "function_call_output",
                        "call_id": tool.tool_call_id,
                        "output": tool.output_text,
                    }
                )
    return cast("ResponseInputParam", out)
