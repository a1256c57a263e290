"""The ``anthropic`` SDK's message streams as AI SDK v5 UI message chunks (extra
``unbroken[anthropic]``).

::

    from unbroken.integrations.anthropic import message_chunks, system_prompt, to_anthropic_messages

    def answer(turn):
        return message_chunks(
            client.messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=1024,
                system=system_prompt(turn.messages),
                messages=to_anthropic_messages(turn.messages),
            ),
            message_id=turn.message_id,
        )

`message_chunks` takes the stream manager (``client.messages.stream(...)``: the adapter
enters and exits it), the stream (``await client.messages.create(..., stream=True)``), or
that call not yet awaited (so a refused request ends the answer as an ``error`` chunk too).
It yields ``start``, ``start-step``, text, reasoning (``thinking`` blocks) and tool-call
parts (``tool_use`` with its ``input_json_delta`` pieces), ``finish-step`` and ``finish``
with the stop reason mapped to the AI SDK's finish reason. Tools Anthropic runs itself (web
search, code execution) come with their results as ``tool-output-available``, marked
``providerExecuted``. A provider failure, before or during the answer, ends the chunks with
``error`` and a message safe to show (the HTTP status or the error type, such as
``overloaded_error``, never the provider's message or the key).

When the chunks are closed early (a stop cancels the answer and closes its generator), the
provider's HTTP response is closed too, so the provider stops generating.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from unbroken.exceptions import MissingDependencyError as _MissingDependencyError

try:
    import anthropic as _anthropic
except ImportError as exc:  # pragma: no cover - exercised by a test that hides anthropic
    raise _MissingDependencyError("anthropic", "anthropic") from exc

from unbroken.integrations._providers import (
    ProviderStream,
    StreamSource,
    failure_text,
    history,
    parse_arguments,
)
from unbroken.protocols.ai_sdk import UIEvent, UIMessageStreamBuilder

if TYPE_CHECKING:
    from anthropic.types import MessageParam

__all__ = ["MessageSource", "message_chunks", "system_prompt", "to_anthropic_messages"]

#: What `message_chunks` takes: Messages API stream events, as a stream, an awaitable of
#: one, or the stream manager of ``client.messages.stream``.
MessageSource: TypeAlias = StreamSource[Any]

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool-calls",
    "refusal": "content-filter",
}


@dataclass
class _ToolUse:
    id: str
    name: str
    provider_executed: bool
    input_json: str = ""


class _MessageReader:
    """Turns Messages API stream events into chunks, one event at a time."""

    def __init__(self, builder: UIMessageStreamBuilder) -> None:
        self.builder = builder
        self.tools: dict[int, _ToolUse] = {}  # open tool_use blocks, by block index
        self.stop_reason: str | None = None
        self.stopped = False

    def read(self, event: Any) -> list[UIEvent]:
        kind = getattr(event, "type", None)
        if kind == "content_block_start":
            return self._block_start(event.index, event.content_block)
        if kind == "content_block_delta":
            return self._block_delta(event.index, event.delta)
        if kind == "content_block_stop":
            return self._block_stop(event.index)
        if kind == "message_delta":
            self.stop_reason = getattr(event.delta, "stop_reason", None) or self.stop_reason
        elif kind == "message_stop":
            self.stopped = True
        # message_start, and the stream manager's own text/thinking/input_json events, which
        # repeat the deltas already read.
        return []

    def _block_start(self, index: int, block: Any) -> list[UIEvent]:
        kind = getattr(block, "type", None)
        b = self.builder
        if kind == "text":
            return b.text(block.text or "")
        if kind == "thinking":
            return b.reasoning(block.thinking or "")
        if kind in ("tool_use", "server_tool_use"):
            tool = _ToolUse(block.id, block.name, provider_executed=kind == "server_tool_use")
            self.tools[index] = tool
            return b.tool_input_start(
                tool.id, tool.name, provider_executed=True if tool.provider_executed else None
            )
        tool_use_id = getattr(block, "tool_use_id", None)
        if isinstance(kind, str) and kind.endswith("_tool_result") and tool_use_id:
            output = block.model_dump(mode="json").get("content")
            return b.close_part() + b.tool_result(tool_use_id, output, provider_executed=True)
        return []  # redacted thinking, container uploads: nothing to show

    def _block_delta(self, index: int, delta: Any) -> list[UIEvent]:
        kind = getattr(delta, "type", None)
        if kind == "text_delta":
            return self.builder.text(delta.text)
        if kind == "thinking_delta":
            return self.builder.reasoning(delta.thinking)
        if kind == "input_json_delta" and (tool := self.tools.get(index)) is not None:
            if not delta.partial_json:
                return []
            tool.input_json += delta.partial_json
            return self.builder.tool_input_delta(tool.id, delta.partial_json)
        return []  # signatures and citations

    def _block_stop(self, index: int) -> list[UIEvent]:
        tool = self.tools.pop(index, None)
        if tool is None:
            return self.builder.close_part()
        return self.builder.tool_call(
            tool.id,
            tool.name,
            parse_arguments(tool.input_json),
            provider_executed=True if tool.provider_executed else None,
        )

    def finish_reason(self) -> str:
        if self.stop_reason is None:
            return "stop" if self.stopped else "other"
        return _STOP_REASONS.get(self.stop_reason, "other")


async def message_chunks(
    stream: MessageSource, *, message_id: str | None = None
) -> AsyncIterator[UIEvent]:
    """The UI message chunks of one Messages API stream (see the module docstring)."""
    builder = UIMessageStreamBuilder(message_id)
    source: ProviderStream[Any] = ProviderStream(stream)
    reader = _MessageReader(builder)
    try:
        for event in builder.start_step():
            yield event
        try:
            items = await source.open()
            async for item in items:
                for event in reader.read(item):
                    yield event
                if reader.stopped:
                    break
        except _anthropic.APIError as exc:
            text = failure_text(exc, opened=source.opened, status_error=_anthropic.APIStatusError)
            for event in builder.close_part() + builder.error(text):
                yield event
            return
        for event in builder.finish(finish_reason=reader.finish_reason()):
            yield event
    finally:
        await source.aclose()


def system_prompt(messages: Sequence[dict[str, Any]]) -> str:
    """The text of the conversation's ``system`` messages ("" when there are none), for the
    Messages API's ``system`` parameter."""
    return "\n\n".join(turn.text for turn in history(messages) if turn.role == "system")


def to_anthropic_messages(messages: Sequence[dict[str, Any]]) -> list[MessageParam]:
    """The conversation (AI SDK UI messages) as Messages API ``messages``.

    User text; each model call of an answer as an assistant message with its text and
    finished ``tool_use`` blocks, whose ``tool_result`` blocks follow in a user message.
    Consecutive messages of one role are merged (the API wants them alternating). System
    messages are left out (see `system_prompt`); reasoning is not sent back.
    """
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for turn in history(messages):
        if turn.role == "user":
            add("user", [{"type": "text", "text": turn.text}])
        elif turn.role == "assistant":
            for step in turn.steps:
                blocks: list[dict[str, Any]] = []
                if step.text:
                    blocks.append({"type": "text", "text": step.text})
                blocks.extend(
                    {
                        "type": "tool_use",
                        "id": tool.tool_call_id,
                        "name": tool.tool_name,
                        "input": tool.input if isinstance(tool.input, dict) else {},
                    }
                    for tool in step.tools
                )
                add("assistant", blocks)
                add(
                    "user",
                    [
                        {
                            "type": "tool_result",
                            "tool_use_id": tool.tool_call_id,
                            "content": tool.output_text,
                            **({"is_error": True} if tool.is_error else {}),
                        }
                        for tool in step.tools
                    ],
                )
    return cast("list[MessageParam]", out)
