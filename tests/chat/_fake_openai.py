"""A tiny OpenAI-compatible chat completions server (Starlette), for the OpenAI model path.

It streams ``chat.completion.chunk`` SSE like the real API, chosen by the last user message:

- ``tool``: a tool call whose name and arguments arrive split across chunks
- ``fail``: HTTP 400 with an OpenAI-style error body
- ``slow``: 200 one-word deltas, 20 ms apart (long enough to stop)
- anything else: reasoning (``reasoning_content``) then text

Every request body is recorded in ``requests``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REASONING = ["Let me ", "think."]
TEXT = ["Hello", ", ", "world", "!"]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(body)}\n\n"


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[Route("/v1/chat/completions", self.completions, methods=["POST"])]
        )

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        prompt = _last_user_text(body)
        if prompt == "fail":
            return JSONResponse(
                {"error": {"message": "bad request", "type": "invalid_request_error"}},
                status_code=400,
            )
        return StreamingResponse(self._events(prompt), media_type="text/event-stream")

    async def _events(self, prompt: str) -> AsyncIterator[str]:
        yield _chunk({"role": "assistant", "content": ""})
        if prompt == "tool":
            yield _chunk({"content": "Checking."})
            yield _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            )
            for piece in ['{"city": ', '"Paris"}']:
                yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield _chunk({}, "tool_calls")
        elif prompt == "slow":
            for i in range(200):
                await anyio.sleep(0.02)
                yield _chunk({"content": f"w{i} "})
            yield _chunk({}, "stop")
        else:
            for piece in REASONING:
                yield _chunk({"content": None, "reasoning_content": piece})
            for piece in TEXT:
                yield _chunk({"content": piece})
            yield _chunk({}, "stop")
        yield "data: [DONE]\n\n"
