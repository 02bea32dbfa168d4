"""A payment provider's webhook: signed like Stripe signs (HMAC-SHA256 over the timestamp and
the raw body), applied once per event id."""

from __future__ import annotations

import hashlib
import hmac
import time
from decimal import Decimal

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.billing.invoices import invoice_by_number, pay_invoice
from app.billing.schemas import WebhookEvent, WebhookReceipt
from app.core.db import insert_for
from app.core.errors import AppError, Conflict
from app.models import BillingEvent

SIGNATURE_HEADER = "Billing-Signature"
PAID_EVENT = "invoice.paid"


class InvalidSignature(AppError):
    status_code = 400
    code = "invalid_signature"
    default_detail = (
        f"The {SIGNATURE_HEADER} header is missing, malformed, stale or does not match the body."
    )


class PaymentMismatch(Conflict):
    code = "payment_mismatch"
    default_detail = "The event's amount or currency differs from the invoice's."


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value a provider sends: `t=<unix seconds>,v1=<hex HMAC-SHA256>`."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(
    secret: str, header: str | None, body: bytes, tolerance: int, now: float | None = None
) -> None:
    """Raise InvalidSignature unless one `v1` matches and `t` is within the tolerance."""
    parts: dict[str, list[str]] = {}
    for item in (header or "").split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError) as exc:
        raise InvalidSignature() from exc
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        raise InvalidSignature(
            f"The event's timestamp is more than {tolerance} seconds away from now; "
            "replays are refused."
        )
    expected = _digest(secret, timestamp, body)
    # Several v1 values: the provider is rolling its secret.
    if not any(hmac.compare_digest(expected, given) for given in parts.get("v1", [])):
        raise InvalidSignature()


def apply_event(session: Session, event: WebhookEvent) -> WebhookReceipt:
    """Record the event (its id is unique: a repeat, even concurrent, finds it) and, for a
    payment, pay the invoice, all in the caller's transaction."""
    table = BillingEvent.__table__
    recorded = session.execute(
        insert_for(session)(table)
        .values(id=event.id, type=event.type, outcome="received")
        .on_conflict_do_nothing(index_elements=[table.c.id])
        .returning(table.c.id)
    ).first()
    if recorded is None:
        return WebhookReceipt(event_id=event.id, outcome="duplicate")
    outcome, invoice_number = "ignored", None
    invoice_id = None
    if event.type == PAID_EVENT:
        invoice = invoice_by_number(session, event.data.invoice_number or "")
        _check_amount(event, invoice.amount, invoice.currency)
        payment = pay_invoice(session, invoice.id, f"webhook:{event.id}")
        outcome = "paid" if payment.credited else "already_paid"
        invoice_number, invoice_id = invoice.invoice_number, invoice.id
    session.execute(
        update(BillingEvent)
        .where(BillingEvent.id == event.id)
        .values(outcome=outcome, invoice_id=invoice_id)
    )
    return WebhookReceipt(event_id=event.id, outcome=outcome, invoice_number=invoice_number)


def _check_amount(event: WebhookEvent, amount: Decimal, currency: str) -> None:
    data = event.data
    if (data.amount is not None and data.amount != amount) or (
        data.currency is not None and data.currency.upper() != currency
    ):
        raise PaymentMismatch(
            f"The event pays {data.amount} {data.currency or ''}, the invoice is for "
            f"{amount} {currency}; nothing was changed."
        )
