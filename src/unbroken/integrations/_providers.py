"""What the ``openai`` and ``anthropic`` adapters share: opening and closing a provider's
stream, the safe messages its failures become, and the chat history read from UI messages.

Imports neither SDK: each adapter passes its SDK's exception classes in.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

import anyio

__all__ = [
    "AssistantStep",
    "ProviderStream",
    "StreamSource",
    "ToolResult",
    "Turn",
    "failure_text",
    "history",
    "parse_arguments",
    "safe_code",
]

logger = logging.getLogger("unbroken.integrations")

T = TypeVar("T")

#: What an adapter accepts: the stream itself (``await client....create(stream=True)``), the
#: un-awaited call (the adapter awaits it, so a refused request becomes an ``error`` chunk),
#: or a stream manager (``client.messages.stream(...)``, entered and exited by the adapter).
StreamSource: TypeAlias = (
    AsyncIterable[T] | Awaitable[AsyncIterable[T]] | AbstractAsyncContextManager[AsyncIterable[T]]
)

# How long closing a provider's connection may take once the answer is stopped: the close
# runs shielded from the stop, so it needs a bound of its own.
_CLOSE_TIMEOUT = 5.0

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")


class ProviderStream(Generic[T]):
    """One provider stream, opened on demand and closed exactly once, even when cancelled."""

    def __init__(self, source: StreamSource[T]) -> None:
        self._source = source
        self._stream: AsyncIterable[T] | None = None
        self._iterator: AsyncIterator[T] | None = None
        self._entered: AbstractAsyncContextManager[AsyncIterable[T]] | None = None
        #: True once the request was accepted (failures after it happen while answering).
        self.opened = False

    async def open(self) -> AsyncIterator[T]:
        """The stream's items; raises what the SDK raises for a refused request."""
        source = self._source
        if isinstance(source, AsyncIterable):
            stream = source
        elif isinstance(source, AbstractAsyncContextManager):
            stream = await source.__aenter__()
            self._entered = source
        elif inspect.isawaitable(source):
            stream = await source
        else:
            raise TypeError(
                f"expected a provider stream, its awaitable or its stream manager, not {source!r}"
            )
        self._stream = stream
        self.opened = True
        self._iterator = aiter(stream)
        return self._iterator

    async def aclose(self) -> None:
        """Close the stream and its HTTP response (shielded: a stop must still close it)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            try:
                if self._entered is not None:
                    entered, self._entered = self._entered, None
                    await entered.__aexit__(None, None, None)
                iterator, self._iterator = self._iterator, None
                if iterator is not None and hasattr(iterator, "aclose"):
                    await iterator.aclose()
                stream, self._stream = self._stream, None
                close = getattr(stream, "close", None) or getattr(stream, "aclose", None)
                if close is not None:
                    result = close()
                    if inspect.isawaitable(result):
                        await result
                elif not self.opened and inspect.iscoroutine(self._source):
                    self._source.close()  # never awaited: no request was sent
            except Exception:  # closing is best effort; the answer already ended
                logger.debug("closing a provider stream failed", exc_info=True)


def failure_text(exc: Exception, *, opened: bool, status_error: type[Exception]) -> str:
    """A message about the provider's failure that is safe to show: the HTTP status or the
    provider's error code, never its message, body or key."""
    code = _error_code(getattr(exc, "body", None))
    if not opened:
        status = getattr(exc, "status_code", None)
        if isinstance(exc, status_error) and isinstance(status, int):
            return f"the model endpoint answered HTTP {status}"
        return "the model endpoint could not be reached"
    if code:
        return f"the model endpoint failed while answering ({code})"
    return "the model endpoint failed while answering"


def _error_code(body: object) -> str | None:
    """The provider's error code or type (``overloaded_error``, ``server_error``), if it is a
    plain identifier."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            body = inner
        for key in ("code", "type"):
            value = body.get(key)
            if isinstance(value, str) and value != "error" and _IDENTIFIER.fullmatch(value):
                return value
    return None


def safe_code(value: object) -> str | None:
    """``value`` if it is a short identifier, fit to show in an error message."""
    return value if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None


def parse_arguments(text: str) -> Any:
    """A tool call's JSON arguments (``{}`` when empty; the raw text when not JSON)."""
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return text


# -- the chat history --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A finished tool call of an earlier answer: its input, and its output or error."""

    tool_call_id: str
    tool_name: str
    input: Any
    output: Any
    is_error: bool = False

    @property
    def output_text(self) -> str:
        """The output as the providers take it: the error text, or the output as JSON."""
        if self.is_error:
            return str(self.output)
        return self.output if isinstance(self.output, str) else json.dumps(self.output)


@dataclass(slots=True)
class AssistantStep:
    """One model call of an earlier answer: its text, then the tools it called."""

    text: str = ""
    tools: list[ToolResult] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of the history: ``system`` or ``user`` text, or an answer's steps."""

    role: str
    text: str = ""
    steps: tuple[AssistantStep, ...] = ()


def history(messages: Sequence[dict[str, Any]]) -> list[Turn]:
    """The conversation in ``messages`` (AI SDK UI messages, v5 ``parts`` or v4 ``content``).

    Text, plus finished tool calls (a call without its result would be refused by the
    providers, so unfinished ones are left out); reasoning, files and data parts are not sent
    back. An answer is cut into steps where a ``step-start`` part or text after a tool call
    begins a new model call.
    """
    turns: list[Turn] = []
    items: Sequence[object] = messages  # checked one by one: they come from a request body
    for message in items:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "user"):
            text = _message_text(message)
            if text:
                turns.append(Turn(role, text))
        elif role == "assistant":
            steps = tuple(step for step in _steps(message) if step.text or step.tools)
            if steps:
                turns.append(Turn("assistant", steps=steps))
    return turns


def _message_text(message: dict[str, Any]) -> str:
    parts = message.get("parts")
    if isinstance(parts, list):
        texts = [
            part["text"]
            for part in parts
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ]
        if texts:
            return "".join(texts)
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _steps(message: dict[str, Any]) -> list[AssistantStep]:
    parts = message.get("parts")
    if not isinstance(parts, list):
        content = message.get("content")
        return [AssistantStep(text=content)] if isinstance(content, str) else []
    steps = [AssistantStep()]
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        current = steps[-1]
        if kind == "step-start":
            if current.text or current.tools:
                steps.append(AssistantStep())
        elif kind == "text" and isinstance(part.get("text"), str):
            if current.tools:
                current = AssistantStep()
                steps.append(current)
            current.text += part["text"]
        elif (result := _tool_result(part)) is not None:
            current.tools.append(result)
    return steps


def _tool_result(part: dict[str, Any]) -> ToolResult | None:
    kind = part.get("type")
    call_id = part.get("toolCallId")
    if not isinstance(kind, str) or not isinstance(call_id, str):
        return None
    if kind == "dynamic-tool":
        name = part.get("toolName")
    elif kind.startswith("tool-"):
        name = part.get("toolName") or kind.removeprefix("tool-")
    else:
        return None
    if not isinstance(name, str) or not name:
        return None
    state = part.get("state")
    if state == "output-available":
        return ToolResult(call_id, name, part.get("input", {}), part.get("output"))
    if state == "output-error":
        return ToolResult(call_id, name, part.get("input", {}), part.get("errorText"), True)
    return None
