"""The page's own modules, run in Chromium: the SSE parser and the safe formatter.

These are the two places where bytes from the network become what a person sees, so they
are checked directly, with the awkward inputs a live stream produces (events split across
reads at any byte, CRLF, multi-byte characters, comments) and hostile model output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.browser.conftest import ChatServer

pytestmark = pytest.mark.browser

PARSE = """async ([pieces, encoded]) => {
  const { readEvents } = await import('/static/js/sse.js');
  const enc = new TextEncoder();
  const chunks = encoded
    ? pieces.map((bytes) => new Uint8Array(bytes))
    : pieces.map((text) => enc.encode(text));
  const body = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  const out = [];
  for await (const event of readEvents(body)) out.push(event);
  return out;
}"""

STREAM = (
    ": keep-alive\n\n"
    'id: 0\ndata: {"type":"start","messageId":"m1"}\n\n'
    'id: 3\r\ndata: {"type":"text-delta","id":"t","delta":"héllo ✓ 𝄞"}\r\n\r\n'
    "event: custom\ndata: line one\ndata: line two\n\n"
    'data: {"type":"finish"}\n\n'
    "data: [DONE]\n\n"
    "data: never dispatched (no blank line)"
)
EXPECTED = [
    {"id": "0", "event": "message", "data": '{"type":"start","messageId":"m1"}'},
    {"id": "3", "event": "message", "data": '{"type":"text-delta","id":"t","delta":"héllo ✓ 𝄞"}'},
    {"id": None, "event": "custom", "data": "line one\nline two"},
    {"id": None, "event": "message", "data": '{"type":"finish"}'},
    {"id": None, "event": "message", "data": "[DONE]"},
]


@pytest.fixture(scope="module")
def blank(browser: Browser, chat_server: ChatServer) -> Iterator[Page]:
    """One page for the module: same origin as the modules, without running the app."""
    context = browser.new_context(base_url=chat_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/healthz")
    yield page
    context.close()
    assert not errors, errors


def parse(page: Page, pieces: list[Any], *, encoded: bool = False) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = page.evaluate(PARSE, [pieces, encoded])
    return result


def test_sse_parser_in_one_read(blank: Page) -> None:
    assert parse(blank, [STREAM]) == EXPECTED


def test_sse_parser_byte_by_byte(blank: Page) -> None:
    """Every split point at once: CR and LF apart, UTF-8 sequences cut in the middle."""
    data = STREAM.encode()
    assert parse(blank, [[b] for b in data], encoded=True) == EXPECTED


def test_sse_parser_bare_cr_line_ends(blank: Page) -> None:
    assert parse(blank, ["id: 7\rdata: a\r", "\rdata: b\r\r"]) == [
        {"id": "7", "event": "message", "data": "a"},
        {"id": None, "event": "message", "data": "b"},
    ]


RENDER = """async (md) => {
  const { renderMarkdown } = await import('/static/js/markdown.js');
  const div = document.createElement('div');
  div.append(renderMarkdown(md));
  return div.innerHTML;
}"""


def render(page: Page, markdown: str) -> str:
    return str(page.evaluate(RENDER, markdown))


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("one\ntwo\n\nthree", "<p>one<br>two</p><p>three</p>"),
        (
            "- a\n- b **bold** `x<y`",
            "<ul><li>a</li><li>b <strong>bold</strong> <code>x&lt;y</code></li></ul>",
        ),
        ("3. c\n4. d", '<ol start="3"><li>c</li><li>d</li></ol>'),
        ("- a\n  - nested", "<ul><li>a<ul><li>nested</li></ul></li></ul>"),
        (
            "```js\nlet a = '<b>';\n```",
            '<pre data-lang="js"><code data-lang="js" class="language-js">'
            '<span class="tok-keyword">let</span> a = '
            "<span class=\"tok-string\">'&lt;b&gt;'</span>;"
            "</code></pre>",
        ),
        ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
        (
            "*em* and _em_ but snake_case_name",
            "<p><em>em</em> and <em>em</em> but snake_case_name</p>",
        ),
        ("## Title", "<h4>Title</h4>"),
        ("> quoted", "<blockquote><p>quoted</p></blockquote>"),
        ("**unclosed and `unclosed", "<p>**unclosed and `unclosed</p>"),
        (
            "[site](https://example.com/a?b=1)",
            '<p><a href="https://example.com/a?b=1" rel="noopener noreferrer nofollow" '
            'target="_blank">site</a></p>',
        ),
    ],
)
def test_formatting(blank: Page, markdown: str, html: str) -> None:
    assert render(blank, markdown) == html


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>window.__pwned = 1</script>",
        '<img src=x onerror="window.__pwned = 1">',
        "[click](javascript:window.__pwned=1)",
        "[click](  javascript:window.__pwned=1 )",
        "[click](data:text/html,<script>window.__pwned=1</script>)",
        '<a href="javascript:window.__pwned=1">x</a>',
        "```\n</code></pre><img src=x onerror=window.__pwned=1>\n```",
        "`<svg onload=window.__pwned=1>`",
        "- <iframe src=javascript:window.__pwned=1>",
        "**<b onmouseover=window.__pwned=1>x</b>**",
        "```python\n'<img src=x onerror=window.__pwned=1>'\n# <script>window.__pwned=1</script>",
        "| <img src=x onerror=window.__pwned=1> |\n|---|\n| <script>window.__pwned=1</script> |",
    ],
)
def test_hostile_output_is_text(blank: Page, hostile: str) -> None:
    found = blank.evaluate(
        """async (md) => {
          const { renderMarkdown } = await import('/static/js/markdown.js');
          const div = document.createElement('div');
          div.append(renderMarkdown(md));
          document.body.append(div);
          await new Promise((r) => setTimeout(r, 20));
          const tags = [...div.querySelectorAll('*')].map((el) => el.tagName.toLowerCase());
          const attrs = [...div.querySelectorAll('*')].flatMap((el) => el.getAttributeNames());
          const hrefs = [...div.querySelectorAll('a')].map((a) => a.href);
          div.remove();
          return { tags, attrs, hrefs, text: div.textContent, pwned: window.__pwned ?? null };
        }""",
        hostile,
    )
    allowed_tags = {"p", "br", "ul", "ol", "li", "pre", "code", "strong", "em", "a", "blockquote"}
    allowed_tags |= {"span", "div", "table", "thead", "tbody", "tr", "th", "td"}
    assert set(found["tags"]) <= allowed_tags, found
    assert not [a for a in found["attrs"] if a.startswith("on") or a in ("src", "style")], found
    assert all(h.startswith(("http:", "https:", "mailto:")) for h in found["hrefs"]), found
    assert found["pwned"] is None
    assert "pwned" in found["text"]  # shown, as text


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        (
            "| a | b |\n|:--|--:|\n| **x** | 1 \\| 2 |",
            '<div class="table-wrap"><table><thead><tr><th>a</th>'
            '<th class="align-right">b</th></tr></thead><tbody><tr><td>'
            '<strong>x</strong></td><td class="align-right">1 | 2</td></tr></tbody></table></div>',
        ),
        (  # no outer pipes; a short row is padded, a long one cut
            "a | b\n--- | :-:\nonly\n1 | 2 | 3",
            '<div class="table-wrap"><table><thead><tr><th>a</th><th class="align-center">b</th>'
            '</tr></thead><tbody><tr><td>only</td><td class="align-center"></td></tr><tr>'
            '<td>1</td><td class="align-center">2</td></tr></tbody></table></div>',
        ),
        # Not (yet) a table: a streaming header with no delimiter row, or a mismatched one.
        ("| a | b |", "<p>| a | b |</p>"),
        ("| a | b |\n|---|", "<p>| a | b |<br>|---|</p>"),
        (
            "text\n| a | b |\n|---|---|",
            '<p>text</p><div class="table-wrap"><table><thead><tr>'
            "<th>a</th><th>b</th></tr></thead><tbody></tbody></table></div>",
        ),
    ],
)
def test_tables(blank: Page, markdown: str, html: str) -> None:
    assert render(blank, markdown) == html


HIGHLIGHT = """async ([code, lang]) => {
  const { highlight, languageOf } = await import('/static/js/highlight.js');
  const div = document.createElement('div');
  div.append(highlight(code, languageOf(lang)));
  return { text: div.textContent,
           tokens: [...div.children].map((n) => [n.className.slice(4), n.textContent]) };
}"""


@pytest.mark.parametrize(
    ("lang", "code", "expected"),
    [
        (
            "py",
            'def f(x=1.5):  # hi\n    return f"{x}" if x else None',
            [
                ["keyword", "def"],
                ["function", "f"],
                ["number", "1.5"],
                ["comment", "# hi"],
                ["keyword", "return"],
                ["string", 'f"{x}"'],
                ["keyword", "if"],
                ["keyword", "else"],
                ["literal", "None"],
            ],
        ),
        (
            "python",
            "s = '''multi\nline'''\nx_1 = 0x1F",
            [["string", "'''multi\nline'''"], ["number", "0x1F"]],
        ),
        (
            "ts",
            "const a = `t${b}` /* c */ // d\nawait g(null)",
            [
                ["keyword", "const"],
                ["string", "`t${b}`"],
                ["comment", "/* c */"],
                ["comment", "// d"],
                ["keyword", "await"],
                ["function", "g"],
                ["literal", "null"],
            ],
        ),
        (
            "json",
            '{"a": [1, true, null]}',
            [["string", '"a"'], ["number", "1"], ["literal", "true"], ["literal", "null"]],
        ),
        (
            "sh",
            'echo "$HOME" $USER # x',
            [["keyword", "echo"], ["string", '"$HOME"'], ["variable", "$USER"], ["comment", "# x"]],
        ),
        (
            "SQL",
            "SELECT id FROM t -- c",
            [["keyword", "SELECT"], ["keyword", "FROM"], ["comment", "-- c"]],
        ),
        (
            "go",
            "func main() { return nil }",
            [["keyword", "func"], ["function", "main"], ["keyword", "return"], ["literal", "nil"]],
        ),
        ("py", "x = 'unclosed\ny = 2", [["string", "'unclosed"], ["number", "2"]]),
        ("js", "/* never closed", [["comment", "/* never closed"]]),
        ("", "def x(): pass", []),  # no language named: plain text
    ],
)
def test_highlighting(blank: Page, lang: str, code: str, expected: list[list[str]]) -> None:
    found = blank.evaluate(HIGHLIGHT, [code, lang])
    assert found["tokens"] == expected
    assert found["text"] == code  # highlighting never changes the text


@pytest.mark.parametrize(
    "text",
    [
        "Tell me about streams\nin two lines",
        "\n\n  ## A *heading*  \n",
        "```python\nprint(1)\n```",
        "> a quote with [a link](https://example.com) and `code`",
        "   ",
        "Explain how resumable streams survive a page refresh and a crashed worker please",
        "x" * 100,
        "é" * 70 + " ü",
        "1. first, then - second; **bold** __under__ ~~gone~~",
        '<img src=x onerror="window.__pwned=1"><b id="injected">bold</b><script>x</script>',
    ],
)
def test_page_titles_match_the_server(blank: Page, text: str) -> None:
    from unbroken.chat.answers import title_of

    shown = blank.evaluate(
        "async (text) => (await import('/static/js/title.js')).titleOf(text)", text
    )
    assert shown == title_of(text)
