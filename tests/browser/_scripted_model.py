"""An OpenAI-compatible chat completions server with scripted answers, for page tests that
need answers the demo model does not give: a table, several code blocks, a failure.

By the last user message:

- containing ``table``: `TABLE_ANSWER` (a table and a Python and a shell block);
- containing ``flaky``: the first such request fails (HTTP 400), later ones answer;
- anything else: ``Hello!``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TABLE_ANSWER = """Here are the backends:

| backend | processes | survives a restart |
|:--------|:---------:|-------------------:|
| memory  | one       | no                 |
| Redis   | many      | **yes**            |

```python
def resume(engine, stream_id: str, after: int = -1) -> None:
    # read what was missed, then live
    return engine.read(stream_id, after=after + 42)
```

```bash
curl -N "$URL/api/chat/c1/stream?after=20"  # resume
```
"""


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(body)}\n\n"


class ScriptedModel:
    def __init__(self) -> None:
        self.failed_once = False
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.answer, methods=["POST"])])

    async def answer(self, request: Request) -> Response:
        body = await request.json()
        prompt = ""
        for message in reversed(body.get("messages", [])):
            if message.get("role") == "user":
                prompt = str(message.get("content", ""))
                break
        if "flaky" in prompt and not self.failed_once:
            self.failed_once = True
            return JSONResponse(
                {"error": {"message": "overloaded", "type": "invalid_request_error"}},
                status_code=400,
            )
        text = TABLE_ANSWER if "table" in prompt else "Hello!"
        return StreamingResponse(self._events(text), media_type="text/event-stream")

    async def _events(self, text: str) -> AsyncIterator[str]:
        yield _chunk({"role": "assistant", "content": ""})
        for line in text.splitlines(keepends=True):
            yield _chunk({"content": line})
        yield _chunk({}, "stop")
        yield "data: [DONE]\n\n"
