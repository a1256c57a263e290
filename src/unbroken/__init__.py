"""unbroken: LLM answer streams that survive refreshes, disconnects, deploys and crashes."""

from unbroken._engine import OnEnd, OpenedStream, StreamEngine
from unbroken._models import Chunk, StreamEnd, StreamState, StreamStatus
from unbroken.backends.base import Backend
from unbroken.backends.memory import MemoryBackend
from unbroken.exceptions import (
    BackendError,
    BackendUnavailableError,
    CorruptStreamError,
    EngineClosedError,
    InvalidStreamIdError,
    MissingDependencyError,
    ProtocolError,
    StreamExistsError,
    StreamNotFoundError,
    StreamSourceError,
    UnbrokenError,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "Chunk",
    "CorruptStreamError",
    "EngineClosedError",
    "InvalidStreamIdError",
    "MemoryBackend",
    "MissingDependencyError",
    "OnEnd",
    "OpenedStream",
    "ProtocolError",
    "StreamEnd",
    "StreamEngine",
    "StreamExistsError",
    "StreamNotFoundError",
    "StreamSourceError",
    "StreamState",
    "StreamStatus",
    "UnbrokenError",
    "__version__",
]
