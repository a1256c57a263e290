"""OpenAI Agents SDK runs as AI SDK v5 UI message chunks (extra ``unbroken[openai-agents]``).

::

    from agents import Runner
    from unbroken.integrations.openai_agents import run_chunks, to_input_items

    async def answer(turn):
        result = Runner.run_streamed(agent, to_input_items(turn.messages))
        async for chunk in run_chunks(result, message_id=turn.message_id):
            yield chunk

`run_chunks` reads ``result.stream_events()``: the model's raw Responses API events give the
text, reasoning and tool calls as they stream, the run's items give the tools' outputs. What
the client sees:

===========================================  ==========================================
Agents SDK                                   UI message chunks
===========================================  ==========================================
each model response (``response.created``)   ``start-step`` … ``finish-step``
``response.output_text.delta`` (and          ``text-start``, ``text-delta``…, ``text-end``
refusals)
reasoning summary and reasoning text         ``reasoning-start``, ``reasoning-delta``…,
deltas                                       ``reasoning-end``
a function call and its argument deltas      ``tool-input-start``, ``tool-input-delta``…,
                                             ``tool-input-available``
a ``tool_output`` run item                   ``tool-output-available``
the end of the run                           ``finish`` (``length`` or ``content-filter``
                                             when the last response was cut short)
an exception (max turns, a guardrail, the    the open part is closed, then ``error`` with
model endpoint)                              a safe message (a `StreamSourceError`'s own
                                             words)
===========================================  ==========================================

A stop cancels the run: the engine cancels and closes the answer, and this calls
``result.cancel()``, which cancels the model request and any tool still running.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from unbroken.exceptions import MissingDependencyError, StreamSourceError
from unbroken.integrations._frameworks import logger
from unbroken.integrations._providers import history, parse_arguments
from unbroken.protocols.ai_sdk import UIEvent, UIMessageStreamBuilder

try:
    import openai
    from agents import exceptions as _errors
    from agents.stream_events import RawResponsesStreamEvent, RunItemStreamEvent
    from pydantic_core import to_jsonable_python
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the SDK
    raise MissingDependencyError("openai-agents", "openai-agents") from exc

__all__ = ["run_chunks", "to_input_items"]

_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta"})
_REASONING_DELTAS = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta"}
)
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content-filter"}


def to_input_items(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat's UI messages as the Agents SDK's input items (``Runner.run_streamed(agent,
    items)``).

    System and user text, and each answer's steps: its text, then its finished tool calls as
    ``function_call`` and ``function_call_output`` items. Unfinished tool calls, reasoning,
    files and data parts are left out.
    """
    items: list[dict[str, Any]] = []
    for turn in history(messages):
        if turn.role in ("system", "user"):
            items.append({"role": turn.role, "content": turn.text})
        for step in turn.steps:
            if step.text:
                items.append({"role": "assistant", "content": step.text})
            for tool in step.tools:
                items.append(
                    {
                        "type": "function_call",
                        "call_id": tool.tool_call_id,
                        "name": tool.tool_name,
                        "arguments": json.dumps(tool.input),
                    }
                )
                items.append(
                    {
                        "type": "function_call_output",
                        "call_id": tool.tool_call_id,
                        "output": tool.output_text,
                    }
                )
    return items


async def run_chunks(result: Any, *, message_id: str | None = None) -> AsyncIterator[UIEvent]:
    """The UI message chunks of a streamed run (what ``Runner.run_streamed`` returns).

    The run is cancelled when this generator ends before the run did, whatever the reason.
    """
    translator = _Translator(UIMessageStreamBuilder(message_id))
    try:
        yield translator.builder.start()[0]
        try:
            async for event in result.stream_events():
                for chunk in translator.event(event):
                    yield chunk
        except Exception as exc:
            for chunk in translator.failed(exc):
                yield chunk
            return
        for chunk in translator.finish():
            yield chunk
    finally:
        if not result.is_complete:
            result.cancel()


class _Translator:
    """What the chunks of one run depend on: the builder and the function calls streaming."""

    def __init__(self, builder: UIMessageStreamBuilder) -> None:
        self.builder = builder
        self._finish_reason = "stop"
        self._calls: dict[str, tuple[str, str]] = {}  # item id -> (call id, tool name)

    def event(self, event: Any) -> list[UIEvent]:
        """The chunks for one stream event."""
        if isinstance(event, RawResponsesStreamEvent):
            return self._raw(event.data)
        if isinstance(event, RunItemStreamEvent) and event.name == "tool_output":
            call_id = event.item.call_id
            if call_id is not None:
                output = to_jsonable_python(event.item.output, fallback=str)
                return self.builder.tool_result(call_id, output)
        return []

    def _raw(self, data: Any) -> list[UIEvent]:
        kind = getattr(data, "type", None)
        b = self.builder
        if kind in _TEXT_DELTAS:
            return b.text(data.delta) if data.delta else []
        if kind in _REASONING_DELTAS:
            return b.reasoning(data.delta) if data.delta else []
        if kind == "response.created":
            return b.start_step()
        if kind == "response.output_item.added":
            item = data.item
            if getattr(item, "type", None) == "function_call":
                self._calls[item.id or item.call_id] = (item.call_id, item.name)
                return b.tool_input_start(item.call_id, item.name)
        elif kind == "response.function_call_arguments.delta":
            call = self._calls.get(data.item_id)
            if call is not None and data.delta:
                return b.tool_input_delta(call[0], data.delta)
        elif kind == "response.output_item.done":
            return self._item_done(data.item)
        elif kind in ("response.completed", "response.incomplete"):
            details = getattr(data.response, "incomplete_details", None)
            reason = getattr(details, "reason", None)
            self._finish_reason = _INCOMPLETE_REASONS.get(reason or "", "stop")
        return []

    def _item_done(self, item: Any) -> list[UIEvent]:
        kind = getattr(item, "type", None)
        if kind == "function_call":
            self._calls.pop(item.id or item.call_id, None)
            return self.builder.tool_call(item.call_id, item.name, parse_arguments(item.arguments))
        if kind in ("message", "reasoning"):
            return self.builder.close_part()
        return []

    def finish(self) -> list[UIEvent]:
        """The chunks that end a run that completed."""
        return self.builder.finish(finish_reason=self._finish_reason)

    def failed(self, exc: Exception) -> list[UIEvent]:
        """The chunks that end a run that raised ``exc``: close the open part, then ``error``."""
        message = _safe_message(exc)
        if not isinstance(exc, StreamSourceError):
            logger.warning("the Agents SDK run failed: %s", message, exc_info=exc)
        return self.builder.close_part() + self.builder.error(message)


def _safe_message(exc: Exception) -> str:
    """What the user may be told of the run's failure: never the exception's own text,
    which can carry a provider's response body, unless it chose to be shown."""
    if isinstance(exc, StreamSourceError):
        return str(exc)
    if isinstance(exc, openai.APIStatusError):
        return f"the model endpoint answered HTTP {exc.status_code}"
    if isinstance(exc, openai.APIError):
        return "the model endpoint failed while answering"
    if isinstance(exc, _errors.MaxTurnsExceeded):
        return "the agent took more turns than it may"
    if isinstance(
        exc, _errors.InputGuardrailTripwireTriggered | _errors.OutputGuardrailTripwireTriggered
    ):
        return "a guardrail stopped the answer"
    if isinstance(exc, _errors.ModelBehaviorError):
        return "the model answered in a way the agent could not use"
    return "the agent failed while answering"
