"""`RedisBackend`: durable streams shared by every process that talks to one Redis.

Per stream (key formats in ``_keys.py``): a metadata hash, a chunk log (a Redis Stream whose
entry ids are ``0-<seq + 1>``, so reading from any position is one XRANGE), a producer lease
(a string with a PX expiry) and a notification channel. Every write that needs checking is
one atomic Lua script (``_lua/``, package data) that checks ownership and the sequence,
writes, refreshes the TTLs and publishes the notification. Between two such appends (one per
liveness tick renews the lease), a stream's appends are plain commands, an XADD NOMKSTREAM and
a PUBLISH in one pipeline (``_fastpath.py`` says why that is safe): Redis runs the XADD first,
so a reader never sees a notification for data that is not in the log yet. An XADD that Redis
refuses is sent again through the script; its PUBLISH may still have gone out, but only after
the stream's end notification (an ended stream's log is sealed) or for a stream that is gone
(its producer writes the same chunks again).

Commands: concurrent calls from all streams of one backend share pipelines (``_pipeliner.py``:
what gathers while earlier pipelines are in flight leaves together), so round trips fall
below one per call under load and the backend uses at most four command connections. Chunks
wait for company in one layer only: the engine gathers the new chunks of all its streams and
writes them with one `RedisBackend.append_many` (the backend's `GatheredAppends` capability).

Live notifications (``_pubsub.py``): all listeners of one backend share ONE pub/sub
connection. A router task (in the backend's task group) reads it and hands each message to
per-listener bounded queues. When that connection drops, the router reconnects with backoff,
subscribes again, and tells every listener `Lagged` (re-read the log), so a Redis restart
costs latency, never data.

Driver errors become unbroken's in one place (``_errors.py``); what is sent and read back is
encoded and parsed in ``_codec.py``.

Works with Redis >= 6.2 and Valkey; with ``cluster=True`` it uses `RedisCluster` and sharded
pub/sub (SSUBSCRIBE/SPUBLISH, Redis >= 7.0). All keys of a stream share the hash tag
``{<prefix>:<id>}``, so they live in one slot.
"""

from unbroken.exceptions import MissingDependencyError as _MissingDependencyError

try:
    # Every redis-py module the backend uses, checked here: this package is what runs first
    # whichever of its modules is imported.
    import redis.asyncio.client
    import redis.asyncio.cluster
    import redis.asyncio.retry
    import redis.backoff
    import redis.exceptions
except ImportError as exc:  # pragma: no cover - exercised by a test that hides redis
    raise _MissingDependencyError("redis", "redis") from exc

from unbroken.backends.redis._backend import RedisBackend

del redis  # bound by the check above, and no part of this module's surface

__all__ = ["RedisBackend"]

RedisBackend.__module__ = __name__  # the name users import
