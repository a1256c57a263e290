"""The models and the model-events -> UI-chunks translation, without a server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from unbroken import StreamSourceError
from unbroken.chat.events import assemble, ui_chunks
from unbroken.chat.models import (
    Finish,
    ModelError,
    ModelEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from unbroken.chat.models.demo import DemoModel, compose, tokenize
from unbroken.chat.models.openai import to_openai_messages

pytestmark = pytest.mark.anyio


def test_the_demo_answer_is_deterministic_long_and_structured() -> None:
    reasoning, answer = compose("How do resumable streams work?")
    assert (reasoning, answer) == compose("How do resumable streams work?")
    assert compose("something else")[1] != answer
    assert len(tokenize(answer)) >= 300
    assert "\n\n" in answer and "\n1. " in answer and "```python\n" in answer
    assert "How do resumable streams work?" in answer
    assert "".join(tokenize(answer)) == answer


async def test_the_demo_model_is_paced() -> None:
    model = DemoModel(tokens_per_second=2000)
    messages = [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]
    started = anyio.current_time()
    events = [event async for event in model.stream(messages)]
    elapsed = anyio.current_time() - started
    reasoning, answer = compose("hi")
    tokens = len(tokenize(reasoning)) + len(tokenize(answer))
    assert elapsed >= tokens / 2000 * 0.9
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == reasoning
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer
    assert events[-1] == Finish("stop")


async def _events(*items: ModelEvent | Exception) -> AsyncIterator[ModelEvent]:
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


async def _ui_chunks_of(message_id: str, *items: ModelEvent) -> list[dict[str, Any]]:
    """Every UI message chunk `ui_chunks` makes of ``items``."""
    return [chunk async for chunk in ui_chunks(message_id, _events(*items))]


async def test_ui_chunks_nest_parts_and_finish() -> None:
    chunks = await _ui_chunks_of(
        "msg_1",
        ReasoningDelta("think"),
        TextDelta("Hel"),
        TextDelta("lo"),
        ToolCallStart("call_1", "search"),
        ToolCallDelta("call_1", '{"q":'),
        ToolCallDelta("call_1", '"x"}'),
        ToolCallEnd("call_1", "search", {"q": "x"}),
        TextDelta("done"),
        Finish("tool-calls"),
    )
    assert [c["type"] for c in chunks] == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-delta",
        "text-end",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-delta",
        "tool-input-available",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert chunks[0] == {"type": "start", "messageId": "msg_1"}
    assert chunks[-1] == {"type": "finish", "finishReason": "tool-calls"}
    message = assemble("msg_1", chunks)
    assert message["id"] == "msg_1" and message["role"] == "assistant"
    kinds = [part["type"] for part in message["parts"]]
    assert kinds.count("text") == 2 and "reasoning" in kinds and "tool-search" in kinds


async def test_the_producer_stores_what_the_log_holds() -> None:
    """The answer a producer stores, assembled as it went, is the answer its log's events
    assemble; when the log holds fewer events (a stop kept the last ones out), it is what
    those assemble, not everything produced."""
    import datetime as dt

    from unbroken.chat.events import AssembledAnswer, ProducedAnswer
    from unbroken.chat.store import StreamRecord
    from unbroken.protocols.ai_sdk import encode_event

    events = await _ui_chunks_of(
        "msg_1",
        ReasoningDelta("think"),
        TextDelta("Hel"),
        ToolCallStart("call_1", "search"),
        ToolCallEnd("call_1", "search", {"q": "x"}),
        TextDelta("lo"),
        Finish("stop"),
    )
    record = StreamRecord("s_1", "c_1", "msg_1", "u_1", dt.datetime.now(dt.UTC))
    produced = ProducedAnswer(record)
    for event in events:
        produced.add(event, encode_event(event))
    assert produced.as_logged(len(events)) == AssembledAnswer.of("msg_1", events)
    assert produced.as_logged(len(events)).last_type == "finish"
    for kept in (0, 3, len(events) - 2):
        assert produced.as_logged(kept) == AssembledAnswer.of("msg_1", events[:kept])
    assert produced.as_logged(3).message != produced.as_logged(len(events)).message


async def test_model_errors_close_the_part_and_become_stream_errors() -> None:
    seen: list[dict[str, object]] = []

    async def consume() -> None:
        events = _events(TextDelta("partial"), ModelError("the endpoint failed"))
        async for chunk in ui_chunks("m", events):
            seen.append(chunk)

    with pytest.raises(StreamSourceError, match="the endpoint failed"):
        await consume()
    assert [c["type"] for c in seen][-2:] == ["text-delta", "text-end"]


async def test_a_model_that_just_stops_still_finishes_the_message() -> None:
    chunks = await _ui_chunks_of("m", TextDelta("x"))
    assert [c["type"] for c in chunks][-3:] == ["text-end", "finish-step", "finish"]


def test_openai_messages_carry_text_and_completed_tool_calls() -> None:
    converted = to_openai_messages(
        [
            {"id": "s", "role": "system", "parts": [{"type": "text", "text": "be brief"}]},
            {"id": "u", "role": "user", "parts": [{"type": "text", "text": "weather?"}]},
            {
                "id": "a",
                "role": "assistant",
                "parts": [
                    {"type": "reasoning", "text": "hidden"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool-get_weather",
                        "toolCallId": "call_1",
                        "state": "output-available",
                        "input": {"city": "Paris"},
                        "output": {"temp": 20},
                    },
                    {"type": "tool-other", "toolCallId": "call_2", "state": "input-available"},
                ],
            },
            {"id": "v4", "role": "user", "content": "and tomorrow?"},
        ]
    )
    assert converted == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'},
        {"role": "user", "content": "and tomorrow?"},
    ]


async def test_the_model_setting_names_the_provider() -> None:
    from unbroken.chat.models import make_model
    from unbroken.chat.models.anthropic import AnthropicModel
    from unbroken.chat.models.openai import OpenAIModel
    from unbroken.chat.settings import Settings, SettingsError

    env = {"ANTHROPIC_API_KEY": "sk-ant", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    claude = Settings.from_env({**env, "UNBROKEN_MODEL": "anthropic:claude-sonnet-4-5"})
    assert claude.model_provider == ("anthropic", "claude-sonnet-4-5")
    assert claude.anthropic_api_key == "sk-ant"
    for name in ("gpt-4o-mini", "openai:gpt-4o-mini"):
        assert Settings.from_env({**env, "UNBROKEN_MODEL": name}).model_provider == (
            "openai",
            "gpt-4o-mini",
        )
    models = [make_model(claude), make_model(claude.replace(model="openai:gpt-4o-mini"))]
    try:
        assert isinstance(models[0], AnthropicModel) and models[0].name == "claude-sonnet-4-5"
        assert isinstance(models[1], OpenAIModel) and models[1].name == "gpt-4o-mini"
    finally:
        for model in models:
            await model.aclose()
    with pytest.raises(SettingsError, match="ANTHROPIC_API_KEY"):
        Settings.from_env({"UNBROKEN_MODEL": "anthropic:claude-sonnet-4-5"})
    with pytest.raises(SettingsError, match="names no model"):
        Settings.from_env({**env, "UNBROKEN_MODEL": "anthropic:"})
