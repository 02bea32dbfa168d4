from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Date, ForeignKey, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UUIDPk, utcnow


class TokenReservation(Base):
    """Tokens taken from a balance (and a chatbot's month) for a question being answered.

    Written in the reserving transaction, deleted by the one that settles or gives it back; a
    row that outlives its request (a crashed process) is given back by a sweep. While it
    exists it also counts as one answer in progress for the chatbot's concurrency limit."""

    __tablename__ = "token_reservations"
    __table_args__ = (Index("ix_token_reservations_created_at", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)  # the answer's message id
    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    chatbot_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chatbots.id", ondelete="CASCADE"), index=True
    )
    month: Mapped[date] = mapped_column(Date)
    tokens: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PendingDeletion(UUIDPk, Base):
    """Vectors still to remove from the store: a deleted document's, or a deleted chatbot's
    whole collection. Written with the deletion, removed once the store confirmed it, so an
    outage of the vector store only delays the cleanup (workers sweep these rows)."""

    __tablename__ = "pending_deletions"

    # No foreign keys: the rows they name are gone by design.
    chatbot_id: Mapped[uuid.UUID] = mapped_column(index=True)
    document_id: Mapped[uuid.UUID | None]  # None: the chatbot's whole collection
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    not_before: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
