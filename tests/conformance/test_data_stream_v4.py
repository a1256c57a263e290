"""AI SDK 4 (data stream protocol) with the real npm clients against a real server:
`callChatApi` from @ai-sdk/ui-utils 1.2.11, and v4 `useChat` (@ai-sdk/react 1.2.12) with
`experimental_resume()` and the seed's `useAutoResume` hook."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conformance._expected import (
    example_answer,
    example_answer_v4,
    without_v4_noise,
)
from tests.conformance._node import NodeToolchain
from unbroken.protocols.ai_sdk import ui_message_to_v4

pytestmark = pytest.mark.node


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def assert_full_v4_answer(message: Mapping[str, Any]) -> None:
    """The example's answer as a v4 `Message`: text, reasoning, a tool call with its result,
    a source, all in one step."""
    assert message["role"] == "assistant"
    types = [part["type"] for part in message["parts"]]
    assert types[0] == "step-start", types
    assert {"text", "reasoning", "tool-invocation", "source"} <= set(types), types
    text = "".join(part["text"] for part in message["parts"] if part["type"] == "text")
    assert text and message["content"] == text
    tools = [
        part["toolInvocation"] for part in message["parts"] if part["type"] == "tool-invocation"
    ]
    assert all(tool["state"] == "result" and "result" in tool for tool in tools), tools
    assert message["toolInvocations"] == tools


QUESTION = "Hello"


def stored_v4_answer(message_id: str) -> dict[str, Any]:
    """The message the append-message fallback carries: the stored UI answer, as v4."""
    return without_v4_noise(ui_message_to_v4(example_answer(QUESTION, {}, message_id)))


def test_call_chat_api_post_resume_and_after_end(
    node_toolchain: NodeToolchain, npm_clients: dict[str, Path], server_url: str
) -> None:
    chat_id = new_id("v4")
    user = {
        "id": new_id("user"),
        "role": "user",
        "content": QUESTION,
        "parts": [{"type": "text", "text": QUESTION}],
    }
    result = node_toolchain.run(
        "v4_stream.mjs",
        npm_clients["ai4"],
        {
            "api": f"{server_url}/api/chat",
            "chatId": chat_id,
            "idleChatId": new_id("v4-idle"),
            "userMessage": user,
        },
    )
    post, resume, after_end, idle = (result[k] for k in ("post", "resume", "afterEnd", "idle"))

    # POST: a v4 body gets the data stream protocol, every line of which the client parsed.
    assert post["error"] is None
    (post_http,) = post["http"]
    assert post_http["status"] == 200
    assert post_http["headers"]["x-vercel-ai-data-stream"] == "v1"
    assert post_http["headers"]["content-type"].startswith("text/plain")
    message = post["finished"]["message"]
    assert_full_v4_answer(message)
    expected, expected_data = example_answer_v4(QUESTION, message["id"])
    assert without_v4_noise(message) == expected
    assert post["finished"]["finishReason"] == "stop"
    # The server's message id (from `f:{"messageId"}`), not the client's.
    assert message["id"] != "client-generated-id"
    assert message["id"].startswith("msg-")
    assert post["data"] == expected_data, "data parts reach useChat().data"

    # Resume (GET /api/chat?chatId=) started mid-answer: the same message and data.
    assert resume["error"] is None
    (resume_http,) = resume["http"]
    assert resume_http["method"] == "GET"
    assert resume_http["url"].endswith(f"/api/chat?chatId={chat_id}")
    assert resume_http["status"] == 200
    assert resume["snapshotAtResume"]["content"] != message["content"], "not mid-answer"
    assert without_v4_noise(resume["finished"]["message"]) == without_v4_noise(message)
    assert resume["data"] == post["data"]

    # Right after the end: the seed's append-message fallback with the stored message.
    assert after_end["error"] is None
    (after_http,) = after_end["http"]
    assert after_http["status"] == 200
    assert len(after_end["data"]) == 1
    (append,) = after_end["data"]
    assert append["type"] == "append-message"
    stored = json.loads(append["message"])
    assert without_v4_noise(stored) == stored_v4_answer(message["id"])
    assert stored["content"] == message["content"]

    # Nothing to resume: 200 with an empty body, and no error in the client.
    assert idle["error"] is None
    (idle_http,) = idle["http"]
    assert idle_http["status"] == 200
    assert idle_http["body"] == ""


def test_use_chat_auto_resume(
    node_toolchain: NodeToolchain, npm_clients: dict[str, Path], server_url: str
) -> None:
    chats = {"live": new_id("v4-live"), "finished": new_id("v4-done"), "idle": new_id("v4-idle")}
    result = node_toolchain.run(
        "v4_use_chat.mjs",
        npm_clients["ai4"],
        {"api": f"{server_url}/api/chat", "chats": chats, "userText": QUESTION},
    )

    live = result["live"]
    assert live["error"] is None, live
    assert live["ended"] == ["finish"]
    assert "streaming" in live["statuses"]
    messages = live["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"], messages
    assert messages[0]["id"] == live["initialMessages"][0]["id"]
    partial = live["page1Messages"][-1]
    assistant = messages[1]
    assert assistant["id"] == partial["id"], "the replay carries the same server message id"
    assert len(partial["content"]) < len(assistant["content"])
    assert_full_v4_answer(assistant)
    expected, expected_data = example_answer_v4(QUESTION, assistant["id"])
    assert without_v4_noise(assistant) == expected
    assert live["data"] == expected_data

    finished = result["finished"]
    assert finished["error"] is None, finished
    assert finished["ended"] == ["finish"]
    (append,) = finished["data"]
    assert append["type"] == "append-message"
    messages = finished["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"], messages
    answered = finished["page1Messages"][-1]
    stored = messages[1]
    assert stored["id"] == answered["id"]
    assert stored["content"] == answered["content"]
    # useAutoResume swapped in the stored message (setMessages fills in v4 parts as needed).
    assert without_v4_noise(stored) == stored_v4_answer(answered["id"])

    idle = result["idle"]
    assert idle["error"] is None, idle
    assert idle["status"] == "ready"
    assert idle["messages"] == idle["initialMessages"] or [m["id"] for m in idle["messages"]] == [
        m["id"] for m in idle["initialMessages"]
    ]
