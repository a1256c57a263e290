"""A local model server speaking the providers' real streaming wire formats (raw ASGI).

- ``POST /v1/chat/completions``: OpenAI Chat Completions SSE (``chat.completion.chunk``
  objects, ``data: [DONE]`` last), reasoning in ``reasoning_content``.
- ``POST /v1/responses``: OpenAI Responses API SSE (``event:`` + ``data:`` with a
  ``sequence_number``).
- ``POST /v1/messages``: Anthropic Messages SSE (``message_start``, ``content_block_*``,
  ``message_delta``, ``message_stop``, ``ping``).

What each answers is chosen by the last user message's text:

- ``tool``: text, then a ``get_weather`` call whose arguments arrive in pieces
- ``fail``: an HTTP error before the stream (400; Anthropic: 529 ``overloaded_error``)
- ``broken``: a few deltas, then the provider's in-stream error
- ``slow``: 200 one-word text deltas, 20 ms apart (long enough to stop or cut)
- ``paced``: the usual answer, 15 ms between events (long enough to resume mid-answer)
- anything else: reasoning, then ``Hello, world!``

Each request body is kept in ``requests``; a client that leaves before the end of a stream
is counted in ``disconnects`` and sets ``client_left`` (the server runs in its own thread).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

REASONING = ["Let me ", "think."]
TEXT = ["Hello", ", ", "world", "!"]
TOOL_ARGUMENTS = ['{"city": ', '"Paris"}']


def last_user_text(body: dict[str, Any]) -> str:
    """The last user message's text, from a Chat Completions, Responses or Messages body."""
    items = body.get("messages") or body.get("input") or []
    if isinstance(items, str):
        return items
    for item in reversed(items):
        if item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content or () if b.get("type") in ("text", None)]
        if texts:
            return "".join(texts)
    return ""


class FakeProviders:
    """The server: an ASGI app."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self.client_left = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body or b"{}")
        self.requests.append(request)
        prompt = last_user_text(request)
        path = scope["path"]
        if path == "/v1/chat/completions":
            events = _chat_completions(prompt)
        elif path == "/v1/responses":
            events = _responses(prompt)
        elif path == "/v1/messages":
            events = _messages(prompt)
        else:
            await _json(send, 404, {"error": {"message": "not found", "type": "not_found"}})
            return
        if prompt == "fail":
            if path == "/v1/messages":
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
                await _json(send, 529, error)
            else:
                error = {"error": {"message": "secret detail", "type": "invalid_request_error"}}
                await _json(send, 400, error)
            return
        await self._stream(receive, send, events)

    async def _stream(self, receive: Receive, send: Send, events: AsyncIterator[str]) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        finished = False

        async def watch(scope: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not finished:
                self.disconnects += 1
                self.client_left.set()
                scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            async for frame in events:
                await send(
                    {"type": "http.response.body", "body": frame.encode(), "more_body": True}
                )
            finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _pause(prompt: str) -> float:
    return {"slow": 0.02, "paced": 0.015}.get(prompt, 0.0)


# -- OpenAI Chat Completions -----------------------------------------------------------------------


def _chat_chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(body)}\n\n"


async def _chat_completions(prompt: str) -> AsyncIterator[str]:
    yield _chat_chunk({"role": "assistant", "content": ""})
    if prompt == "tool":
        yield _chat_chunk({"content": "Checking."})
        call = {"index": 0, "id": "call_1", "type": "function"}
        yield _chat_chunk({"tool_calls": [{**call, "function": {"name": "get_weather"}}]})
        for piece in TOOL_ARGUMENTS:
            yield _chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        yield _chat_chunk({}, "tool_calls")
    elif prompt == "broken":
        yield _chat_chunk({"content": "Hel"})
        error = {"message": "secret detail", "type": "server_error", "code": "server_error"}
        yield f"data: {json.dumps({'error': error})}\n\n"
        return
    elif prompt == "slow":
        for i in range(200):
            await anyio.sleep(0.02)
            yield _chat_chunk({"content": f"w{i} "})
        yield _chat_chunk({}, "stop")
    else:
        for piece in REASONING:
            await anyio.sleep(_pause(prompt))
            yield _chat_chunk({"content": None, "reasoning_content": piece})
        for piece in TEXT:
            await anyio.sleep(_pause(prompt))
            yield _chat_chunk({"content": piece})
        yield _chat_chunk({}, "length" if prompt == "long" else "stop")
    # The last chunk carries only the usage, with no choice (as with include_usage).
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    head = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1700000000}
    yield f"data: {json.dumps({**head, 'model': 'fake-model', 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


# -- OpenAI Responses API ------------------------------------------------------------------------


class _Numbered:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, kind: str, **fields: Any) -> str:
        body = {"type": kind, "sequence_number": self.n, **fields}
        self.n += 1
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n"


def _response(status: str, output: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1700000000,
        "model": "fake-model",
        "status": status,
        "output": output,
        "error": None,
        "incomplete_details": None,
        **fields,
    }


async def _responses(prompt: str) -> AsyncIterator[str]:
    event = _Numbered()
    yield event("response.created", response=_response("in_progress", []))
    output: list[dict[str, Any]] = []
    if prompt != "tool" and prompt != "slow":
        reasoning = {"id": "rs_1", "type": "reasoning", "summary": []}
        yield event("response.output_item.added", output_index=0, item=reasoning)
        part = {"type": "summary_text", "text": ""}
        yield event(
            "response.reasoning_summary_part.added",
            item_id="rs_1",
            output_index=0,
            summary_index=0,
            part=part,
        )
        for piece in REASONING:
            await anyio.sleep(_pause(prompt))
            yield event(
                "response.reasoning_summary_text.delta",
                item_id="rs_1",
                output_index=0,
                summary_index=0,
                delta=piece,
            )
        done = {"type": "summary_text", "text": "".join(REASONING)}
        yield event(
            "response.reasoning_summary_text.done",
            item_id="rs_1",
            output_index=0,
            summary_index=0,
            text=done["text"],
        )
        yield event(
            "response.output_item.done",
            output_index=0,
            item={**reasoning, "summary": [done]},
        )
        output.append({**reasoning, "summary": [done]})
    pieces = ["Checking."] if prompt == "tool" else [f"w{i} " for i in range(200)]
    if prompt not in ("tool", "slow"):
        pieces = TEXT[:1] if prompt == "broken" else TEXT
    message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress"}
    index = len(output)
    yield event("response.output_item.added", output_index=index, item={**message, "content": []})
    where = {"item_id": "msg_1", "output_index": index, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    yield event("response.content_part.added", **where, part=part)
    for piece in pieces:
        await anyio.sleep(_pause(prompt))
        yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    if prompt == "broken":
        failed = _response("failed", output, error={"code": "server_error", "message": "secret"})
        yield event("response.failed", response=failed)
        return
    text = "".join(pieces)
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part={**part, "text": text})
    finished_message = {
        **message,
        "status": "completed",
        "content": [{**part, "text": text}],
    }
    yield event("response.output_item.done", output_index=index, item=finished_message)
    output.append(finished_message)
    if prompt == "tool":
        call = {
            "id": "fc_1",
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": "",
            "status": "in_progress",
        }
        index = len(output)
        yield event("response.output_item.added", output_index=index, item=call)
        for piece in TOOL_ARGUMENTS:
            yield event(
                "response.function_call_arguments.delta",
                item_id="fc_1",
                output_index=index,
                delta=piece,
            )
        arguments = "".join(TOOL_ARGUMENTS)
        yield event(
            "response.function_call_arguments.done",
            item_id="fc_1",
            output_index=index,
            arguments=arguments,
        )
        finished_call = {**call, "arguments": arguments, "status": "completed"}
        yield event("response.output_item.done", output_index=index, item=finished_call)
        output.append(finished_call)
    yield event("response.completed", response=_response("completed", output))


# -- Anthropic Messages ----------------------------------------------------------------------------


def _sse(kind: str, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n"


async def _messages(prompt: str) -> AsyncIterator[str]:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
    yield _sse("message_start", message=message)
    yield _sse("ping")
    index = 0
    if prompt not in ("tool", "slow", "broken"):
        block = {"type": "thinking", "thinking": "", "signature": ""}
        yield _sse("content_block_start", index=index, content_block=block)
        for piece in REASONING:
            await anyio.sleep(_pause(prompt))
            delta = {"type": "thinking_delta", "thinking": piece}
            yield _sse("content_block_delta", index=index, delta=delta)
        delta = {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}
        yield _sse("content_block_delta", index=index, delta=delta)
        yield _sse("content_block_stop", index=index)
        index += 1
    pieces = {"tool": ["Checking."], "slow": [f"w{i} " for i in range(200)]}.get(prompt, TEXT)
    yield _sse("content_block_start", index=index, content_block={"type": "text", "text": ""})
    for piece in pieces[:1] if prompt == "broken" else pieces:
        await anyio.sleep(_pause(prompt))
        yield _sse("content_block_delta", index=index, delta={"type": "text_delta", "text": piece})
    if prompt == "broken":
        error = {"type": "overloaded_error", "message": "secret detail"}
        yield _sse("error", error=error)
        return
    yield _sse("content_block_stop", index=index)
    stop_reason = "end_turn"
    if prompt == "tool":
        index += 1
        block = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
        yield _sse("content_block_start", index=index, content_block=block)
        for piece in ["", *TOOL_ARGUMENTS]:
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield _sse("content_block_delta", index=index, delta=delta)
        yield _sse("content_block_stop", index=index)
        stop_reason = "tool_use"
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    yield _sse("message_delta", delta=delta, usage={"output_tokens": 12})
    yield _sse("message_stop")
