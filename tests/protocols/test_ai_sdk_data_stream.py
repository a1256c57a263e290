# ruff: noqa: E501 - snapshots hold whole lines
"""The v4 data stream encoder, snapshot-tested as readable lines."""

from __future__ import annotations

import json
from textwrap import dedent
from typing import Any

import pytest

from tests.protocols._streams import chunks, end, raw_chunks, weather_answer
from unbroken import StreamState
from unbroken.protocols.ai_sdk import (
    DATA_STREAM_HEADERS,
    DataStreamEncoder,
    append_message_line,
)


def lines(text: str) -> str:
    return dedent(text).lstrip("\n")


def test_full_answer() -> None:
    events = weather_answer()
    text = DataStreamEncoder().encode([*chunks(events), end()])
    assert text == lines(
        """
        f:{"messageId":"msg-1"}
        g:"Checking the weather."
        0:"Let me look."
        b:{"toolCallId":"call-1","toolName":"getWeather"}
        c:{"toolCallId":"call-1","argsTextDelta":"{\\"city\\":\\"Paris\\"}"}
        9:{"toolCallId":"call-1","toolName":"getWeather","args":{"city":"Paris"}}
        a:{"toolCallId":"call-1","result":{"temperature":21}}
        2:[{"type":"data-weather","id":"w-1","data":{"city":"Paris","temperature":21}}]
        h:{"sourceType":"url","id":"source-3","url":"https://example.com/paris","title":"Paris weather"}
        0:"It is 21°C."
        e:{"finishReason":"tool-calls","isContinued":false}
        d:{"finishReason":"stop"}
        """
    )


def test_live_lines_are_not_merged() -> None:
    events = weather_answer()
    encoder = DataStreamEncoder()
    text = "".join(encoder.encode([chunk]) for chunk in chunks(events))
    assert text.splitlines()[:5] == [
        'f:{"messageId":"msg-1"}',
        'g:"Checking "',
        'g:"the weather."',
        '0:"Let me "',
        '0:"look."',
    ]


def test_the_first_content_line_gets_a_start_step_when_the_stream_has_none() -> None:
    events = [
        {"type": "start", "messageId": "m1", "messageMetadata": {"model": "demo"}},
        {"type": "text-start", "id": "t"},
        {"type": "text-delta", "id": "t", "delta": "Hi"},
        {"type": "message-metadata", "messageMetadata": {"tokens": 3}},
        {"type": "error", "errorText": "boom"},
    ]
    assert DataStreamEncoder().encode(chunks(events)) == lines(
        """
        8:[{"model":"demo"}]
        f:{"messageId":"m1"}
        0:"Hi"
        8:[{"tokens":3}]
        3:"boom"
        """
    )


def test_an_offset_resume_gets_no_extra_start_step() -> None:
    events = weather_answer()
    encoder = DataStreamEncoder()
    encoder.seen(chunks(events)[7])
    assert encoder.encode(chunks(events)[8:10]) == '0:"look."\n'


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {"type": "tool-output-error", "toolCallId": "c", "errorText": "no"},
            'a:{"toolCallId":"c","result":{"error":"no"}}\n',
        ),
        (
            {
                "type": "tool-input-error",
                "toolCallId": "c",
                "toolName": "t",
                "input": "raw",
                "errorText": "no",
            },
            '9:{"toolCallId":"c","toolName":"t","args":{"value":"raw"}}\na:{"toolCallId":"c","result":{"error":"no"}}\n',
        ),
        (
            {"type": "tool-output-available", "toolCallId": "c", "output": 1, "preliminary": True},
            "",
        ),
        (
            {"type": "file", "url": "data:image/png;base64,iVBORw==", "mediaType": "image/png"},
            'k:{"data":"iVBORw==","mimeType":"image/png"}\n',
        ),
        ({"type": "file", "url": "https://example.com/a.png", "mediaType": "image/png"}, ""),
        ({"type": "source-document", "sourceId": "s", "mediaType": "text/plain", "title": "T"}, ""),
        ({"type": "tool-approval-request", "approvalId": "a", "toolCallId": "c"}, ""),
        ({"type": "abort", "reason": "user"}, 'd:{"finishReason":"other"}\n'),
        (
            {"type": "finish", "finishReason": "length", "messageMetadata": {"t": 1}},
            '8:[{"t":1}]\nd:{"finishReason":"length"}\n',
        ),
        ({"type": "finish", "finishReason": "weird"}, 'd:{"finishReason":"stop"}\n'),
        ({"type": "data-x", "data": 1, "transient": True}, '2:[{"type":"data-x","data":1}]\n'),
        ({"type": "start-step"}, ""),  # no message id known: f: cannot be written
        ({"type": "tool-input-delta", "toolCallId": 3, "inputTextDelta": "x"}, ""),
        ({"type": "something-new"}, ""),
    ],
)
def test_translations(event: dict[str, Any], expected: str) -> None:
    assert DataStreamEncoder().encode(raw_chunks([event])) == expected


def test_consecutive_data_and_annotations_merge() -> None:
    events = [
        {"type": "data-a", "data": 1},
        {"type": "data-b", "id": "x", "data": 2},
        {"type": "message-metadata", "messageMetadata": 1},
        {"type": "message-metadata", "messageMetadata": 2},
    ]
    assert DataStreamEncoder().encode(chunks(events)) == lines(
        """
        2:[{"type":"data-a","data":1},{"type":"data-b","id":"x","data":2}]
        8:[1,2]
        """
    )


@pytest.mark.parametrize(
    ("state", "error", "expected"),
    [
        (StreamState.DONE, None, 'd:{"finishReason":"stop"}\n'),
        (StreamState.ERROR, "the model failed", '3:"the model failed"\n'),
        (
            StreamState.INTERRUPTED,
            None,
            '2:[{"type":"data-unbroken-state","data":{"state":"interrupted"}}]\n'
            '3:"the answer was interrupted"\n',
        ),
        (StreamState.CANCELLED, None, 'd:{"finishReason":"other"}\n'),
    ],
)
def test_terminal_states(state: StreamState, error: str | None, expected: str) -> None:
    events = [{"type": "start", "messageId": "m"}, {"type": "start-step"}]
    text = DataStreamEncoder().encode([*chunks(events), end(state, error)])
    assert text == 'f:{"messageId":"m"}\n' + expected


def test_no_second_finish_after_the_streams_own() -> None:
    events = weather_answer()
    text = DataStreamEncoder().encode([*chunks(events), end(StreamState.DONE)])
    assert text.count("d:") == 1


def test_keepalive_is_an_empty_line_and_headers() -> None:
    assert DataStreamEncoder().keepalive() == "\n"
    assert DATA_STREAM_HEADERS["content-type"] == "text/plain; charset=utf-8"
    assert DATA_STREAM_HEADERS["x-vercel-ai-data-stream"] == "v1"


def test_append_message_line_carries_the_message_as_a_json_string() -> None:
    message = {"id": "m1", "role": "assistant", "content": "Hi", "parts": []}
    line = append_message_line(message)
    assert (
        line
        == '2:[{"type":"append-message","message":"{\\"id\\":\\"m1\\",\\"role\\":\\"assistant\\",\\"content\\":\\"Hi\\",\\"parts\\":[]}"}]\n'
    )
    payload = json.loads(line[2:])
    assert json.loads(payload[0]["message"]) == message
