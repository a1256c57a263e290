"""Shared test streams: UI message events as the engine would store them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from unbroken import Chunk, StreamEnd, StreamState
from unbroken.protocols.ai_sdk import UIMessageStreamBuilder, encode_event


def chunks(events: Sequence[Any], *, start: int = 0) -> list[Chunk]:
    """Engine chunks for events, one compact JSON event each."""
    out = []
    offset = 0
    for seq, event in enumerate(events, start):
        data = encode_event(event)
        out.append(Chunk(seq, data, offset))
        offset += len(data)
    return out


def raw_chunks(events: Sequence[Any]) -> list[Chunk]:
    """Engine chunks holding events as given, even ones `encode_event` would refuse."""
    return [Chunk(seq, json.dumps(event), 0) for seq, event in enumerate(events)]


def end(state: StreamState = StreamState.DONE, error: str | None = None, n: int = 0) -> StreamEnd:
    return StreamEnd(state, error, n, 0)


def weather_answer() -> list[dict[str, Any]]:
    """A full answer: reasoning, text, a tool call with output, data, a source."""
    b = UIMessageStreamBuilder("msg-1")
    events: list[dict[str, Any]] = []
    events += b.reasoning("Checking ")
    events += b.reasoning("the weather.")
    events += b.text("Let me ")
    events += b.text("look.")
    events += b.tool_input_start("call-1", "getWeather")
    events += b.tool_input_delta("call-1", '{"city":')
    events += b.tool_input_delta("call-1", '"Paris"}')
    events += b.tool_call("call-1", "getWeather", {"city": "Paris"})
    events += b.tool_result("call-1", {"temperature": 21})
    events += b.data("weather", {"city": "Paris", "temperature": 21}, id="w-1")
    events += b.source_url("https://example.com/paris", title="Paris weather")
    events += b.text("It is 21°C.")
    events += b.finish(finish_reason="stop")
    return events
