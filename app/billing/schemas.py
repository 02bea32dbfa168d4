from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, PlainSerializer, StrictInt

from app.billing.invoices import rate
from app.core.schemas import NoNul, Schema

# Money leaves as a decimal string ("12.50"), never a float.
Money = Annotated[Decimal, PlainSerializer(lambda d: f"{d:.2f}", return_type=str)]


class UsageCounts(Schema):
    questions: int = Field(description="Answered questions (demo messages apart).")
    input_tokens: int
    output_tokens: int
    total_tokens: int
    demo_messages: int = Field(description="Demo messages: free, not in the token counts.")
    demo_tokens: int = Field(description="Tokens the demo messages used (not charged).")


class _Chatbot(Schema):
    chatbot_id: uuid.UUID
    name: str


class ChatbotUsage(UsageCounts, _Chatbot):
    monthly_token_limit: int | None
    month_tokens: int = Field(
        description="Tokens counted against monthly_token_limit this calendar month (UTC), "
        "answers in progress included."
    )
    limit_reached: bool = Field(
        description="The chatbot's public endpoint answers 402 until next month or a higher limit."
    )


class _Day(Schema):
    date: date


class DayUsage(UsageCounts, _Day):
    pass


class Period(Schema):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from")
    to: date


class UsageSummary(Schema):
    tokens_used: int
    tokens_remaining: int
    input_tokens_used: int
    output_tokens_used: int
    last_updated: datetime
    low_balance: bool = Field(description="tokens_remaining is below LOW_BALANCE_TOKENS.")
    low_balance_threshold: int
    period: Period
    totals: UsageCounts = Field(description="The period's totals: the sum of either list.")
    by_chatbot: list[ChatbotUsage]
    by_day: list[DayUsage]


InvoiceState = Literal["pending", "paid", "void", "overdue"]


class InvoiceCreate(Schema):
    tokens: StrictInt = Field(
        gt=0, le=10**12, description="Tokens in the pack (INVOICE_MIN_TOKENS..INVOICE_MAX_TOKENS)."
    )


class Invoice(Schema):
    id: uuid.UUID
    invoice_number: str
    amount: Money = Field(json_schema_extra={"type": "string", "example": "12.50"})
    currency: str
    tokens: int
    unit_price: Annotated[Decimal, PlainSerializer(rate, return_type=str)] = Field(
        description="The price per 1,000 tokens when ordered."
    )
    status: InvoiceState
    issued_at: datetime
    due_date: datetime
    paid_at: datetime | None
    voided_at: datetime | None


class WebhookData(Schema):
    invoice_number: Annotated[str, Field(max_length=32), NoNul] | None = None
    amount: Decimal | None = Field(default=None, max_digits=12, decimal_places=2)
    currency: Annotated[str, Field(max_length=3), NoNul] | None = None


class WebhookEvent(Schema):
    id: Annotated[str, Field(min_length=1, max_length=255), NoNul]
    type: Annotated[str, Field(min_length=1, max_length=100), NoNul]
    data: WebhookData = Field(default_factory=WebhookData)


class WebhookReceipt(Schema):
    received: bool = True
    event_id: str
    outcome: Literal["paid", "already_paid", "duplicate", "ignored"]
    invoice_number: str | None = None
