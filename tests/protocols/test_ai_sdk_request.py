"""Parsing chat request bodies of the v4, v5 and vercel/ai-chatbot clients."""

from __future__ import annotations

import json
from typing import Any

import pytest

from unbroken import ProtocolError
from unbroken.protocols.ai_sdk import ChatRequest, is_valid_id, parse_chat_request

USER = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Weather in Paris?"}]}
ASSISTANT = {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "Sunny."}]}


def test_v5_default_chat_transport_body() -> None:
    body = {
        "id": "chat-1",
        "messages": [USER, ASSISTANT, {**USER, "id": "u2", "metadata": {"t": 1}}],
        "trigger": "submit-message",
        "selectedModel": "demo",
    }
    request = parse_chat_request(json.dumps(body).encode())
    assert request == ChatRequest(
        protocol="v5",
        chat_id="chat-1",
        messages=[USER, ASSISTANT, {**USER, "id": "u2", "metadata": {"t": 1}}],
        trigger="submit-message",
        message_id=None,
        extra={"selectedModel": "demo"},
    )
    assert request.last_user_message is not None
    assert request.last_user_message["id"] == "u2"


def test_v5_regenerate_with_message_id() -> None:
    body = {
        "id": "chat-1",
        "messages": [USER],
        "trigger": "regenerate-message",
        "messageId": "a1",
    }
    request = parse_chat_request(body)
    assert (request.protocol, request.trigger, request.message_id) == (
        "v5",
        "regenerate-message",
        "a1",
    )


def test_ai_chatbot_body_with_one_message() -> None:
    body = {
        "id": "0d9c7b3e-6f1a-4c8e-9a57-0b1f2e3d4c5b",
        "message": USER,
        "selectedChatModel": "chat-model",
        "selectedVisibilityType": "private",
    }
    request = parse_chat_request(body)
    assert request.protocol == "v5"
    assert request.messages == [USER]
    assert request.trigger == "submit-message"
    assert request.extra == {"selectedChatModel": "chat-model", "selectedVisibilityType": "private"}


def test_v4_messages_without_ids_get_generated_ones() -> None:
    # v4 `useChat` sends only role/content/parts unless `sendExtraMessageFields` is set.
    body = {"id": "chat-1", "messages": [{"role": "user", "content": "Hi", "parts": []}]}
    (message,) = parse_chat_request(body).messages
    assert is_valid_id(message["id"])
    assert message["id"].startswith("msg-")
    assert (message["role"], message["parts"]) == ("user", [{"type": "text", "text": "Hi"}])
    with pytest.raises(ProtocolError, match="valid 'id'"):
        parse_chat_request({"id": "c", "messages": [{"id": "a b", "role": "user", "content": "x"}]})


def test_v4_body_is_normalized_to_ui_messages() -> None:
    body = {
        "id": "chat-1",
        "messages": [
            {"id": "u1", "role": "user", "content": "Hello", "createdAt": "2025-01-01T00:00:00Z"},
            {
                "id": "a1",
                "role": "assistant",
                "content": "Hi",
                "parts": [
                    {"type": "step-start"},
                    {"type": "reasoning", "reasoning": "think", "details": []},
                    {"type": "text", "text": "Hi"},
                    {
                        "type": "tool-invocation",
                        "toolInvocation": {
                            "state": "result",
                            "toolCallId": "c1",
                            "toolName": "weather",
                            "args": {"city": "Paris"},
                            "result": {"t": 21},
                        },
                    },
                    {
                        "type": "source",
                        "source": {"sourceType": "url", "id": "s1", "url": "https://e.com"},
                    },
                    {"type": "file", "mimeType": "text/plain", "data": "aGk="},
                ],
            },
            {"id": "d1", "role": "data", "content": ""},
            {
                "id": "u2",
                "role": "user",
                "content": "And this?",
                "experimental_attachments": [
                    {"name": "a.png", "contentType": "image/png", "url": "https://e.com/a.png"}
                ],
            },
        ],
    }
    request = parse_chat_request(body)
    assert request.protocol == "v4"
    assert request.messages == [
        {
            "id": "u1",
            "role": "user",
            "parts": [{"type": "text", "text": "Hello"}],
            "metadata": {"createdAt": "2025-01-01T00:00:00Z"},
        },
        {
            "id": "a1",
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {"type": "reasoning", "text": "think"},
                {"type": "text", "text": "Hi"},
                {
                    "type": "tool-weather",
                    "toolCallId": "c1",
                    "state": "output-available",
                    "input": {"city": "Paris"},
                    "output": {"t": 21},
                },
                {"type": "source-url", "sourceId": "s1", "url": "https://e.com"},
                {"type": "file", "mediaType": "text/plain", "url": "data:text/plain;base64,aGk="},
            ],
        },
        {
            "id": "u2",
            "role": "user",
            "parts": [
                {"type": "text", "text": "And this?"},
                {
                    "type": "file",
                    "mediaType": "image/png",
                    "url": "https://e.com/a.png",
                    "filename": "a.png",
                },
            ],
        },
    ]
    assert request.last_user_message == request.messages[2]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        ({"messages": []}, "chat 'id'"),
        ({"id": "", "messages": []}, "chat 'id' must be"),
        ({"id": "a/b", "messages": []}, "chat 'id' must be"),
        ({"id": "x" * 129, "messages": []}, "chat 'id' must be"),
        ({"id": 5, "messages": []}, "chat 'id' must be"),
        ({"id": "c", "messages": [], "trigger": "resume"}, "'trigger' must be"),
        ({"id": "c", "messages": {}, "trigger": "submit-message"}, "'messages' must be a list"),
        ({"id": "c", "messages": [1], "trigger": "submit-message"}, "message 0 must be an object"),
        (
            {"id": "c", "messages": [{"role": "user", "parts": []}], "trigger": "submit-message"},
            "valid 'id'",
        ),
        (
            {"id": "c", "messages": [{**USER, "role": "tool"}], "trigger": "submit-message"},
            "invalid 'role'",
        ),
        (
            {"id": "c", "messages": [{"id": "u", "role": "user"}], "trigger": "submit-message"},
            "'parts' list",
        ),
        (
            {
                "id": "c",
                "messages": [{**USER, "parts": [{"text": "x"}]}],
                "trigger": "submit-message",
            },
            "string 'type'",
        ),
        (
            {
                "id": "c",
                "messages": [{**USER, "parts": [{"type": "text"}]}],
                "trigger": "submit-message",
            },
            "needs 'text'",
        ),
        ({"id": "c", "message": {"id": "u"}}, "invalid 'role'"),
        ({"id": "c", "messages": [{"id": "u", "role": "user"}]}, "'content' or 'parts'"),
        (
            {"id": "c", "messages": [{"id": "u", "role": "user", "content": 3}]},
            "non-string 'content'",
        ),
        (
            {"id": "c", "messages": [], "trigger": "submit-message", "messageId": "bad id"},
            "'messageId'",
        ),
        ({"id": "c"}, "'messages' must be a list"),
    ],
)
def test_invalid_bodies(body: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_chat_request(body)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("abc", True),
        ("0d9c7b3e-6f1a-4c8e-9a57-0b1f2e3d4c5b", True),
        ("msg-AbC123_x.y:z~", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("-leading", False),
        ("has space", False),
        ("slash/", False),
        ("é", False),
        (None, False),
    ],
)
def test_id_validation(value: object, valid: bool) -> None:
    assert is_valid_id(value) is valid


def test_deeply_nested_body_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="nested too deeply"):
        parse_chat_request("[" * 100_000 + "]" * 100_000)
