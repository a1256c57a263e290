"""The stream engine (private: the public names are re-exported by `unbroken`).

Layout (docs/architecture.md tells the whole story):

    engine.py     StreamEngine: lifecycle, start / cancel / status, read / open
    local.py      LocalStream: a stream produced here, and who writes it (Writer)
    producing.py  Producers: claim, copy the source, hear a stop, record the end
    writing.py    Writes: chunks to the backend, inline / gathered / own writer task
    flushing.py   flush with retries, resync, reclaim, record the end; one Backoff
    reading.py    LocalReader, BackendReader, StreamReader (what engine.open gives)
    liveness.py   the one tick: leases, idle readers, registered checks

(What a waiting task waits on, `unbroken._wakeups`, is shared with the backends' listeners.)
"""

from unbroken._engine.engine import OnEnd, StreamEngine
from unbroken._engine.reading import StreamReader

__all__ = ["OnEnd", "StreamEngine", "StreamReader"]
