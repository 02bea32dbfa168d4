from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from pydantic import BeforeValidator

from app.auth.dependencies import AdminUser, CurrentUser
from app.billing import invoices, service, usage, webhook
from app.billing.pdf import render_invoice
from app.billing.schemas import (
    Invoice,
    InvoiceCreate,
    InvoiceState,
    Period,
    UsageSummary,
    WebhookEvent,
    WebhookReceipt,
)
from app.core.db import SessionDep
from app.core.deps import SettingsDep
from app.core.errors import PayloadTooLarge, ServiceUnavailable, ValidationFailed
from app.core.schemas import Page, Pagination, errors
from app.models import Billing

router = APIRouter(tags=["billing"])


def _iso_day(value: object) -> object:
    # A day as YYYY-MM-DD only (pydantic alone would also take a number of seconds).
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("a day is written YYYY-MM-DD")
    return value


Day = Annotated[date | None, BeforeValidator(_iso_day)]
From = Annotated[Day, Query(alias="from", description="First day (UTC), included.")]
To = Annotated[Day, Query(alias="to", description="Last day (UTC), included.")]
WEBHOOK_MAX_BYTES = 64 * 1024


@router.get(
    "/api/usage",
    response_model=UsageSummary,
    response_model_by_alias=True,
    responses=errors(401, 422),
    summary="Your balance and totals, and a period's usage per chatbot and per day",
)
def get_usage(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    start: From = None,
    end: To = None,
) -> UsageSummary:
    first, last = usage.period(start, end)
    report = usage.usage_report(session, user.customer_id, first, last)
    balance = service.get_usage(session, user.customer_id)
    return UsageSummary(
        tokens_used=balance.tokens_used,
        tokens_remaining=balance.tokens_remaining,
        input_tokens_used=balance.input_tokens_used,
        output_tokens_used=balance.output_tokens_used,
        last_updated=balance.last_updated,
        low_balance=balance.tokens_remaining < settings.LOW_BALANCE_TOKENS,
        low_balance_threshold=settings.LOW_BALANCE_TOKENS,
        period=Period.model_validate({"from": first, "to": last}),
        totals=_counts(report.totals),
        by_chatbot=[
            {
                **_counts(line.counts),
                "chatbot_id": line.chatbot_id,
                "name": line.name,
                "monthly_token_limit": line.monthly_token_limit,
                "month_tokens": line.month_tokens,
                "limit_reached": line.limit_reached,
            }
            for line in report.by_chatbot
        ],
        by_day=[{**_counts(counts), "date": day} for day, counts in report.by_day],
    )


def _counts(counts: usage.Counts) -> dict[str, int]:
    return {
        "questions": counts.questions,
        "input_tokens": counts.input_tokens,
        "output_tokens": counts.output_tokens,
        "total_tokens": counts.total_tokens,
        "demo_messages": counts.demo_messages,
        "demo_tokens": counts.demo_tokens,
    }


@router.get(
    "/api/usage/export.csv",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "One row per day and chatbot"},
        **errors(401, 422),
    },
    summary="A period's usage as CSV (one row per day and chatbot)",
)
def export_usage(
    user: CurrentUser, session: SessionDep, start: From = None, end: To = None
) -> Response:
    first, last = usage.period(start, end)
    report = usage.usage_report(session, user.customer_id, first, last)
    return Response(
        usage.usage_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="usage-{first}-{last}.csv"'},
    )


def invoice_out(invoice: Billing) -> Invoice:
    out = Invoice.model_validate(invoice)
    return out.model_copy(update={"status": invoices.status_of(invoice)})


def owned_invoice(invoice_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Billing:
    return invoices.get_owned_invoice(session, user.customer_id, invoice_id)


OwnedInvoice = Annotated[Billing, Depends(owned_invoice)]


@router.post(
    "/api/billing/invoices",
    status_code=status.HTTP_201_CREATED,
    response_model=Invoice,
    responses=errors(401, 403, 422),
    summary="Order a token pack: a pending invoice at the configured price (admin)",
)
def order_invoice(
    data: InvoiceCreate, admin: AdminUser, session: SessionDep, settings: SettingsDep
) -> Invoice:
    invoice = invoices.order_invoice(session, settings, admin.customer_id, data.tokens, admin.id)
    return invoice_out(invoice)


@router.get(
    "/api/billing/invoices",
    response_model=Page[Invoice],
    responses=errors(401, 422),
    summary="Your invoices, newest first",
)
def list_invoices(
    user: CurrentUser,
    session: SessionDep,
    page: Pagination,
    state: Annotated[InvoiceState | None, Query(alias="status")] = None,
) -> Page[Invoice]:
    rows, total = invoices.list_invoices(session, user.customer_id, page, state)
    return Page[Invoice](
        items=[invoice_out(row) for row in rows], total=total, limit=page.limit, offset=page.offset
    )


@router.get(
    "/api/billing/invoices/{invoice_id}",
    response_model=Invoice,
    responses=errors(401, 404, 422),
    summary="One invoice",
)
def get_invoice(invoice: OwnedInvoice) -> Invoice:
    return invoice_out(invoice)


@router.get(
    "/api/billing/invoices/{invoice_id}/pdf",
    response_class=Response,
    responses={
        200: {"content": {"application/pdf": {}}, "description": "The invoice, one page"},
        **errors(401, 404, 422),
    },
    summary="The invoice as a PDF",
)
def invoice_pdf(invoice: OwnedInvoice, session: SessionDep, settings: SettingsDep) -> Response:
    document = render_invoice(settings, invoice, invoices.customer_of(session, invoice))
    return Response(
        document,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{invoice.invoice_number}.pdf"'},
    )


@router.post(
    "/api/billing/invoices/{invoice_id}/void",
    response_model=Invoice,
    responses=errors(401, 403, 404, 409, 422),
    summary="Void a pending invoice (admin)",
)
def void_invoice(invoice_id: uuid.UUID, admin: AdminUser, session: SessionDep) -> Invoice:
    invoice = invoices.get_owned_invoice(session, admin.customer_id, invoice_id)
    return invoice_out(invoices.void_invoice(session, invoice))


async def signed_event(
    request: Request,
    settings: SettingsDep,
    billing_signature: Annotated[str | None, Header()] = None,
) -> WebhookEvent:
    """The raw body, checked against its signature before anything else reads it."""
    if not settings.BILLING_WEBHOOK_SECRET:
        raise ServiceUnavailable("Payments by webhook are not configured on this server.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > WEBHOOK_MAX_BYTES:
            raise PayloadTooLarge("A webhook event is at most 64 KB.")
    webhook.verify(
        settings.BILLING_WEBHOOK_SECRET,
        billing_signature,
        bytes(body),
        settings.BILLING_WEBHOOK_TOLERANCE_SECONDS,
    )
    try:
        return WebhookEvent.model_validate_json(bytes(body))
    except ValueError as exc:
        raise ValidationFailed("The event is not valid JSON of the expected shape.") from exc


@router.post(
    "/api/billing/webhook",
    response_model=WebhookReceipt,
    responses=errors(400, 404, 409, 413, 422, 503),
    summary="A payment provider's signed event (HMAC-SHA256); idempotent by event id",
)
def billing_webhook(
    event: Annotated[WebhookEvent, Depends(signed_event)], session: SessionDep
) -> WebhookReceipt:
    return webhook.apply_event(session, event)
