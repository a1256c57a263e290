"""Fixtures for the web page tests: a real `unbroken chat` process, a real headless Chromium.

- ``chat_server``: one `unbroken chat` process for the session (SQLite in a temporary
  directory, memory stream backend, demo model paced at ``TOKENS_PER_SECOND`` so a test has
  time to refresh, go offline or press stop mid-answer).
- ``browser``: Debian's Chromium driven by Playwright for Python (Playwright cannot download
  its own browsers here). Every test is skipped, with the reason, when it is missing.
- ``context`` / ``page``: a fresh browser context per test (a new guest user: its own
  session cookie), with uncaught page errors collected and failing the test.
- ``shot(page, name)``: a screenshot under ``test-output/screenshots/`` (gitignored).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests._services import free_port

CHROMIUM = Path(os.environ.get("UNBROKEN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Demo model pace: its ~430-token answer streams for about 9 s.
TOKENS_PER_SECOND = 50
#: Requests larger than this are refused (413); the error-state test sends one.
MAX_BODY_BYTES = 65536
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-output" / "screenshots"

try:
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the installed extras
    sync_playwright = None


@dataclass
class ChatServer:
    """An `unbroken chat` process on a loopback port (restartable on the same port)."""

    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("unbroken")
        if script.exists():
            return [str(script), "chat", "--host", "127.0.0.1", "--port", str(self.port)]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "unbroken.cli:serving_app",  # what `unbroken chat` serves
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    def start(self) -> None:
        self.starts += 1
        log = self.workdir / f"server-{self.starts}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(), env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the chat server exited:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the chat server did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.workdir.glob("server-*.log")))


def server_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("UNBROKEN_", "OPENAI_")) and key not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'db.sqlite3'}",
        UNBROKEN_MODEL="demo",
        UNBROKEN_DEMO_TOKENS_PER_SECOND=str(TOKENS_PER_SECOND),
        UNBROKEN_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


# Package scope, not session: Playwright's sync API keeps an event loop running in this
# thread while it is open, and the async tests after this package need the thread's loop.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.skip("Playwright for Python is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (or set UNBROKEN_CHROMIUM)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="package")
def chat_server(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServer]:
    workdir = tmp_path_factory.mktemp("chat-server")
    server = ChatServer(workdir, server_env(workdir))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def new_context(
    browser: Browser, request: pytest.FixtureRequest
) -> Iterator[Callable[..., BrowserContext]]:
    """Make browser contexts (each one a separate guest user); all closed at the end.

    Uncaught JavaScript errors in any of their pages fail the test.
    """
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def make(base_url: str, **options: Any) -> BrowserContext:
        options.setdefault("viewport", {"width": 1100, "height": 760})
        context = browser.new_context(base_url=base_url, **options)
        context.set_default_timeout(20_000)
        context.on("page", lambda page: page.on("pageerror", lambda exc: errors.append(str(exc))))
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def context(chat_server: ChatServer, new_context: Callable[..., BrowserContext]) -> BrowserContext:
    return new_context(chat_server.url)


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture(scope="session")
def shot() -> Callable[[Page, str], Path]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str, *, full_page: bool = False) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        return path

    return take
