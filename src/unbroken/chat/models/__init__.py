"""Chat models: ``demo`` (offline, deterministic), OpenAI-compatible endpoints and Anthropic."""

from __future__ import annotations

from unbroken.chat.models.base import (
    ChatModel,
    Finish,
    ModelError,
    ModelEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    message_text,
    model_events,
)
from unbroken.chat.settings import Settings

__all__ = [
    "ChatModel",
    "Finish",
    "ModelError",
    "ModelEvent",
    "ReasoningDelta",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "make_model",
    "message_text",
    "model_events",
]


def make_model(settings: Settings) -> ChatModel:
    """The model the settings name: ``demo``, ``anthropic:<model>``, or an OpenAI-compatible
    model (``<model>`` or ``openai:<model>``)."""
    provider, model = settings.model_provider
    if provider == "demo":
        from unbroken.chat.models.demo import DemoModel

        return DemoModel(tokens_per_second=settings.demo_tokens_per_second)
    if provider == "anthropic":
        from unbroken.chat.models.anthropic import AnthropicModel

        return AnthropicModel(
            model, api_key=settings.anthropic_api_key, base_url=settings.anthropic_base_url
        )
    from unbroken.chat.models.openai import OpenAIModel

    return OpenAIModel(model, api_key=settings.openai_api_key, base_url=settings.openai_base_url)
