from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field, computed_field

from app.core.schemas import Schema
from app.models.document import DocumentStatus


class Document(Schema):
    id: uuid.UUID
    chatbot_id: uuid.UUID
    filename: str = Field(description="The name it was uploaded with (display only).")
    file_type: str = Field(description="Detected from the content: pdf, docx, html, md, txt, csv.")
    size_bytes: int
    content_hash: str | None = Field(description="SHA-256 of the file.")
    status: DocumentStatus
    progress: float = Field(description="0..1: chunks embedded / total while processing.")
    chunk_count: int
    error: str | None = Field(description="Why it failed (or the last transient error).")
    attempts: int
    uploaded_at: datetime
    processed_at: datetime | None
    metadata_json: dict[str, Any] = Field(exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def pages(self) -> int | None:
        """Pages of a PDF that held text (None for other types or before processing)."""
        value = self.metadata_json.get("pages")
        return int(value) if isinstance(value, int) else None


class Reindex(Schema):
    chatbot_id: uuid.UUID
    documents_queued: int
    embedding_model: str
