from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, Text
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class Passage(Base):
    """A chunk's text, for lexical search beside its vector: written by the ingest worker in
    the step that stores the vectors, gone with its document.

    On SQLite the index is the FTS5 table `passages_fts` over this one (external content,
    kept in step by triggers), created by the migration, unknown to the models."""

    __tablename__ = "passages"
    __table_args__ = (
        Index("ix_passages_document_id_chunk_index", "document_id", "chunk_index"),
        # PostgreSQL full-text search; SQLite uses the FTS5 table instead.
        Index("ix_passages_tsv", "tsv", postgresql_using="gin").ddl_if(dialect="postgresql"),
    )

    # An integer key: on SQLite it is the rowid the FTS5 table points at.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    chatbot_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chatbots.id", ondelete="CASCADE"), index=True
    )
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    chunk_index: Mapped[int]
    page: Mapped[int | None]
    text: Mapped[str] = mapped_column(Text)
    # The chunk's heading path ("Returns > Refunds"), also the first line of `text`.
    heading: Mapped[str | None] = mapped_column(Text)
    # to_tsvector(<the chatbot's language>, text) on PostgreSQL; unused (NULL) on SQLite.
    tsv: Mapped[str | None] = mapped_column(Text().with_variant(TSVECTOR(), "postgresql"))
