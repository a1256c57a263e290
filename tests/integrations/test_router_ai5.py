"""The real ``ai@5`` client (``DefaultChatTransport`` + ``readUIMessageStream``, from
tests/conformance/ai5) against the drop-in router: a POST, a reconnect started mid-answer
that replays the identical message, and nothing to resume once it ended."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance._node import NodeToolchain
from tests.integrations._app import TEXT, create_app
from tests.integrations.conftest import serve
from unbroken import MemoryBackend

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    # No finished answer is offered to a resume (resume_window=0): the script expects a 204
    # as soon as the answer ended.
    with serve(create_app(MemoryBackend(), delay=0.015, resume_window=0)) as base:
        yield base


def test_ai5_transport_resumes_against_the_router(node_toolchain: NodeToolchain, url: str) -> None:
    clients = node_toolchain.install(["ai5"])["ai5"]
    user = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "a tool please"}]}
    result = node_toolchain.run(
        "transport.mjs",
        clients,
        {"api": f"{url}/api/chat", "chatId": "router-ai5", "userMessage": user},
    )
    post, resume = result["post"], result["resume"]
    assert post["errors"] == [] and resume["errors"] == []
    message = post["message"]
    assert message["id"] == post["chunks"][0]["messageId"]
    tool, text = message["parts"][-2:]
    assert tool["type"] == "tool-lookup" and tool["state"] == "output-available"
    assert text == {"type": "text", "text": TEXT, "state": "done"}
    assert resume["stream"] == "replayed"
    assert 1 <= resume["chunksBeforeReconnect"] < len(post["chunks"])
    assert resume["message"] == message
    assert result["afterEnd"] == ["null"]
