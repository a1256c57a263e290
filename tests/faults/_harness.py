"""The chat service as real processes, and the invariants every answer must keep.

- `ChatProcess`: one ``unbroken chat --port N`` process (the real CLI: migrations, then
  uvicorn), its log in a file, killable with any signal.
- `Deployment`: several of them sharing one PostgreSQL database and one Redis key prefix
  (instances of one deployment behind a load balancer).
- `V5Transcript` / `V4Transcript`: what one client saw across all its connections, read
  incrementally so a connection cut by a dying server keeps everything it delivered.
- `check_*`: the three invariants (the text is the model's, with no gap and no duplicate;
  the stream reached a terminal state; the stored message is what clients saw).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import httpx

from tests._services import free_port, port_answers
from tests._util import SseParser

ROOT = Path(__file__).resolve().parents[2]
SECRET = "faults-test-secret-key-0123456789"  # shared by every instance (cookies are valid on all)

#: Lines that mean a request failed with an unhandled exception (never acceptable).
CRASH_MARKERS = ("Exception in ASGI application", "unhandled error in ")

_CHAINED = ("During handling of the above exception", "The above exception was")


def _reported_exception(lines: list[str]) -> str:
    """The last exception line (``Name: message``) of the traceback that ``lines`` start,
    following chained exceptions (``During handling of the above exception …``)."""
    found = "<no exception line>"
    for index, line in enumerate(lines):
        if not line or line[0].isspace() or line.startswith(("Traceback", *_CHAINED)):
            continue
        found = line.strip()
        following = next((rest for rest in lines[index + 1 :] if rest.strip()), "")
        if not following.startswith(_CHAINED):
            break
    return found


#: Types that end a v5 answer on the wire.
V5_TERMINAL = frozenset({"finish", "error", "abort"})


def cli_command() -> list[str]:
    """The ``unbroken`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "unbroken"
    if script.exists():
        return [str(script)]
    found = shutil.which("unbroken")
    return [found] if found else [sys.executable, "-m", "unbroken.cli"]


class ChatProcess:
    """One ``unbroken chat`` process on loopback."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*cli_command(), "chat", "--port", str(self.port), "--log-level", "warning"],
            env=self.env,
            cwd=self.log_path.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, within: float = 45.0) -> None:
        """Until ``/healthz`` answers 200 (raises with the log if the process exits first)."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited during start:\n{self.log()[-3000:]}")
                if port_answers("127.0.0.1", self.port, timeout=0.2):
                    try:
                        if (await client.get(f"{self.url}/healthz")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start:\n{self.log()[-3000:]}")
                await anyio.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)

    async def wait_exit(self, within: float) -> int:
        """The exit status (raises TimeoutError if it is still running after ``within`` s)."""
        proc = self.proc
        assert proc is not None
        try:
            return await anyio.to_thread.run_sync(lambda: proc.wait(within))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still runs {within:g} s later") from None

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it does not go within a few seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def crashes(self) -> list[str]:
        """Unhandled exceptions in requests: each marker line with the exception it reports.

        Ignored: uvicorn cancelling open responses when its graceful-shutdown window ends
        (logged the same way, but expected when a stream outlives the window).
        """
        lines = self.log().splitlines()
        found = []
        for index, line in enumerate(lines):
            if not any(marker in line for marker in CRASH_MARKERS):
                continue
            # Including uvicorn's "timeout graceful shutdown exceeded": open answer streams
            # must end at the shutdown signal, not be cancelled by the graceful timeout.
            exception = _reported_exception(lines[index + 1 : index + 400])
            found.append(f"{line.strip()} -> {exception}")
        return found


@dataclass
class Deployment:
    """Instances of one chat deployment: one database, one Redis and key prefix."""

    workdir: Path
    database_url: str
    redis_url: str | None
    prefix: str
    env: dict[str, str] = field(default_factory=dict)
    #: The database is already migrated, so instances may start at the same time.
    migrated: bool = False
    instances: list[ChatProcess] = field(default_factory=list)

    def environment(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("UNBROKEN_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")
        }
        env.update(
            PYTHONUNBUFFERED="1",
            DATABASE_URL=self.database_url,
            UNBROKEN_REDIS_PREFIX=self.prefix,
            UNBROKEN_SECRET_KEY=SECRET,
            UNBROKEN_MODEL="demo",
            # One browser or key posts many answers here: no per-user answer limits.
            UNBROKEN_MAX_CONCURRENT_ANSWERS="0",
            UNBROKEN_ANSWERS_PER_MINUTE="0",
        )
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        env.update(self.env)
        env.update(overrides)
        return env

    async def start(self, count: int = 1, **overrides: str) -> list[ChatProcess]:
        """Start ``count`` more instances; returns them once all are ready. At the same
        time if the database is migrated, else one after the other (the CLI migrates
        first, and two concurrent migrations of one fresh database would race)."""
        started = []
        for _ in range(count):
            name = f"instance-{len(self.instances)}"
            process = ChatProcess(name, self.environment(**overrides), self.workdir / f"{name}.log")
            self.instances.append(process)
            process.start()
            if not self.migrated:
                await process.wait_ready()
            started.append(process)
        if self.migrated:
            async with anyio.create_task_group() as tg:
                for process in started:
                    tg.start_soon(process.wait_ready)
        return started

    def close(self) -> None:
        """SIGTERM to every instance at once; SIGKILL what is still running 1.5 s later (a
        test's leftovers need no drain)."""
        for process in self.instances:
            if process.alive:
                process.signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.5
        for process in self.instances:
            if process.proc is not None and process.alive:
                try:
                    process.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.proc.kill()
                    process.proc.wait(timeout=10)
            process.stop()

    def crashes(self) -> dict[str, list[str]]:
        return {p.name: found for p in self.instances if (found := p.crashes())}

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()[-4000:]}" for p in self.instances)


# -- reading what clients read ---------------------------------------------------------


@dataclass
class V5Transcript:
    """What one v5 client (resuming with ``Last-Event-ID``) saw across its connections."""

    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    connections: int = 0
    done: bool = False  # saw ``data: [DONE]``

    @property
    def last_id(self) -> int | None:
        return self.ids[-1] if self.ids else None

    def text(self, kind: str = "text") -> str:
        return "".join(e["delta"] for e in self.events if e["type"] == f"{kind}-delta")

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    @property
    def terminal(self) -> dict[str, Any] | None:
        if self.events and self.events[-1]["type"] in V5_TERMINAL:
            return self.events[-1]
        return None

    def message_ids(self) -> list[str]:
        return [e.get("messageId", "") for e in self.events if e["type"] == "start"]


async def read_v5_into(
    response: httpx.Response,
    transcript: V5Transcript,
    *,
    stop_after: int | None = None,
    hang_up_after: float | None = None,
) -> bool:
    """Append the response's events to ``transcript``; hang up after ``stop_after`` events
    or ``hang_up_after`` seconds (a refresh at a random moment).

    Returns True if the connection ended normally (``[DONE]``, or the client hung up),
    False if the server cut it. Events are only counted once complete (the blank line after
    them), exactly as an SSE client does.
    """
    transcript.connections += 1
    assert response.status_code == 200, (response.status_code, response.headers)
    with anyio.move_on_after(hang_up_after):
        return await _read_v5(response, transcript, stop_after)
    return True


async def _read_v5(
    response: httpx.Response, transcript: V5Transcript, stop_after: int | None
) -> bool:
    parser = SseParser()
    count = 0
    try:
        async for line in response.aiter_lines():
            event = parser.feed(line)
            if event is None:
                continue
            if event.data == "[DONE]":
                transcript.done = True
                return True
            transcript.events.append(json.loads(event.data))
            if event.id is not None:
                transcript.ids.append(event.id)
            count += 1
            if stop_after is not None and count >= stop_after:
                return True
    except (httpx.TransportError, httpx.StreamError):
        return False
    return False  # ended without [DONE]: the server went away


@dataclass
class V4Transcript:
    """One v4 response (v4 resumes always replay the whole answer)."""

    status: int = 0
    lines: list[tuple[str, Any]] = field(default_factory=list)
    complete: bool = False  # the body ended normally

    def text(self) -> str:
        return "".join(value for code, value in self.lines if code == "0")

    def reasoning(self) -> str:
        return "".join(value for code, value in self.lines if code == "g")

    def codes(self) -> list[str]:
        return [code for code, _ in self.lines]

    @property
    def terminal(self) -> str | None:
        codes = self.codes()
        return codes[-1] if codes and codes[-1] in ("d", "3") else None

    def message_id(self) -> str | None:
        for code, value in self.lines:
            if code == "f":
                return str(value["messageId"])
        return None


async def read_v4_into(
    response: httpx.Response,
    transcript: V4Transcript,
    *,
    stop_after: int | None = None,
    hang_up_after: float | None = None,
) -> bool:
    """Parse data stream lines exactly as the v4 client does (an unknown code fails);
    hang up after ``stop_after`` lines or ``hang_up_after`` seconds."""
    transcript.status = response.status_code
    assert response.status_code == 200, response.status_code
    with anyio.move_on_after(hang_up_after):
        return await _read_v4(response, transcript, stop_after)
    return True


async def _read_v4(
    response: httpx.Response, transcript: V4Transcript, stop_after: int | None
) -> bool:
    try:
        async for line in response.aiter_lines():
            if not line:
                continue
            code, sep, payload = line.partition(":")
            assert sep, f"malformed data stream line {line!r}"
            assert code in set("0239abcdefghijk"), f"unknown data stream code {code!r}"
            transcript.lines.append((code, json.loads(payload)))
            if stop_after is not None and len(transcript.lines) >= stop_after:
                return True
    except (httpx.TransportError, httpx.StreamError):
        return False
    transcript.complete = True
    return True


# -- invariants ------------------------------------------------------------------------


def check_v5_transcript(
    transcript: V5Transcript, reasoning: str, text: str, *, complete: bool
) -> None:
    """No gap, no duplicate, the model's text; ``complete``: the whole answer, finished."""
    assert transcript.ids == sorted(set(transcript.ids)), f"duplicate ids: {transcript.ids}"
    assert len(set(transcript.message_ids())) == 1, transcript.message_ids()
    assert transcript.types().count("start") == 1, "the start event twice: a duplicate"
    got_reasoning, got_text = transcript.text("reasoning"), transcript.text()
    if complete:
        assert got_reasoning == reasoning
        ended = transcript.terminal, transcript.done, transcript.connections
        assert got_text == text, f"ended {ended}; {_diff(got_text, text)}"
        assert transcript.terminal is not None and transcript.terminal["type"] == "finish"
        assert transcript.done
    else:
        assert reasoning.startswith(got_reasoning), _diff(got_reasoning, reasoning)
        if got_text:
            assert got_reasoning == reasoning
        assert text.startswith(got_text), _diff(got_text, text)


def stored_text(message: dict[str, Any], kind: str = "text") -> str:
    return "".join(p.get("text", "") for p in message["parts"] if p["type"] == kind)


def _diff(got: str, want: str) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )
    return (
        f"texts differ at {at} (got {len(got)} chars, want {len(want)}): "
        f"got …{got[max(0, at - 40) : at + 40]!r} want …{want[max(0, at - 40) : at + 40]!r}"
    )


async def chat_json(client: httpx.AsyncClient, url: str, chat_id: str) -> dict[str, Any]:
    response = await client.get(f"{url}/api/chats/{chat_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def settled_chat(
    client: httpx.AsyncClient,
    url: str,
    chat_id: str,
    *,
    within: float,
    retry_unavailable: bool = False,
) -> dict[str, Any]:
    """The chat once its answer is stored (no active stream, no ``streaming`` message);
    fails after ``within`` seconds with the last state seen. ``retry_unavailable``: a 503
    (the stream backend failing over) is asked again, as a page would."""
    body: dict[str, Any] = {}
    try:
        with anyio.fail_after(within):
            while True:
                response = await client.get(f"{url}/api/chats/{chat_id}")
                if retry_unavailable and response.status_code == 503:
                    await anyio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                assert response.status_code == 200, response.text
                body = response.json()
                if body["activeStream"] is None:
                    return body
                await anyio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(
            f"chat {chat_id} still has an answer in progress after {within:g} s: "
            f"activeStream={body.get('activeStream')}"
        ) from None


@contextmanager
def elapsed() -> Iterator[list[float]]:
    """``with elapsed() as t:`` … ``t[0]`` is the seconds the block took."""
    box = [0.0]
    started = time.monotonic()
    try:
        yield box
    finally:
        box[0] = time.monotonic() - started


# -- requests --------------------------------------------------------------------------


class Unavailable(AssertionError):
    """A 503 where a 200 was expected: the service asks to be tried again after
    ``retry_after`` seconds (a failing test unless the client retries, as real ones do)."""

    def __init__(self, what: str, response: httpx.Response) -> None:
        super().__init__(f"{what}: 503 {response.text}")
        self.retry_after = float(response.headers.get("retry-after", "1"))


def new_browser(**kwargs: Any) -> httpx.AsyncClient:
    """A client with one cookie jar for every instance (cookies ignore the port), so it is
    one browser whose requests a load balancer spreads over the instances. Absolute URLs."""
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0), **kwargs)


async def _stream_into(
    client: httpx.AsyncClient,
    request: tuple[str, str],
    what: str,
    read: Callable[..., Awaitable[bool]],
    transcript: Any,
    *,
    stop_after: int | None,
    hang_up_after: float | None,
    **options: Any,
) -> bool | None:
    """Send ``request`` (method, url) and read its body into ``transcript`` with ``read``;
    None on 204 (nothing to resume); any other non-200 fails the test, naming ``what``."""
    method, url = request
    async with client.stream(method, url, **options) as response:
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            await response.aread()
            if response.status_code == 503:
                raise Unavailable(what, response)
            raise AssertionError(f"{what}: {response.status_code} {response.text}")
        return await read(response, transcript, stop_after=stop_after, hang_up_after=hang_up_after)


async def post_v5_into(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    transcript: V5Transcript,
    *,
    stop_after: int | None = None,
    hang_up_after: float | None = None,
) -> bool:
    read = await _stream_into(
        client,
        ("POST", f"{url}/api/chat"),
        "POST /api/chat",
        read_v5_into,
        transcript,
        stop_after=stop_after,
        hang_up_after=hang_up_after,
        json=body,
    )
    assert read is not None, "POST /api/chat: 204"
    return read


async def resume_v5_into(
    client: httpx.AsyncClient,
    url: str,
    chat_id: str,
    transcript: V5Transcript,
    *,
    stop_after: int | None = None,
    hang_up_after: float | None = None,
    from_start: bool = False,
) -> bool | None:
    """Resume with ``Last-Event-ID`` = the transcript's last id (or a full replay);
    None when the server answers 204 (nothing to resume)."""
    last = None if from_start else transcript.last_id
    headers = {} if last is None else {"Last-Event-ID": str(last)}
    return await _stream_into(
        client,
        ("GET", f"{url}/api/chat/{chat_id}/stream"),
        "v5 resume",
        read_v5_into,
        transcript,
        stop_after=stop_after,
        hang_up_after=hang_up_after,
        headers=headers,
    )


async def post_v4_into(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    transcript: V4Transcript,
    *,
    stop_after: int | None = None,
    hang_up_after: float | None = None,
) -> bool:
    read = await _stream_into(
        client,
        ("POST", f"{url}/api/chat"),
        "POST /api/chat (v4)",
        read_v4_into,
        transcript,
        stop_after=stop_after,
        hang_up_after=hang_up_after,
        json=body,
    )
    assert read is not None, "POST /api/chat (v4): 204"
    return read


async def resume_v4_into(
    client: httpx.AsyncClient,
    url: str,
    chat_id: str,
    transcript: V4Transcript,
    *,
    stop_after: int | None = None,
    hang_up_after: float | None = None,
) -> bool:
    # The v4 client has no 204 handling: "nothing to resume" must be 200 with no body.
    read = await _stream_into(
        client,
        ("GET", f"{url}/api/chat"),
        "v4 resume",
        read_v4_into,
        transcript,
        stop_after=stop_after,
        hang_up_after=hang_up_after,
        params={"chatId": chat_id},
    )
    assert read is not None, "v4 resume: 204 (a v4 client treats it as an error)"
    return read


async def wait_until(predicate: Any, *, within: float, what: str) -> None:
    """Poll ``predicate()`` every 20 ms until true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await anyio.sleep(0.02)


# -- raw HTTP (exact bytes on the wire: no client-side path normalisation) ---------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_http(port: int, request: bytes, *, within: float = 15.0) -> RawResponse:
    """Send ``request`` as is to 127.0.0.1:``port`` and read the response until the server
    closes the connection (send ``Connection: close``)."""
    data = b""
    with anyio.fail_after(within):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            # The server may answer and close before reading it all (e.g. 413).
            with suppress(anyio.BrokenResourceError, OSError):
                await stream.send(request)
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1]) if lines and lines[0] else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(status, headers, body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def check_error_body(status: int, body: bytes, *, expected: int | set[int]) -> dict[str, Any]:
    """A 4xx with the service's JSON error shape ``{"error": {"code", "message"}}`` and
    nothing that looks like a traceback."""
    allowed = {expected} if isinstance(expected, int) else expected
    assert status in allowed, (status, body[:300])
    assert b"Traceback" not in body and b'File "' not in body, body[:300]
    document = json.loads(body)
    assert set(document) == {"error"}, document
    error = document["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    return error
