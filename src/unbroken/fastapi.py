"""The drop-in chat router for FastAPI (extra ``unbroken[fastapi]``): resumable AI SDK chats.

Give `ResumableChat` an answer function; it serves the routes the AI SDK's ``useChat``
calls, runs each answer in the stream engine (so it outlives the request), and lets any
client resume it from where it was cut, on any worker::

    from collections.abc import AsyncIterator
    from typing import Any

    from fastapi import FastAPI
    from unbroken.fastapi import ChatTurn, ResumableChat

    async def answer(turn: ChatTurn) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "text-start", "id": "t1"}
        yield {"type": "text-delta", "id": "t1", "delta": "Hello!"}
        yield {"type": "text-end", "id": "t1"}

    chat = ResumableChat(answer)                  # memory backend: one process
    app = FastAPI(lifespan=chat.lifespan)         # or: async with chat.running(): in yours
    app.include_router(chat.router)

On the client: ``useChat({ id, resume: true })`` (ai 5+), or ``experimental_resume()`` (ai 4).

The answer function
    ``answer(turn)`` returns an async iterable (an ``async def`` generator) of AI SDK v5 UI
    message chunks: dicts with a ``type`` (see `unbroken.protocols.ai_sdk`), chunk objects,
    or lists of them (what `UIMessageStreamBuilder` returns). The router sends ``start``
    first with ``turn.message_id`` (an answer's own ``start`` keeps its metadata and gets
    that id), and the end the stream reached (``finish``, ``error`` or ``abort``) unless
    the answer sent one. ``turn`` is a `ChatTurn`: ``chat_id``, ``messages`` (UI messages,
    oldest first), ``owner``, ``message_id``, ``stream_id``, ``trigger``, ``protocol``,
    ``extra`` (the body's other fields). An exception in it ends the stream in ``error``:
    clients are told "the stream's producer failed", or the message of a
    `unbroken.StreamSourceError` you raise. A stop cancels it: its generator is closed
    (``GeneratorExit`` at its ``yield``), which is how an adapter stops the framework's run.

Routes (under ``prefix``, default ``/api``)
    ``POST /api/chat``
        A v5+ body ``{id, messages, trigger, messageId?}`` (or vercel/ai-chatbot's
        ``{id, message}``) streams the answer as a UI message stream (SSE); a v4 body
        ``{id, messages}`` as a data stream. Each answer gets its own stream id. A new
        message while an answer runs stops that answer first; the same message sent again
        (a client retry) attaches to its running answer instead of paying for another.
    ``GET /api/chat/{id}/stream`` (ai 5+)
        The chat's latest answer: everything after ``Last-Event-ID`` / ``?after=`` (a full
        replay without either, same message id), then live; also an answer that ended
        less than ``resume_window`` seconds ago (so a client cut just before the end gets
        the rest). 204 when there is nothing to resume.
    ``GET /api/chat?chatId=`` (ai 4)
        The running answer (full replay, then live), the finished one as an
        ``append-message`` line within ``resume_window``, else an empty 200.
    ``POST /api/chat/{id}/stop``
        Cancels the chat's running answer wherever it runs (any worker) -> ``{"chatId",
        "stopped", "streamId", "state"}``. Idempotent. An optional body ``{"streamId": ...}``
        stops only that answer, so a stale stop never cancels a newer one.
    ``?target=<ai version>`` on the POST and the v5 resume fits the events to that client
    (default: the ``target`` argument, ``5.0.0``, which every ai 5+ client accepts).

Owners
    ``owner`` is a FastAPI dependency (any callable FastAPI can call, with its own
    parameters) returning the caller's id, or None. A chat belongs to the owner that first
    posted to it. Another owner's chat is 404 on POST and stop, and "nothing to resume" on
    the resumes, exactly like a chat that does not exist (``useChat({resume: true})``
    resumes a brand-new chat on mount, and must not get an error for it). Without
    ``owner``, every request is the same nobody. An `HTTPException` from the dependency
    (a 401, say) goes out as the app answers it.

Errors
    Every bad input is a 4xx JSON error ``{"error": {"code", "message"}}``: malformed JSON,
    wrong shapes, invalid ids, a malformed ``Last-Event-ID`` (400), a body over
    ``max_body_bytes`` (413). An unreachable stream backend is 503 with ``Retry-After``.
    The routes handle these themselves: the app adds no exception handler.

``on_finish``
    ``async def on_finish(finished: FinishedAnswer)`` receives the assistant UI message the
    stream built (exactly what clients were shown) and its end state (``done``, ``error``,
    ``cancelled``, ``interrupted``) once per answer, whether or not a client is still
    connected: the place to store messages. Called in the producing process, including for
    answers interrupted by a shutdown. If that process dies, the next request for the chat
    on any worker (a message, a resume or a stop) reports it as ``interrupted``, with
    ``turn=None``. A failing ``on_finish`` is logged.

Backends
    ``backend`` (default `unbroken.MemoryBackend`: one process) or ``engine`` (a
    `unbroken.StreamEngine` of yours, with its settings: the chat opens and closes it). With
    `unbroken.backends.redis.RedisBackend` every worker serves every chat: the chat's
    pointer to its latest stream lives in the same Redis (`RedisChatPointers`), and resumes
    and stops work on any worker. Another backend needs ``pointers=`` (a `ChatPointers`).
    A chat's pointer expires with the engine's ``retention``.

Also: ``resume_window`` (seconds; 0 offers no finished answer), ``max_body_bytes``, and
`unbroken.asgi.ResponseOptions` (``keepalive``, ``send_timeout``, ``flush_interval``, ...)
as keyword arguments for every streaming response.
"""

from typing import TYPE_CHECKING

from unbroken.integrations._router.answers import (
    AnswerFunction,
    AnswerItem,
    ChatTurn,
    FinishedAnswer,
    OnFinish,
)
from unbroken.integrations._router.chat import ResumableChat
from unbroken.integrations._router.pointers import (
    ChatPointer,
    ChatPointers,
    MemoryChatPointers,
    Replaced,
)

if TYPE_CHECKING:
    from unbroken.integrations._router.redis_pointers import RedisChatPointers

__all__ = [
    "AnswerFunction",
    "AnswerItem",
    "ChatPointer",
    "ChatPointers",
    "ChatTurn",
    "FinishedAnswer",
    "MemoryChatPointers",
    "OnFinish",
    "RedisChatPointers",
    "Replaced",
    "ResumableChat",
]


def __getattr__(name: str) -> object:
    # The Redis pointers need redis, which this module must not load unless asked.
    if name == "RedisChatPointers":
        from unbroken.integrations._router.redis_pointers import RedisChatPointers

        globals()[name] = RedisChatPointers
        return RedisChatPointers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
