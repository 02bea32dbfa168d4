from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Enum, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UUIDPk, utcnow


class DocumentStatus(enum.StrEnum):
    queued = "queued"
    processing = "processing"
    ready = "ready"
    failed = "failed"


class Document(UUIDPk, Base):
    """An uploaded file, and its ingestion job: the row is the queue entry."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("chatbot_id", "content_hash", name="uq_documents_chatbot_id_content_hash"),
        Index("ix_documents_status_uploaded_at", "status", "uploaded_at"),
    )

    chatbot_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chatbots.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(String(255))
    # Relative to UPLOAD_DIR: {customer_id}/{chatbot_id}/<generated name>.
    file_path: Mapped[str] = mapped_column(String(1024))
    file_type: Mapped[str] = mapped_column(String(16))
    metadata_json: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)

    status: Mapped[DocumentStatus] = mapped_column(
        Enum(DocumentStatus, name="document_status", native_enum=False, length=16),
        default=DocumentStatus.queued,
        server_default=DocumentStatus.queued.value,
    )
    progress: Mapped[float] = mapped_column(default=0.0, server_default="0")
    chunk_count: Mapped[int] = mapped_column(default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
