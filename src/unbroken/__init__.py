"""unbroken: LLM answer streams that survive refreshes, disconnects, deploys and crashes."""

from types import FunctionType as _FunctionType

from unbroken._engine import OnEnd, StreamEngine, StreamReader
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
    "ProtocolError",
    "StreamEnd",
    "StreamEngine",
    "StreamExistsError",
    "StreamNotFoundError",
    "StreamReader",
    "StreamSourceError",
    "StreamState",
    "StreamStatus",
    "UnbrokenError",
    "__version__",
]

# Exported names report this module (`unbroken.StreamEngine`), not the private one that
# defines them: it is the name users import and the one their tracebacks should show.
for _name in __all__:
    _member = globals()[_name]
    if isinstance(_member, type | _FunctionType):
        _member.__module__ = __name__
del _name, _member, _FunctionType
