"""A Python client speaking the AI SDK wire formats, for the chat service's tests.

It reads exactly what ``useChat`` reads: v5+ UI message stream SSE (``id:``/``data:`` lines,
``[DONE]``) and v4 data stream lines (``CODE:JSON``), and can hang up at any point, as a
refreshed page does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import httpx

from tests._util import SseParser
from unbroken.chat.models.demo import compose

_LINES: WeakKeyDictionary[httpx.Response, AsyncIterator[str]] = WeakKeyDictionary()


def _lines(response: httpx.Response) -> AsyncIterator[str]:
    """One line iterator per response, so a test can read some, act, then read on."""
    if response not in _LINES:
        _LINES[response] = response.aiter_lines()
    return _LINES[response]


def expected_answer(prompt: str) -> tuple[str, str]:
    """(reasoning, text) the demo model answers ``prompt`` with."""
    return compose(prompt)


def v5_body(chat_id: str, message_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": chat_id,
        "trigger": "submit-message",
        "messages": [{"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}],
        **extra,
    }


def v4_body(chat_id: str, message_id: str, text: str) -> dict[str, Any]:
    return {
        "id": chat_id,
        "messages": [
            {
                "id": message_id,
                "role": "user",
                "content": text,
                "parts": [{"type": "text", "text": text}],
            }
        ],
    }


@dataclass
class V5Read:
    """What a v5 client got from one response."""

    status: int
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int | None] = field(default_factory=list)
    done: bool = False  # saw data: [DONE]

    @property
    def last_id(self) -> int | None:
        known = [i for i in self.ids if i is not None]
        return known[-1] if known else None

    def text(self, kind: str = "text") -> str:
        return "".join(e["delta"] for e in self.events if e["type"] == f"{kind}-delta")

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    @property
    def message_id(self) -> str | None:
        for event in self.events:
            if event["type"] == "start":
                return str(event.get("messageId"))
        return None


async def read_v5(response: httpx.Response, *, stop_after: int | None = None) -> V5Read:
    """Parse SSE events; with ``stop_after``, hang up after that many events."""
    result = V5Read(response.status_code)
    if response.status_code != 200:
        await response.aread()
        return result
    parser = SseParser()
    async for line in _lines(response):
        event = parser.feed(line)
        if event is None:
            continue
        if event.data == "[DONE]":
            result.done = True
            break
        result.events.append(json.loads(event.data))
        result.ids.append(event.id)
        if stop_after is not None and len(result.events) >= stop_after:
            break
    return result


@dataclass
class V4Read:
    status: int
    lines: list[tuple[str, Any]] = field(default_factory=list)
    raw: str = ""

    def text(self) -> str:
        return "".join(value for code, value in self.lines if code == "0")

    def reasoning(self) -> str:
        return "".join(value for code, value in self.lines if code == "g")

    def codes(self) -> list[str]:
        return [code for code, _ in self.lines]


async def read_v4(response: httpx.Response, *, stop_after: int | None = None) -> V4Read:
    """Parse data stream lines exactly as the v4 client does (an unknown code fails)."""
    result = V4Read(response.status_code)
    if response.status_code != 200:
        await response.aread()
        return result
    async for line in _lines(response):
        result.raw += line + "\n"
        if not line:
            continue
        code, sep, payload = line.partition(":")
        assert sep, f"malformed data stream line {line!r}"
        assert code in set("0239abcdefghijk"), f"unknown data stream code {code!r}"
        result.lines.append((code, json.loads(payload)))
        if stop_after is not None and len(result.lines) >= stop_after:
            break
    return result


async def post_v5(
    client: httpx.AsyncClient, body: dict[str, Any], *, stop_after: int | None = None
) -> V5Read:
    async with client.stream("POST", "/api/chat", json=body) as response:
        return await read_v5(response, stop_after=stop_after)


async def resume_v5(
    client: httpx.AsyncClient,
    chat_id: str,
    *,
    last_event_id: int | None = None,
    after: int | None = None,
    stop_after: int | None = None,
) -> V5Read:
    """GET the v5 resume route; ``last_event_id`` as the header (EventSource style),
    ``after`` as the query parameter (what the web page sends)."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    params = {} if after is None else {"after": str(after)}
    async with client.stream(
        "GET", f"/api/chat/{chat_id}/stream", headers=headers, params=params
    ) as response:
        return await read_v5(response, stop_after=stop_after)


async def post_v4(
    client: httpx.AsyncClient, body: dict[str, Any], *, stop_after: int | None = None
) -> V4Read:
    async with client.stream("POST", "/api/chat", json=body) as response:
        return await read_v4(response, stop_after=stop_after)


async def resume_v4(
    client: httpx.AsyncClient, chat_id: str, *, stop_after: int | None = None
) -> V4Read:
    async with client.stream("GET", "/api/chat", params={"chatId": chat_id}) as response:
        return await read_v4(response, stop_after=stop_after)


def new_client(base_url: str, **kwargs: Any) -> httpx.AsyncClient:
    """A client with its own cookie jar: a browser profile of its own (its own guest)."""
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(20.0), **kwargs)
