"""Who is calling: a signed guest-session cookie, or an API key.

- Browsers: the first request without a valid session cookie gets a new guest id in
  ``unbroken_session`` (signed with itsdangerous, HttpOnly, SameSite=Lax, Secure over HTTPS).
  Nothing is stored for it: the guest's user row is written with its first chat (see
  `Store.start_answer`), so crawlers and health checks that never post leave no trace.
- Programs: ``Authorization: Bearer <key>`` (keys from ``unbroken users create-key``). A
  malformed or unknown key is a 401, never a silent fallback to a guest. A key is looked up
  in the database on every request (no process remembers it), so a deleted key stops
  working at once; a route that queries the database anyway can check the key in the same
  query (`credentials`, then `Store.chat_for_api_key`).
- Cookie-authenticated requests that change state (POST, PUT, PATCH, DELETE) must come from
  the service's own origin: an ``Origin`` header that does not match ``Host`` is refused
  (403). SameSite=Lax already blocks most cross-site posts; this closes the rest
  (same-site subdomains, older browsers).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unbroken.chat.errors import ApiError
from unbroken.chat.store import Store, User, new_id, utcnow

__all__ = [
    "COOKIE_NAME",
    "Credentials",
    "Identity",
    "SessionCookieMiddleware",
    "Sessions",
    "credentials",
    "identify",
    "unknown_key",
]

COOKIE_NAME = "unbroken_session"
COOKIE_MAX_AGE = 400 * 24 * 3600  # the longest lifetime browsers honour
#: A guest's cookie older than this is signed again on its next visit, so that a guest who
#: keeps coming back keeps its chats: only one away for `COOKIE_MAX_AGE` loses them.
COOKIE_RENEW_AFTER = 24 * 3600
_SET_COOKIE = "unbroken.set_cookie"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller: a guest (``cookie``, stored only once it has a chat) or a key's user."""

    user: User
    via: Literal["cookie", "key"]

    @property
    def is_guest(self) -> bool:
        return self.via == "cookie"


class Sessions:
    """Signs and verifies session cookie values (the user id, timestamped)."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt="unbroken.chat.session")

    def sign(self, user_id: str) -> str:
        return self._serializer.dumps({"uid": user_id})

    def verify(self, value: str) -> str | None:
        """The user id in a valid, unexpired cookie value; None otherwise."""
        guest = self.guest(value)
        return guest.id if guest is not None else None

    def guest(self, value: str) -> User | None:
        """The guest a valid, unexpired cookie value names (its ``created_at``: when the
        cookie was signed, see `COOKIE_RENEW_AFTER`); None otherwise."""
        try:
            data, signed_at = self._serializer.loads(
                value, max_age=COOKIE_MAX_AGE, return_timestamp=True
            )
        except BadSignature:
            return None
        uid = data.get("uid") if isinstance(data, dict) else None
        if not isinstance(uid, str):
            return None
        return User(id=uid, kind="guest", name=None, created_at=signed_at)


def _same_origin(conn: HTTPConnection, allowed: tuple[str, ...] = ()) -> bool:
    origin = conn.headers.get("origin")
    if origin is None:
        return True  # not sent by browsers on same-origin GETs, nor by most non-browser clients
    if origin.rstrip("/").lower() in (item.lower() for item in allowed):
        return True
    parts = urlsplit(origin)
    host = conn.headers.get("host", "")
    if origin == "null" or not parts.netloc:
        return False
    default_port = {"http": "80", "https": "443"}.get(parts.scheme, "")

    def norm(netloc: str) -> str:
        netloc = netloc.lower()
        if default_port and netloc.endswith(f":{default_port}"):
            netloc = netloc[: -len(default_port) - 1]
        return netloc

    return hmac.compare_digest(norm(parts.netloc), norm(host))


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who a request says it is, as far as that is known without the database: a guest
    (``guest``: its signed cookie proves it), or an API key still to look up (``api_key``).
    Exactly one of the two is set."""

    guest: Identity | None = None
    api_key: str | None = None


def credentials(
    conn: HTTPConnection, sessions: Sessions, *, allowed_origins: tuple[str, ...] = ()
) -> Credentials:
    """The request's credentials; a new guest (with its cookie arranged) on a first
    cookie-less visit. Raises the 401 of a malformed ``Authorization`` header, the 403 of a
    cross-origin cookie request that changes state.

    A guest's id comes from its signed cookie alone: no query, and no row until it writes.

    ``allowed_origins``: origins accepted besides the one ``Host`` names.
    """
    authorization = conn.headers.get("authorization")
    if authorization is not None:
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(key) > 200:
            raise ApiError(
                401,
                "unauthorized",
                "the Authorization header must be 'Bearer <api key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Credentials(api_key=key)

    if conn.scope.get("method") in _UNSAFE_METHODS and not _same_origin(conn, allowed_origins):
        raise ApiError(403, "forbidden", "cross-origin requests are not allowed")

    cookie = conn.cookies.get(COOKIE_NAME)
    if cookie and (guest := sessions.guest(cookie)) is not None:
        if (utcnow() - guest.created_at).total_seconds() > COOKIE_RENEW_AFTER:
            conn.scope.setdefault("state", {})[_SET_COOKIE] = sessions.sign(guest.id)
        return Credentials(guest=Identity(guest, "cookie"))
    user = User(id=new_id("u_"), kind="guest", name=None, created_at=utcnow())
    conn.scope.setdefault("state", {})[_SET_COOKIE] = sessions.sign(user.id)
    return Credentials(guest=Identity(user, "cookie"))


def unknown_key() -> ApiError:
    """The 401 for an API key the database does not know."""
    return ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})


async def identify(
    conn: HTTPConnection,
    store: Store,
    sessions: Sessions,
    *,
    allowed_origins: tuple[str, ...] = (),
) -> Identity:
    """The caller (see `credentials`): a guest, or the user of an API key the database
    knows (else the 401 of `unknown_key`)."""
    found = credentials(conn, sessions, allowed_origins=allowed_origins)
    if found.guest is not None:
        return found.guest
    assert found.api_key is not None
    user = await store.user_for_api_key(found.api_key)
    if user is None:
        raise unknown_key()
    return Identity(user, "key")


class SessionCookieMiddleware:
    """Adds the session cookie chosen by `identify` to the response's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = scope.get("scheme") == "https"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                value = scope.get("state", {}).get(_SET_COOKIE)
                if value:
                    cookie = (
                        f"{COOKIE_NAME}={value}; Path=/; Max-Age={COOKIE_MAX_AGE}; "
                        "HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
                    )
                    headers = list(message.get("headers", []))
                    headers.append((b"set-cookie", cookie.encode("latin-1")))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)
