"""Every UI message chunk unbroken's encoder emits passes the real clients' strict parsers.

ai@5.0.0 validates each chunk with a strict zod schema (an unknown field or type fails the
whole stream); later clients accept more. A stream holding every chunk type, with every
optional field set, is encoded by `UIMessageStreamEncoder` and fed to each client through
`DefaultChatTransport` + `readUIMessageStream` (``common/strict.mjs``):

- for the default target (ai 5.0.0), every client must accept it;
- for a target equal to the client's own version, that client must accept it too (so the
  newer fields and types the encoder unlocks for it are right).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance._node import UI_MESSAGE_STREAM_CLIENTS, NodeToolchain, client_version
from unbroken import Chunk, StreamEnd, StreamState
from unbroken.protocols.ai_sdk import (
    KNOWN_CHUNK_TYPES,
    UI_MESSAGE_STREAM_HEADERS,
    UIMessageStreamEncoder,
    encode_event,
)

pytestmark = pytest.mark.node

PM = {"unbroken": {"note": "provider metadata"}}
ERROR_TEXT = "the model failed"


def every_chunk() -> list[dict[str, Any]]:
    """A valid answer using every chunk type any supported client knows (but the terminal
    `error`/`abort`), with every optional field set."""
    tool = {"providerExecuted": False, "dynamic": False, "title": "Weather"}
    return [
        {"type": "start", "messageId": "msg-strict", "messageMetadata": {"model": "fake"}},
        {"type": "start-step"},
        {"type": "reasoning-start", "id": "r1", "providerMetadata": PM},
        {"type": "reasoning-delta", "id": "r1", "delta": "Thinking", "providerMetadata": PM},
        {"type": "reasoning-end", "id": "r1", "providerMetadata": PM},
        {
            "type": "reasoning-file",
            "url": "data:image/png;base64,AA==",
            "mediaType": "image/png",
            "providerMetadata": PM,
        },
        {"type": "text-start", "id": "t1", "providerMetadata": PM},
        {"type": "text-delta", "id": "t1", "delta": "Hello", "providerMetadata": PM},
        {"type": "text-delta", "id": "t1", "delta": " world"},
        {"type": "text-end", "id": "t1", "providerMetadata": PM},
        # c1: streamed input, then output.
        {
            "type": "tool-input-start",
            "toolCallId": "c1",
            "toolName": "weather",
            **tool,
            "providerMetadata": PM,
            "toolMetadata": {"v": 1},
        },
        {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": '{"city":"Par'},
        {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": 'is"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "c1",
            "toolName": "weather",
            "input": {"city": "Paris"},
            **tool,
            "providerMetadata": PM,
            "toolMetadata": {"v": 1},
        },
        {
            "type": "tool-output-available",
            "toolCallId": "c1",
            "output": {"temp": 20},
            "providerExecuted": False,
            "dynamic": False,
            "preliminary": True,
            "providerMetadata": PM,
            "toolMetadata": {"v": 1},
        },
        {
            "type": "tool-output-available",
            "toolCallId": "c1",
            "output": {"temp": 21},
            "providerExecuted": False,
            "dynamic": False,
            "providerMetadata": PM,
        },
        # c2: input that failed to parse.
        {"type": "tool-input-start", "toolCallId": "c2", "toolName": "weather", **tool},
        {
            "type": "tool-input-error",
            "toolCallId": "c2",
            "toolName": "weather",
            "input": "{bad json",
            "errorText": "invalid input",
            **tool,
            "providerMetadata": PM,
            "toolMetadata": {"v": 1},
        },
        # c3: output error.
        {
            "type": "tool-input-available",
            "toolCallId": "c3",
            "toolName": "search",
            "input": {"q": "x"},
        },
        {
            "type": "tool-output-error",
            "toolCallId": "c3",
            "errorText": "search failed",
            "providerExecuted": False,
            "dynamic": False,
            "providerMetadata": PM,
            "toolMetadata": {"v": 1},
        },
        # c4: approval requested, then denied (v6+); dynamic tool.
        {
            "type": "tool-input-available",
            "toolCallId": "c4",
            "toolName": "delete_all",
            "input": {},
            "dynamic": True,
        },
        {
            "type": "tool-approval-request",
            "approvalId": "a1",
            "toolCallId": "c4",
            "isAutomatic": False,
            "signature": "sig",
        },
        {"type": "tool-output-denied", "toolCallId": "c4"},
        {
            "type": "source-url",
            "sourceId": "s1",
            "url": "https://example.com/a",
            "title": "A",
            "providerMetadata": PM,
        },
        {
            "type": "source-document",
            "sourceId": "s2",
            "mediaType": "application/pdf",
            "title": "B",
            "filename": "b.pdf",
            "providerMetadata": PM,
        },
        {
            "type": "file",
            "url": "data:text/plain;base64,aGk=",
            "mediaType": "text/plain",
            "providerMetadata": PM,
        },
        {"type": "data-weather", "id": "d1", "data": {"city": "Paris"}, "transient": False},
        {"type": "data-weather", "id": "d1", "data": {"city": "Paris", "temp": 21}},
        {"type": "data-progress", "data": 0.5, "transient": True},
        {"type": "message-metadata", "messageMetadata": {"tokens": 12}},
        {"type": "custom", "kind": "unbroken.note", "providerMetadata": PM},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop", "messageMetadata": {"done": True}},
    ]


def test_every_known_chunk_type_is_in_the_story() -> None:
    """The story above covers every chunk type the encoder knows."""
    story = {c["type"] for c in every_chunk()} | {"error", "abort"}
    normalized = {"data-*" if kind.startswith("data-") else kind for kind in story}
    assert normalized == set(KNOWN_CHUNK_TYPES)


def sse(events: list[dict[str, Any]], target: str, end: StreamState = StreamState.DONE) -> str:
    encoder = UIMessageStreamEncoder(target=target)
    items: list[Chunk | StreamEnd] = [
        Chunk(seq=seq, data=encode_event(event), offset=0) for seq, event in enumerate(events)
    ]
    error = ERROR_TEXT if end in (StreamState.ERROR, StreamState.INTERRUPTED) else None
    items.append(StreamEnd(end, error, len(events), 0))
    return encoder.encode(items)


def sent_types(body: str) -> list[str]:
    types = []
    for line in body.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            types.append(json.loads(line[len("data: ") :])["type"])
    return types


def stories() -> Iterator[tuple[str, list[dict[str, Any]], StreamState, list[str]]]:
    """(name, events, how the stream ends, the error texts the client must report)."""
    yield "every-chunk", every_chunk(), StreamState.DONE, []
    text = every_chunk()[:10]
    yield (
        "error",
        [*text, {"type": "error", "errorText": ERROR_TEXT}],
        StreamState.DONE,
        [ERROR_TEXT],
    )
    yield "abort", [*text, {"type": "abort", "reason": "user"}], StreamState.DONE, []
    # Ends the engine writes itself when the stream did not: cancelled, error, interrupted.
    yield "cancelled", text, StreamState.CANCELLED, []
    yield "engine-error", text, StreamState.ERROR, [ERROR_TEXT]
    yield "interrupted", text, StreamState.INTERRUPTED, [ERROR_TEXT]


@pytest.mark.parametrize("folder", UI_MESSAGE_STREAM_CLIENTS)
@pytest.mark.parametrize("target", ["default", "client"])
def test_client_accepts_every_chunk(
    folder: str,
    target: str,
    node_toolchain: NodeToolchain,
    npm_clients: dict[str, Path],
) -> None:
    version = "5.0.0" if target == "default" else client_version(folder)
    cases = {
        name: {"body": sse(events, version, end), "expectedErrors": errors}
        for name, events, end, errors in stories()
    }
    results = node_toolchain.run(
        "strict.mjs",
        npm_clients[folder],
        {"headers": UI_MESSAGE_STREAM_HEADERS, "cases": cases},
    )
    for name, case in cases.items():
        result = results[name]
        assert result["rejected"] == [], (name, version, result["rejected"])
        assert result["accepted"], (name, result)
        expected_errors = [f"Error: {text}" for text in case["expectedErrors"]]
        assert result["reportedErrors"] == expected_errors, name
        # Everything the encoder sent reached the client's message builder.
        assert result["chunkTypes"] == sent_types(str(case["body"])), name
