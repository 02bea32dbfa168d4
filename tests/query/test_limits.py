"""What one visitor, session or tenant may make the platform spend: answers in progress per
chatbot, questions per session and day, question length, the history window, demo messages
per customer."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.core.db import get_database
from app.models import Chatbot, ChatHistory, Customer
from app.models.base import utcnow
from app.query.service import fit_history
from app.rag.prompting import Turn
from tests.factories import create_chatbot, register
from tests.fake_llm import FakeLLMServer
from tests.query.money import Bot, RawRequest, money
from tests.waiting import eventually


def _public(live_url: str, chatbot: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{live_url}/api/public/{chatbot['id']}/query",
        json=body,
        headers={"X-API-Key": chatbot["api_key"]},
        timeout=30,
    )


def test_a_busy_chatbot_answers_429_until_an_answer_ends(
    bot: Bot,
    fake_llm: FakeLLMServer,
    live_url: str,
    live_server: Any,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, chatbot, _ = bot
    monkeypatch.setattr(settings, "MAX_CONCURRENT_ANSWERS_PER_CHATBOT", 1)
    release = fake_llm.hold_stream_after(0)
    first = RawRequest(
        live_server,
        f"/api/public/{chatbot['id']}/query",
        {"question": "When is support open?", "stream": True},
        {"X-API-Key": chatbot["api_key"]},
    )
    first.read_until(b"event: sources")  # its reservation is in place
    during = money(tenant.customer_id, chatbot["id"])
    assert during.reservations == 1

    busy = _public(live_url, chatbot, {"question": "And returns?"})
    assert busy.status_code == 429, busy.text
    assert busy.json() == {
        "detail": "This chatbot is busy answering other questions; please try again shortly.",
        "code": "chatbot_busy",
    }
    assert busy.headers["retry-after"] == "5"
    owner = httpx.post(
        f"{live_url}/api/{tenant.customer_id}/{chatbot['id']}/query",
        json={"question": "And returns?"},
        headers=tenant.headers,
        timeout=30,
    )
    assert owner.status_code == 429 and owner.json()["code"] == "chatbot_busy"
    assert "MAX_CONCURRENT_ANSWERS_PER_CHATBOT" in owner.json()["detail"]
    # The refused questions took nothing and called no LLM.
    assert money(tenant.customer_id, chatbot["id"]) == during
    assert len(fake_llm.requests) == 1

    release.set()
    first.read_until(b"event: done")
    first.hang_up()
    eventually(
        lambda: money(tenant.customer_id, chatbot["id"]),
        lambda now: now.reservations == 0,
        "the first answer to be settled",
    )
    again = _public(live_url, chatbot, {"question": "And returns?"})
    assert again.status_code == 200, again.text
    after = money(tenant.customer_id, chatbot["id"])
    assert after.history == during.history + 2 and after.reservations == 0


def test_a_session_has_a_daily_question_limit(
    client: httpx.Client, live_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "RATE_LIMIT_PUBLIC_PER_SESSION", "3/day")
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)  # no documents: fallback answers, no LLM
    for _ in range(3):
        assert (
            _public(live_url, chatbot, {"question": "Hi?", "session_id": "s-a"}).status_code == 200
        )
    limited = _public(live_url, chatbot, {"question": "Hi?", "session_id": "s-a"})
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert limited.json()["detail"] == "Too many questions in this conversation; retry later."
    assert 3600 < int(limited.headers["retry-after"]) <= 86400
    # Other sessions, and questions without a session, are not affected.
    assert _public(live_url, chatbot, {"question": "Hi?", "session_id": "s-b"}).status_code == 200
    assert _public(live_url, chatbot, {"question": "Hi?"}).status_code == 200
    with get_database().session() as session:
        rows = session.scalars(
            select(ChatHistory.session_id).where(ChatHistory.chatbot_id == uuid.UUID(chatbot["id"]))
        ).all()
    assert len(rows) == 5 and rows.count("s-a") == 3 and rows.count("s-b") == 1


def test_question_length_is_a_setting_the_widget_reads(
    client: httpx.Client, live_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    profile_url = f"{live_url}/api/public/{chatbot['id']}"
    key = {"X-API-Key": chatbot["api_key"]}
    assert httpx.get(profile_url, headers=key).json()["question_max_length"] == 2000
    too_long = _public(live_url, chatbot, {"question": "x" * 2001})
    assert too_long.status_code == 422, too_long.text
    body = too_long.json()
    assert body["code"] == "question_too_long"
    assert body["detail"] == ("question: at most 2000 characters are accepted; this one has 2001.")
    assert body["errors"][0]["loc"] == ["body", "question"]

    monkeypatch.setattr(settings, "QUESTION_MAX_CHARS", 50)
    assert httpx.get(profile_url, headers=key).json()["question_max_length"] == 50
    assert _public(live_url, chatbot, {"question": "y" * 51}).json()["code"] == "question_too_long"
    assert _public(live_url, chatbot, {"question": "y" * 50}).status_code == 200
    # Nothing refused was answered or stored.
    assert money(tenant.customer_id, chatbot["id"]).history == 1


def test_history_window_keeps_the_newest_turns_that_fit() -> None:
    turns = [Turn(f"q{i}", "a" * 40) for i in range(5)]
    assert fit_history(turns, 1000) == turns
    assert fit_history(turns, 3 * 42) == turns[-3:]
    assert fit_history(turns, 3 * 42 - 1) == turns[-2:]
    assert fit_history([], 10) == []
    huge = Turn("q" * 5000, "a" * 5000)
    cut = fit_history([Turn("old", "turn"), huge], 1000)
    assert len(cut) == 1 and len(cut[0].question) + len(cut[0].answer) <= 1000
    assert cut[0].question.startswith("qqq") and cut[0].answer.startswith("aaa")
    short_question = fit_history([Turn("Why?", "b" * 5000)], 1000)[0]
    assert short_question.question == "Why?" and len(short_question.answer) == 996


def test_a_long_session_history_cannot_blow_up_the_prompt(
    bot: Bot, fake_llm: FakeLLMServer, live_url: str, settings: Any
) -> None:
    tenant, chatbot, _ = bot
    start = utcnow() - timedelta(minutes=10)
    with get_database().session() as session:
        for i in range(4):  # 4 turns of 8,000 characters: 32,000 in all
            session.add(
                ChatHistory(
                    chatbot_id=uuid.UUID(chatbot["id"]),
                    session_id="long",
                    question=f"old question {i} " + "q" * 3000,
                    answer=f"old answer {i} " + "a" * 5000,
                    sources=[],
                    input_tokens=0,
                    output_tokens=0,
                    latency_ms=0,
                    mode="llm",
                    timestamp=start + timedelta(seconds=i),
                )
            )
    response = _public(
        live_url, chatbot, {"question": "When is support open?", "session_id": "long"}
    )
    assert response.status_code == 200, response.text
    messages = fake_llm.requests[-1]["messages"]
    history = messages[1:-1]
    assert sum(len(m["content"]) for m in history) <= settings.HISTORY_MAX_CHARS
    assert history[0]["content"].startswith("old question 3")  # the newest turn, cut
    assert "old question 2" not in str(messages)


def test_demo_messages_per_customer_survive_deleting_chatbots(
    client: httpx.Client, live_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "DEMO_MESSAGES_PER_CUSTOMER", 3)
    tenant = register(client)

    def demo(chatbot: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{live_url}/api/chatbots/{chatbot['id']}/demo",
            json={"question": "Demo?"},
            headers=tenant.headers,
            timeout=30,
        )

    first = create_chatbot(client, tenant)
    assert [demo(first).json()["demo_messages_remaining"] for _ in range(2)] == [2, 1]
    assert client.delete(f"/api/chatbots/{first['id']}", headers=tenant.headers).status_code == 204
    second = create_chatbot(client, tenant)
    assert demo(second).json()["demo_messages_remaining"] == 0
    refused = demo(second)
    assert refused.status_code == 429
    assert refused.json()["code"] == "demo_limit_reached"
    assert refused.json()["detail"].startswith("Your account has used its 3 free demo messages")
    assert "retry-after" in refused.headers
    with get_database().session() as session:
        customer = session.get(Customer, uuid.UUID(tenant.customer_id))
        assert customer is not None and customer.demo_messages_used == 3
        chatbot = session.get(Chatbot, uuid.UUID(second["id"]))
        assert chatbot is not None and chatbot.demo_message_count == 1  # the refusal took none
    assert money(tenant.customer_id, second["id"]).history == 1
