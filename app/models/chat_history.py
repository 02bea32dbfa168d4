from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UUIDPk, utcnow


class ChatHistory(UUIDPk, Base):
    """One answered question: what was asked, answered, cited and charged."""

    __tablename__ = "chat_history"
    __table_args__ = (
        Index("ix_chat_history_chatbot_id_timestamp", "chatbot_id", "timestamp"),
        Index(
            "ix_chat_history_chatbot_id_session_id_timestamp",
            "chatbot_id",
            "session_id",
            "timestamp",
        ),
    )

    chatbot_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("chatbots.id", ondelete="CASCADE"))
    # Null for public visitors; kept (set null) when the user is deleted.
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)

    session_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    input_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    sources: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONType, default=list, server_default=text("'[]'")
    )
    latency_ms: Mapped[int] = mapped_column(default=0, server_default="0")
    # llm | extractive | fallback
    mode: Mapped[str] = mapped_column(String(16), default="llm", server_default="llm")
    is_demo: Mapped[bool] = mapped_column(default=False, server_default=false())
    # True when the visitor left before the answer was complete (what was generated is kept).
    interrupted: Mapped[bool] = mapped_column(default=False, server_default=false())
