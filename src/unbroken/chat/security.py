"""Security headers on every response of the chat service: pages, API answers, streams,
errors and static files alike.

- ``Content-Security-Policy``: scripts, styles and connections only from the service itself,
  no plugins, no ``<base>``, and ``frame-ancestors 'none'`` (no other site may frame the
  page: clickjacking). As a header, not a ``<meta>`` tag, which cannot say
  ``frame-ancestors``. The API description pages (Swagger UI, ReDoc) also need inline
  styles and a worker, and get those.
- ``X-Content-Type-Options: nosniff``: a response is only ever read as its declared type.
- ``Referrer-Policy: same-origin``: links out of the page (in model answers) send no URL.
- ``X-Frame-Options: DENY`` for browsers that predate ``frame-ancestors``.

The session cookie's ``Secure`` flag follows the request's scheme (see
`unbroken.chat.auth.SessionCookieMiddleware`); behind a TLS-terminating proxy the server
sets that scheme from ``X-Forwarded-Proto`` only for the proxies it is told to trust
(``unbroken chat --forwarded-allow-ips``).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DOCS_POLICY", "PAGE_POLICY", "SecurityHeadersMiddleware"]

_COMMON = "base-uri 'none'; form-action 'self'; object-src 'none'; frame-ancestors 'none'"
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    f"connect-src 'self'; {_COMMON}"
)
DOCS_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    f"img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; {_COMMON}"
)


def _headers(policy: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
    ]


class SecurityHeadersMiddleware:
    """Adds the headers above to every HTTP response (a route's own are kept)."""

    def __init__(self, app: ASGIApp, *, docs_paths: Iterable[str] = ()) -> None:
        self.app = app
        self._docs_paths = frozenset(docs_paths)
        self._page = _headers(PAGE_POLICY)
        self._docs = _headers(DOCS_POLICY)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self._docs if scope["path"] in self._docs_paths else self._page

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(item for item in extra if item[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
