"""A client may leave at any point of an answer: the reservation taken before the response
started must never outlive the request, and what is charged and stored must be exact.

Each test parks the request at a known point (the question being prepared, the LLM holding
its stream or its completion), hangs up there, waits until the server has seen it, then
polls the database with a deadline for the final state (while the LLM still holds: settling
must not wait for the provider), and only then releases the LLM."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from app.core.db import get_database
from app.models import ChatHistory
from app.query import service
from app.rag.llm import LLMClient
from app.runtime import Runtime
from tests.factories import Tenant
from tests.fake_llm import FakeLLMServer
from tests.query.money import Bot, Money, RawRequest, money
from tests.waiting import eventually

REPLY = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike"


def _ask(live_server: Any, chatbot: dict[str, Any], stream: bool) -> RawRequest:
    return RawRequest(
        live_server,
        f"/api/public/{chatbot['id']}/query",
        {"question": "When is support open?", "stream": stream, "session_id": "leaving"},
        {"X-API-Key": chatbot["api_key"]},
    )


def _back_to(before: Money, tenant: Tenant, chatbot: dict[str, Any]) -> Money:
    """Wait until nothing is charged, stored or reserved any more compared to `before`."""
    return eventually(
        lambda: money(tenant.customer_id, chatbot["id"]),
        lambda now: now == before,
        "the reservation to be given back in full",
    )


@dataclass
class Parked:
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    returned: threading.Event = field(default_factory=threading.Event)
    results: list[service.Prepared] = field(default_factory=list)


@pytest.fixture
def parked_prepare(monkeypatch: pytest.MonkeyPatch) -> Iterator[Parked]:
    """`service.prepare` waits at its start until released; keeps what it returned."""
    parked = Parked()
    real = service.prepare

    def prepare(*args: Any) -> service.Prepared:
        parked.entered.set()
        assert parked.release.wait(30)
        try:
            parked.results.append(real(*args))
            return parked.results[-1]
        finally:
            parked.returned.set()

    monkeypatch.setattr(service, "prepare", prepare)
    yield parked
    parked.release.set()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_leaving_before_the_first_byte_charges_and_stores_nothing(
    bot: Bot, fake_llm: FakeLLMServer, live_server: Any, parked_prepare: Parked, stream: bool
) -> None:
    tenant, chatbot, _ = bot
    fake_llm.set_reply(REPLY)
    before = money(tenant.customer_id, chatbot["id"])
    request = _ask(live_server, chatbot, stream)
    assert parked_prepare.entered.wait(30)
    request.hang_up()
    parked_prepare.release.set()
    assert parked_prepare.returned.wait(30)
    # Tokens were reserved after the client had gone...
    prepared = parked_prepare.results[0]
    assert prepared.mode == "llm" and prepared.reserved > 0
    # ...and they are given back: the balance, the month, no history, no row left.
    after = _back_to(before, tenant, chatbot)
    assert after.reservations == 0 and after.history == before.history


def test_leaving_after_the_sources_charges_and_stores_nothing(
    bot: Bot, fake_llm: FakeLLMServer, live_server: Any
) -> None:
    tenant, chatbot, _ = bot
    fake_llm.set_reply(REPLY)
    release = fake_llm.hold_stream_after(0)  # the LLM holds its first token
    before = money(tenant.customer_id, chatbot["id"])
    request = _ask(live_server, chatbot, stream=True)
    request.read_until(b"event: sources")
    # The server sends the LLM request after `sources`: leave once it has reached the LLM.
    eventually(lambda: fake_llm.requests, bool, "the LLM call")
    during = money(tenant.customer_id, chatbot["id"])
    assert during.reservations == 1 and during.tokens_remaining < before.tokens_remaining
    assert during.month > before.month
    request.hang_up()
    # Settled while the LLM still holds its stream: nothing waits for the provider.
    after = _back_to(before, tenant, chatbot)
    assert after.history == before.history and after.reservations == 0
    assert fake_llm.wait_for_disconnects(1, timeout=10)  # the LLM call was hung up too
    release.set()


def test_leaving_mid_answer_charges_and_stores_what_was_generated(
    bot: Bot, fake_llm: FakeLLMServer, live_server: Any
) -> None:
    tenant, chatbot, _ = bot
    fake_llm.set_reply(REPLY)
    release = fake_llm.hold_stream_after(3)  # three tokens, then the LLM holds
    before = money(tenant.customer_id, chatbot["id"])
    request = _ask(live_server, chatbot, stream=True)
    request.read_until(b"event: token", count=3)
    assert money(tenant.customer_id, chatbot["id"]).reservations == 1
    request.hang_up()
    after = eventually(
        lambda: money(tenant.customer_id, chatbot["id"]),
        lambda now: now.history == before.history + 1 and now.reservations == 0,
        "the interrupted answer to be settled",
    )
    with get_database().session() as session:
        row = session.scalars(
            select(ChatHistory).where(ChatHistory.chatbot_id == uuid.UUID(chatbot["id"]))
        ).one()
        assert row.interrupted is True and row.session_id == "leaving"
        assert row.answer == "alpha bravo charlie "  # exactly what the visitor was sent
        charged = row.input_tokens + row.output_tokens
    assert row.input_tokens > 0 and row.output_tokens > 0
    assert before.tokens_remaining - after.tokens_remaining == charged
    assert after.tokens_used - before.tokens_used == charged
    assert after.month - before.month == charged
    assert fake_llm.wait_for_disconnects(1, timeout=10)
    release.set()


@pytest.fixture
def patient_llm(
    fake_llm: FakeLLMServer, runtime: Runtime, live_server: Any
) -> Iterator[FakeLLMServer]:
    """The app's LLM client pointed at the fake with a long timeout, so a completion the
    fake holds (`delay_seconds`) is still being awaited when the client leaves."""
    settings = runtime.settings.model_copy(
        update={
            "FIREWORKS_API_KEY": "test-key",
            "LLM_BASE_URL": fake_llm.base_url,
            "LLM_TIMEOUT_SECONDS": 120.0,
            "LLM_MAX_RETRIES": 0,
        }
    )
    previous, runtime.llm = runtime.llm, LLMClient(settings)
    yield fake_llm
    client, runtime.llm = runtime.llm, previous
    asyncio.run_coroutine_threadsafe(client.aclose(), live_server.loop).result(10)


def test_json_client_leaving_while_the_llm_works_cancels_the_answer(
    bot: Bot, patient_llm: FakeLLMServer, live_server: Any
) -> None:
    tenant, chatbot, _ = bot
    patient_llm.delay_seconds = 60  # the completion is held far beyond this test
    before = money(tenant.customer_id, chatbot["id"])
    request = _ask(live_server, chatbot, stream=False)
    eventually(lambda: patient_llm.requests, bool, "the LLM call")
    during = money(tenant.customer_id, chatbot["id"])
    assert during.reservations == 1 and during.tokens_remaining < before.tokens_remaining
    request.hang_up()
    after = _back_to(before, tenant, chatbot)
    assert after.history == before.history and after.reservations == 0
    # The app hung up on the LLM instead of waiting for the completion.
    eventually(lambda: patient_llm._active, lambda active: active == 0, "the LLM call to end")
