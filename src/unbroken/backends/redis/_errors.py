"""The one place redis-py's errors become unbroken's (`unbroken.exceptions`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from redis import exceptions as redis_errors

from unbroken.exceptions import (
    BackendError,
    BackendUnavailableError,
    CorruptStreamError,
    UnbrokenError,
)

__all__ = ["TRANSIENT", "corrupt", "translate", "translated"]

# Errors after which the same call may well succeed a little later: the server is down,
# loading, failing over, resharding, read-only during a failover, or out of memory until
# TTLs free some. The engine keeps streaming from memory and retries these.
TRANSIENT = (
    redis_errors.ConnectionError,  # includes BusyLoadingError (LOADING), MaxConnectionsError
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.SlotNotCoveredError,
    OSError,
)
_DRIVER_ERRORS = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)


def translate(exc: BaseException, stream_id: str | None) -> UnbrokenError:
    """The unbroken error for a driver error (or a reply that is not UTF-8)."""
    about = f"stream {stream_id!r}: " if stream_id is not None else ""
    message = str(exc)
    if isinstance(exc, TRANSIENT) or message.startswith("BUSY "):
        return BackendUnavailableError(f"redis is unavailable, retry later: {exc}")
    if isinstance(exc, UnicodeError):
        return CorruptStreamError(f"{about}redis holds text that is not utf-8: {exc}")
    if "UNBROKEN_SEQ " in message:
        return CorruptStreamError(about + message.split("UNBROKEN_SEQ ", 1)[1])
    if "UNBROKEN_CORRUPT " in message or "WRONGTYPE" in message:
        return CorruptStreamError(f"{about}redis holds data unbroken did not write: {exc}")
    return BackendError(f"{about}redis failed: {exc}")


@contextmanager
def translated(stream_id: str | None = None) -> Iterator[None]:
    """Raise the driver errors of the block as `translate` maps them (``from`` the original)."""
    try:
        yield
    except (*_DRIVER_ERRORS, UnicodeError) as exc:
        raise translate(exc, stream_id) from exc


def corrupt(stream_id: str, why: str) -> NoReturn:
    """Raise `CorruptStreamError`: Redis holds something for the stream we cannot read."""
    raise CorruptStreamError(f"stream {stream_id!r}: redis holds data unbroken cannot read: {why}")
