"""Token balances and counters: the atomic updates every answered question goes through, and
every credit (an operator's grant, a paid invoice)."""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    CursorResult,
    Date,
    Insert,
    Integer,
    Select,
    Uuid,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable

from app.core.db import insert_for
from app.core.errors import NotFound
from app.models import (
    Chatbot,
    ChatbotMonthlyUsage,
    ChatHistory,
    Customer,
    TokenCredit,
    TokenReservation,
    UsageToken,
)
from app.models.base import UTCDateTime, utcnow


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


def credit_tokens(
    session: Session,
    customer_id: uuid.UUID,
    tokens: int,
    *,
    kind: str,
    reason: str,
    invoice_id: uuid.UUID | None = None,
) -> TokenCredit:
    """Add to the balance and record why, in the caller's transaction."""
    result = session.execute(
        update(UsageToken)
        .where(UsageToken.customer_id == customer_id)
        .values(tokens_remaining=UsageToken.tokens_remaining + tokens, last_updated=utcnow())
    )
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        raise NotFound("No usage record for this customer.")
    credit = TokenCredit(
        customer_id=customer_id, tokens=tokens, kind=kind, reason=reason, invoice_id=invoice_id
    )
    session.add(credit)
    session.flush()
    return credit


# --- a chatbot's spending per calendar month (its monthly_token_limit) ---


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


def reserve_chatbot_month(
    session: Session, chatbot_id: uuid.UUID, month: date, amount: int, limit: int | None
) -> bool:
    """Count `amount` against the chatbot's month unless it is already at its limit: one
    guarded upsert, so concurrent questions pass the limit by at most the one that crossed it."""
    if limit is not None and limit <= 0:
        return False
    if session.get_bind().dialect.name == "postgresql":
        params: dict[str, Any] = {"p_chatbot_id": chatbot_id, "p_month": month, "p_amount": amount}
        if limit is not None:
            params["p_limit"] = limit
        statement = _month_statement(limited=limit is not None)
        return session.connection().execute(statement, params).first() is not None
    table = ChatbotMonthlyUsage.__table__
    insert = insert_for(session)(table).values(chatbot_id=chatbot_id, month=month, tokens=amount)
    statement = insert.on_conflict_do_update(
        index_elements=[table.c.chatbot_id, table.c.month],
        set_={"tokens": table.c.tokens + insert.excluded.tokens},
        where=(table.c.tokens < limit) if limit is not None else None,
    ).returning(table.c.tokens)
    return session.execute(statement).first() is not None


@functools.cache
def _month_statement(*, limited: bool) -> Executable:
    """`reserve_chatbot_month` on PostgreSQL, built once per kind (with a limit or without)."""
    upsert = postgresql.insert(ChatbotMonthlyUsage).values(
        chatbot_id=bindparam("p_chatbot_id", type_=Uuid()),
        month=bindparam("p_month", type_=Date()),
        tokens=bindparam("p_amount", type_=BigInteger()),
    )
    limit = bindparam("p_limit", type_=BigInteger())
    return upsert.on_conflict_do_update(
        index_elements=[ChatbotMonthlyUsage.chatbot_id, ChatbotMonthlyUsage.month],
        set_={"tokens": ChatbotMonthlyUsage.tokens + upsert.excluded.tokens},
        where=(ChatbotMonthlyUsage.tokens < limit) if limited else None,
    ).returning(ChatbotMonthlyUsage.tokens)


def adjust_chatbot_month(session: Session, chatbot_id: uuid.UUID, month: date, delta: int) -> None:
    """Replace a reservation by what was spent (delta = used - reserved), or give it back."""
    if delta == 0:
        return
    tokens = ChatbotMonthlyUsage.tokens + delta
    session.execute(
        update(ChatbotMonthlyUsage)
        .where(ChatbotMonthlyUsage.chatbot_id == chatbot_id, ChatbotMonthlyUsage.month == month)
        .values(tokens=case((tokens < 0, 0), else_=tokens))
    )


# --- reservations: one row per question being answered ---
#
# The row is the reservation: it is written in the transaction that takes the tokens off the
# balance and the chatbot's month, and whoever deletes it gives them back or settles them
# (`take_reservation` in finish/abandon, `sweep_reservations` for a crashed process), so a
# reservation is returned exactly once. Lock order everywhere: the reservation row, the
# chatbot's month, the balance.


def record_reservation(
    session: Session,
    reservation_id: uuid.UUID,
    customer_id: uuid.UUID,
    chatbot_id: uuid.UUID,
    month: date,
    tokens: int,
) -> None:
    session.add(
        TokenReservation(
            id=reservation_id,
            customer_id=customer_id,
            chatbot_id=chatbot_id,
            month=month,
            tokens=tokens,
            created_at=utcnow(),
        )
    )
    session.flush()


def answers_in_progress(session: Session, chatbot_id: uuid.UUID, ttl_seconds: int) -> int:
    """The chatbot's live reservations (rows a crashed process left count only until they
    expire). Exact when the caller holds the chatbot's month row (`reserve_chatbot_month`),
    which every reserver of this chatbot takes first."""
    since = utcnow() - timedelta(seconds=ttl_seconds)
    count = session.scalar(
        select(func.count())
        .select_from(TokenReservation)
        .where(TokenReservation.chatbot_id == chatbot_id, TokenReservation.created_at >= since)
    )
    return int(count or 0)


def take_reservation(session: Session, reservation_id: uuid.UUID) -> int:
    """Delete the reservation and say how many tokens it held: 0 when it is already gone
    (settled, or given back by the sweep), so its tokens are never returned twice."""
    tokens = session.scalar(
        delete(TokenReservation)
        .where(TokenReservation.id == reservation_id)
        .returning(TokenReservation.tokens)
    )
    return int(tokens or 0)


def take_answer_slot(
    session: Session,
    reservation_id: uuid.UUID,
    customer_id: uuid.UUID,
    chatbot_id: uuid.UUID,
    month: date,
    tokens: int,
    *,
    ttl_seconds: int,
    max_in_progress: int,
) -> tuple[int, bool]:
    """After `reserve_chatbot_month` (whose row lock makes the count exact): the chatbot's
    answers in progress and, when they are fewer than `max_in_progress`, `tokens` off the
    balance (`reserve_tokens`) and the reservation row (`record_reservation`). Returns (the
    answers in progress, whether the tokens were taken); on PostgreSQL in one statement.

    Not one statement with `reserve_chatbot_month`: a statement reads from a snapshot taken
    when it starts, before it waits for the month row; this one starts once the row is held,
    so it sees the reservations of every question that held it before."""
    if session.get_bind().dialect.name != "postgresql":
        busy = answers_in_progress(session, chatbot_id, ttl_seconds)
        if busy >= max_in_progress:
            return busy, False
        if not reserve_tokens(session, customer_id, tokens):
            return busy, False
        record_reservation(session, reservation_id, customer_id, chatbot_id, month, tokens)
        return busy, True
    now = utcnow()
    busy, recorded = (
        session.connection()
        .execute(
            _answer_slot_statement(),
            {
                "p_reservation_id": reservation_id,
                "p_customer_id": customer_id,
                "p_chatbot_id": chatbot_id,
                "p_month": month,
                "p_tokens": tokens,
                "p_now": now,
                "p_since": now - timedelta(seconds=ttl_seconds),
                "p_max_in_progress": max_in_progress,
            },
        )
        .one()
    )
    return int(busy), recorded == 1


@functools.cache
def _answer_slot_statement() -> Select[int, int]:
    """`take_answer_slot` on PostgreSQL, built once (its parameters are bound per call; their
    names start with p_, as a parameter named like a column would set that column)."""
    chatbot_id = bindparam("p_chatbot_id", type_=Uuid())
    customer_id = bindparam("p_customer_id", type_=Uuid())
    tokens = bindparam("p_tokens", type_=BigInteger())
    now = bindparam("p_now", type_=UTCDateTime())
    live = (
        select(func.count().label("n"))
        .select_from(TokenReservation)
        .where(
            TokenReservation.chatbot_id == chatbot_id,
            TokenReservation.created_at >= bindparam("p_since", type_=UTCDateTime()),
        )
        .cte("live")
    )
    taken = (
        update(UsageToken)
        .where(
            UsageToken.customer_id == customer_id,
            UsageToken.tokens_remaining >= tokens,
            select(live.c.n).scalar_subquery() < bindparam("p_max_in_progress", type_=Integer()),
        )
        .values(tokens_remaining=UsageToken.tokens_remaining - tokens, last_updated=now)
        .returning(UsageToken.customer_id)
        .cte("taken")
    )
    recorded = (
        insert(TokenReservation)
        .from_select(
            ["id", "customer_id", "chatbot_id", "month", "tokens", "created_at"],
            select(
                bindparam("p_reservation_id", type_=Uuid()),
                taken.c.customer_id,
                chatbot_id,
                bindparam("p_month", type_=Date()),
                tokens,
                now,
            ),
        )
        .returning(TokenReservation.id)
        .cte("recorded")
    )
    return select(live.c.n, select(func.count()).select_from(recorded).scalar_subquery())


# The history row's columns `settle_answer` writes (all of them).
HISTORY_COLUMNS = (
    "id",
    "chatbot_id",
    "user_id",
    "session_id",
    "question",
    "answer",
    "sources",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "mode",
    "is_demo",
    "interrupted",
    "timestamp",
)


def settle_answer(
    session: Session,
    reservation_id: uuid.UUID | None,
    customer_id: uuid.UUID,
    chatbot_id: uuid.UUID,
    month: date,
    input_tokens: int,
    output_tokens: int,
    history: Mapping[str, Any],
) -> None:
    """An answer's settlement, in one statement (PostgreSQL; `finish` spells it out for
    SQLite): its reservation deleted (`take_reservation`; none when `reservation_id` is None),
    the chatbot's month corrected by what was really used (`adjust_chatbot_month`) or, with
    nothing (left) reserved, counted now (`reserve_chatbot_month`), the balance settled
    (`settle_tokens`), and the history row written (`history`: its HISTORY_COLUMNS).

    Each step reads the one before (the reservation's tokens, then how many rows the step
    before changed), so the rows are locked in the usual order: the reservation, the month,
    the balance, the customer."""
    session.connection().execute(
        _settlement_statement(),
        {
            **{f"p_history_{name}": history[name] for name in HISTORY_COLUMNS},
            "p_reservation_id": reservation_id,
            "p_customer_id": customer_id,
            "p_chatbot_id": chatbot_id,
            "p_month": month,
            "p_input_tokens": input_tokens,
            "p_output_tokens": output_tokens,
            "p_used": input_tokens + output_tokens,
            "p_now": utcnow(),
        },
    )


@functools.cache
def _settlement_statement() -> Insert:
    """`settle_answer`'s statement, built once (its parameters are bound per call)."""
    chatbot_id = bindparam("p_chatbot_id", type_=Uuid())
    customer_id = bindparam("p_customer_id", type_=Uuid())
    month = bindparam("p_month", type_=Date())
    used = bindparam("p_used", type_=BigInteger())
    now = bindparam("p_now", type_=UTCDateTime())
    taken = (
        delete(TokenReservation)
        .where(TokenReservation.id == bindparam("p_reservation_id", type_=Uuid()))
        .returning(TokenReservation.tokens)
        .cte("taken")
    )
    held = select(func.coalesce(func.sum(taken.c.tokens), 0).label("reserved")).cte("held")
    reserved = select(held.c.reserved).scalar_subquery()
    month_tokens = ChatbotMonthlyUsage.tokens + (used - reserved)
    adjusted = (
        update(ChatbotMonthlyUsage)
        .where(
            ChatbotMonthlyUsage.chatbot_id == chatbot_id,
            ChatbotMonthlyUsage.month == month,
            reserved > 0,
            reserved != used,
        )
        .values(tokens=case((month_tokens < 0, 0), else_=month_tokens))
        .returning(ChatbotMonthlyUsage.chatbot_id)
        .cte("adjusted")
    )
    counting = postgresql.insert(ChatbotMonthlyUsage).from_select(
        ["chatbot_id", "month", "tokens"],
        select(chatbot_id, month, used).where(reserved == 0, used > 0),
    )
    counted = (
        counting.on_conflict_do_update(
            index_elements=[ChatbotMonthlyUsage.chatbot_id, ChatbotMonthlyUsage.month],
            set_={"tokens": ChatbotMonthlyUsage.tokens + counting.excluded.tokens},
        )
        .returning(ChatbotMonthlyUsage.chatbot_id)
        .cte("counted")
    )
    # "After the month": a condition on how many month rows changed (always true), which
    # the balance's update evaluates before it touches its row.
    after_month = (
        select(func.count()).select_from(adjusted).scalar_subquery()
        + select(func.count()).select_from(counted).scalar_subquery()
    ) >= 0
    input_tokens = bindparam("p_input_tokens", type_=BigInteger())
    output_tokens = bindparam("p_output_tokens", type_=BigInteger())
    remaining = UsageToken.tokens_remaining + reserved - used
    charged = (
        update(UsageToken)
        .where(UsageToken.customer_id == customer_id, (reserved > 0) | (used > 0))
        .where(after_month)
        .values(
            # A provider may count a few more tokens than our estimate; never below zero.
            tokens_remaining=case((remaining < 0, 0), else_=remaining),
            tokens_used=UsageToken.tokens_used + used,
            input_tokens_used=UsageToken.input_tokens_used + input_tokens,
            output_tokens_used=UsageToken.output_tokens_used + output_tokens,
            last_updated=now,
        )
        .returning(UsageToken.customer_id)
        .cte("charged")
    )
    after_balance = select(func.count()).select_from(charged).scalar_subquery() >= 0
    spent = (
        update(Customer)
        .where(Customer.id == customer_id, (reserved > 0) | (used > 0))
        .where(after_balance)
        .values(usage_tokens=Customer.usage_tokens + used, updated_at=now)
        .returning(Customer.id)
        .cte("spent")
    )
    after_customer = select(func.count()).select_from(spent).scalar_subquery() >= 0
    columns = ChatHistory.__table__.c
    values = [bindparam(f"p_history_{name}", type_=columns[name].type) for name in HISTORY_COLUMNS]
    return insert(ChatHistory).from_select(
        list(HISTORY_COLUMNS), select(*values).where(after_customer)
    )


@dataclass(frozen=True)
class Sweep:
    reservations: int
    tokens: int


def sweep_reservations(
    session: Session, ttl_seconds: int, *, now: datetime | None = None, batch: int = 500
) -> Sweep:
    """Give back up to `batch` reservations older than `ttl_seconds` (their request died
    with its process): the balance and the chatbot's month, then the row is gone. Rows a
    live request is settling at this moment are skipped (SKIP LOCKED); the next sweep finds
    them gone. For the periodic sweep of each API process and the operator's CLI."""
    cutoff = (now or utcnow()) - timedelta(seconds=ttl_seconds)
    return _give_back(
        session,
        select(TokenReservation.id)
        .where(TokenReservation.created_at < cutoff)
        .order_by(TokenReservation.created_at, TokenReservation.id)
        .limit(batch),
    )


def release_chatbot_reservations(session: Session, chatbot_id: uuid.UUID) -> Sweep:
    """Give back a chatbot's reservations, in the transaction that deletes it (the rows
    would go with it, ON DELETE CASCADE, and their tokens with them); its answers in
    progress then settle nothing."""
    return _give_back(
        session, select(TokenReservation.id).where(TokenReservation.chatbot_id == chatbot_id)
    )


def _give_back(session: Session, scope: Select[uuid.UUID]) -> Sweep:
    ids = list(session.scalars(scope.with_for_update(skip_locked=True)))
    if not ids:
        return Sweep(0, 0)
    rows = session.execute(
        delete(TokenReservation)
        .where(TokenReservation.id.in_(ids))
        .returning(
            TokenReservation.customer_id,
            TokenReservation.chatbot_id,
            TokenReservation.month,
            TokenReservation.tokens,
        )
    ).all()
    by_month: defaultdict[tuple[uuid.UUID, date], int] = defaultdict(int)
    by_customer: defaultdict[uuid.UUID, int] = defaultdict(int)
    for customer_id, chatbot_id, month, tokens in rows:
        by_month[(chatbot_id, month)] += tokens
        by_customer[customer_id] += tokens
    # The lock order of finish and abandon: the rows (above), the months, the balances.
    for (chatbot_id, month), tokens in sorted(by_month.items()):
        adjust_chatbot_month(session, chatbot_id, month, -tokens)
    for customer_id, tokens in sorted(by_customer.items()):
        release_tokens(session, customer_id, tokens)
    return Sweep(len(rows), sum(by_customer.values()))


# --- the operator's view ---


@dataclass(frozen=True)
class CustomerBalance:
    id: uuid.UUID
    name: str
    contact_email: str
    tokens_remaining: int
    tokens_used: int
    chatbots: int
    created_at: datetime


def customer_balances(session: Session) -> list[CustomerBalance]:
    """Every customer with its balance, usage and number of chatbots (one query)."""
    chatbots = (
        select(func.count(Chatbot.id))
        .where(Chatbot.customer_id == Customer.id)
        .correlate(Customer)
        .scalar_subquery()
    )
    rows = session.execute(
        select(
            Customer.id,
            Customer.name,
            Customer.contact_email,
            func.coalesce(UsageToken.tokens_remaining, 0),
            func.coalesce(UsageToken.tokens_used, 0),
            chatbots,
            Customer.created_at,
        )
        .outerjoin(UsageToken, UsageToken.customer_id == Customer.id)
        .order_by(Customer.created_at, Customer.id)
    ).all()
    return [CustomerBalance(*row) for row in rows]


def find_customer(session: Session, ref: str) -> Customer:
    """A customer by its id or its contact email (what an operator has at hand)."""
    ref = ref.strip()
    try:
        customer = session.get(Customer, uuid.UUID(ref))
    except ValueError:
        customer = session.scalar(
            select(Customer).where(func.lower(Customer.contact_email) == ref.lower())
        )
    if customer is None:
        raise NotFound(f"No customer with id or contact email {ref!r}.")
    return customer
