from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, ForeignKey, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, Timestamps, UUIDPk


class Chatbot(UUIDPk, Timestamps, Base):
    __tablename__ = "chatbots"

    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    api_key: Mapped[str] = mapped_column(String(128), unique=True)
    demo_message_count: Mapped[int] = mapped_column(default=0, server_default="0")
    system_prompt: Mapped[str | None] = mapped_column(Text)
    temperature: Mapped[float | None]
    top_k: Mapped[int] = mapped_column(default=5, server_default="5")
    allowed_origins: Mapped[list[str]] = mapped_column(JSONType, default=list)
    welcome_message: Mapped[str | None] = mapped_column(Text)
    # Tokens the chatbot may spend per calendar month (UTC); None: no cap. Set by admins.
    monthly_token_limit: Mapped[int | None] = mapped_column(BigInteger)
    # Reindex asked for: the next worker that claims one of its documents drops the old
    # collection first (so any process can ask, and a crash between the two loses nothing).
    rebuild_pending: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Retrieval: None follows RETRIEVAL_MODE; the text-search language of PostgreSQL
    # (a regconfig such as "english"), None: "simple" (no stemming, no stop words).
    retrieval_mode: Mapped[str | None] = mapped_column(String(16))
    language: Mapped[str | None] = mapped_column(String(32))
