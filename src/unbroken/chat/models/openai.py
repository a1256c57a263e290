"""Any OpenAI-compatible chat completions endpoint, through the official ``openai`` SDK.

Streams text, reasoning (the ``reasoning_content`` / ``reasoning`` delta fields that
DeepSeek, vLLM, Ollama, LM Studio and others send) and tool calls, and sends the whole
conversation each time. The stream is read by `unbroken.integrations.openai`, the adapter
apps use too. Provider failures become `ModelError` with a message that is safe to show (the
HTTP status, never the response body or the key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from openai import AsyncOpenAI

from unbroken.chat.models.base import ModelEvent, model_events
from unbroken.integrations.openai import chat_completion_chunks, to_chat_messages

__all__ = ["OpenAIModel", "to_openai_messages"]

#: The conversation as chat-completions messages (see `to_chat_messages`).
to_openai_messages = to_chat_messages


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

    def stream(self, messages: Sequence[dict[str, Any]]) -> AsyncIterator[ModelEvent]:
        request = self.client.chat.completions.create(
            model=self.model,
            messages=to_chat_messages(messages),
            stream=True,
        )
        return model_events(chat_completion_chunks(request))

    async def aclose(self) -> None:
        await self.client.close()
