"""pydantic-ai agent runs as AI SDK v5 UI message chunks (extra ``unbroken[pydantic-ai]``).

::

    from unbroken.integrations.pydantic_ai import agent_chunks, to_model_messages

    async def answer(turn):
        history = to_model_messages(turn.messages[:-1])
        async for chunk in agent_chunks(agent, turn.prompt, message_history=history,
                                        message_id=turn.message_id):
            yield chunk

`agent_chunks` runs the agent with ``agent.run_stream_events(...)`` and turns its events into
chunks; `event_chunks` does the same for events you already have (an ``event_stream_handler``,
or the handle ``run_stream_events`` gives). What the client sees:

=============================  ===================================================
pydantic-ai                    UI message chunks
=============================  ===================================================
each model response            ``start-step`` … ``finish-step``
``TextPart`` and its deltas    ``text-start``, ``text-delta``…, ``text-end``
``ThinkingPart``               ``reasoning-start``, ``reasoning-delta``…, ``reasoning-end``
``ToolCallPart``               ``tool-input-start``, ``tool-input-delta``…,
                               ``tool-input-available`` (the parsed arguments)
a tool's return                ``tool-output-available`` (or ``tool-output-error``
                               when the tool failed or asked the model to retry)
a built-in (provider) tool     the same, with ``providerExecuted: true``
``FilePart``                   ``file`` (a ``data:`` URL)
the run's result               ``finish`` with the finish reason
the run fails                  the open part is closed, then ``error`` with a safe
                               message (the HTTP status for a model endpoint's
                               refusal; a `StreamSourceError`'s own words)
=============================  ===================================================

A stop cancels the run: the engine cancels and closes the answer, which leaves the run's
context, and pydantic-ai cancels the model request and any tool still running.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

from unbroken.exceptions import MissingDependencyError, StreamSourceError
from unbroken.integrations._frameworks import close_shielded, logger
from unbroken.protocols.ai_sdk import UIEvent, UIMessageStreamBuilder

try:
    import pydantic
    from pydantic_ai import exceptions as _errors
    from pydantic_ai import messages as _m
    from pydantic_ai.run import AgentRunResultEvent
    from pydantic_ai.ui.vercel_ai import VercelAIAdapter
    from pydantic_ai.ui.vercel_ai.request_types import UIMessage
    from pydantic_core import to_jsonable_python
except ImportError as exc:  # pragma: no cover - exercised by a test that hides pydantic-ai
    raise MissingDependencyError("pydantic-ai-slim", "pydantic-ai") from exc

__all__ = ["agent_chunks", "event_chunks", "to_model_messages"]

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_call": "tool-calls",
    "error": "error",
}

_ui_messages = pydantic.TypeAdapter(list[UIMessage])


def to_model_messages(messages: Sequence[dict[str, Any]]) -> list[_m.ModelMessage]:
    """The chat's UI messages as pydantic-ai's message history (``message_history=``).

    Uses pydantic-ai's own Vercel AI reader, so text, reasoning, files and finished tool calls
    come back as the parts the agent produced. Raises `ValueError` for messages that are not
    AI SDK v5 UI messages.
    """
    try:
        ui_messages = _ui_messages.validate_python(list(messages))
    except pydantic.ValidationError as exc:
        raise ValueError(f"not AI SDK UI messages: {exc.error_count()} invalid fields") from exc
    return VercelAIAdapter.load_messages(ui_messages)


async def agent_chunks(
    agent: Any,
    prompt: str | Sequence[Any] | None = None,
    *,
    message_id: str | None = None,
    **run_options: Any,
) -> AsyncIterator[UIEvent]:
    """Run ``agent`` on ``prompt`` and yield the answer's UI message chunks.

    ``run_options`` go to ``agent.run_stream_events`` (``message_history``, ``deps``,
    ``model``, ``model_settings``, …). ``message_id`` is sent in ``start``: pass the router's,
    so every replay updates the same message.
    """
    run = agent.run_stream_events(prompt, **run_options)
    events = await run.__aenter__()
    try:
        async for chunk in event_chunks(events, message_id=message_id):
            yield chunk
    finally:
        # Leaving the run's context early is what cancels the run and its model request.
        await close_shielded(lambda: run.__aexit__(None, None, None))


async def event_chunks(
    events: AsyncIterable[Any], *, message_id: str | None = None
) -> AsyncIterator[UIEvent]:
    """The UI message chunks for a stream of pydantic-ai run events.

    ``events`` are ``AgentStreamEvent`` and ``AgentRunResultEvent`` values, as
    ``agent.run_stream_events`` yields them. The stream is closed when this generator ends,
    whatever the reason.
    """
    translator = _Translator(UIMessageStreamBuilder(message_id))
    iterator = aiter(events)
    try:
        for chunk in translator.builder.start():
            yield chunk
        try:
            async for event in iterator:
                for chunk in translator.event(event):
                    yield chunk
        except Exception as exc:
            for chunk in translator.failed(exc):
                yield chunk
            return
        for chunk in translator.finish():
            yield chunk
    finally:
        await close_shielded(getattr(iterator, "aclose", None))


class _Translator:
    """Keeps what the chunks of one run depend on: the builder, and which part is which."""

    def __init__(self, builder: UIMessageStreamBuilder) -> None:
        self.builder = builder
        self._responding = False  # a model response is streaming (tool calls end it)
        self._tool_calls: dict[int, str] = {}  # part index -> tool call id, this response
        self._finish_reason = "stop"

    def event(self, event: Any) -> list[UIEvent]:
        """The chunks for one run event (none for events the client has no use for)."""
        if isinstance(event, _m.PartStartEvent):
            return self._part_start(event)
        if isinstance(event, _m.PartDeltaEvent):
            return self._part_delta(event)
        if isinstance(event, _m.PartEndEvent):
            return self._part_end(event)
        if isinstance(event, _m.FunctionToolCallEvent | _m.OutputToolCallEvent):
            self._responding = False
            return []
        if isinstance(event, _m.FunctionToolResultEvent | _m.OutputToolResultEvent):
            self._responding = False
            return self._tool_return(event.part)
        if isinstance(event, AgentRunResultEvent):
            reason = event.result.response.finish_reason
            if reason:
                self._finish_reason = _FINISH_REASONS.get(reason, "other")
        return []

    def _part_start(self, event: Any) -> list[UIEvent]:
        b = self.builder
        chunks: list[UIEvent] = []
        if not self._responding:
            self._responding = True
            self._tool_calls.clear()
            chunks += b.start_step()
        part = event.part
        if isinstance(part, _m.TextPart):
            chunks += b.text(part.content)
        elif isinstance(part, _m.ThinkingPart):
            chunks += b.reasoning(part.content)
        elif isinstance(part, _m.ToolCallPart | _m.NativeToolCallPart):
            self._tool_calls[event.index] = part.tool_call_id
            executed = True if isinstance(part, _m.NativeToolCallPart) else None
            chunks += b.tool_input_start(
                part.tool_call_id, part.tool_name, provider_executed=executed
            )
            if part.args:
                chunks += b.tool_input_delta(part.tool_call_id, _args_text(part.args))
        elif isinstance(part, _m.NativeToolReturnPart):
            chunks += self._tool_return(part, provider_executed=True)
        elif isinstance(part, _m.FilePart):
            chunks += b.file(part.content.data_uri, part.content.media_type)
        return chunks

    def _part_delta(self, event: Any) -> list[UIEvent]:
        delta = event.delta
        if isinstance(delta, _m.TextPartDelta):
            return self.builder.text(delta.content_delta) if delta.content_delta else []
        if isinstance(delta, _m.ThinkingPartDelta):
            return self.builder.reasoning(delta.content_delta) if delta.content_delta else []
        if isinstance(delta, _m.ToolCallPartDelta) and delta.args_delta is not None:
            call_id = delta.tool_call_id or self._tool_calls.get(event.index)
            if call_id is not None:
                return self.builder.tool_input_delta(call_id, _args_text(delta.args_delta))
        return []

    def _part_end(self, event: Any) -> list[UIEvent]:
        part = event.part
        if isinstance(part, _m.TextPart | _m.ThinkingPart):
            kind = "text" if isinstance(part, _m.TextPart) else "thinking"
            # pydantic-ai splits one answer into several parts of a kind; the client shows
            # consecutive ones as one part, as pydantic-ai's own Vercel AI stream does.
            return [] if event.next_part_kind == kind else self.builder.close_part()
        if isinstance(part, _m.ToolCallPart | _m.NativeToolCallPart):
            executed = True if isinstance(part, _m.NativeToolCallPart) else None
            return self.builder.tool_call(
                part.tool_call_id, part.tool_name, part.args_as_dict(), provider_executed=executed
            )
        return []

    def _tool_return(self, part: Any, *, provider_executed: bool | None = None) -> list[UIEvent]:
        if part.outcome in _m.ERROR_OUTCOMES:
            return self.builder.tool_error(part.tool_call_id, part.model_response_str())
        output = to_jsonable_python(part.content, fallback=str)
        return self.builder.tool_result(
            part.tool_call_id, output, provider_executed=provider_executed
        )

    def finish(self) -> list[UIEvent]:
        """The chunks that end a run that completed."""
        return self.builder.finish(finish_reason=self._finish_reason)

    def failed(self, exc: Exception) -> list[UIEvent]:
        """The chunks that end a run that raised ``exc``: close the open part, then ``error``."""
        message = _safe_message(exc)
        if not isinstance(exc, StreamSourceError):
            logger.warning("the pydantic-ai run failed: %s", message, exc_info=exc)
        return self.builder.close_part() + self.builder.error(message)


def _args_text(args: str | dict[str, Any]) -> str:
    return args if isinstance(args, str) else pydantic.TypeAdapter(Any).dump_json(args).decode()


def _safe_message(exc: Exception) -> str:
    """What the user may be told of the run's failure: never the exception's own text,
    which can carry a provider's response body, unless it chose to be shown."""
    if isinstance(exc, StreamSourceError):
        return str(exc)
    if isinstance(exc, _errors.ModelHTTPError):
        return f"the model endpoint answered HTTP {exc.status_code}"
    if isinstance(exc, _errors.ModelAPIError):
        return "the model endpoint failed while answering"
    if isinstance(exc, _errors.UsageLimitExceeded):
        return "the answer went over its usage limit"
    if isinstance(exc, _errors.UnexpectedModelBehavior):
        return "the model answered in a way the agent could not use"
    return "the agent failed while answering"
