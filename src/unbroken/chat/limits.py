"""Per-user answer limits: how many answers one user may have running at once, and how many
they may start per minute.

Every answer costs model tokens, so one user (a guest, or an API key's user) gets a bounded
share. A refused start is a 429 with ``Retry-After`` and a JSON error, answered before
anything is stored or sent to the model.

- `MemoryLimits` counts in this process: right for one process (the memory stream backend).
- `RedisLimits` counts in Redis, under the service's key prefix, so the limits hold across
  every worker and instance. Each check is one Lua script (atomic: two workers cannot both
  take the last slot). A running answer's slot carries an expiry its process renews, so the
  slots of a process that died free themselves within `SLOT_TTL`.

Both keep a sliding window for the per-minute limit (the starts of the last 60 s). A limit
of 0 is off.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from unbroken.chat.errors import ApiError
from unbroken.chat.store import new_id

if TYPE_CHECKING:
    from unbroken.backends.redis._url import OwnedClient

__all__ = ["SLOT_TTL", "AnswerLimits", "MemoryLimits", "RedisLimits", "Slot", "make_limits"]

logger = logging.getLogger("unbroken.chat")

#: Seconds a running answer's slot lives in Redis without renewal (its process renews it
#: every third of that).
SLOT_TTL = 30.0
#: The per-minute window, seconds.
WINDOW = 60.0
#: What a refusal for too many running answers suggests waiting, seconds (when one of them
#: ends is not known).
BUSY_RETRY_AFTER = 5


@dataclass(eq=False)
class Slot:
    """One answer's place in its user's limits, from its start until it ends."""

    user_id: str
    token: str = field(default_factory=lambda: new_id(nbytes=12))
    released: bool = False


def too_many_running(limit: int) -> ApiError:
    return ApiError(
        429,
        "too_many_answers",
        f"you already have {limit} answer{'s' if limit != 1 else ''} being generated; wait for "
        "one to finish (or stop one), then try again",
        headers={"Retry-After": str(BUSY_RETRY_AFTER)},
    )


def too_many_per_minute(limit: int, retry_after: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after))
    return ApiError(
        429,
        "rate_limited",
        f"you started {limit} answer{'s' if limit != 1 else ''} in the last minute; try again "
        f"in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


class AnswerLimits:
    """The limits of one app. This base class limits nothing (both limits 0)."""

    def __init__(self, *, concurrent: int = 0, per_minute: int = 0) -> None:
        self.concurrent = concurrent
        self.per_minute = per_minute

    @property
    def enabled(self) -> bool:
        return self.concurrent > 0 or self.per_minute > 0

    async def acquire(self, user_id: str) -> Slot:
        """A slot for a new answer of ``user_id``; raises the 429 `ApiError` when a limit
        is reached."""
        slot = Slot(user_id)
        if self.enabled:
            await self._take(slot)
        return slot

    async def release(self, slot: Slot, *, refund: bool = False) -> None:
        """The answer ended: free its running slot (idempotent). ``refund``: it never
        started, so it does not count against the per-minute limit either."""
        if slot.released:
            return
        slot.released = True
        if self.enabled:
            await self._give_back(slot, refund=refund)

    async def run(self) -> None:
        """Background upkeep until cancelled (`RedisLimits` renews its slots)."""

    async def aclose(self) -> None:
        """Release what this holds."""

    async def _take(self, slot: Slot) -> None:
        pass

    async def _give_back(self, slot: Slot, *, refund: bool) -> None:
        pass


class MemoryLimits(AnswerLimits):
    """Counts in this process only."""

    def __init__(self, *, concurrent: int = 0, per_minute: int = 0) -> None:
        super().__init__(concurrent=concurrent, per_minute=per_minute)
        self._running: dict[str, set[str]] = {}
        self._recent: dict[str, deque[tuple[float, str]]] = {}

    async def _take(self, slot: Slot) -> None:
        now = time.monotonic()
        running = self._running.get(slot.user_id, set())
        if self.concurrent and len(running) >= self.concurrent:
            raise too_many_running(self.concurrent)
        recent = self._recent.setdefault(slot.user_id, deque())
        while recent and recent[0][0] <= now - WINDOW:
            recent.popleft()
        if self.per_minute and len(recent) >= self.per_minute:
            raise too_many_per_minute(self.per_minute, recent[0][0] + WINDOW - now)
        if self.concurrent:
            self._running.setdefault(slot.user_id, set()).add(slot.token)
        if self.per_minute:
            recent.append((now, slot.token))
        elif not recent:
            del self._recent[slot.user_id]

    async def _give_back(self, slot: Slot, *, refund: bool) -> None:
        running = self._running.get(slot.user_id)
        if running is not None:
            running.discard(slot.token)
            if not running:
                del self._running[slot.user_id]
        recent = self._recent.get(slot.user_id)
        if refund and recent is not None:
            kept = deque(item for item in recent if item[1] != slot.token)
            if kept:
                self._recent[slot.user_id] = kept
            else:
                del self._recent[slot.user_id]


# KEYS: the user's running slots and recent starts (sorted sets, one hash slot). ARGV: the
# slot's token, the concurrent limit, the per-minute limit, the slot TTL and the window
# (seconds). Redis's own clock, so every worker agrees. Returns {0} when taken, {1} when
# too many run, {2, seconds until the oldest start leaves the window}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local token, concurrent, per_minute = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, window = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
if concurrent > 0 and redis.call('ZCARD', KEYS[1]) >= concurrent then
  return {1}
end
if per_minute > 0 and redis.call('ZCARD', KEYS[2]) >= per_minute then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {2, tostring(tonumber(oldest[2]) + window - now)}
end
if concurrent > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, token)
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
end
if per_minute > 0 then
  redis.call('ZADD', KEYS[2], now, token)
  redis.call('PEXPIRE', KEYS[2], math.ceil(window * 1000))
end
return {0}
"""

# KEYS: the user's running slots. ARGV: the TTL, then the tokens to renew (only those still
# there: a slot that lapsed is not brought back).
_RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until_, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000))
return 0
"""


class RedisLimits(AnswerLimits):
    """Counts in Redis (keys ``{<prefix>:limits:<user>}:running`` and ``…:recent``), so the
    limits hold across processes. If Redis cannot be reached, answers are let through and a
    warning is logged: the answer itself then fails or waits on the same Redis anyway."""

    def __init__(
        self, url: str, *, key_prefix: str, concurrent: int = 0, per_minute: int = 0
    ) -> None:
        super().__init__(concurrent=concurrent, per_minute=per_minute)
        from unbroken.backends.redis._url import OwnedClient, parse_redis_url

        self._prefix = key_prefix
        self._owned: OwnedClient = OwnedClient(
            parse_redis_url(url), cluster=False, socket_connect_timeout=2, socket_timeout=2
        )
        client: Any = self._owned.client
        self._take_script = client.register_script(_TAKE)
        self._renew_script = client.register_script(_RENEW)
        self._held: dict[str, Slot] = {}  # token -> slot, the running answers of this process

    def _keys(self, user_id: str) -> tuple[str, str]:
        tag = f"{{{self._prefix}:limits:{user_id}}}"
        return f"{tag}:running", f"{tag}:recent"

    async def _take(self, slot: Slot) -> None:
        import redis.exceptions

        args = (slot.token, self.concurrent, self.per_minute, SLOT_TTL, WINDOW)
        try:
            result = await self._take_script(keys=self._keys(slot.user_id), args=args)
        except redis.exceptions.RedisError as exc:
            logger.warning("answer limits not checked: redis is unreachable (%s)", exc)
            return
        verdict = int(result[0])
        if verdict == 1:
            raise too_many_running(self.concurrent)
        if verdict == 2:
            raise too_many_per_minute(self.per_minute, float(result[1]))
        if self.concurrent:
            self._held[slot.token] = slot

    async def _give_back(self, slot: Slot, *, refund: bool) -> None:
        import redis.exceptions

        self._held.pop(slot.token, None)
        running, recent = self._keys(slot.user_id)
        client: Any = self._owned.client
        try:
            with anyio.CancelScope(shield=True):  # a slot left behind would block a user
                await client.zrem(running, slot.token)
                if refund:
                    await client.zrem(recent, slot.token)
        except redis.exceptions.RedisError as exc:
            logger.warning("answer slot not released (it expires by itself): %s", exc)

    async def renew(self) -> None:
        """Push back the expiry of every slot this process holds."""
        import redis.exceptions

        by_user: dict[str, list[str]] = {}
        for token, slot in list(self._held.items()):
            by_user.setdefault(slot.user_id, []).append(token)
        for user_id, tokens in by_user.items():
            try:
                await self._renew_script(keys=self._keys(user_id)[:1], args=[SLOT_TTL, *tokens])
            except redis.exceptions.RedisError as exc:
                logger.warning("answer slots not renewed: %s", exc)
                return

    async def run(self) -> None:
        while True:
            await anyio.sleep(SLOT_TTL / 3)
            await self.renew()

    async def aclose(self) -> None:
        await self._owned.aclose()


def make_limits(
    *, redis_url: str | None, key_prefix: str, concurrent: int, per_minute: int
) -> AnswerLimits:
    """`RedisLimits` with Redis, `MemoryLimits` without; the no-op base when both are off."""
    if concurrent <= 0 and per_minute <= 0:
        return AnswerLimits()
    if redis_url:
        return RedisLimits(
            redis_url, key_prefix=key_prefix, concurrent=concurrent, per_minute=per_minute
        )
    return MemoryLimits(concurrent=concurrent, per_minute=per_minute)
