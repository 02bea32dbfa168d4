"""Token balances: reads, and the atomic updates every answered question goes through."""

from __future__ import annotations

import uuid

from sqlalchemy import CursorResult, case, select, update
from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.models import Customer, UsageToken
from app.models.base import utcnow


def get_usage(session: Session, customer_id: uuid.UUID) -> UsageToken:
    usage = session.scalar(select(UsageToken).where(UsageToken.customer_id == customer_id))
    if usage is None:
        raise NotFound("No usage record for this customer.")
    return usage


def reserve_tokens(session: Session, customer_id: uuid.UUID, amount: int) -> bool:
    """Take `amount` off the balance if it covers it, in one guarded UPDATE, so concurrent
    requests can never overspend."""
    result = session.execute(
        update(UsageToken)
        .where(UsageToken.customer_id == customer_id, UsageToken.tokens_remaining >= amount)
        .values(tokens_remaining=UsageToken.tokens_remaining - amount)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def release_tokens(session: Session, customer_id: uuid.UUID, amount: int) -> None:
    session.execute(
        update(UsageToken)
        .where(UsageToken.customer_id == customer_id)
        .values(tokens_remaining=UsageToken.tokens_remaining + amount)
    )


def settle_tokens(
    session: Session,
    customer_id: uuid.UUID,
    reserved: int,
    input_tokens: int,
    output_tokens: int,
) -> None:
    """Replace a reservation by the real count. The caller writes the history row in the
    same transaction, so `tokens_used` always equals the sum of the history's tokens."""
    used = input_tokens + output_tokens
    remaining = UsageToken.tokens_remaining + reserved - used
    session.execute(
        update(UsageToken)
        .where(UsageToken.customer_id == customer_id)
        .values(
            # A provider may count a few more tokens than our estimate; never below zero.
            tokens_remaining=case((remaining < 0, 0), else_=remaining),
            tokens_used=UsageToken.tokens_used + used,
            input_tokens_used=UsageToken.input_tokens_used + input_tokens,
            output_tokens_used=UsageToken.output_tokens_used + output_tokens,
            last_updated=utcnow(),
        )
    )
    session.execute(
        update(Customer)
        .where(Customer.id == customer_id)
        .values(usage_tokens=Customer.usage_tokens + used)
    )
