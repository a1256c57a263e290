"""Every error unbroken raises, under one root.

::

    UnbrokenError
    ├── EngineClosedError          the engine is not open (use ``async with``)
    ├── InvalidStreamIdError       an id that is empty, too long, or has braces/control chars
    ├── StreamNotFoundError        no such stream (never existed, or expired)
    ├── StreamExistsError          a second start of an id that is already taken
    ├── StreamSourceError          raise it from a source to end the stream with a public message
    ├── BackendError               the storage backend failed
    │   ├── BackendUnavailableError   it cannot be reached right now (retry later)
    │   └── CorruptStreamError        it holds data unbroken did not write or cannot read
    ├── ProtocolError              a request body or wire frame is invalid
    └── MissingDependencyError     an optional extra is not installed (also an ImportError)

Driver errors (``redis.exceptions.*``) are translated in the backend that meets them, with
``raise ... from exc``, so callers only ever catch unbroken's own classes.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "CorruptStreamError",
    "EngineClosedError",
    "InvalidStreamIdError",
    "MissingDependencyError",
    "ProtocolError",
    "StreamExistsError",
    "StreamNotFoundError",
    "StreamSourceError",
    "UnbrokenError",
]


class UnbrokenError(Exception):
    """The root of every error raised by unbroken."""


class EngineClosedError(UnbrokenError):
    """The engine (or backend) was used outside its ``async with`` block."""


class InvalidStreamIdError(UnbrokenError, ValueError):
    """A stream id must be 1-256 printable characters without ``{`` or ``}``.

    Braces are refused because ids go inside Redis Cluster hash tags (``{prefix:id}``).
    """

    def __init__(self, stream_id: object) -> None:
        super().__init__(
            f"invalid stream id {stream_id!r}: use 1-256 printable characters without braces"
        )
        self.stream_id = stream_id


class StreamNotFoundError(UnbrokenError):
    """The stream does not exist: it never did, or its retention expired."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"no stream with id {stream_id!r}")
        self.stream_id = stream_id


class StreamExistsError(UnbrokenError):
    """The stream id is already taken; exactly one producer may ever run under an id."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(
            f"stream {stream_id!r} already exists; read it instead, or start under a new id"
        )
        self.stream_id = stream_id


class StreamSourceError(UnbrokenError):
    """Raise from a stream source to end the stream in ``error`` with *this* message.

    Any other exception from a source is logged in full and recorded under a generic message,
    so internals never leak to readers.
    """


class BackendError(UnbrokenError):
    """The storage backend failed."""


class BackendUnavailableError(BackendError):
    """The backend cannot be reached right now; the operation may be retried."""


class CorruptStreamError(BackendError):
    """The backend holds data for this stream that unbroken cannot read."""


class ProtocolError(UnbrokenError):
    """A request body or a wire frame does not follow the protocol."""


class MissingDependencyError(UnbrokenError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'unbroken[{extra}]'"
        )
        self.package = package
        self.extra = extra
