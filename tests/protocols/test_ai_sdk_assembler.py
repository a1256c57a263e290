"""UIMessageAssembler, the builder, chunk classes, partial JSON and the v4 conversion."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.protocols._streams import weather_answer
from unbroken import ProtocolError
from unbroken.protocols.ai_sdk import (
    DataChunk,
    FinishChunk,
    StartChunk,
    TextDeltaChunk,
    ToolInputAvailableChunk,
    UIMessageAssembler,
    UIMessageStreamBuilder,
    chunk_from_dict,
    decode_event,
    encode_event,
    parse_partial_json,
    ui_events_to_chunks,
    ui_message_to_v4,
)
from unbroken.protocols.ai_sdk._assembler import UNSET


def kitchen_sink() -> list[dict[str, Any]]:
    b = UIMessageStreamBuilder("msg-1")
    events: list[dict[str, Any]] = []
    events += b.start(metadata={"a": 1})
    events += b.reasoning("Let me ")
    events += b.reasoning("think.")
    events += b.text("Hel")
    events += b.text("lo")
    events += b.tool_input_start("call-1", "getWeather")
    events += b.tool_input_delta("call-1", '{"city":')
    events += b.tool_input_delta("call-1", '"Paris"}')
    events += b.tool_call("call-1", "getWeather", {"city": "Paris"})
    events += b.tool_result("call-1", {"temp": 1}, preliminary=True)
    events += b.tool_result("call-1", {"temp": 21})
    events += [
        {
            "type": "tool-input-error",
            "toolCallId": "call-1",
            "toolName": "getWeather",
            "input": {"x": 1},
            "errorText": "bad",
        }
    ]
    events += b.tool_call("call-2", "dyn", {"q": 1}, dynamic=True)
    events += b.tool_error("call-2", "boom", dynamic=True)
    events += b.data("weather", {"temp": 21}, id="w1")
    events += b.data("weather", {"temp": 22}, id="w1")
    events += b.data("status", "working", transient=True)
    events += b.source_url("https://example.com", title="Example")
    events += b.source_document("Doc", "application/pdf", filename="a.pdf")
    events += b.file("data:text/plain;base64,aGk=", "text/plain")
    events += b.metadata({"b": {"c": 2}})
    events += b.start_step()
    events += b.text("Done.")
    events += [{"type": "tool-approval-request", "approvalId": "ap1", "toolCallId": "call-2"}]
    events += b.finish(finish_reason="stop", metadata={"z": 1})
    return events


def test_matches_read_ui_message_stream() -> None:
    # The expected message is what `readUIMessageStream` of ai@6.0.326 builds from the
    # same events (recorded from the real package).
    assembler = UIMessageAssembler()
    message = assembler.feed_all(kitchen_sink())
    assert message == json.loads(
        """
        {"id":"msg-1","metadata":{"a":1,"b":{"c":2},"z":1},"role":"assistant","parts":[
         {"type":"step-start"},
         {"type":"reasoning","id":"reasoning-1","text":"Let me think.","state":"done"},
         {"type":"text","text":"Hello","state":"done"},
         {"type":"tool-getWeather","toolCallId":"call-1","state":"output-error",
          "rawInput":{"x":1},"errorText":"bad"},
         {"type":"dynamic-tool","toolName":"dyn","toolCallId":"call-2",
          "state":"approval-requested","input":{"q":1},"errorText":"boom",
          "approval":{"id":"ap1"}},
         {"type":"data-weather","id":"w1","data":{"temp":22}},
         {"type":"source-url","sourceId":"source-3","url":"https://example.com",
          "title":"Example"},
         {"type":"source-document","sourceId":"source-4","mediaType":"application/pdf",
          "title":"Doc","filename":"a.pdf"},
         {"type":"file","mediaType":"text/plain","url":"data:text/plain;base64,aGk="},
         {"type":"step-start"},
         {"type":"text","text":"Done.","state":"done"}]}
        """
    )
    assert assembler.finish_reason == "stop"
    assert assembler.finished


def test_tool_part_states_while_streaming() -> None:
    assembler = UIMessageAssembler()
    events = weather_answer()
    seen_states = []
    for event in events:
        assembler.feed(event)
        tools = [p for p in assembler.message["parts"] if p["type"] == "tool-getWeather"]
        if tools:
            seen_states.append((tools[0]["state"], tools[0].get("input")))
    assert seen_states[:4] == [
        ("input-streaming", None),
        ("input-streaming", {}),  # '{"city":' parses as a partial object
        ("input-streaming", {"city": "Paris"}),
        ("input-available", {"city": "Paris"}),
    ]
    assert seen_states[-1] == ("output-available", {"city": "Paris"})


def test_replay_with_the_same_message_id_continues_and_a_new_id_starts_over() -> None:
    previous = {"id": "m1", "role": "assistant", "parts": [{"type": "text", "text": "old"}]}
    same = UIMessageAssembler(previous)
    same.feed({"type": "start", "messageId": "m1"})
    assert same.message["parts"] == [{"type": "text", "text": "old"}]
    other = UIMessageAssembler(previous)
    other.feed({"type": "start", "messageId": "m2"})
    assert other.message == {"id": "m2", "role": "assistant", "parts": []}


def test_terminal_events() -> None:
    errored = UIMessageAssembler()
    errored.feed({"type": "error", "errorText": "boom"})
    assert (errored.finished, errored.error_text) == (True, "boom")
    aborted = UIMessageAssembler()
    aborted.feed({"type": "abort"})
    assert (aborted.finished, aborted.aborted) == (True, True)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "text-delta", "id": "nope", "delta": "x"},
        {"type": "reasoning-end", "id": "nope"},
        {"type": "tool-input-delta", "toolCallId": "nope", "inputTextDelta": "x"},
        {"type": "tool-output-available", "toolCallId": "nope", "output": 1},
        {"type": "tool-output-denied", "toolCallId": "nope"},
        {"type": "text-start"},
        {"no": "type"},
    ],
)
def test_strict_and_lenient(event: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        UIMessageAssembler().feed(event)
    lenient = UIMessageAssembler(strict=False)
    lenient.feed(event)
    assert lenient.message["parts"] == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('{"a": "hel', {"a": "hel"}),
        ('{"a": 1, "b', {"a": 1}),
        ('{"a": 1, "b":', {"a": 1}),
        ('{"a": [1, 2', {"a": [1, 2]}),
        ('{"a": tr', {"a": True}),
        ('{"a": nu', {"a": None}),
        ('{"a": -1.', {"a": -1}),
        ('[{"x": "y\\', [{"x": "y"}]),
        ('{"a": "\\u00', {"a": ""}),
        ('"partial', "partial"),
        ("12", 12),
        ("", UNSET),
        ("}", UNSET),
    ],
)
def test_parse_partial_json(text: str, value: Any) -> None:
    assert parse_partial_json(text) == value


def test_builder_closes_parts_and_steps() -> None:
    b = UIMessageStreamBuilder("m")
    events = b.text("a") + b.reasoning("b") + b.tool_call("c", "t", {}) + b.finish()
    assert [e["type"] for e in events] == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "tool-input-start",
        "tool-input-available",
        "finish-step",
        "finish",
    ]
    assert b.start() == []  # start is sent once
    assert UIMessageStreamBuilder().message_id.startswith("msg-")


def test_builder_error_abort_and_data() -> None:
    b = UIMessageStreamBuilder("m")
    assert b.data("x", 1, transient=True) == [
        {"type": "start", "messageId": "m"},
        {"type": "data-x", "data": 1, "transient": True},
    ]
    assert b.error("bad") == [{"type": "error", "errorText": "bad"}]
    assert b.abort("user") == [{"type": "abort", "reason": "user"}]


@pytest.mark.anyio
async def test_ui_events_to_chunks_accepts_events_and_lists() -> None:
    async def source() -> Any:
        yield {"type": "start", "messageId": "m"}
        yield [TextDeltaChunk(id="t", delta="é")]

    out = [chunk async for chunk in ui_events_to_chunks(source())]
    assert out == ['{"type":"start","messageId":"m"}', '{"type":"text-delta","id":"t","delta":"é"}']


@pytest.mark.anyio
async def test_ui_events_to_chunks_rejects_unknown_types() -> None:
    async def source() -> Any:
        yield {"type": "nope"}

    with pytest.raises(ProtocolError, match="unknown"):
        _ = [chunk async for chunk in ui_events_to_chunks(source())]


def test_chunk_classes_and_dict_interop() -> None:
    assert StartChunk(message_id="m").to_dict() == {"type": "start", "messageId": "m"}
    assert FinishChunk().to_dict() == {"type": "finish"}
    tool = ToolInputAvailableChunk(tool_call_id="c", tool_name="t", input=None)
    assert tool.to_dict() == {
        "type": "tool-input-available",
        "toolCallId": "c",
        "toolName": "t",
        "input": None,
    }
    assert chunk_from_dict(tool.to_dict()) == tool
    assert chunk_from_dict({"type": "data-w", "data": 1, "future": True}) == DataChunk(
        type="data-w", data=1
    )
    with pytest.raises(ProtocolError, match="lacks 'delta'"):
        chunk_from_dict({"type": "text-delta", "id": "t"})
    with pytest.raises(ProtocolError, match="unknown"):
        chunk_from_dict({"type": "nope"})
    with pytest.raises(ValueError, match="data-<name>"):
        DataChunk(type="weather", data=1)


def test_encode_and_decode_event() -> None:
    assert (
        encode_event(TextDeltaChunk(id="t", delta="ü"))
        == '{"type":"text-delta","id":"t","delta":"ü"}'
    )
    assert decode_event('{"type":"finish"}') == {"type": "finish"}
    with pytest.raises(ProtocolError):
        encode_event({"type": "finish", "messageMetadata": float("nan")})
    with pytest.raises(ProtocolError):
        encode_event({"type": "data-"})
    for bad in ["nope", "[]", '{"type": 1}']:
        with pytest.raises(ProtocolError):
            decode_event(bad)


def test_ui_message_to_v4() -> None:
    message = UIMessageAssembler().feed_all(kitchen_sink())
    v4 = ui_message_to_v4(message, created_at="2025-01-01T00:00:00.000Z")
    assert v4 == {
        "id": "msg-1",
        "role": "assistant",
        "content": "HelloDone.",
        "createdAt": "2025-01-01T00:00:00.000Z",
        "parts": [
            {"type": "step-start"},
            {
                "type": "reasoning",
                "reasoning": "Let me think.",
                "details": [{"type": "text", "text": "Let me think."}],
            },
            {"type": "text", "text": "Hello"},
            {
                "type": "tool-invocation",
                "toolInvocation": {
                    "state": "result",
                    "step": 0,
                    "toolCallId": "call-1",
                    "toolName": "getWeather",
                    "args": None,
                    "result": {"error": "bad"},
                },
            },
            {
                "type": "tool-invocation",
                "toolInvocation": {
                    "state": "call",
                    "step": 0,
                    "toolCallId": "call-2",
                    "toolName": "dyn",
                    "args": {"q": 1},
                },
            },
            {
                "type": "source",
                "source": {
                    "sourceType": "url",
                    "id": "source-3",
                    "url": "https://example.com",
                    "title": "Example",
                },
            },
            {"type": "file", "mimeType": "text/plain", "data": "aGk="},
            {"type": "step-start"},
            {"type": "text", "text": "Done."},
        ],
        "annotations": [{"type": "data-weather", "data": {"temp": 22}, "id": "w1"}],
    }


def test_ui_message_to_v4_created_at_defaults() -> None:
    with_metadata = {"id": "m", "role": "assistant", "parts": [], "metadata": {"createdAt": "X"}}
    assert ui_message_to_v4(with_metadata)["createdAt"] == "X"
    created = ui_message_to_v4({"id": "m", "role": "assistant", "parts": []})["createdAt"]
    assert created.endswith("Z")
    assert len(created) == len("2025-01-01T00:00:00.000Z")
