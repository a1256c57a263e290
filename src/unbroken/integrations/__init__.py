"""Ways into unbroken for an existing app (extra ``unbroken[fastapi]``, plus one per framework).

- `unbroken.fastapi`: the drop-in chat router. Give it an answer function (an async iterator
  of AI SDK v5 UI message chunks) and it serves the AI SDK chat routes with resumable
  answers: ``POST /api/chat``, ``GET /api/chat/{id}/stream`` (v5+ resume),
  ``GET /api/chat?chatId=`` (v4 resume) and ``POST /api/chat/{id}/stop``.
- Adapters, one module each beside this file, turn a framework's stream into UI message
  chunks for that answer function; each is imported only when used, behind its own extra.

Nothing here is imported by ``import unbroken``.
"""
