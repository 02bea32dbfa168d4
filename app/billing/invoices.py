"""Invoices: ordering a token pack (numbered per year, gap-free), paying it exactly once,
voiding it. Money is Decimal from the setting to the database (NUMERIC(10,2))."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.orm import Session

from app.billing.service import credit_tokens
from app.core.config import Settings
from app.core.db import insert_for, paginate
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.core.schemas import PageParams
from app.models import Billing, Customer, InvoiceCounter, InvoiceStatus
from app.models.base import utcnow

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("99999999.99")  # NUMERIC(10,2)
STATUSES = ("pending", "paid", "void", "overdue")


class InvoiceNotPending(Conflict):
    code = "invoice_not_pending"
    default_detail = "Only a pending invoice can be voided."


class InvoiceNotPayable(Conflict):
    code = "invoice_void"
    default_detail = "This invoice was voided; it cannot be paid."


def price(tokens: int, per_1k: Decimal) -> Decimal:
    """The amount for `tokens`, rounded half-to-even to the cent (banker's rounding)."""
    return (Decimal(tokens) * per_1k / 1000).quantize(CENT, rounding=ROUND_HALF_EVEN)


def rate(per_1k: Decimal) -> str:
    """A price per 1,000 tokens as written: at least cents, more digits only where set."""
    text = f"{per_1k.normalize():f}"
    return text if len(text.partition(".")[2]) > 2 else f"{per_1k:.2f}"


def status_of(invoice: Billing, now: datetime | None = None) -> str:
    """The status a client sees: a pending invoice past its due date is `overdue`."""
    if invoice.status == InvoiceStatus.pending and invoice.due_date < (now or utcnow()):
        return "overdue"
    return invoice.status


def _next_number(session: Session, year: int) -> str:
    """Take the year's next number: one upsert on the counter row, which stays locked until
    the order commits (a rolled-back order gives its number back, so there are no gaps)."""
    table = InvoiceCounter.__table__
    insert = insert_for(session)(table).values(year=year, last_number=1)
    number = session.scalar(
        insert.on_conflict_do_update(
            index_elements=[table.c.year], set_={"last_number": table.c.last_number + 1}
        ).returning(table.c.last_number)
    )
    return f"INV-{year}-{int(number):06d}"


def order_invoice(
    session: Session,
    settings: Settings,
    customer_id: uuid.UUID,
    tokens: int,
    ordered_by: uuid.UUID | None = None,
) -> Billing:
    if not settings.INVOICE_MIN_TOKENS <= tokens <= settings.INVOICE_MAX_TOKENS:
        raise ValidationFailed(
            f"A token pack has {settings.INVOICE_MIN_TOKENS:,} to "
            f"{settings.INVOICE_MAX_TOKENS:,} tokens.",
            loc=("body", "tokens"),
        )
    amount = price(tokens, settings.PRICE_PER_1K_TOKENS)
    if amount > MAX_AMOUNT:
        raise ValidationFailed("That pack costs more than one invoice can hold.", loc=("body",))
    now = utcnow()
    invoice = Billing(
        customer_id=customer_id,
        invoice_number=_next_number(session, now.year),
        amount=amount,
        currency=settings.CURRENCY,
        unit_price=settings.PRICE_PER_1K_TOKENS,
        tokens=tokens,
        status=InvoiceStatus.pending,
        issued_at=now,
        due_date=now + timedelta(days=settings.INVOICE_DUE_DAYS),
        ordered_by=ordered_by,
    )
    session.add(invoice)
    session.flush()
    return invoice


def _filter(status: str | None, now: datetime) -> list[ColumnElement[bool]]:
    if status == "overdue":
        return [Billing.status == InvoiceStatus.pending, Billing.due_date < now]
    if status == "pending":
        return [Billing.status == InvoiceStatus.pending, Billing.due_date >= now]
    return [Billing.status == status] if status else []


def list_invoices(
    session: Session, customer_id: uuid.UUID | None, page: PageParams, status: str | None = None
) -> tuple[list[Billing], int]:
    """Newest first; `customer_id` None lists every customer's (the operator's CLI)."""
    scope = select(Billing).where(*_filter(status, utcnow()))
    if customer_id is not None:
        scope = scope.where(Billing.customer_id == customer_id)
    return paginate(session, scope, page, Billing.issued_at.desc(), Billing.invoice_number.desc())


def get_owned_invoice(session: Session, customer_id: uuid.UUID, invoice_id: uuid.UUID) -> Billing:
    """Another customer's invoice answers like a missing one."""
    invoice = session.scalar(
        select(Billing).where(Billing.id == invoice_id, Billing.customer_id == customer_id)
    )
    if invoice is None:
        raise NotFound("Invoice not found.")
    return invoice


def invoice_by_number(session: Session, number: str) -> Billing:
    invoice = session.scalar(select(Billing).where(Billing.invoice_number == number.strip()))
    if invoice is None:
        raise NotFound(f"No invoice {number.strip()}.")
    return invoice


def customer_of(session: Session, invoice: Billing) -> Customer:
    customer = session.get(Customer, invoice.customer_id)
    assert customer is not None  # the foreign key cascades
    return customer


def void_invoice(session: Session, invoice: Billing) -> Billing:
    voided = session.execute(
        update(Billing)
        .where(Billing.id == invoice.id, Billing.status == InvoiceStatus.pending)
        .values(status=InvoiceStatus.void, voided_at=utcnow())
        .returning(Billing.id)
    ).first()
    if voided is None:
        session.refresh(invoice)
        raise InvoiceNotPending(
            f"{invoice.invoice_number} is {invoice.status}; only a pending invoice can be voided."
        )
    session.refresh(invoice)
    return invoice


@dataclass(frozen=True)
class Payment:
    invoice: Billing
    credited: bool  # False: it was already paid (nothing credited this time)


def pay_invoice(session: Session, invoice_id: uuid.UUID, via: str) -> Payment:
    """Mark the invoice paid and credit its tokens, in the caller's transaction, exactly once:
    the guarded UPDATE lets one payer through (concurrent ones wait on the row, then find it
    paid), and the credit's unique invoice key would refuse a second credit anyway."""
    paid = session.execute(
        update(Billing)
        .where(and_(Billing.id == invoice_id, Billing.status == InvoiceStatus.pending))
        .values(status=InvoiceStatus.paid, paid_at=utcnow(), paid_via=via[:300])
        .returning(Billing.customer_id, Billing.tokens, Billing.invoice_number)
    ).first()
    invoice = session.get(Billing, invoice_id, populate_existing=True)
    if invoice is None:
        raise NotFound("Invoice not found.")
    if paid is None:
        if invoice.status == InvoiceStatus.void:
            raise InvoiceNotPayable(f"{invoice.invoice_number} was voided; it cannot be paid.")
        return Payment(invoice, credited=False)
    customer_id, tokens, number = paid
    credit_tokens(
        session,
        customer_id,
        int(tokens),
        kind="invoice",
        reason=f"{number} paid ({via})",
        invoice_id=invoice_id,
    )
    return Payment(invoice, credited=True)
