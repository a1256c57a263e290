"""Wire protocols unbroken speaks, each an encoder a streaming response writes through.

- `StreamEncoder`: the contract every protocol's encoder keeps (see `unbroken.asgi`).
- `SSEEncoder`: plain Server-Sent Events for text streams (``id: <seq>``, the text as data).
- ``ai_sdk``: the Vercel AI SDK's UI message stream (v5+) and data stream (v4).
"""

from unbroken.protocols._encoder import StreamEncoder
from unbroken.protocols._plain_sse import SSE_HEADERS, SSEEncoder

__all__ = ["SSE_HEADERS", "SSEEncoder", "StreamEncoder"]

# Exported classes report this module (`unbroken.protocols.SSEEncoder`), not the private one
# that defines them: it is the name users import.
StreamEncoder.__module__ = SSEEncoder.__module__ = __name__
