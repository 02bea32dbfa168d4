"""Reservations at the service level: the chatbot's answers in progress counted exactly under
concurrency, and the sweep that gives back what a crashed process left, exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from app.billing.service import Sweep, release_chatbot_reservations, sweep_reservations
from app.core.config import Settings
from app.core.db import get_database
from app.core.errors import ChatbotBusy
from app.models import TokenReservation, UsageToken
from app.models.base import utcnow
from app.query.service import Asker, Prepared, abandon, finish, reserve_answer
from tests.factories import create_chatbot, register
from tests.query.money import Money, money

BALANCE = 10_000
Funded = tuple[str, str, Asker]  # customer id, chatbot id, who asks


@pytest.fixture
def funded(client: httpx.Client) -> Funded:
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    with get_database().session() as session:
        session.execute(
            update(UsageToken)
            .where(UsageToken.customer_id == uuid.UUID(tenant.customer_id))
            .values(tokens_remaining=BALANCE)
        )
    asker = Asker(
        chatbot_id=uuid.UUID(chatbot["id"]),
        customer_id=uuid.UUID(tenant.customer_id),
        system_prompt=None,
        temperature=None,
        top_k=5,
        allowed_origins=(),
    )
    return tenant.customer_id, chatbot["id"], asker


def _reserved(asker: Asker, settings: Settings, tokens: int) -> Prepared:
    prepared = Prepared(
        asker=asker,
        question="How much?",
        session_id="s1",
        hits=[],
        mode="llm",
        messages=[],
        reserved=tokens,
        estimated_input=10,
        started=time.perf_counter(),
    )
    with get_database().session() as session:
        prepared.month = reserve_answer(session, settings, asker, prepared.message_id, tokens)
    return prepared


def test_answers_in_progress_are_limited_exactly_under_concurrency(
    funded: Funded, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer_id, chatbot_id, asker = funded
    monkeypatch.setattr(settings, "MAX_CONCURRENT_ANSWERS_PER_CHATBOT", 3)
    start = threading.Barrier(12)
    outcomes: list[object] = []
    taken: list[Prepared] = []
    lock = threading.Lock()

    def reserve() -> None:
        start.wait()
        try:
            taken.append(_reserved(asker, settings, 100))
            outcome: object = "reserved"
        except ChatbotBusy as exc:
            outcome = exc.retry_after
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=reserve) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes.count("reserved") == 3 and outcomes.count(5) == 9, outcomes
    state = money(customer_id, chatbot_id)
    assert state.reservations == 3
    assert (state.tokens_remaining, state.month) == (BALANCE - 300, 300)
    for prepared in taken:  # leave no reservation behind
        abandon(get_database(), prepared)
    assert money(customer_id, chatbot_id) == Money(BALANCE, 0, 0, 0, 0)


def test_a_crashed_process_reservation_stops_counting_once_expired(
    funded: Funded, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer_id, chatbot_id, asker = funded
    monkeypatch.setattr(settings, "MAX_CONCURRENT_ANSWERS_PER_CHATBOT", 1)
    stranded = _reserved(asker, settings, 100)
    with pytest.raises(ChatbotBusy):
        _reserved(asker, settings, 100)
    with get_database().session() as session:
        session.execute(
            update(TokenReservation)
            .where(TokenReservation.id == stranded.message_id)
            .values(created_at=utcnow() - timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 1))
        )
    live = _reserved(asker, settings, 100)  # the expired row no longer counts
    abandon(get_database(), live)
    abandon(get_database(), stranded)
    state = money(customer_id, chatbot_id)
    assert (state.tokens_remaining, state.month, state.reservations) == (BALANCE, 0, 0)


def test_the_sweep_gives_back_expired_reservations_once(funded: Funded, settings: Settings) -> None:
    customer_id, chatbot_id, asker = funded
    db, ttl = get_database(), settings.RESERVATION_TTL_SECONDS
    crashed = _reserved(asker, settings, 100)
    running = _reserved(asker, settings, 200)
    now = utcnow()
    # The sweep is called with a clock `ttl` ahead (so the app's own periodic sweep, on the
    # real clock, leaves these rows alone): `crashed` has expired, `running` is younger.
    with db.session() as session:
        session.execute(
            update(TokenReservation)
            .where(TokenReservation.id == running.message_id)
            .values(created_at=now + timedelta(seconds=120))
        )
    later = now + timedelta(seconds=ttl + 60)
    with db.session() as session:
        # Whatever other tests left behind is swept too (there should be nothing).
        others = session.execute(
            select(func.count(), func.coalesce(func.sum(TokenReservation.tokens), 0)).where(
                TokenReservation.customer_id != asker.customer_id,
                TokenReservation.created_at < later - timedelta(seconds=ttl),
            )
        ).one()
        swept = sweep_reservations(session, ttl, now=later)
    assert swept == Sweep(reservations=1 + others[0], tokens=100 + others[1])
    state = money(customer_id, chatbot_id)
    assert (state.tokens_remaining, state.month, state.reservations) == (BALANCE - 200, 200, 1)
    with db.session() as session:
        assert sweep_reservations(session, ttl, now=later) == Sweep(0, 0)

    # The crashed request was alive after all: its answer is charged, nothing given back twice.
    finish(db, crashed, "Late.", 10, 5)
    state = money(customer_id, chatbot_id)
    assert (state.tokens_remaining, state.tokens_used) == (BALANCE - 200 - 15, 15)
    assert state.month == 200 + 15 and state.history == 1
    abandon(db, crashed)  # a second settlement changes nothing
    abandon(db, running)
    state = money(customer_id, chatbot_id)
    assert (state.tokens_remaining, state.tokens_used, state.month) == (BALANCE - 15, 15, 15)
    assert state.reservations == 0


def test_deleting_a_chatbot_can_give_its_reservations_back_first(
    funded: Funded, settings: Settings
) -> None:
    customer_id, chatbot_id, asker = funded
    db = get_database()
    answering = _reserved(asker, settings, 300)
    with db.session() as session:
        assert release_chatbot_reservations(session, asker.chatbot_id) == Sweep(1, 300)
    assert money(customer_id, chatbot_id) == Money(BALANCE, 0, 0, 0, 0)
    abandon(db, answering)  # the answer ends after all: nothing is given back twice
    assert money(customer_id, chatbot_id) == Money(BALANCE, 0, 0, 0, 0)
