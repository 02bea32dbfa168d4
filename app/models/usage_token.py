from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, UUIDPk, utcnow

if TYPE_CHECKING:
    from app.models.customer import Customer


class UsageToken(UUIDPk, Base):
    """A customer's token balance; one row per customer, changed only by atomic updates."""

    __tablename__ = "usage_tokens"
    __table_args__ = (CheckConstraint("tokens_remaining >= 0", name="tokens_remaining_nonneg"),)

    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), unique=True
    )
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tokens_remaining: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    input_tokens_used: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_tokens_used: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_updated: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="usage", lazy="raise")
