"""Chatbots of a customer; every lookup is scoped to the caller's customer."""

from __future__ import annotations

import html
import shutil
import uuid
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.billing.service import release_chatbot_reservations
from app.chatbots.schemas import ChatbotCreate, ChatbotUpdate
from app.core.config import Settings
from app.core.db import after_commit, paginate
from app.core.errors import AdminRequired, Conflict, NotFound
from app.core.schemas import PageParams
from app.core.security import generate_api_key
from app.documents import passages
from app.ingest import deletions
from app.models import Chatbot, Customer, Role
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


# Who may embed a chatbot, what it is told to be, and what it may spend are the business's
# decisions: admins set them; members use chatbots (documents, questions, name, welcome).
ADMIN_FIELDS = ("allowed_origins", "system_prompt", "monthly_token_limit")


class ChatbotLimitReached(Conflict):
    code = "chatbot_limit_reached"


def check_admin_fields(data: ChatbotCreate | ChatbotUpdate, role: Role) -> None:
    sent = [name for name in ADMIN_FIELDS if name in data.model_fields_set]
    if sent and role != Role.admin:
        raise AdminRequired(f"Only an admin can set {', '.join(sent)}.")


def create_chatbot(
    session: Session, settings: Settings, customer_id: uuid.UUID, data: ChatbotCreate
) -> Chatbot:
    # The customer's row is the lock: two concurrent creations cannot both pass the count.
    session.scalar(select(Customer.id).where(Customer.id == customer_id).with_for_update())
    count = session.scalar(
        select(func.count()).select_from(Chatbot).where(Chatbot.customer_id == customer_id)
    )
    if (count or 0) >= settings.MAX_CHATBOTS_PER_CUSTOMER:
        raise ChatbotLimitReached(
            f"A customer has at most {settings.MAX_CHATBOTS_PER_CUSTOMER} chatbots; delete one "
            "you no longer use, or ask the operator to raise MAX_CHATBOTS_PER_CUSTOMER."
        )
    chatbot = Chatbot(customer_id=customer_id, api_key=generate_api_key(), **data.model_dump())
    session.add(chatbot)
    session.flush()
    return chatbot


def update_chatbot(session: Session, chatbot: Chatbot, data: ChatbotUpdate) -> Chatbot:
    changes = data.model_dump(exclude_unset=True)
    relanguage = "language" in changes and changes["language"] != chatbot.language
    for field, value in changes.items():
        setattr(chatbot, field, value)
    session.flush()
    if relanguage:
        passages.relanguage(session, chatbot.id, chatbot.language)
    return chatbot


def rotate_key(session: Session, chatbot: Chatbot) -> Chatbot:
    chatbot.api_key = generate_api_key()
    session.flush()
    return chatbot


def delete_chatbot(
    session: Session, settings: Settings, store: VectorStore, chatbot: Chatbot
) -> None:
    """Rows go with the transaction (documents and history cascade), with the record of its
    collection to delete; files and vectors after it commits, so a failed delete loses
    nothing, and a vector store that is down only delays it (the ingest workers retry)."""
    folder = chatbot_upload_dir(settings, chatbot.customer_id, chatbot.id)
    chatbot_id = chatbot.id
    # Answers in progress: their reservations would cascade away with the chatbot and their
    # tokens with them; give them back first.
    release_chatbot_reservations(session, chatbot_id)
    session.delete(chatbot)
    session.flush()
    deletions.delete_vectors(session, store, chatbot_id)
    after_commit(session, lambda: shutil.rmtree(folder, ignore_errors=True))


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
