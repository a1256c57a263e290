"""The ``demo`` model: offline, deterministic, paced like a real one.

The answer is derived from the last user message alone (same prompt, same answer, on every
machine), runs to several hundred tokens with paragraphs, a list and a fenced code block,
and is preceded by a short reasoning part, so a page refresh mid-answer, a stop button and
every kind of part can be tried without an API key. Tokens are emitted at
``tokens_per_second`` on a fixed schedule (no drift, whatever the event loop's latency).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio

from unbroken._asyncio import on_asyncio
from unbroken.chat.models.base import Finish, ModelEvent, ReasoningDelta, TextDelta, message_text

__all__ = ["DemoModel", "compose", "tokenize"]

_TOKEN = re.compile(r"\s*\S+|\s+")

_POINTS = (
    "**Generation outlives the request.** The answer is produced by a task the server owns, "
    "so closing the tab never stops it; only the stop button does.",
    "**Every chunk has a sequence number.** A client that comes back says where it was, and "
    "gets exactly what it missed: nothing lost, nothing doubled.",
    "**Every stream ends.** If the process producing it dies, its lease expires within "
    "seconds and readers see the stream as interrupted, with the partial answer intact.",
    "**One producer per stream.** The stream id is claimed atomically, so two workers can "
    "never generate the same answer twice.",
    "**Stop is not disconnect.** An explicit stop cancels the generation wherever it runs, "
    "within milliseconds, and the partial answer is saved as stopped.",
    "**Bounded memory.** Slow readers are told they fell behind and resume from the log "
    "instead of growing a buffer without limit.",
    "**Redis when you scale.** With one process everything lives in memory; with several, "
    "Redis holds the chunk log and any worker can serve any resume.",
    "**The AI SDK clients work unchanged.** Version 4 speaks the data stream protocol, "
    "versions 5 and later the UI message stream, and both resume.",
)

_OPENINGS = (
    "Here is a thorough answer about {topic}.",
    "Let me walk through {topic} step by step.",
    "Good question: {topic}. Here is how I would think about it.",
    "You asked about {topic}; this is a long answer on purpose.",
)


def _topic(prompt: str) -> str:
    words = " ".join(prompt.split())
    if not words:
        return "your message"
    return f"“{words[:77]}…”" if len(words) > 80 else f"“{words}”"


def compose(prompt: str) -> tuple[str, str]:
    """The reasoning and the answer for ``prompt`` (pure: same prompt, same result)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    topic = _topic(prompt)
    opening = _OPENINGS[digest[0] % len(_OPENINGS)].format(topic=topic)
    start = digest[1] % len(_POINTS)
    points = [_POINTS[(start + i) % len(_POINTS)] for i in range(5)]
    number = int.from_bytes(digest[2:4], "big") % 900 + 100
    reasoning = (
        f"The user wrote {topic}. I am the offline demo model, so I will not look anything "
        "up; I will answer with a long, structured reply (paragraphs, a list and a code "
        "block) that takes long enough to stream for a refresh in the middle to be "
        "interesting."
    )
    list_block = "\n".join(f"{i}. {point}" for i, point in enumerate(points, 1))
    answer = f"""{opening} This reply comes from the demo model of the unbroken reference chat \
service: it is generated offline, deterministically, and paced like a real language model, so \
you can refresh the page in the middle of it and watch the answer continue exactly where it \
left off.

While you read this, the server is streaming the answer one token at a time. Each piece is \
appended to a durable log before it reaches you, which is what makes the stream resumable: \
the browser can lose its connection at any moment, and when it comes back it asks for \
everything after the last piece it saw.

The ideas that make this work:

{list_block}

A client that resumes only needs to remember how far it got. In Python, reading a stream \
from where you left off looks like this:

```python
async def follow(engine, stream_id: str, after: int = -1) -> str:
    # Catch up from the log, then continue live, with no gap and no duplicate.
    text = []
    async for item in engine.read(stream_id, after=after):
        if isinstance(item, Chunk):
            text.append(item.data)
    return "".join(text)  # demo answer #{number}
```

Try it now: reload this page while the answer is still arriving, open the same chat in a \
second tab, or press stop halfway through. In every case the answer you end up with is the \
one the server produced, shown once, in order. That is the whole point of unbroken: the \
stream survives whatever happens between the model and your screen."""
    return reasoning, answer


def tokenize(text: str) -> list[str]:
    """Word-sized tokens whose concatenation is exactly ``text``."""
    return _TOKEN.findall(text)


class DemoModel:
    """The offline demo model (see the module docstring)."""

    def __init__(self, *, tokens_per_second: float = 20.0) -> None:
        if tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be positive")
        self.tokens_per_second = tokens_per_second

    @property
    def name(self) -> str:
        return "demo"

    async def stream(self, messages: Sequence[dict[str, Any]]) -> AsyncIterator[ModelEvent]:
        prompt = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
        reasoning, answer = compose(prompt)
        interval = 1.0 / self.tokens_per_second
        # Chosen once per answer: anyio.sleep looks the async library up on every call,
        # which cost more than the rest of a token.
        sleep = asyncio.sleep if on_asyncio() else anyio.sleep
        # time.monotonic, not anyio.current_time: that looks the async library up on every
        # call, which cost more than the rest of a token.
        started = time.monotonic()
        index = 0
        for kind, text in ((ReasoningDelta, reasoning), (TextDelta, answer)):
            for token in tokenize(text):
                # A fixed schedule: sleeping "interval" each time would drift with latency.
                index += 1
                delay = started + index * interval - time.monotonic()
                if delay > 0:
                    await sleep(delay)
                else:
                    await anyio.lowlevel.checkpoint()
                yield kind(token)
        yield Finish("stop")

    async def aclose(self) -> None:
        return None
