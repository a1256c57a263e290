"""`RedisChatPointers`: the chats' pointers in Redis, beside the streams they point at.

One hash per chat, ``{<prefix>:chat:<chat id>}:active`` (its own hash tag, so Redis Cluster
places each chat wherever it hashes): fields ``owner``, ``stream``, ``user_message`` and
``finished``. Every change is one small Lua script (``_lua/``, package data), atomic across
processes. The suffix ends none of the stream keys' suffixes (see
``unbroken/backends/redis/_keys.py``), so a chat id can never collide with a stream id.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any

from unbroken.exceptions import MissingDependencyError
from unbroken.integrations._router.pointers import ChatPointer, ChatPointers, Replaced

try:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from unbroken.backends.redis import RedisBackend
    from unbroken.backends.redis._errors import translated
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError("redis", "redis") from exc

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

__all__ = ["RedisChatPointers", "chat_key"]

_FIELDS = ("owner", "stream", "user_message", "finished")


def chat_key(prefix: str, chat_id: str) -> str:
    """The key of ``chat_id``'s pointer under ``prefix``."""
    return "{" + prefix + ":chat:" + chat_id + "}:active"


def _lua(name: str) -> str:
    return files("unbroken.integrations._router").joinpath("_lua", f"{name}.lua").read_text()


class RedisChatPointers(ChatPointers):
    """Pointers in Redis, for a `RedisBackend` shared by many processes.

    Give ``backend`` (its client is used, and its ``key_prefix``) or ``client`` (yours; it is
    never closed here) and ``key_prefix``.
    """

    def __init__(
        self,
        backend: RedisBackend | None = None,
        *,
        client: Redis | RedisCluster | None = None,
        key_prefix: str | None = None,
    ) -> None:
        if (backend is None) == (client is None):
            raise ValueError("pass either backend or client")
        prefix = key_prefix or (backend.key_prefix if backend is not None else "unbroken")
        if "{" in prefix or "}" in prefix:
            raise ValueError("key_prefix must not contain braces")
        self.key_prefix = prefix
        self._backend = backend
        self._client = client
        self._scripts: dict[str, AsyncScript] = {}
        self._scripts_client: Any = None

    def _redis(self) -> Redis | RedisCluster:
        if self._client is not None:
            return self._client
        assert self._backend is not None
        # The backend's own client, made when the engine opened it.
        return self._backend.client

    async def _run(self, name: str, chat_id: str, *args: str | int) -> Any:
        client = self._redis()
        if self._scripts_client is not client:
            self._scripts = {}
            self._scripts_client = client
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(_lua(name))
        with translated():
            return await script(keys=[chat_key(self.key_prefix, chat_id)], args=list(args))

    async def get(self, chat_id: str) -> ChatPointer | None:
        client = self._redis()
        with translated():
            owner, stream, user_message, finished = await client.hmget(
                chat_key(self.key_prefix, chat_id), list(_FIELDS)
            )
        if owner is None:
            return None
        return ChatPointer(
            owner=_text(owner),
            stream_id=_text(stream) or None,
            user_message_id=_text(user_message) or None,
            finished=_text(finished) == "1",
        )

    async def replace(
        self,
        chat_id: str,
        *,
        owner: str,
        expected: str | None,
        stream_id: str,
        user_message_id: str | None,
        ttl: float,
    ) -> Replaced:
        ttl_ms = max(1, int(ttl * 1000))
        outcome = await self._run(
            "replace", chat_id, owner, expected or "", stream_id, user_message_id or "", ttl_ms
        )
        return {1: Replaced.SET, 0: Replaced.MOVED}.get(int(outcome), Replaced.FOREIGN)

    async def release(self, chat_id: str, stream_id: str) -> bool:
        return int(await self._run("release", chat_id, stream_id)) == 1

    async def claim_finish(self, chat_id: str, stream_id: str) -> bool:
        return int(await self._run("claim_finish", chat_id, stream_id)) == 1


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
