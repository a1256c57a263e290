"""Chat models: ``demo`` (offline, deterministic) and OpenAI-compatible endpoints."""

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
]


def make_model(settings: Settings) -> ChatModel:
    """The model the settings name: ``demo``, or an OpenAI-compatible model."""
    if settings.model == "demo":
        from unbroken.chat.models.demo import DemoModel

        return DemoModel(tokens_per_second=settings.demo_tokens_per_second)
    from unbroken.chat.models.openai import OpenAIModel

    return OpenAIModel(
        settings.model, api_key=settings.openai_api_key, base_url=settings.openai_base_url
    )
