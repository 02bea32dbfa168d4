from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String, Text
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
