"""``examples/openai_app.py`` and ``examples/anthropic_app.py``, started as documented
(``uvicorn examples.<name>:app``) against the local provider server, answer the real
``ai@5`` client: a resume mid-answer builds the same message (same id), a cut then
``resumeStream()`` ends with one complete message, and a stop closes the provider request."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests._services import uvicorn_process
from tests.conformance._node import NodeToolchain, NodeUnavailable, find_toolchain
from tests.integrations._fake_providers import FakeProviders
from tests.integrations.conftest import serve

REPO = Path(__file__).resolve().parents[2]

EXAMPLES = {
    # example module -> the environment that points its SDK at the local server
    "openai_app": lambda url: {"OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": "sk-test"},
    "anthropic_app": lambda url: {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-test"},
}

pytestmark = [pytest.mark.node, pytest.mark.slow]


@pytest.fixture(scope="module")
def node() -> tuple[NodeToolchain, Path]:
    try:
        toolchain = find_toolchain()
    except NodeUnavailable as exc:
        pytest.skip(str(exc))
    return toolchain, toolchain.install(["ai5", "ai7"])["ai5"]


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[FakeProviders, str]]:
    fake = FakeProviders()
    with serve(fake) as url:
        yield fake, url


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def example(request: pytest.FixtureRequest, provider: tuple[FakeProviders, str]) -> Iterator[str]:
    """The example app as its own ``uvicorn examples.<name>:app`` process; yields its URL."""
    env = {**EXAMPLES[request.param](provider[1]), "UNBROKEN_EXAMPLE_MODEL": "fake-model"}
    with uvicorn_process(f"examples.{request.param}:app", {**env, "REDIS_URL": ""}) as (url, _):
        yield url


def _user(text: str) -> dict[str, Any]:
    return {
        "id": f"u-{uuid.uuid4().hex[:8]}",
        "role": "user",
        "parts": [{"type": "text", "text": text}],
    }


def _shown(message: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["type"], p.get("text", "")) for p in message["parts"] if p["type"] != "step-start"]


ANSWER = [("reasoning", "Let me think."), ("text", "Hello, world!")]


def test_the_ai5_client_resumes_an_answer_of_the_example(
    example: str, node: tuple[NodeToolchain, Path]
) -> None:
    toolchain, clients = node
    api = f"{example}/api/chat"
    replay = toolchain.run(
        "transport.mjs",
        clients,
        {"api": api, "chatId": uuid.uuid4().hex, "userMessage": _user("paced")},
    )
    post, resume = replay["post"]["message"], replay["resume"]["message"]
    assert _shown(post) == ANSWER
    assert replay["resume"]["chunksBeforeReconnect"] < len(replay["post"]["chunks"])  # mid-answer
    assert resume == post  # same message id, same parts
    assert replay["resume"]["stream"] == "replayed"
    # ai 7's transport builds the same message
    latest = toolchain.run(
        "transport.mjs",
        clients.parent / "ai7",
        {"api": api, "chatId": uuid.uuid4().hex, "userMessage": _user("paced")},
    )
    assert _shown(latest["resume"]["message"]) == _shown(latest["post"]["message"]) == ANSWER
    assert latest["resume"]["message"]["id"] == latest["post"]["message"]["id"]

    cut = toolchain.run(
        "chat.mjs",
        clients,
        {"api": api, "chats": {"cutAbort": uuid.uuid4().hex}, "userText": "paced"},
    )["cutAbort"]
    assert cut["cutCount"] >= 1 and cut["error"] is None
    assert [m["role"] for m in cut["messages"]] == ["user", "assistant"]
    assert _shown(cut["partial"]) != ANSWER  # cut mid-answer
    assert _shown(cut["messages"][-1]) == ANSWER
    assert cut["messages"][-1]["id"] == cut["partial"]["id"]


@pytest.mark.anyio
async def test_a_stop_reaches_the_provider(
    example: str, provider: tuple[FakeProviders, str]
) -> None:
    fake = provider[0]
    fake.client_left.clear()
    chat_id = uuid.uuid4().hex
    body = {"id": chat_id, "messages": [_user("slow")], "trigger": "submit-message"}
    async with httpx.AsyncClient(base_url=example, timeout=10) as client:
        async with client.stream("POST", "/api/chat", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if '"text-delta"' in line:
                    break
            stop = await client.post(f"/api/chat/{chat_id}/stop")
            assert stop.json()["stopped"] is True
        assert await anyio.to_thread.run_sync(fake.client_left.wait, 5)
