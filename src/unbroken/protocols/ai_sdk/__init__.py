"""The Vercel AI SDK wire protocols, so the real ``useChat`` works against a Python server.

The canonical event is the v5 **UI message chunk** (a JSON object with a ``type``; typed
classes such as `TextDeltaChunk` build them). An AI SDK stream stores one event per engine
chunk, as compact JSON (`encode_event` / `decode_event`), so one stored stream can be read in
either protocol:

- `UIMessageStreamEncoder`: AI SDK v5+ UI message stream (SSE, ``id: <seq>`` on each event,
  ``data: [DONE]`` last), fitted to a client version (`ClientTarget`, default ``5.0.0``).
- `DataStreamEncoder`: AI SDK v4 data stream protocol (``CODE:JSON`` lines).
- `UIMessageStreamResponse`, `DataStreamResponse` and `append_message_response`: the
  Starlette/FastAPI responses that write them (extra ``unbroken[fastapi]``; starlette is
  imported on first use of one of them, not with this package).

How a stream's end is written (unless the stream already ended itself with ``finish``,
``error`` or ``abort``):

=================  =================================  ======================================
engine state       v5+                                v4
=================  =================================  ======================================
``done``           ``finish``                         ``d:{"finishReason":"stop"}``
``error``          ``error`` (the stream's safe       ``3:"<message>"``
                   message)
``interrupted``    ``error`` (the safe message)       ``3:"<message>"``
``cancelled``      ``abort``                          ``d:{"finishReason":"other"}``
=================  =================================  ======================================

Replays: reading from the start replays every event, so the client gets the ``start`` with
the server-generated ``messageId`` again and replaces the message instead of duplicating it.
Reading after an offset (``Last-Event-ID`` or ``?after=``) sends only the events after it and
nothing else: that client already has the ``start`` and the open parts' ``*-start`` events,
and a second ``start`` would be wrong for it. A client that has nothing must read from the
start. Consecutive deltas of one part may be merged in a catch-up; a merged frame's ``id`` is
the sequence number of its last chunk.

Also: `parse_chat_request` (POST bodies of v4, v5 and vercel/ai-chatbot), `UIMessageAssembler`
(the message a stream builds, as ``readUIMessageStream`` builds it), `ui_message_to_v4`,
`UIMessageStreamBuilder` and `ui_events_to_chunks` for producers.
"""

from types import FunctionType as _FunctionType
from typing import TYPE_CHECKING, Any

from unbroken.protocols.ai_sdk._assembler import UIMessageAssembler, parse_partial_json
from unbroken.protocols.ai_sdk._builder import (
    UIMessageStreamBuilder,
    generate_id,
    ui_events_to_chunks,
)
from unbroken.protocols.ai_sdk._chunks import (
    AbortChunk,
    BaseChunk,
    DataChunk,
    ErrorChunk,
    FileChunk,
    FinishChunk,
    FinishReason,
    FinishStepChunk,
    MessageMetadataChunk,
    ReasoningDeltaChunk,
    ReasoningEndChunk,
    ReasoningStartChunk,
    SourceDocumentChunk,
    SourceUrlChunk,
    StartChunk,
    StartStepChunk,
    TextDeltaChunk,
    TextEndChunk,
    TextStartChunk,
    ToolApprovalRequestChunk,
    ToolInputAvailableChunk,
    ToolInputDeltaChunk,
    ToolInputErrorChunk,
    ToolInputStartChunk,
    ToolOutputAvailableChunk,
    ToolOutputDeniedChunk,
    ToolOutputErrorChunk,
    UIEvent,
    UIMessageChunk,
    chunk_from_dict,
    decode_event,
    encode_event,
    event_to_dict,
)
from unbroken.protocols.ai_sdk._convert import ui_message_to_v4, v4_message_to_ui
from unbroken.protocols.ai_sdk._data_stream import (
    DATA_STREAM_HEADERS,
    DataStreamEncoder,
    append_message_line,
)
from unbroken.protocols.ai_sdk._request import ChatRequest, is_valid_id, parse_chat_request
from unbroken.protocols.ai_sdk._targets import KNOWN_CHUNK_TYPES, ClientTarget
from unbroken.protocols.ai_sdk._ui_stream import UI_MESSAGE_STREAM_HEADERS, UIMessageStreamEncoder

if TYPE_CHECKING:
    from unbroken.protocols.ai_sdk._responses import (
        DataStreamResponse,
        UIMessageStreamResponse,
        append_message_response,
    )

__all__ = [
    "DATA_STREAM_HEADERS",
    "KNOWN_CHUNK_TYPES",
    "UI_MESSAGE_STREAM_HEADERS",
    "AbortChunk",
    "BaseChunk",
    "ChatRequest",
    "ClientTarget",
    "DataChunk",
    "DataStreamEncoder",
    "DataStreamResponse",
    "ErrorChunk",
    "FileChunk",
    "FinishChunk",
    "FinishReason",
    "FinishStepChunk",
    "MessageMetadataChunk",
    "ReasoningDeltaChunk",
    "ReasoningEndChunk",
    "ReasoningStartChunk",
    "SourceDocumentChunk",
    "SourceUrlChunk",
    "StartChunk",
    "StartStepChunk",
    "TextDeltaChunk",
    "TextEndChunk",
    "TextStartChunk",
    "ToolApprovalRequestChunk",
    "ToolInputAvailableChunk",
    "ToolInputDeltaChunk",
    "ToolInputErrorChunk",
    "ToolInputStartChunk",
    "ToolOutputAvailableChunk",
    "ToolOutputDeniedChunk",
    "ToolOutputErrorChunk",
    "UIEvent",
    "UIMessageAssembler",
    "UIMessageChunk",
    "UIMessageStreamBuilder",
    "UIMessageStreamEncoder",
    "UIMessageStreamResponse",
    "append_message_line",
    "append_message_response",
    "chunk_from_dict",
    "decode_event",
    "encode_event",
    "event_to_dict",
    "generate_id",
    "is_valid_id",
    "parse_chat_request",
    "parse_partial_json",
    "ui_events_to_chunks",
    "ui_message_to_v4",
    "v4_message_to_ui",
]

# The responses need starlette, which this package must not load: they are imported on first
# use (a missing starlette then raises MissingDependencyError naming the extra).
_RESPONSES = frozenset({"DataStreamResponse", "UIMessageStreamResponse", "append_message_response"})


def _show_here(member: object) -> None:
    # Exported names report this module (`unbroken.protocols.ai_sdk.UIMessageChunk`), not
    # the private one that defines them: it is the name users import.
    if isinstance(member, type | _FunctionType):
        member.__module__ = __name__


for _name in __all__:
    if _name not in _RESPONSES:
        _show_here(globals()[_name])
del _name


def __getattr__(name: str) -> Any:
    if name in _RESPONSES:
        from unbroken.protocols.ai_sdk import _responses

        value = getattr(_responses, name)
        _show_here(value)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_RESPONSES})
