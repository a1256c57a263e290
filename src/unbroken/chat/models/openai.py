"""Any OpenAI-compatible chat completions endpoint, through the official ``openai`` SDK.

Streams text, reasoning (the ``reasoning_content`` / ``reasoning`` delta fields that
DeepSeek, vLLM, Ollama, LM Studio and others send) and tool calls, and sends the whole
conversation each time. Provider failures become `ModelError` with a message that is safe to
show (the HTTP status, never the response body or the key).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from unbroken.chat.models.base import (
    Finish,
    ModelError,
    ModelEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    message_text,
)

__all__ = ["OpenAIModel", "to_openai_messages"]

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
}


def _tool_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    parts = message.get("parts")
    if not isinstance(parts, list):
        return []
    return [
        part
        for part in parts
        if isinstance(part, dict)
        and isinstance(part.get("type"), str)
        and (part["type"].startswith("tool-") or part["type"] == "dynamic-tool")
        and isinstance(part.get("toolCallId"), str)
        and part.get("state") == "output-available"
    ]


def to_openai_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as chat-completions messages.

    Text only, plus completed tool calls (a call without its result would be refused by the
    API, so unfinished ones are left out); reasoning is not sent back.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        text = message_text(message)
        if role in ("system", "user"):
            if text:
                out.append({"role": role, "content": text})
        elif role == "assistant":
            tools = _tool_parts(message)
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tools:
                entry["tool_calls"] = [
                    {
                        "id": part["toolCallId"],
                        "type": "function",
                        "function": {
                            "name": part.get("toolName") or part["type"].removeprefix("tool-"),
                            "arguments": json.dumps(part.get("input", {})),
                        },
                    }
                    for part in tools
                ]
            if text or tools:
                out.append(entry)
            for part in tools:
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": part["toolCallId"],
                        "content": json.dumps(part.get("output")),
                    }
                )
    return out


@dataclass
class _ToolCall:
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    started: bool = False


def _parse_arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


class OpenAIModel:
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 2,
        timeout: float = 120.0,
    ) -> None:
        self.model = model
        # Local servers (Ollama, vLLM, test servers) take any key, but the SDK wants one.
        self.client = AsyncOpenAI(
            api_key=api_key or "unused",
            base_url=base_url,
            max_retries=max_retries,
            timeout=timeout,
        )

    @property
    def name(self) -> str:
        return self.model

    async def stream(self, messages: Sequence[dict[str, Any]]) -> AsyncIterator[ModelEvent]:
        try:
            response = await self.client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", to_openai_messages(messages)),
                stream=True,
            )
        except openai.APIStatusError as exc:
            raise ModelError(f"the model endpoint answered HTTP {exc.status_code}") from exc
        except openai.APIConnectionError as exc:
            raise ModelError("the model endpoint could not be reached") from exc
        calls: dict[int, _ToolCall] = {}
        finish_reason: str | None = None
        try:
            async with response:
                async for chunk in response:
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    delta = choice.delta
                    extra = delta.model_extra or {}
                    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
                    if isinstance(reasoning, str) and reasoning:
                        yield ReasoningDelta(reasoning)
                    if delta.content:
                        yield TextDelta(delta.content)
                    for tool_delta in delta.tool_calls or ():
                        call = calls.setdefault(tool_delta.index, _ToolCall())
                        function = tool_delta.function
                        call.id = call.id or tool_delta.id
                        if function is not None and function.name:
                            call.name = call.name or function.name
                        if not call.started and call.id and call.name:
                            call.started = True
                            yield ToolCallStart(call.id, call.name)
                            if call.arguments:  # arguments that came before the name
                                yield ToolCallDelta(call.id, call.arguments)
                        if function is not None and function.arguments:
                            call.arguments += function.arguments
                            if call.started and call.id:
                                yield ToolCallDelta(call.id, function.arguments)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except openai.APIError as exc:
            raise ModelError("the model endpoint failed while answering") from exc
        for index, call in sorted(calls.items()):
            call_id = call.id or f"call_{index}"
            name = call.name or "unknown"
            if not call.started:
                yield ToolCallStart(call_id, name)
            yield ToolCallEnd(call_id, name, _parse_arguments(call.arguments))
        yield Finish(_FINISH_REASONS.get(finish_reason or "stop", "other"))

    async def aclose(self) -> None:
        await self.client.close()
