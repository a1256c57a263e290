"""How ended answers look in the store and in the log: a stopped answer's parts are final,
an answer that runs too long is ended with its text kept, and a model that cannot be reached
costs one log line, not a traceback."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable

import anyio
import pytest

from tests.chat._client import new_client, post_v5, v5_body
from tests.chat.conftest import Server
from tests.chat.test_resume import settled_chat

pytestmark = pytest.mark.anyio


@pytest.fixture
def chat_config() -> str:
    return "memory-sqlite"


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_stopped_answer_is_stored_in_its_final_state(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(demo_tokens_per_second=100)
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        got = await post_v5(client, v5_body(chat_id, "m1", "stop me"), stop_after=12)
        assert "reasoning-delta" in got.types()
        assert (await client.post(f"/api/chat/{chat_id}/stop")).json()["stopped"] is True
        stored = (await client.get(f"/api/chats/{chat_id}")).json()["messages"][-1]
    assert stored["status"] == "stopped" and stored["parts"]
    assert all(part.get("state") != "streaming" for part in stored["parts"]), stored["parts"]


async def test_an_answer_that_runs_too_long_is_ended_with_its_text(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(demo_tokens_per_second=20, max_answer_seconds=0.6)
    async with new_client(server.url) as client:
        chat_id = uuid.uuid4().hex
        with anyio.fail_after(10):
            got = await post_v5(client, v5_body(chat_id, "m1", "a long answer please"))
        assert got.types()[-1] == "error"
        assert got.events[-1]["errorText"] == (
            "the answer took longer than 0.6 s and was ended there"
        )
        chat = await settled_chat(client, chat_id)
    stored = chat["messages"][-1]
    assert stored["status"] == "error" and "longer than 0.6 s" in stored["error"]
    for kind in ("reasoning", "text"):  # what the reader saw is what is kept
        kept = "".join(part.get("text", "") for part in stored["parts"] if part["type"] == kind)
        assert kept == got.text(kind), kind
    assert got.text("reasoning") or got.text()
    assert all(part.get("state") != "streaming" for part in stored["parts"]), stored["parts"]


async def test_an_unreachable_model_logs_one_line(
    start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(model="gpt-test", openai_base_url=f"http://127.0.0.1:{closed_port()}/v1")
    caplog.set_level(logging.DEBUG, logger="unbroken")
    caplog.clear()  # (the start-up lines)
    async with new_client(server.url) as client:
        got = await post_v5(client, v5_body(uuid.uuid4().hex, "m1", "hello?"))
    assert got.types()[-1] == "error"
    shown = [
        record
        for record in caplog.records
        if record.name.startswith("unbroken") and record.levelno >= logging.WARNING
    ]
    assert len(shown) == 1, [record.getMessage() for record in shown]
    assert "could not be reached" in shown[0].getMessage()
    assert shown[0].exc_info is None
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert debug, "the traceback is kept for DEBUG"
