"""Chatbots of a customer; every lookup is scoped to the caller's customer."""

from __future__ import annotations

import html
import shutil
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.chatbots.schemas import ChatbotCreate, ChatbotUpdate
from app.core.config import Settings
from app.core.db import after_commit, paginate
from app.core.errors import AdminRequired, NotFound
from app.core.schemas import PageParams
from app.core.security import generate_api_key
from app.models import Chatbot, Role
from app.rag.vector_store import VectorStore
from app.widget.asset import widget_asset


def get_owned_chatbot(
    session: Session, customer_id: uuid.UUID, chatbot_id: uuid.UUID, *, for_update: bool = False
) -> Chatbot:
    """The one way to load a tenant's chatbot: another customer's answers like a missing one."""
    query = select(Chatbot).where(Chatbot.id == chatbot_id, Chatbot.customer_id == customer_id)
    if for_update:
        query = query.with_for_update()
    chatbot = session.scalar(query)
    if chatbot is None:
        raise NotFound("Chatbot not found.")
    return chatbot


def list_chatbots(
    session: Session, customer_id: uuid.UUID, page: PageParams
) -> tuple[list[Chatbot], int]:
    scope = select(Chatbot).where(Chatbot.customer_id == customer_id)
    return paginate(session, scope, page, Chatbot.created_at, Chatbot.id)


ADMIN_FIELDS = ("monthly_token_limit",)


def check_admin_fields(data: ChatbotCreate | ChatbotUpdate, role: Role) -> None:
    """A spend limit is a billing decision: only admins set it (members use chatbots)."""
    sent = [name for name in ADMIN_FIELDS if name in data.model_fields_set]
    if sent and role != Role.admin:
        raise AdminRequired(f"Only an admin can set {', '.join(sent)}.")


def create_chatbot(session: Session, customer_id: uuid.UUID, data: ChatbotCreate) -> Chatbot:
    chatbot = Chatbot(customer_id=customer_id, api_key=generate_api_key(), **data.model_dump())
    session.add(chatbot)
    session.flush()
    return chatbot


def update_chatbot(session: Session, chatbot: Chatbot, data: ChatbotUpdate) -> Chatbot:
    changes = data.model_dump(exclude_unset=True)
    for field, value in changes.items():
        setattr(chatbot, field, value)
    session.flush()
    return chatbot


def rotate_key(session: Session, chatbot: Chatbot) -> Chatbot:
    chatbot.api_key = generate_api_key()
    session.flush()
    return chatbot


def delete_chatbot(
    session: Session, settings: Settings, store: VectorStore, chatbot: Chatbot
) -> None:
    """Rows go with the transaction (documents and history cascade); files and vectors after
    it commits, so a failed delete loses nothing."""
    folder = chatbot_upload_dir(settings, chatbot.customer_id, chatbot.id)
    chatbot_id = chatbot.id
    session.delete(chatbot)
    session.flush()

    def cleanup() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        store.delete_chatbot(chatbot_id)

    after_commit(session, cleanup)


def chatbot_upload_dir(settings: Settings, customer_id: uuid.UUID, chatbot_id: uuid.UUID) -> Path:
    return settings.UPLOAD_DIR / str(customer_id) / str(chatbot_id)


def snippet(settings: Settings, chatbot: Chatbot) -> tuple[str, str]:
    """The tag to paste: the script's URL carries its version, so a release is picked up."""
    base = settings.PUBLIC_BASE_URL.rstrip("/")
    script_url = f"{base}/widget.js?v={widget_asset().version}"
    tag = (
        f'<script src="{html.escape(script_url)}" '
        f'data-chatbot-id="{chatbot.id}" '
        f'data-api-key="{html.escape(chatbot.api_key)}" '
        f'data-api-base="{html.escape(base)}" async></script>'
    )
    return script_url, tag
