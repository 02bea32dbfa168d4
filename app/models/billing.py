from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, Numeric, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UUIDPk, utcnow


class InvoiceStatus(enum.StrEnum):
    """What is stored; `overdue` is derived (pending past its due date), never stored."""

    pending = "pending"
    paid = "paid"
    void = "void"


class Billing(UUIDPk, Base):
    """An invoice: an order for a token pack, credited to the balance when paid."""

    __tablename__ = "billing"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'paid', 'void')", name="status_known"),
        Index("ix_billing_customer_id_issued_at", "customer_id", "issued_at"),
    )

    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    invoice_number: Mapped[str] = mapped_column(String(32), unique=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    status: Mapped[str] = mapped_column(String(16), default=InvoiceStatus.pending)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    due_date: Mapped[datetime]

    tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    currency: Mapped[str] = mapped_column(String(3), server_default="USD")
    # The price per 1,000 tokens when ordered: the PDF shows the line as it was sold.
    unit_price: Mapped[Decimal] = mapped_column(Numeric(10, 4), server_default="0")
    ordered_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    paid_at: Mapped[datetime | None]
    # Who marked it paid: `operator` (the CLI) or `webhook:<event id>`.
    paid_via: Mapped[str | None] = mapped_column(String(300))
    voided_at: Mapped[datetime | None]


class InvoiceCounter(Base):
    """The last invoice number given out per year; taken in the ordering transaction, so
    numbers are gap-free and unique however many orders race."""

    __tablename__ = "invoice_counters"

    year: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_number: Mapped[int] = mapped_column(default=0)


class BillingEvent(Base):
    """A payment provider's event, kept by its id: the same event is applied once."""

    __tablename__ = "billing_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("billing.id", ondelete="SET NULL"), index=True
    )
    outcome: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class TokenCredit(UUIDPk, Base):
    """Every credit to a balance: an operator's grant (with its reason) or a paid invoice
    (at most one credit per invoice, enforced by the unique key)."""

    __tablename__ = "token_credits"

    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    tokens: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # grant | invoice
    reason: Mapped[str] = mapped_column(Text)
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("billing.id", ondelete="SET NULL"), unique=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChatbotMonthlyUsage(Base):
    """Tokens a chatbot spent (or has reserved) in a calendar month (UTC): what its
    `monthly_token_limit` is checked against, with one guarded statement."""

    __tablename__ = "chatbot_monthly_usage"

    chatbot_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chatbots.id", ondelete="CASCADE"), primary_key=True
    )
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
