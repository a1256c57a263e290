# ruff: noqa: E501 - snapshots hold whole frames
"""The v5+ UI message stream encoder, snapshot-tested as readable SSE frames."""

from __future__ import annotations

import json
from textwrap import dedent
from typing import Any

import pytest

from tests.protocols._streams import chunks, end, raw_chunks, weather_answer
from unbroken import Chunk, StreamState
from unbroken.protocols.ai_sdk import (
    UI_MESSAGE_STREAM_HEADERS,
    ClientTarget,
    UIMessageStreamEncoder,
)


def frames(text: str) -> str:
    return dedent(text).lstrip("\n")


def data_lines(text: str) -> list[Any]:
    """The JSON payloads of every frame (``[DONE]`` as the string)."""
    out: list[Any] = []
    for frame in text.split("\n\n"):
        for line in frame.split("\n"):
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_full_replay_default_target_merges_deltas_and_keeps_last_ids() -> None:
    events = weather_answer()
    text = UIMessageStreamEncoder().encode([*chunks(events), end(n=len(events))])
    assert text == frames(
        """
        id: 0
        data: {"type":"start","messageId":"msg-1"}

        id: 1
        data: {"type":"start-step"}

        id: 2
        data: {"type":"reasoning-start","id":"reasoning-1"}

        id: 4
        data: {"type":"reasoning-delta","id":"reasoning-1","delta":"Checking the weather."}

        id: 5
        data: {"type":"reasoning-end","id":"reasoning-1"}

        id: 6
        data: {"type":"text-start","id":"text-2"}

        id: 8
        data: {"type":"text-delta","id":"text-2","delta":"Let me look."}

        id: 9
        data: {"type":"text-end","id":"text-2"}

        id: 10
        data: {"type":"tool-input-start","toolCallId":"call-1","toolName":"getWeather"}

        id: 12
        data: {"type":"tool-input-delta","toolCallId":"call-1","inputTextDelta":"{\\"city\\":\\"Paris\\"}"}

        id: 13
        data: {"type":"tool-input-available","toolCallId":"call-1","toolName":"getWeather","input":{"city":"Paris"}}

        id: 14
        data: {"type":"tool-output-available","toolCallId":"call-1","output":{"temperature":21}}

        id: 15
        data: {"type":"data-weather","id":"w-1","data":{"city":"Paris","temperature":21}}

        id: 16
        data: {"type":"source-url","sourceId":"source-3","url":"https://example.com/paris","title":"Paris weather"}

        id: 17
        data: {"type":"text-start","id":"text-4"}

        id: 18
        data: {"type":"text-delta","id":"text-4","delta":"It is 21°C."}

        id: 19
        data: {"type":"text-end","id":"text-4"}

        id: 20
        data: {"type":"finish-step"}

        id: 21
        data: {"type":"finish"}

        data: [DONE]

        """
    )


def test_newer_target_gets_finish_reason() -> None:
    events = weather_answer()
    text = UIMessageStreamEncoder(target="5.0.92").encode([*chunks(events), end()])
    assert text.endswith(
        frames(
            """
            id: 21
            data: {"type":"finish","finishReason":"stop"}

            data: [DONE]

            """
        )
    )


def test_without_merge_every_chunk_is_a_frame() -> None:
    events = weather_answer()
    text = UIMessageStreamEncoder(merge=False).encode([*chunks(events), end()])
    ids = [line for line in text.split("\n") if line.startswith("id: ")]
    assert ids == [f"id: {seq}" for seq in range(len(events))]


def test_live_batches_of_one_are_not_merged() -> None:
    events = weather_answer()
    encoder = UIMessageStreamEncoder()
    texts = [encoder.encode([chunk]) for chunk in chunks(events)]
    assert texts[3] == frames(
        """
        id: 3
        data: {"type":"reasoning-delta","id":"reasoning-1","delta":"Checking "}

        """
    )
    assert encoder.encode([end()]) == "data: [DONE]\n\n"


def test_stored_json_goes_out_as_stored_only_when_fitting_changes_nothing() -> None:
    """A live chunk the target accepts as it is is written as its stored text (no second
    encoding); anything fitting changes, or stored text with line breaks, is encoded again."""
    stored = [
        # Accepted as is: written verbatim, spacing and key order included.
        '{"delta": "Hi", "type": "text-delta", "id": "t1"}',
        # A field 5.0.0 does not know is stripped: encoded again without it.
        '{"type":"text-delta","id":"t1","delta":"!","unknownField":1}',
        # A line break in JSON whitespace would split the SSE data line: encoded again.
        '{"type":"text-delta",\n"id":"t1","delta":"?"}',
        # 5.0.0 knows no finish reason: encoded again without it.
        '{"type":"finish","finishReason":"stop"}',
    ]
    encoder = UIMessageStreamEncoder(target="5.0.0")
    texts = [encoder.encode([Chunk(seq, data, 0)]) for seq, data in enumerate(stored)]
    assert texts == [
        'id: 0\ndata: {"delta": "Hi", "type": "text-delta", "id": "t1"}\n\n',
        'id: 1\ndata: {"type":"text-delta","id":"t1","delta":"!"}\n\n',
        'id: 2\ndata: {"type":"text-delta","id":"t1","delta":"?"}\n\n',
        'id: 3\ndata: {"type":"finish"}\n\n',
    ]
    # A value fitting changes (a finish reason the client does not know): encoded again.
    newer = UIMessageStreamEncoder(target="6")
    text = newer.encode([Chunk(0, '{"type":"finish","finishReason":"something-new"}', 0)])
    assert text == 'id: 0\ndata: {"type":"finish","finishReason":"other"}\n\n'


def test_deltas_of_different_parts_are_not_merged() -> None:
    events = [
        {"type": "text-start", "id": "a"},
        {"type": "text-start", "id": "b"},
        {"type": "text-delta", "id": "a", "delta": "1"},
        {"type": "text-delta", "id": "b", "delta": "2"},
        {"type": "text-delta", "id": "b", "delta": "3"},
        {"type": "text-delta", "id": "a", "delta": "4", "providerMetadata": {"p": {"x": 1}}},
        {"type": "text-delta", "id": "a", "delta": "5"},
    ]
    text = UIMessageStreamEncoder().encode(chunks(events))
    assert text == frames(
        """
        id: 0
        data: {"type":"text-start","id":"a"}

        id: 1
        data: {"type":"text-start","id":"b"}

        id: 2
        data: {"type":"text-delta","id":"a","delta":"1"}

        id: 4
        data: {"type":"text-delta","id":"b","delta":"23"}

        id: 6
        data: {"type":"text-delta","id":"a","delta":"45","providerMetadata":{"p":{"x":1}}}

        """
    )


@pytest.mark.parametrize(
    ("state", "error", "expected"),
    [
        (StreamState.DONE, None, {"type": "finish"}),
        (StreamState.ERROR, "the model failed", {"type": "error", "errorText": "the model failed"}),
        (
            StreamState.ERROR,
            None,
            {"type": "error", "errorText": "the answer could not be completed"},
        ),
        (
            StreamState.INTERRUPTED,
            "server restarted",
            {"type": "error", "errorText": "server restarted"},
        ),
        (StreamState.CANCELLED, None, {"type": "abort"}),
    ],
)
def test_terminal_states(state: StreamState, error: str | None, expected: dict[str, Any]) -> None:
    events = [{"type": "start", "messageId": "m"}, {"type": "text-start", "id": "t"}]
    text = UIMessageStreamEncoder().encode([*chunks(events), end(state, error)])
    # The synthesized frame has no id: it is not a stored chunk.
    assert text.endswith(
        f"\n\ndata: {json.dumps(expected, separators=(',', ':'))}\n\ndata: [DONE]\n\n"
    )


def test_interrupted_sends_a_transient_state_marker_then_the_error() -> None:
    items = [*chunks([{"type": "start", "messageId": "m"}]), end(StreamState.INTERRUPTED, "gone")]
    assert data_lines(UIMessageStreamEncoder().encode(items))[-3:] == [
        {"type": "data-unbroken-state", "data": {"state": "interrupted"}, "transient": True},
        {"type": "error", "errorText": "gone"},
        "[DONE]",
    ]


def test_abort_reason_reaches_only_6_0_15_and_later() -> None:
    items = [*chunks([{"type": "start"}]), end(StreamState.CANCELLED)]
    assert data_lines(UIMessageStreamEncoder(target="6.0.14").encode(items))[-2] == {
        "type": "abort"
    }
    assert data_lines(UIMessageStreamEncoder(target="6.0.15").encode(items))[-2] == {
        "type": "abort",
        "reason": "cancelled",
    }


@pytest.mark.parametrize("last", ["finish", "error", "abort"])
def test_nothing_synthesized_after_the_streams_own_end(last: str) -> None:
    event: dict[str, Any] = {"type": last}
    if last == "error":
        event["errorText"] = "bad"
    for state in StreamState:
        if state is StreamState.ACTIVE:
            continue
        text = UIMessageStreamEncoder().encode([*chunks([event]), end(state, "x")])
        assert data_lines(text) == [event, "[DONE]"]


def test_offset_resume_sends_only_what_follows_and_no_second_start() -> None:
    events = weather_answer()
    all_chunks = chunks(events)
    encoder = UIMessageStreamEncoder()
    encoder.seen(all_chunks[7])  # the client has 0..7 (Last-Event-ID: 7)
    text = encoder.encode([*all_chunks[8:11], end()])
    assert text == frames(
        """
        id: 8
        data: {"type":"text-delta","id":"text-2","delta":"look."}

        id: 9
        data: {"type":"text-end","id":"text-2"}

        id: 10
        data: {"type":"tool-input-start","toolCallId":"call-1","toolName":"getWeather"}

        data: {"type":"finish"}

        data: [DONE]

        """
    )


def test_offset_resume_after_the_streams_finish_sends_only_done() -> None:
    events = weather_answer()
    encoder = UIMessageStreamEncoder()
    encoder.seen(chunks(events)[-1])  # the client got `finish` but not [DONE]
    assert encoder.encode([end()]) == "data: [DONE]\n\n"


def test_undecodable_chunks_are_skipped() -> None:
    items = [
        Chunk(0, "not json", 0),
        Chunk(1, '{"no":"type"}', 8),
        *chunks([{"type": "start"}], start=2),
    ]
    text = UIMessageStreamEncoder().encode([*items, end()])
    assert data_lines(text) == [{"type": "start"}, {"type": "finish"}, "[DONE]"]


def test_encoder_refuses_items_after_the_end() -> None:
    encoder = UIMessageStreamEncoder()
    encoder.encode([end()])
    with pytest.raises(RuntimeError):
        encoder.encode([end()])


def test_keepalive_and_headers() -> None:
    assert UIMessageStreamEncoder().keepalive() == ": keep-alive\n\n"
    assert UI_MESSAGE_STREAM_HEADERS == {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "connection": "keep-alive",
        "x-vercel-ai-ui-message-stream": "v1",
        "x-accel-buffering": "no",
    }


# -- fitting events to the client version ------------------------------------------------

_TOOL_INPUT_ERROR = {
    "type": "tool-input-error",
    "toolCallId": "c1",
    "toolName": "t",
    "input": {"a": 1},
    "errorText": "invalid",
}


@pytest.mark.parametrize(
    ("target", "event", "expected"),
    [
        # unknown fields are stripped for every target
        ("5.0.0", {"type": "text-start", "id": "t", "extra": 1}, {"type": "text-start", "id": "t"}),
        ("7", {"type": "text-start", "id": "t", "extra": 1}, {"type": "text-start", "id": "t"}),
        # an unknown type is never sent
        ("7", {"type": "surprise"}, None),
        # a required field missing or of the wrong kind drops the event
        ("5.0.0", {"type": "text-delta", "id": "t"}, None),
        ("5.0.0", {"type": "text-delta", "id": 1, "delta": "x"}, None),
        # optional fields of the wrong kind are stripped
        (
            "5.0.0",
            {"type": "source-url", "sourceId": "s", "url": "u", "title": 3},
            {"type": "source-url", "sourceId": "s", "url": "u"},
        ),
        # null input is a valid value, not a missing one
        (
            "5.0.0",
            {"type": "tool-input-available", "toolCallId": "c", "toolName": "t", "input": None},
            {"type": "tool-input-available", "toolCallId": "c", "toolName": "t", "input": None},
        ),
        # data parts pass with id/transient
        (
            "5.0.0",
            {"type": "data-x", "data": [1], "transient": True},
            {"type": "data-x", "data": [1], "transient": True},
        ),
        ("5.0.0", {"type": "data-", "data": 1}, None),
        # preliminary: 5.0.11+
        (
            "5.0.10",
            {"type": "tool-output-available", "toolCallId": "c", "output": 1, "preliminary": False},
            {"type": "tool-output-available", "toolCallId": "c", "output": 1},
        ),
        (
            "5.0.11",
            {"type": "tool-output-available", "toolCallId": "c", "output": 1, "preliminary": True},
            {"type": "tool-output-available", "toolCallId": "c", "output": 1, "preliminary": True},
        ),
        # finishReason: 5.0.92+; "unknown" only before 6
        ("5.0.91", {"type": "finish", "finishReason": "stop"}, {"type": "finish"}),
        (
            "5.0.92",
            {"type": "finish", "finishReason": "unknown"},
            {"type": "finish", "finishReason": "unknown"},
        ),
        (
            "6",
            {"type": "finish", "finishReason": "unknown"},
            {"type": "finish", "finishReason": "other"},
        ),
        (
            "6",
            {"type": "finish", "finishReason": "bogus"},
            {"type": "finish", "finishReason": "other"},
        ),
        # v6 tool approvals and titles
        ("5.0.277", {"type": "tool-approval-request", "approvalId": "a", "toolCallId": "c"}, None),
        (
            "6.0.0",
            {"type": "tool-approval-request", "approvalId": "a", "toolCallId": "c"},
            {"type": "tool-approval-request", "approvalId": "a", "toolCallId": "c"},
        ),
        ("5.0.277", {"type": "tool-output-denied", "toolCallId": "c"}, None),
        (
            "6",
            {"type": "tool-output-denied", "toolCallId": "c"},
            {"type": "tool-output-denied", "toolCallId": "c"},
        ),
        (
            "5.0.0",
            {"type": "tool-input-start", "toolCallId": "c", "toolName": "t", "title": "T"},
            {"type": "tool-input-start", "toolCallId": "c", "toolName": "t"},
        ),
        (
            "6",
            {"type": "tool-input-start", "toolCallId": "c", "toolName": "t", "title": "T"},
            {"type": "tool-input-start", "toolCallId": "c", "toolName": "t", "title": "T"},
        ),
        # tool-input-error: 5.0.7+
        ("5.0.7", _TOOL_INPUT_ERROR, _TOOL_INPUT_ERROR),
        ("5.0.6", _TOOL_INPUT_ERROR, None),  # the client does not know the call: dropped
        # v7 types
        ("6", {"type": "custom", "kind": "k"}, None),
        ("7", {"type": "custom", "kind": "k"}, {"type": "custom", "kind": "k"}),
    ],
)
def test_events_fit_the_target(
    target: str, event: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    text = UIMessageStreamEncoder(target=target).encode(raw_chunks([event]))
    assert data_lines(text) == ([] if expected is None else [expected])


def test_tool_input_error_becomes_output_error_for_a_known_call_before_5_0_7() -> None:
    events = [{"type": "tool-input-start", "toolCallId": "c1", "toolName": "t"}, _TOOL_INPUT_ERROR]
    text = UIMessageStreamEncoder(target="5.0.0").encode(chunks(events))
    assert data_lines(text)[1] == {
        "type": "tool-output-error",
        "toolCallId": "c1",
        "errorText": "invalid",
    }


def test_preliminary_outputs_are_dropped_before_5_0_11() -> None:
    event = {"type": "tool-output-available", "toolCallId": "c", "output": 1, "preliminary": True}
    assert UIMessageStreamEncoder(target="5.0.10").encode(chunks([event])) == ""


@pytest.mark.parametrize(
    ("text", "version"),
    [("5", (5, 0, 0)), ("5.0.92", (5, 0, 92)), ("v6", (6, 0, 0)), ("7.1", (7, 1, 0))],
)
def test_client_target_parse(text: str, version: tuple[int, int, int]) -> None:
    assert ClientTarget.parse(text).version == version
    assert str(ClientTarget.parse(text)) == ".".join(map(str, version))


@pytest.mark.parametrize("text", ["4.3.19", "five", "5.0.0-beta", ""])
def test_client_target_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="AI SDK"):
        ClientTarget.parse(text)


def test_sse_framing() -> None:
    from unbroken._sse import sse_comment, sse_event

    assert sse_event('{"a":1}', id="7") == 'id: 7\ndata: {"a":1}\n\n'
    assert sse_event("two\nlines", event="x") == "event: x\ndata: two\ndata: lines\n\n"
    assert sse_comment("keep-alive") == ": keep-alive\n\n"
    with pytest.raises(ValueError, match="newlines"):
        sse_event("x", id="1\n2")
