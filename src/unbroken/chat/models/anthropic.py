"""Claude models through the official ``anthropic`` SDK (``UNBROKEN_MODEL=anthropic:<model>``).

Streams text, reasoning (``thinking`` blocks) and tool calls, and sends the whole
conversation each time, system messages as the ``system`` parameter. The stream is read by
`unbroken.integrations.anthropic`, the adapter apps use too. Provider failures become
`ModelError` with a message that is safe to show (the HTTP status or the error type, never
the response body or the key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from anthropic import AsyncAnthropic, omit

from unbroken.chat.models.base import ModelEvent, model_events
from unbroken.integrations.anthropic import message_chunks, system_prompt, to_anthropic_messages

__all__ = ["AnthropicModel"]


class AnthropicModel:
    """A model behind the Anthropic Messages API (or a server that speaks it)."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_tokens: int = 4096,
        max_retries: int = 2,
        timeout: float = 120.0,
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        # Local compatible servers take any key, but the SDK wants one.
        self.client = AsyncAnthropic(
            api_key=api_key or "unused",
            base_url=base_url,
            max_retries=max_retries,
            timeout=timeout,
        )

    @property
    def name(self) -> str:
        return self.model

    def stream(self, messages: Sequence[dict[str, Any]]) -> AsyncIterator[ModelEvent]:
        system = system_prompt(messages)
        request = self.client.messages.stream(
            model=self.model,
            max_tokens=self.max_tokens,
            messages=to_anthropic_messages(messages),
            system=system or omit,
        )
        return model_events(message_chunks(request))

    async def aclose(self) -> None:
        await self.client.close()
