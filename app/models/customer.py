from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, JSONType, Timestamps, UUIDPk

if TYPE_CHECKING:
    from app.models.usage_token import UsageToken


class Customer(UUIDPk, Timestamps, Base):
    """A tenant: the business that signed up."""

    __tablename__ = "customers"

    name: Mapped[str] = mapped_column(String(200))
    contact_email: Mapped[str] = mapped_column(String(320), unique=True)
    billing_info: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # The seed's running total of tokens used; kept equal to usage_tokens.tokens_used.
    usage_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    # Demo messages used across all of its chatbots, deleted ones included.
    demo_messages_used: Mapped[int] = mapped_column(default=0, server_default="0")
    # When one of its documents was last claimed for ingestion: the queue serves the
    # customer served longest ago first.
    last_ingest_at: Mapped[datetime | None]

    usage: Mapped[UsageToken | None] = relationship(
        back_populates="customer", uselist=False, lazy="raise"
    )
