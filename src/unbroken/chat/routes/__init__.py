"""The chat service's HTTP routes."""

from fastapi import APIRouter

from unbroken.chat.routes import chat, chats, system

__all__ = ["router"]

router = APIRouter()
router.include_router(chat.router)
router.include_router(chats.router)
router.include_router(system.router)
