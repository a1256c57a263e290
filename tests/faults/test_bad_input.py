"""Bad input at the HTTP API of a real ``unbroken chat`` process: oversized bodies, invalid
ids, path tricks (``..``, encoded slashes, NUL), unknown and other users' chats, forged and
expired cookies, bad API keys, malformed JSON and resume positions.

Every one gets the right 4xx with the JSON error body ``{"error": {"code", "message"}}``,
never a 5xx, never a traceback, never a file from outside the static directory. Requests
are sent as raw bytes, so paths reach the server exactly as written (an HTTP client would
normalise ``..`` away).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from tests._util import uid
from tests.chat._client import v5_body
from tests.faults._harness import (
    SECRET,
    V5Transcript,
    check_error_body,
    check_v5_transcript,
    post_v5_into,
    raw_http,
)
from tests.faults.conftest import MAX_BODY, ApiServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60), pytest.mark.redis, pytest.mark.postgres]

SESSION_SALT = "unbroken.chat.session"  # unbroken.chat.auth.Sessions
COOKIE = "unbroken_session"


def raw(
    method: str,
    target: str,
    body: bytes = b"",
    headers: tuple[str, ...] = (),
    chunked: bool = False,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(
            f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            for piece in (body[i : i + 1000] for i in range(0, len(body), 1000))
        )
        payload += b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def chat_body(**changes: Any) -> bytes:
    body = v5_body(uid(), uid("m"), "hello")
    body.update(changes)
    return json.dumps(body).encode()


def message_body(text: str) -> bytes:
    """A v5 body whose user text is ``text`` (JSON-escaped, so NUL and lone surrogates
    travel as ``\\u0000`` / ``\\ud800`` exactly as a browser's JSON.stringify sends them)."""
    return json.dumps(v5_body(uid(), uid("m"), text)).encode()


def nested(depth: int) -> bytes:
    return (
        b'{"id":"'
        + uid().encode()
        + b'","trigger":"submit-message","messages":'
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


LONG = "x" * 300
PATH_TRICKS = [
    # (method, raw target, expected status)
    ("GET", "/api/chats/..%2F..%2Fetc%2Fpasswd", 404),
    ("GET", "/api/chats/%2e%2e", 404),
    ("GET", "/api/chats/../chats", 404),
    ("GET", "/api/chats/.", 404),
    ("GET", "/api/chats/abc%00def", 404),
    ("GET", "/api/chats/%ff%fe", 404),
    ("GET", "/api/chats/%F0%9F%98%80", 404),
    ("GET", f"/api/chats/{LONG}", 404),
    ("DELETE", "/api/chats/%2e%2e%2f", 404),
    ("GET", "/api/chat/..%2F..%2Fchats/stream", 404),
    ("GET", "/api/chat/%2e%2e/stream", 404),
    ("GET", "/api/chat/a%2Fb/stream", 404),
    ("POST", "/api/chat/%2e%2e/stop", 404),
    ("POST", f"/api/chat/{LONG}/stop", 404),
    ("GET", "/api/chat?chatId=..%2Fx", 400),
    ("GET", "/api/chat?chatId=%00", 400),
    ("GET", f"/api/chat?chatId={LONG}", 400),
    ("GET", "/api/chat?chatId=", 400),
    ("GET", "/api/chat", 400),
    ("GET", "/static/../pyproject.toml", 404),
    ("GET", "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/pyproject.toml", 404),
    ("GET", "/static/..%2f..%2f..%2f..%2fpyproject.toml", 404),
    ("GET", "/static/%2e%2e%2fsettings.py", 404),
    ("GET", "/static/..%5c..%5csettings.py", 404),
    ("GET", "/static/%00", 404),
    ("GET", "/nope/../api/chats", 404),
    ("PUT", "/api/chat", 405),
    ("PUT", f"/api/chats/{uid()}", 405),
    ("PATCH", f"/api/chats/{uid()}", 400),  # a rename needs a body
]


@pytest.mark.parametrize(("method", "target", "status"), PATH_TRICKS)
async def test_path_tricks_and_invalid_ids(
    api_server: ApiServer, method: str, target: str, status: int
) -> None:
    response = await raw_http(api_server.port, raw(method, target))
    if response.status == 307:
        # Starlette's trailing-slash redirect: to the same path without the slash, on this
        # server (never elsewhere); following it gives the expected error.
        location = response.headers["location"]
        assert location == f"http://127.0.0.1{unquote(target).rstrip('/')}", location
        response = await raw_http(
            api_server.port, raw(method, location.removeprefix("http://127.0.0.1"))
        )
    check_error_body(response.status, response.body, expected=status)
    assert b"[project]" not in response.body and b"SECRET" not in response.body


UNKNOWN = [
    ("GET", "/api/chats/{}"),
    ("DELETE", "/api/chats/{}"),
    ("GET", "/api/chat/{}/stream"),
    ("POST", "/api/chat/{}/stop"),
    ("GET", "/api/chat?chatId={}"),
]


async def test_unknown_chats_are_404_everywhere(api_server: ApiServer) -> None:
    headers = (f"Authorization: Bearer {api_server.api_key}",)
    for method, path in UNKNOWN:
        response = await raw_http(api_server.port, raw(method, path.format(uid()), b"", headers))
        error = check_error_body(response.status, response.body, expected=404)
        assert error["code"] == "not_found", (method, path, error)


BAD_BODIES = [
    ("not json", b"{", 400),
    ("empty", b"", 400),
    ("array", b"[]", 400),
    ("string", b'"hi"', 400),
    ("not utf-8", b"\xff\xfe\x00{", 400),
    ("id not a string", chat_body(id=5), 400),
    ("id with a slash", chat_body(id="../etc/passwd"), 400),
    ("id too long", chat_body(id="c" * 129), 400),
    ("id with a NUL", chat_body(id="c\x00d"), 400),
    ("messages not a list", chat_body(messages="x"), 400),
    ("message id invalid", chat_body(messages=[{"id": "a b", "role": "user", "parts": []}]), 400),
    ("message role invalid", chat_body(messages=[{"id": "m", "role": "root", "parts": []}]), 400),
    ("parts not a list", chat_body(messages=[{"id": "m", "role": "user", "parts": 3}]), 400),
    ("trigger invalid", chat_body(trigger="rm -rf"), 400),
    ("messageId invalid", chat_body(messageId="../x"), 400),
    ("no user message", chat_body(messages=[]), 400),
    ("a 5000-digit number", b'{"id": ' + b"1" * 5000 + b"}", 400),
    ("JSON nested 5000 deep", nested(5000), 400),
]


@pytest.mark.parametrize(("case", "body", "status"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_malformed_chat_requests(
    api_server: ApiServer, case: str, body: bytes, status: int
) -> None:
    headers = (f"Authorization: Bearer {api_server.api_key}", "Content-Type: application/json")
    response = await raw_http(api_server.port, raw("POST", "/api/chat", body, headers))
    check_error_body(response.status, response.body, expected=status)


@pytest.mark.parametrize(
    "text", ["nul \x00 inside", "lone surrogate \ud800 inside", "bidi \u202e and \ufeff bom"]
)
async def test_odd_but_valid_json_text_is_never_a_server_error(
    api_server: ApiServer, text: str
) -> None:
    """JSON may carry characters PostgreSQL text and JSONB cannot hold (NUL, lone
    surrogates). The service must answer them (after cleaning) or refuse them with a 400,
    not fail with a 500."""
    headers = (f"Authorization: Bearer {api_server.api_key}", "Content-Type: application/json")
    response = await raw_http(
        api_server.port, raw("POST", "/api/chat", message_body(text), headers)
    )
    if response.status == 200:
        assert response.body.rstrip().endswith(b"data: [DONE]"), response.body[-200:]
    else:
        check_error_body(response.status, response.body, expected={400, 422})


async def test_oversized_bodies_are_413(api_server: ApiServer) -> None:
    headers = (f"Authorization: Bearer {api_server.api_key}", "Content-Type: application/json")
    too_big = message_body("x" * MAX_BODY)
    for chunked in (False, True):
        response = await raw_http(
            api_server.port, raw("POST", "/api/chat", too_big, headers, chunked=chunked)
        )
        error = check_error_body(response.status, response.body, expected=413)
        assert error["code"] == "payload_too_large"
    response = await raw_http(
        api_server.port, raw("POST", f"/api/chat/{uid()}/stop", b"[" + b" " * MAX_BODY + b"]")
    )
    check_error_body(response.status, response.body, expected=413)
    # Just under the limit is fine: the answer streams.
    fits = message_body("y" * (MAX_BODY - 400))
    assert len(fits) < MAX_BODY
    response = await raw_http(api_server.port, raw("POST", "/api/chat", fits, headers))
    assert response.status == 200, response.body[:300]


@pytest.mark.parametrize("position", ["abc", "-2", "1" * 19, "1.5", "0x10", "3 4"])
async def test_bad_resume_positions_are_400(api_server: ApiServer, position: str) -> None:
    async with httpx.AsyncClient(
        base_url=api_server.url, headers={"Authorization": f"Bearer {api_server.api_key}"}
    ) as client:
        chat_id = uid()
        transcript = V5Transcript()
        await post_v5_into(client, api_server.url, v5_body(chat_id, uid("m"), "x"), transcript)
        for request in (
            client.build_request(
                "GET", f"/api/chat/{chat_id}/stream", headers={"Last-Event-ID": position}
            ),
            client.build_request("GET", f"/api/chat/{chat_id}/stream", params={"after": position}),
        ):
            response = await client.send(request)
            check_error_body(response.status_code, response.content, expected=400)


async def test_bad_stop_bodies_are_400(api_server: ApiServer) -> None:
    async with httpx.AsyncClient(
        base_url=api_server.url, headers={"Authorization": f"Bearer {api_server.api_key}"}
    ) as client:
        chat_id = uid()
        await post_v5_into(client, api_server.url, v5_body(chat_id, uid("m"), "x"), V5Transcript())
        for body in (b"{", b"[1]", b'"x"', b"\xff", nested(5000)):
            response = await client.post(f"/api/chat/{chat_id}/stop", content=body)
            check_error_body(response.status_code, response.content, expected=400)


# -- identity --------------------------------------------------------------------------


def browser(api_server: ApiServer, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api_server.url, timeout=30, **kwargs)


async def owner_and_chat(api_server: ApiServer, owner: httpx.AsyncClient) -> tuple[str, str]:
    """A finished answer in a new chat of ``owner`` (a cookie session): (chat id, user id)."""
    chat_id = uid()
    transcript = V5Transcript()
    await post_v5_into(owner, api_server.url, v5_body(chat_id, uid("m"), "mine"), transcript)
    check_v5_transcript(transcript, *_answer("mine"), complete=True)
    user_id = URLSafeTimedSerializer(SECRET, salt=SESSION_SALT).loads(owner.cookies[COOKIE])["uid"]
    return chat_id, user_id


def _answer(prompt: str) -> tuple[str, str]:
    from tests.chat._client import expected_answer

    return expected_answer(prompt)


class _LongAgo(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 401 * 24 * 3600  # past the 400-day cookie lifetime


async def test_forged_expired_and_garbage_cookies_never_reach_the_owners_chat(
    api_server: ApiServer,
) -> None:
    async with browser(api_server) as owner:
        chat_id, user_id = await owner_and_chat(api_server, owner)
        assert (await owner.get(f"/api/chats/{chat_id}")).status_code == 200
        good = owner.cookies[COOKIE]
        forged = {
            "wrong secret": URLSafeTimedSerializer(
                "another-secret-0123456789", salt=SESSION_SALT
            ).dumps({"uid": user_id}),
            "wrong salt": URLSafeTimedSerializer(SECRET, salt="other").dumps({"uid": user_id}),
            "expired": URLSafeTimedSerializer(SECRET, salt=SESSION_SALT, signer=_LongAgo).dumps(
                {"uid": user_id}
            ),
            "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
            "payload swapped": good.split(".", 1)[1],
            "garbage": "%%%not-a-cookie%%%",
            "huge": "A" * 4000,
            "uid not a string": URLSafeTimedSerializer(SECRET, salt=SESSION_SALT).dumps(
                {"uid": [user_id]}
            ),
        }
        for name, value in forged.items():
            async with browser(api_server, cookies={COOKIE: value}) as intruder:
                for method, path in UNKNOWN:
                    response = await intruder.request(method, path.format(chat_id))
                    check_error_body(response.status_code, response.content, expected=404)
                    assert response.cookies.get(COOKIE) != value, name
                # And the forged identity does not list the owner's chats either.
                listed = await intruder.get("/api/chats")
                assert listed.status_code == 200, name
                assert listed.json() == {"chats": [], "nextCursor": None}, name
                hijack = await intruder.post("/api/chat", json=v5_body(chat_id, uid("m"), "hijack"))
                check_error_body(hijack.status_code, hijack.content, expected=404)
        # The owner's chat is untouched.
        chat = (await owner.get(f"/api/chats/{chat_id}")).json()
        assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]


async def test_bad_api_keys_are_401_and_other_users_chats_404(api_server: ApiServer) -> None:
    async with browser(api_server) as owner:
        chat_id, _ = await owner_and_chat(api_server, owner)
        bad = {
            "unknown key": "Bearer ubk_" + "x" * 40,
            "empty": "Bearer ",
            "scheme only": "Bearer",
            "basic": "Basic dXNlcjpwYXNz",
            "too long": "Bearer " + "k" * 300,
            "two keys": f"Bearer {api_server.api_key} {api_server.api_key}",
        }
        for name, value in bad.items():
            request = raw("GET", "/api/chats", headers=(f"Authorization: {value}",))
            response = await raw_http(api_server.port, request)
            error = check_error_body(response.status, response.body, expected=401)
            assert error["code"] == "unauthorized", name
            assert response.headers.get("www-authenticate") == "Bearer", name
        # A valid key of another user: the owner's chat is like a missing one.
        key_headers = {"Authorization": f"Bearer {api_server.api_key}"}
        for method, path in UNKNOWN:
            mine = await owner.request(method, path.format(chat_id), headers=key_headers)
            missing = await owner.request(method, path.format(uid()), headers=key_headers)
            assert mine.status_code == missing.status_code == 404, (method, path)
            assert mine.json() == missing.json()


async def test_cross_origin_posts_with_a_cookie_are_403(api_server: ApiServer) -> None:
    async with browser(api_server) as owner:
        chat_id, _ = await owner_and_chat(api_server, owner)
        for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
            headers = {"Origin": origin}
            for path, body in (
                ("/api/chat", v5_body(chat_id, uid("m"), "csrf")),
                (f"/api/chat/{chat_id}/stop", None),
            ):
                response = await owner.post(path, json=body, headers=headers)
                error = check_error_body(response.status_code, response.content, expected=403)
                assert error["code"] == "forbidden", (origin, path)
            response = await owner.delete(f"/api/chats/{chat_id}", headers=headers)
            check_error_body(response.status_code, response.content, expected=403)
        assert (await owner.get(f"/api/chats/{chat_id}")).status_code == 200


async def test_the_instance_survived_all_of_it(api_server: ApiServer) -> None:
    """Runs last in this module: the process is alive and no request crashed it."""
    assert api_server.process.alive
    async with httpx.AsyncClient(base_url=api_server.url) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert not api_server.process.crashes(), api_server.process.crashes()
