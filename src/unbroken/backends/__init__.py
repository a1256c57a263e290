"""Storage backends.

`MemoryBackend` is built in; `unbroken.backends.redis` needs ``unbroken[redis]``.
"""

from unbroken.backends.base import Backend
from unbroken.backends.memory import MemoryBackend

__all__ = ["Backend", "MemoryBackend"]
