"""The reference chat service (extra ``unbroken[chat]``): ``unbroken chat`` runs it.

`unbroken.chat.app.create_app` builds the FastAPI app from `unbroken.chat.settings.Settings`.
Nothing here is imported by ``import unbroken``; the optional dependencies load only with
the chat modules themselves.
"""
