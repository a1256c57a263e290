"""The answers the conformance tests expect, computed on the Python side.

The example's fake model is deterministic but for the message id, so the expected answer is
what unbroken's own `UIMessageAssembler` builds from the events ``fake_model`` yields for the
same question. A passing test shows that the real client, the server and unbroken's
assembler agree on the message, part for part.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
from examples.ai_sdk_app import fake_model

from unbroken.protocols.ai_sdk import UIEvent, UIMessageAssembler

Message = dict[str, Any]

#: The example app's answer length (its ``EXAMPLE_WORDS``); the server fixture sets it.
EXAMPLE_WORDS = 24
#: Stands for the server-generated message id in expected messages.
ANY_ID = "msg-expected"


def example_events(question: str, *, words: int = EXAMPLE_WORDS) -> list[UIEvent]:
    """The events the example's fake model yields for ``question`` (without its delays)."""

    async def collect() -> list[UIEvent]:
        events: list[UIEvent] = []
        async for batch in fake_model(ANY_ID, question, delay=0, words=words):
            events.extend(batch)
        return events

    return anyio.run(collect)


def example_answer(question: str, versions: Mapping[str, str], message_id: str) -> Message:
    """The assistant UI message a client of ``versions`` builds for the example's answer."""
    message = as_client_builds_it(assemble(example_events(question)), versions)
    message["id"] = message_id
    return message


def example_answer_v4(question: str, message_id: str) -> tuple[Message, list[Any]]:
    """The v4 ``Message`` (without createdAt/revisionId) and the ``data`` items the v4 client
    builds from unbroken's data stream of the example's answer (see the data stream encoder's
    table: data parts go to ``data``, message metadata to annotations, one step per
    ``start-step``)."""
    parts: list[dict[str, Any]] = []
    tools: dict[str, dict[str, Any]] = {}
    annotations: list[Any] = []
    data: list[Any] = []
    step = -1
    for event in example_events(question):
        kind = event["type"]
        if event.get("messageMetadata") is not None:
            annotations.append(event["messageMetadata"])
        if kind == "start-step":
            step += 1
            parts.append({"type": "step-start"})
        elif kind in ("text-delta", "reasoning-delta"):
            part_type = "text" if kind == "text-delta" else "reasoning"
            if parts[-1]["type"] != part_type:
                parts.append({"type": part_type, "text": ""})
            parts[-1]["text"] += event["delta"]
        elif kind == "tool-input-available":
            tools[event["toolCallId"]] = {
                "state": "call",
                "step": step,
                "toolCallId": event["toolCallId"],
                "toolName": event["toolName"],
                "args": event["input"],
            }
            parts.append({"type": "tool-invocation", "toolCallId": event["toolCallId"]})
        elif kind == "tool-output-available":
            tools[event["toolCallId"]].update(state="result", result=event["output"])
        elif kind == "source-url":
            source = {"sourceType": "url", "id": event["sourceId"], "url": event["url"]}
            if "title" in event:
                source["title"] = event["title"]
            parts.append({"type": "source", "source": source})
        elif kind.startswith("data-"):
            data.append({key: event[key] for key in ("type", "id", "data") if key in event})
    v4_parts: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] == "reasoning":
            text = part["text"]
            v4_parts.append(
                {
                    "type": "reasoning",
                    "reasoning": text,
                    "details": [{"type": "text", "text": text}],
                }
            )
        elif part["type"] == "tool-invocation":
            v4_parts.append(
                {"type": "tool-invocation", "toolInvocation": tools[part["toolCallId"]]}
            )
        else:
            v4_parts.append(part)
    text = "".join(part["text"] for part in parts if part["type"] == "text")
    reasoning = "".join(part["text"] for part in parts if part["type"] == "reasoning")
    message: Message = {
        "id": message_id,
        "role": "assistant",
        "content": text,
        "parts": v4_parts,
        "annotations": annotations,
        "reasoning": reasoning,
        "toolInvocations": list(tools.values()),
    }
    return message, data


def assemble(chunks: Iterable[Mapping[str, Any]]) -> Message:
    """The assistant UI message a stream of UI message chunks builds (strict)."""
    return UIMessageAssembler().feed_all(chunks)


def as_client_builds_it(message: Mapping[str, Any], versions: Mapping[str, str]) -> Message:
    """``message`` (as unbroken assembles it) in the exact shape a client version builds.

    Known differences between client versions, all cosmetic:
    - ai 5.0.0 does not copy the chunk's ``id`` onto a reasoning part (later 5.x do).
    """
    out = copy.deepcopy(dict(message))
    if versions.get("ai") == "5.0.0":
        for part in out["parts"]:
            if part.get("type") == "reasoning":
                part.pop("id", None)
    return out


def text_of(message: Mapping[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part.get("type") == "text")


def part_types(message: Mapping[str, Any]) -> list[str]:
    return [str(part["type"]) for part in message["parts"]]


def without_v4_noise(message: Mapping[str, Any]) -> Message:
    """A v4 ``Message`` without what differs on every run (``createdAt``, ``revisionId``)."""
    out = {key: value for key, value in message.items() if key not in ("createdAt", "revisionId")}
    return copy.deepcopy(out)
