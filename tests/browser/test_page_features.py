"""What people expect of a chat page, in a real Chromium against a real `unbroken chat`:
copy, regenerate, edit and resend, rename, retry after an error, highlighted code and
tables, no flash after a reload, a clear message when a limit is reached, the keyboard
alone, and axe-core finding nothing serious on the main views.

Answers the demo model does not give (a table, a failure) come from a scripted
OpenAI-compatible server (`_scripted_model.py`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser._scripted_model import ScriptedModel
from tests.browser.conftest import ChatServer, server_env
from tests.browser.test_chat_page import (
    assistant_text,
    chat_id,
    rendered,
    send,
    stored_chat,
    text_of,
    wait_answer,
)
from tests.chat.conftest import serve_asgi
from unbroken.chat.api_models import PAGE_MAX
from unbroken.chat.models.demo import compose

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Route

pytestmark = pytest.mark.browser

Shot = Callable[..., Path]
AXE_DIR = Path(__file__).with_name("axe")
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"


def clipboard(page: Page) -> str:
    return str(page.evaluate("navigator.clipboard.readText()"))


def idle_with(page: Page, outcome: str, count: int) -> None:
    wait_answer(page, outcome, count=count)
    # The stored answer is on screen (not the one that streamed in), with its actions.
    page.wait_for_selector(
        'li.message.assistant:last-child:not([data-key="live"]) .actions', state="attached"
    )


def snap(page: Page, shot: Shot, name: str) -> None:
    """A screenshot, even while a reload replaces the document (the browser refuses one at
    the instant it swaps documents: try again a moment later)."""
    from playwright.sync_api import Error as PlaywrightError

    for _ in range(10):
        try:
            shot(page, name)
            return
        except PlaywrightError:
            time.sleep(0.01)
    shot(page, name)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[ChatServer]:
    """`unbroken chat` with the demo model at 1000 tokens/s: an answer takes half a second."""
    workdir = tmp_path_factory.mktemp("fast")
    server = ChatServer(workdir, server_env(workdir, UNBROKEN_DEMO_TOKENS_PER_SECOND="1000"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fast_page(fast_server: ChatServer, new_context: Callable[..., BrowserContext]) -> Page:
    return new_context(fast_server.url).new_page()


@pytest.fixture
def clip_context(
    fast_server: ChatServer, new_context: Callable[..., BrowserContext]
) -> BrowserContext:
    context = new_context(fast_server.url)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    return context


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[ChatServer]:
    """`unbroken chat` answering with `ScriptedModel`."""
    model = ScriptedModel()
    with serve_asgi(model.app) as (model_url, _):
        workdir = tmp_path_factory.mktemp("scripted")
        env = server_env(
            workdir, UNBROKEN_MODEL="openai:scripted", OPENAI_BASE_URL=f"{model_url}/v1"
        )
        server = ChatServer(workdir, env)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def axe_source() -> str:
    """axe-core from npm (tests/browser/axe, installed with `npm ci` when needed)."""
    if not AXE_JS.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: axe-core cannot be installed")
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=AXE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0 or not AXE_JS.exists():
            pytest.fail(f"npm ci in {AXE_DIR} failed:\n{proc.stdout}\n{proc.stderr}")
    return AXE_JS.read_text()


def serious_violations(page: Page, axe_source: str) -> list[dict[str, Any]]:
    """axe-core's serious and critical findings on the page as it is now."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(content=axe_source)
    result = page.evaluate(
        """async () => {
          const r = await axe.run(document, { resultTypes: ['violations'] });
          return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }));
        }"""
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]


# -- tests --------------------------------------------------------------------------------------


def test_copy_regenerate_edit_and_rename(clip_context: BrowserContext, shot: Shot) -> None:
    page = clip_context.new_page()
    page.goto("/")
    prompt = "How do resumes work?"
    send(page, prompt)
    idle_with(page, "done", 1)
    cid = chat_id(page)
    answer = compose(prompt)[1]

    # Copy: the answer as written (markdown), and one code block.
    page.click("li.message.assistant .actions button[data-action=copy]")
    page.wait_for_selector("li.message.assistant button[data-copied=true]")
    assert clipboard(page) == answer
    page.click("li.message.assistant pre button[data-action=copy-code]")
    assert clipboard(page).startswith("async def follow(engine")
    assert "Copy code" not in clipboard(page)
    page.click("li.message.user .actions button[data-action=copy]")
    assert clipboard(page) == prompt
    shot(page, "20-message-actions")

    # Regenerate: a new answer replaces the last one, on screen and in the store.
    first_id = page.get_attribute("li.message.assistant", "data-id")
    page.click("li.message.assistant .actions button[data-action=regenerate]")
    page.wait_for_function(
        "id => { const li = document.querySelector('li.message.assistant');"
        " return li && li.dataset.id && li.dataset.id !== id; }",
        arg=first_id,
    )
    idle_with(page, "done", 1)
    messages = stored_chat(page, cid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["id"] != first_id and text_of(messages[1]) == answer

    # A second question, then edit the first: the edit replaces everything after it.
    send(page, "A second question")
    idle_with(page, "done", 2)
    page.click("li.message.user >> nth=0 >> button[data-action=edit]")
    editor = page.locator("li.message.user form.edit textarea")
    assert editor.input_value() == prompt
    assert editor.evaluate("el => el === document.activeElement")
    shot(page, "21-editing")
    editor.fill("An edited question")
    editor.press("Enter")
    idle_with(page, "done", 1)
    assert page.locator("li.message").count() == 2
    assert page.inner_text("li.message.user .body") == "An edited question"
    assert assistant_text(page) == rendered(page, compose("An edited question")[1])
    messages = stored_chat(page, cid)["messages"]
    edited_answer = compose("An edited question")[1]
    assert [text_of(m) for m in messages] == ["An edited question", edited_answer]
    # Escape leaves an edit without sending it.
    page.click("li.message.user button[data-action=edit]")
    page.keyboard.press("Escape")
    assert page.locator("form.edit").count() == 0
    assert page.evaluate("document.activeElement.dataset.action") == "edit"

    # Rename: the title, the list and the store follow, and a reload keeps it.
    page.click("#rename")
    page.fill("#title-input", "  Resumes,   explained ")
    page.press("#title-input", "Enter")
    page.wait_for_function(
        "() => document.getElementById('chat-title').textContent === 'Resumes, explained'"
    )
    assert page.inner_text(f'#chat-list li[data-id="{cid}"] a') == "Resumes, explained"
    assert stored_chat(page, cid)["title"] == "Resumes, explained"
    page.reload()
    page.wait_for_function(
        "() => document.getElementById('chat-title').textContent === 'Resumes, explained'"
    )


def test_code_is_highlighted_and_tables_render(
    scripted_server: ChatServer, new_context: Callable[..., BrowserContext], shot: Shot
) -> None:
    page = new_context(scripted_server.url).new_page()
    page.goto("/")
    send(page, "Show me a table")
    idle_with(page, "done", 1)
    body = page.locator("li.message.assistant .body")
    table = body.locator("table")
    assert table.locator("thead th").all_inner_texts() == [
        "backend",
        "processes",
        "survives a restart",
    ]
    assert table.locator("tbody tr").count() == 2
    assert table.locator("tbody tr >> nth=1 >> td >> nth=2").inner_text() == "yes"
    assert table.locator("tbody td.align-center").count() == 2
    assert table.locator("tbody strong").inner_text() == "yes"
    python = body.locator("pre >> nth=0 >> code")
    assert python.get_attribute("class") == "language-python"
    assert python.locator(".tok-keyword").all_inner_texts()[:2] == ["def", "return"]
    assert python.locator(".tok-comment").all_inner_texts() == ["# read what was missed, then live"]
    assert python.locator(".tok-number").all_inner_texts() == ["1", "42"]
    assert "str" not in python.locator(".tok-string").all_inner_texts()
    shell = body.locator("pre >> nth=1 >> code")
    assert shell.get_attribute("class") == "language-bash"
    assert shell.locator(".tok-string").inner_text() == '"$URL/api/chat/c1/stream?after=20"'
    assert shell.locator(".tok-comment").inner_text() == "# resume"
    shot(page, "22-table-and-code", full_page=True)


def test_retry_after_an_error(
    scripted_server: ChatServer, new_context: Callable[..., BrowserContext], shot: Shot
) -> None:
    page = new_context(scripted_server.url).new_page()
    page.goto("/")
    send(page, "a flaky question")
    idle_with(page, "error", 1)
    # Said once, under the answer; the status line keeps quiet.
    assert page.inner_text("li.message.assistant .note").startswith("Error: ")
    assert page.inner_text("#status") == ""
    shot(page, "23-error-with-retry")
    page.click("li.message.assistant .actions button[data-action=retry]")
    idle_with(page, "done", 1)
    assert assistant_text(page) == "Hello!"
    assert page.locator("li.message.assistant .note").count() == 0
    messages = stored_chat(page, chat_id(page))["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [("user", "done"), ("assistant", "done")]


@contextmanager
def reloads_held(page: Page) -> Iterator[None]:
    """Hold the page's reloads of a chat (``GET /api/chats/{id}``) until the block ends: the
    page meanwhile has only what it streamed, as when the server answers slowly."""
    held: list[Route] = []

    def hold(route: Route) -> None:
        if route.request.method == "GET":
            held.append(route)
        else:
            route.fallback()

    pattern = re.compile(r"/api/chats/[^/?]+$")
    page.route(pattern, hold)
    try:
        yield
    finally:
        for route in held:
            route.continue_()
        page.unroute(pattern, hold)


def test_a_message_sent_before_the_reload_keeps_the_last_exchange(fast_page: Page) -> None:
    page = fast_page
    page.goto("/")
    with reloads_held(page):
        send(page, "one")
        wait_answer(page, "done", count=1)
        send(page, "two")
        wait_answer(page, "done", count=2)
        assert page.locator("li.message").count() == 4
        assert "one" in page.locator("li.message.user").first.inner_text().splitlines()
    idle_with(page, "done", 2)
    stored = stored_chat(page, chat_id(page))["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert page.locator("li.message").count() == 4


def test_a_limit_is_a_clear_message(
    tmp_path: Path, new_context: Callable[..., BrowserContext], shot: Shot
) -> None:
    server = ChatServer(tmp_path, server_env(tmp_path, UNBROKEN_ANSWERS_PER_MINUTE="1"))
    server.start()
    try:
        page = new_context(server.url).new_page()
        page.goto("/")
        send(page, "one")
        page.wait_for_selector("li.message.assistant")
        # The refusal comes before the page has reloaded the chat after the stop: the chat
        # exists all the same, and stays on screen at its address.
        with reloads_held(page):
            page.click("#stop")
            wait_answer(page, "stopped", count=1)
            send(page, "two")
            page.wait_for_selector('#status[data-state="error"]')
            status = page.inner_text("#status")
            assert re.fullmatch(
                r"Error: you started 1 answer in the last minute; try again in \d+ s", status
            ), status
            assert page.input_value("#input") == "two"  # nothing typed is lost
            assert page.is_visible("#retry")
            assert page.locator("li.message").count() == 2
            assert chat_id(page)
        shot(page, "24-rate-limited")
        page.wait_for_load_state("networkidle")
        assert chat_id(page)
        assert page.locator("li.message").count() == 2
    finally:
        server.stop()


def test_a_long_list_of_chats_shows_more_on_request(
    tmp_path: Path, new_context: Callable[..., BrowserContext], shot: Shot
) -> None:
    """The sidebar lists a page of chats and a "Show more" button while there are more;
    the pages shown stay when the list is refreshed, with new chats on top."""
    env = server_env(
        tmp_path,
        UNBROKEN_DEMO_TOKENS_PER_SECOND="100000",
        UNBROKEN_ANSWERS_PER_MINUTE="0",
        UNBROKEN_MAX_CONCURRENT_ANSWERS="0",
    )
    server = ChatServer(tmp_path, env)
    server.start()
    try:
        context = new_context(server.url)
        page = context.new_page()
        page.goto("/")
        page.wait_for_selector("#chats-empty:not([hidden])")

        def new_chat(text: str) -> None:
            body = {
                "id": f"c{time.monotonic_ns()}",
                "trigger": "submit-message",
                "messages": [
                    {"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}
                ],
            }
            answer = context.request.post(
                "/api/chat", data=json.dumps(body), headers=_json_from(server.url)
            )
            assert answer.ok, answer.text()

        for n in range(PAGE_MAX + 2):
            new_chat(f"chat {n}")
        every = _all_chats(context)
        assert len(every) == PAGE_MAX + 2
        page.reload()
        items = page.locator("#chat-list li")
        listed_count(page, PAGE_MAX)
        more = page.locator("#more-chats")
        assert more.is_visible()
        more.scroll_into_view_if_needed()
        shot(page, "26-more-chats")
        more.click()
        listed_count(page, PAGE_MAX + 2)
        assert more.is_hidden()
        listed = [items.nth(i).get_attribute("data-id") for i in range(items.count())]
        assert listed == every  # in the server's order, none twice
        # The keyboard's place: the first chat the button added.
        assert page.evaluate("document.activeElement.closest('li')?.dataset.id") == every[PAGE_MAX]
        new_chat("the newest")
        newest = _all_chats(context)[0]
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # a refresh
        listed_count(page, PAGE_MAX + 3)
        listed = [items.nth(i).get_attribute("data-id") for i in range(items.count())]
        assert listed == [newest, *every]
        assert more.is_hidden()
    finally:
        server.stop()


def listed_count(page: Page, count: int) -> None:
    page.wait_for_function(
        "(count) => document.querySelectorAll('#chat-list li').length === count", arg=count
    )


def _json_from(origin: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Origin": origin}


def _all_chats(context: BrowserContext) -> list[str]:
    """Every chat of the context's guest, as the API pages them."""
    ids: list[str] = []
    cursor = ""
    while True:
        page = context.request.get("/api/chats" + (f"?cursor={cursor}" if cursor else "")).json()
        ids += [chat["id"] for chat in page["chats"]]
        if page["nextCursor"] is None:
            return ids
        cursor = page["nextCursor"]


NO_FLASH = """
window.__frames = [];
const look = () => {
  const title = document.getElementById('chat-title');
  const status = document.getElementById('status');
  if (title && status) {
    const shown = (el) => el.checkVisibility({ visibilityProperty: true });
    window.__frames.push({
      at: performance.now(),
      title: shown(title) ? title.textContent : null,
      status: shown(status) ? status.textContent : null,
      messages: document.querySelectorAll('li.message').length,
      empty: shown(document.getElementById('empty-state')),
    });
  }
  if (window.__frames.length < 400) requestAnimationFrame(look);
};
requestAnimationFrame(look);
"""


def test_no_flash_after_a_reload(
    fast_server: ChatServer, new_context: Callable[..., BrowserContext], shot: Shot
) -> None:
    context = new_context(fast_server.url)
    page = context.new_page()
    page.goto("/")
    send(page, "No flash please")
    idle_with(page, "done", 1)
    title = page.inner_text("#chat-title")
    context.add_init_script(NO_FLASH)
    page.reload(wait_until="commit")
    started = time.monotonic()
    for ms in (0, 50, 100):
        time.sleep(max(0.0, started + ms / 1000 - time.monotonic()))
        snap(page, shot, f"25-reload-{ms:03d}ms")
    page.wait_for_selector("li.message.assistant .actions")
    time.sleep(0.3)
    frames = page.evaluate("window.__frames")
    assert frames, "no frame was seen"
    for frame in frames:
        assert frame["title"] in (None, "", title), frame  # never "New chat"
        assert frame["status"] in (None, ""), frame  # never "Loading…"
        assert not frame["empty"], frame  # never the empty state
        if frame["title"] == title:
            assert frame["messages"] == 2, frame  # the title never shows without the chat
    assert any(frame["title"] == title for frame in frames)


def test_the_keyboard_alone(fast_page: Page) -> None:
    page = fast_page
    page.goto("/")
    page.keyboard.type("Typed, not clicked")
    page.keyboard.press("Enter")
    idle_with(page, "done", 1)

    def tab_to(selector: str, limit: int = 60) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(f"document.activeElement.matches({json.dumps(selector)})"):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("li.message.user button[data-action=edit]")
    page.keyboard.press("Enter")
    page.keyboard.press("Control+A")
    page.keyboard.type("Edited by keyboard")
    page.keyboard.press("Enter")
    idle_with(page, "done", 1)
    assert page.inner_text("li.message.user .body") == "Edited by keyboard"
    tab_to("li.message.assistant button[data-action=regenerate]")
    page.keyboard.press("Enter")
    idle_with(page, "done", 1)
    tab_to("#rename")
    page.keyboard.press("Enter")
    page.keyboard.type("Keyboard chat")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.getElementById('chat-title').textContent === 'Keyboard chat'"
    )
    assert page.evaluate("document.activeElement.id") == "rename"


def test_axe_finds_nothing_serious(
    fast_server: ChatServer,
    new_context: Callable[..., BrowserContext],
    scripted_server: ChatServer,
    axe_source: str,
    shot: Shot,
) -> None:
    found: dict[str, list[dict[str, Any]]] = {}
    page = new_context(fast_server.url, bypass_csp=True).new_page()  # to inject axe
    page.goto("/")
    page.wait_for_selector("#empty-state:not([hidden])")
    found["empty state"] = serious_violations(page, axe_source)
    send(page, "Check me")
    idle_with(page, "done", 1)
    found["answered chat"] = serious_violations(page, axe_source)
    page.click("li.message.user button[data-action=edit]")
    found["editing"] = serious_violations(page, axe_source)
    page.keyboard.press("Escape")
    page.click("#rename")
    found["renaming"] = serious_violations(page, axe_source)
    page.keyboard.press("Escape")
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("#menu")
    page.wait_for_function(
        "() => document.getElementById('sidebar').getBoundingClientRect().x >= 0"
    )
    found["phone, chat list open"] = serious_violations(page, axe_source)
    page.keyboard.press("Escape")
    page.goto("/chat/nobody-has-this-chat")
    page.wait_for_selector("#not-found:not([hidden])")
    found["not found"] = serious_violations(page, axe_source)

    rich = new_context(scripted_server.url, bypass_csp=True).new_page()
    rich.goto("/")
    send(rich, "a table please")
    idle_with(rich, "done", 1)
    found["table and code"] = serious_violations(rich, axe_source)
    for scheme in ("dark",):
        rich.emulate_media(color_scheme=scheme)
        found[f"table and code, {scheme}"] = serious_violations(rich, axe_source)
    assert not any(found.values()), json.dumps(found, indent=1)
    if os.environ.get("UNBROKEN_SCREENSHOTS"):
        shot(rich, "26-axe-checked")
