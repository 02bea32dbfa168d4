"""The money paths at the service level, beside the HTTP tests: reserve, settle, release,
the chatbot's month, the demo slot, and a prepared question's finish or abandon."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import date

import pytest
from sqlalchemy import func, select, update

from app.billing.service import (
    adjust_chatbot_month,
    record_reservation,
    release_tokens,
    reserve_chatbot_month,
    reserve_tokens,
    settle_tokens,
)
from app.core.db import get_database
from app.core.errors import DemoLimitReached
from app.models import (
    Chatbot,
    ChatbotMonthlyUsage,
    ChatHistory,
    Customer,
    TokenReservation,
    UsageToken,
)
from app.query.service import Asker, Prepared, abandon, finish, take_demo_slot
from tests.factories import create_chatbot, register

MONTH = date(2026, 12, 1)


@pytest.fixture
def funded(client):  # type: ignore[no-untyped-def]
    """A customer with a balance of exactly 100 tokens and one chatbot."""
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    customer_id = uuid.UUID(tenant.customer_id)
    with get_database().session() as session:
        session.execute(
            update(UsageToken)
            .where(UsageToken.customer_id == customer_id)
            .values(tokens_remaining=100)
        )
    return customer_id, uuid.UUID(chatbot["id"])


def _balance(customer_id: uuid.UUID) -> tuple[int, int, int, int, int]:
    with get_database().session() as session:
        row = session.scalar(select(UsageToken).where(UsageToken.customer_id == customer_id))
        customer = session.get(Customer, customer_id)
        return (
            row.tokens_remaining,
            row.tokens_used,
            row.input_tokens_used,
            row.output_tokens_used,
            customer.usage_tokens,
        )


def test_reserve_refuses_what_the_balance_cannot_cover_and_release_gives_back(funded):
    customer_id, _ = funded
    db = get_database()
    with db.session() as session:
        assert reserve_tokens(session, customer_id, 60) is True
    with db.session() as session:
        assert reserve_tokens(session, customer_id, 60) is False  # 40 left
    assert _balance(customer_id)[0] == 40
    with db.session() as session:
        release_tokens(session, customer_id, 60)
    assert _balance(customer_id) == (100, 0, 0, 0, 0)


def test_settle_replaces_the_reservation_by_the_real_count(funded):
    customer_id, _ = funded
    db = get_database()
    with db.session() as session:
        assert reserve_tokens(session, customer_id, 50)
        settle_tokens(session, customer_id, 50, input_tokens=10, output_tokens=15)
    assert _balance(customer_id) == (75, 25, 10, 15, 25)
    # A provider counting more than was reserved: the balance stops at 0, the count is kept.
    with db.session() as session:
        assert reserve_tokens(session, customer_id, 75)
        settle_tokens(session, customer_id, 75, input_tokens=70, output_tokens=30)
    assert _balance(customer_id) == (0, 125, 80, 45, 125)


def test_concurrent_reservations_never_overspend(funded):
    customer_id, _ = funded
    db = get_database()
    start = threading.Barrier(20)
    results: list[bool] = []
    lock = threading.Lock()

    def take() -> None:
        start.wait()
        with db.session() as session:
            ok = reserve_tokens(session, customer_id, 10)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=take) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results.count(True) == 10 and results.count(False) == 10
    assert _balance(customer_id)[0] == 0


def _month(chatbot_id: uuid.UUID) -> int | None:
    with get_database().session() as session:
        return session.scalar(
            select(ChatbotMonthlyUsage.tokens).where(
                ChatbotMonthlyUsage.chatbot_id == chatbot_id, ChatbotMonthlyUsage.month == MONTH
            )
        )


def test_the_chatbot_month_admits_while_under_its_limit(funded):
    _, chatbot_id = funded
    db = get_database()
    with db.session() as session:
        assert reserve_chatbot_month(session, chatbot_id, MONTH, 80, limit=100)
        assert reserve_chatbot_month(session, chatbot_id, MONTH, 80, limit=100)  # 80 < 100
        assert not reserve_chatbot_month(session, chatbot_id, MONTH, 1, limit=100)  # 160
        assert reserve_chatbot_month(session, chatbot_id, MONTH, 5, limit=None)
        assert not reserve_chatbot_month(session, chatbot_id, MONTH, 1, limit=0)
    assert _month(chatbot_id) == 165
    with db.session() as session:
        adjust_chatbot_month(session, chatbot_id, MONTH, -100)
        assert reserve_chatbot_month(session, chatbot_id, MONTH, 1, limit=100)  # 65 < 100
        adjust_chatbot_month(session, chatbot_id, MONTH, -1000)
    assert _month(chatbot_id) == 0  # never below zero


def test_demo_slots_are_counted_atomically_and_given_back(funded, settings):
    customer_id, chatbot_id = funded
    db = get_database()
    remaining = []
    for _ in range(settings.DEMO_MESSAGE_LIMIT):
        with db.session() as session:
            remaining.append(take_demo_slot(session, chatbot_id, customer_id, settings))
    assert remaining == list(range(settings.DEMO_MESSAGE_LIMIT - 1, -1, -1))
    with pytest.raises(DemoLimitReached, match="This chatbot"), db.session() as session:
        take_demo_slot(session, chatbot_id, customer_id, settings)
    asker = _asker(funded, demo=True)
    abandon(db, _prepared(asker, reserved=0))  # a failed demo answer gives its slots back
    with db.session() as session:
        assert session.get(Chatbot, chatbot_id).demo_message_count == (
            settings.DEMO_MESSAGE_LIMIT - 1
        )
        assert session.get(Customer, customer_id).demo_messages_used == (
            settings.DEMO_MESSAGE_LIMIT - 1
        )


def _asker(funded, demo: bool = False) -> Asker:  # type: ignore[no-untyped-def]
    customer_id, chatbot_id = funded
    return Asker(
        chatbot_id=chatbot_id,
        customer_id=customer_id,
        system_prompt=None,
        temperature=None,
        top_k=5,
        allowed_origins=(),
        demo=demo,
    )


def _prepared(asker: Asker, reserved: int, month: date | None = None) -> Prepared:
    return Prepared(
        asker=asker,
        question="How much?",
        session_id="s1",
        hits=[],
        mode="llm",
        messages=[],
        reserved=reserved,
        estimated_input=10,
        started=time.perf_counter(),
        month=month,
    )


def test_finish_charges_and_writes_history_in_one_go_abandon_charges_nothing(funded):
    customer_id, chatbot_id = funded
    db = get_database()
    asker = _asker(funded)
    answered = _prepared(asker, reserved=40, month=MONTH)
    with db.session() as session:
        assert reserve_chatbot_month(session, chatbot_id, MONTH, 40, None)
        assert reserve_tokens(session, customer_id, 40)
        record_reservation(session, answered.message_id, customer_id, chatbot_id, MONTH, 40)
    finish(db, answered, "It costs 5.", 12, 4)
    assert _balance(customer_id) == (84, 16, 12, 4, 16)
    assert _month(chatbot_id) == 16
    with db.session() as session:
        rows = session.scalars(select(ChatHistory).where(ChatHistory.chatbot_id == chatbot_id))
        row = rows.one()
        assert (row.answer, row.input_tokens, row.output_tokens) == ("It costs 5.", 12, 4)

    failed = _prepared(asker, reserved=30, month=MONTH)
    with db.session() as session:
        assert reserve_chatbot_month(session, chatbot_id, MONTH, 30, None)
        assert reserve_tokens(session, customer_id, 30)
        record_reservation(session, failed.message_id, customer_id, chatbot_id, MONTH, 30)
    abandon(db, failed)
    assert _balance(customer_id) == (84, 16, 12, 4, 16)
    assert _month(chatbot_id) == 16
    abandon(db, failed)  # the row is the reservation: it is given back once
    assert _balance(customer_id) == (84, 16, 12, 4, 16)
    with db.session() as session:
        count = session.scalar(
            select(func.count())
            .select_from(ChatHistory)
            .where(ChatHistory.chatbot_id == chatbot_id)
        )
        assert count == 1
        reservations = select(func.count()).select_from(TokenReservation)
        assert session.scalar(reservations.where(TokenReservation.chatbot_id == chatbot_id)) == 0
