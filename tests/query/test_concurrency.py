"""Many questions at once on the customer route: exact metering, one model path, no leaks."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import event

from app.core.db import get_database
from tests.query.money import Bot, money
from tests.waiting import eventually

ASKERS = 8


def test_concurrent_customer_questions_are_metered_exactly_and_return_their_connections(
    bot: Bot, fake_llm, live_url, runtime
):  # type: ignore[no-untyped-def]
    tenant, chatbot, _ = bot
    fake_llm.set_reply("Support is open Monday to Friday from 9:00 to 17:00.")
    url = f"{live_url}/api/{tenant.customer_id}/{chatbot['id']}/query"
    before = money(tenant.customer_id, chatbot["id"])
    embedded = runtime.questions.stats.embedded
    start = threading.Barrier(ASKERS)

    def ask(i: int) -> httpx.Response:
        start.wait(30)
        return httpx.post(
            url,
            json={"question": f"Question {i}: when is support open?"},
            headers=tenant.headers,
            timeout=60,
        )

    with ThreadPoolExecutor(ASKERS) as pool:
        responses = list(pool.map(ask, range(ASKERS)))
    assert [r.status_code for r in responses] == [200] * ASKERS, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert all(b["mode"] == "llm" and b["sources"] for b in bodies)
    assert len({b["message_id"] for b in bodies}) == ASKERS
    charged = sum(b["usage"]["total_tokens"] for b in bodies)
    assert charged > 0
    after = money(tenant.customer_id, chatbot["id"])
    assert after.tokens_used - before.tokens_used == charged
    assert before.tokens_remaining - after.tokens_remaining == charged
    assert after.month - before.month == charged
    assert after.history - before.history == ASKERS
    assert after.reservations == 0
    # Every question went through the process's batcher (distinct texts: no cache hit).
    assert runtime.questions.stats.embedded - embedded == ASKERS
    # Every request gave its pooled connection back.
    pool = get_database().engine.pool
    eventually(pool.checkedout, lambda n: n == 0, "connections back in the pool")


def test_a_repeated_question_is_answered_from_the_embedding_cache(
    bot: Bot, fake_llm, live_url, runtime
):  # type: ignore[no-untyped-def]
    tenant, chatbot, _ = bot
    url = f"{live_url}/api/{tenant.customer_id}/{chatbot['id']}/query"
    question = {"question": "How long is the blender's warranty, exactly?"}
    first = httpx.post(url, json=question, headers=tenant.headers, timeout=60)
    hits = runtime.questions.stats.cache_hits
    second = httpx.post(url, json=question, headers=tenant.headers, timeout=60)
    assert first.status_code == second.status_code == 200
    assert runtime.questions.stats.cache_hits == hits + 1
    assert first.json()["sources"] == second.json()["sources"]


def test_a_customer_question_takes_three_short_transactions(bot: Bot, fake_llm, live_url):  # type: ignore[no-untyped-def]
    """Admission, then the reads with the reservation, then the settlement: one pooled
    connection each, taken by the request's worker threads."""
    tenant, chatbot, _ = bot
    url = f"{live_url}/api/{tenant.customer_id}/{chatbot['id']}/query"
    checkouts: list[str] = []

    def on_checkout(*_: object) -> None:
        name = threading.current_thread().name
        if name.startswith("AnyIO worker thread"):  # not the ingest workers or the sweep
            checkouts.append(name)

    engine = get_database().engine
    event.listen(engine, "checkout", on_checkout)
    try:
        response = httpx.post(
            url, json={"question": "Is an unused item returnable?"}, headers=tenant.headers
        )
    finally:
        event.remove(engine, "checkout", on_checkout)
    assert response.status_code == 200 and response.json()["mode"] == "llm"
    assert len(checkouts) == 3, checkouts
