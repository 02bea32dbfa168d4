"""Usage per chatbot and per day from real answers; CSV; spend limits; low balance."""

from __future__ import annotations

import csv
import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime

import httpx
import pytest
from sqlalchemy import func, select, update

from app.models import Chatbot, ChatbotMonthlyUsage, ChatHistory, UsageToken
from tests import docgen
from tests.factories import add_user, create_chatbot, register, upload, wait_for_document

FACTS = "Acme ships blenders within three days. Returns are free for thirty days."
COUNT_KEYS = (
    "questions",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "demo_messages",
    "demo_tokens",
)


def _bot(client, tenant, tmp_path, **fields):  # type: ignore[no-untyped-def]
    chatbot = create_chatbot(client, tenant, **fields)
    path = docgen.make_txt(tmp_path / f"{uuid.uuid4().hex}.txt", FACTS)
    doc = upload(client, tenant, chatbot["id"], path)
    assert wait_for_document(client, tenant, chatbot["id"], doc["id"])["status"] == "ready"
    return chatbot


def _ask(live_url: str, chatbot: dict, question: str = "How fast do you ship?") -> httpx.Response:
    return httpx.post(
        f"{live_url}/api/public/{chatbot['id']}/query",
        json={"question": question},
        headers={"X-API-Key": chatbot["api_key"]},
        timeout=30,
    )


def _sum(rows: list[dict]) -> dict[str, int]:
    return {key: sum(row[key] for row in rows) for key in COUNT_KEYS}


def test_breakdown_adds_up_to_the_totals_in_json_and_csv(
    client, runtime, fake_llm, live_url, tmp_path, db_session
):
    tenant = register(client)
    first = _bot(client, tenant, tmp_path, name="Shop")
    second = _bot(client, tenant, tmp_path, name="=HYPERLINK(1)")
    for chatbot, times in ((first, 3), (second, 2)):
        for _ in range(times):
            assert _ask(live_url, chatbot).status_code == 200
    demo = httpx.post(
        f"{live_url}/api/chatbots/{first['id']}/demo",
        json={"question": "Returns?"},
        headers=tenant.headers,
        timeout=30,
    )
    assert demo.status_code == 200

    response = client.get("/api/usage", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    today = datetime.now(UTC).date()
    assert body["period"] == {
        "from": today.replace(day=1).isoformat(),
        "to": body["period"]["to"],
    }
    assert date.fromisoformat(body["period"]["to"]).month == today.month
    totals = body["totals"]
    assert totals["questions"] == 5 and totals["demo_messages"] == 1
    assert totals["total_tokens"] == totals["input_tokens"] + totals["output_tokens"]
    assert _sum(body["by_chatbot"]) == totals
    assert _sum(body["by_day"]) == totals
    assert len(body["by_day"]) == date.fromisoformat(body["period"]["to"]).day
    # The history is the source: the same sums straight from the table.
    db_session.expire_all()
    charged = db_session.execute(
        select(
            func.count(), func.sum(ChatHistory.input_tokens), func.sum(ChatHistory.output_tokens)
        )
        .join(Chatbot, Chatbot.id == ChatHistory.chatbot_id)
        .where(Chatbot.customer_id == uuid.UUID(tenant.customer_id), ChatHistory.is_demo.is_(False))
    ).one()
    assert (totals["questions"], totals["input_tokens"], totals["output_tokens"]) == tuple(charged)
    # A new customer's whole life is this month: the balance's counter agrees.
    assert body["tokens_used"] == totals["total_tokens"]
    lines = {line["name"]: line for line in body["by_chatbot"]}
    assert lines["Shop"]["questions"] == 3 and lines["Shop"]["demo_messages"] == 1
    assert lines["=HYPERLINK(1)"]["questions"] == 2
    assert lines["Shop"]["month_tokens"] == lines["Shop"]["total_tokens"]
    assert lines["Shop"]["limit_reached"] is False and body["low_balance"] is False

    exported = client.get("/api/usage/export.csv", headers=tenant.headers)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {row["date"] for row in rows} == {today.isoformat()}
    assert {row["chatbot_name"] for row in rows} == {"Shop", "'=HYPERLINK(1)"}  # not a formula
    as_ints = [{k: int(row[k]) for k in COUNT_KEYS} for row in rows]
    assert _sum(as_ints) == totals


def test_period_parameters(client):
    tenant = register(client)
    response = client.get("/api/usage?from=2025-02-01&to=2025-02-28", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["period"] == {"from": "2025-02-01", "to": "2025-02-28"}
    assert len(body["by_day"]) == 28 and body["totals"]["questions"] == 0
    only_to = client.get("/api/usage?to=2025-03-15", headers=tenant.headers).json()
    assert only_to["period"] == {"from": "2025-03-01", "to": "2025-03-15"}
    for query, where in (
        ("from=2025-03-10&to=2025-03-01", "before"),
        ("from=2024-01-01&to=2025-03-01", "366"),
        ("from=yesterday", "from"),
    ):
        refused = client.get(f"/api/usage?{query}", headers=tenant.headers)
        assert refused.status_code == 422, query
        assert refused.json()["code"] == "validation_error" and refused.json()["errors"], query
        assert where in refused.json()["detail"] or where in str(refused.json()["errors"])
    assert (
        client.get(
            "/api/usage/export.csv?from=2025-03-10&to=2025-03-01", headers=tenant.headers
        ).status_code
        == 422
    )
    assert client.get("/api/usage").status_code == 401


def test_low_balance_flag_follows_the_threshold(client, settings, db_session):
    tenant = register(client)
    member = add_user(client, tenant, role="member")
    db_session.execute(
        update(UsageToken)
        .where(UsageToken.customer_id == uuid.UUID(tenant.customer_id))
        .values(tokens_remaining=settings.LOW_BALANCE_TOKENS - 1)
    )
    db_session.commit()
    body = client.get("/api/usage", headers=member.headers).json()  # members read usage
    assert body["low_balance"] is True
    assert body["low_balance_threshold"] == settings.LOW_BALANCE_TOKENS
    db_session.execute(
        update(UsageToken)
        .where(UsageToken.customer_id == uuid.UUID(tenant.customer_id))
        .values(tokens_remaining=settings.LOW_BALANCE_TOKENS)
    )
    db_session.commit()
    assert client.get("/api/usage", headers=member.headers).json()["low_balance"] is False


def _month_counter(db_session, chatbot_id: str) -> int:  # type: ignore[no-untyped-def]
    db_session.expire_all()
    value = db_session.scalar(
        select(ChatbotMonthlyUsage.tokens).where(
            ChatbotMonthlyUsage.chatbot_id == uuid.UUID(chatbot_id)
        )
    )
    db_session.commit()
    return int(value or 0)


def _history_tokens(db_session, chatbot_id: str) -> int:  # type: ignore[no-untyped-def]
    db_session.expire_all()
    value = db_session.scalar(
        select(
            func.coalesce(func.sum(ChatHistory.input_tokens + ChatHistory.output_tokens), 0)
        ).where(ChatHistory.chatbot_id == uuid.UUID(chatbot_id), ChatHistory.is_demo.is_(False))
    )
    db_session.commit()
    return int(value)


def test_chatbot_past_its_monthly_limit_answers_402_while_another_answers(
    client, runtime, fake_llm, live_url, tmp_path, db_session
):
    tenant = register(client)
    capped = _bot(client, tenant, tmp_path, name="Capped")
    free = _bot(client, tenant, tmp_path, name="Free")
    member = add_user(client, tenant, role="member")
    refused = client.patch(
        f"/api/chatbots/{capped['id']}", json={"monthly_token_limit": 10}, headers=member.headers
    )
    assert refused.status_code == 403 and refused.json()["code"] == "admin_required"
    first = _ask(live_url, capped)
    assert first.status_code == 200
    spent = first.json()["usage"]["total_tokens"]
    limit = spent + 1  # the next question crosses it, the one after is refused
    set_limit = client.patch(
        f"/api/chatbots/{capped['id']}",
        json={"monthly_token_limit": limit},
        headers=tenant.headers,
    )
    assert set_limit.status_code == 200 and set_limit.json()["monthly_token_limit"] == limit
    assert _ask(live_url, capped).status_code == 200  # under the limit when it started
    before = len(fake_llm.requests)
    over = _ask(live_url, capped)
    assert over.status_code == 402
    assert over.json() == {
        "detail": "This chatbot cannot answer right now; please try again later.",
        "code": "monthly_limit_reached",
    }
    assert len(fake_llm.requests) == before  # no LLM call
    assert _ask(live_url, free).status_code == 200  # the same tenant's other chatbot
    owner = httpx.post(
        f"{live_url}/api/{tenant.customer_id}/{capped['id']}/query",
        json={"question": "Returns?"},
        headers=tenant.headers,
        timeout=30,
    )
    assert owner.status_code == 402 and str(limit) in owner.json()["detail"]
    usage = client.get("/api/usage", headers=tenant.headers).json()
    lines = {line["name"]: line for line in usage["by_chatbot"]}
    assert lines["Capped"]["limit_reached"] is True
    assert lines["Capped"]["monthly_token_limit"] == limit
    assert lines["Capped"]["month_tokens"] >= limit and lines["Free"]["limit_reached"] is False
    assert _month_counter(db_session, capped["id"]) == _history_tokens(db_session, capped["id"])
    lifted = client.patch(
        f"/api/chatbots/{capped['id']}", json={"monthly_token_limit": None}, headers=tenant.headers
    )
    assert lifted.status_code == 200 and lifted.json()["monthly_token_limit"] is None
    assert _ask(live_url, capped).status_code == 200


def test_concurrent_questions_cross_the_limit_at_most_once(
    client, runtime, fake_llm, live_url, tmp_path, db_session
):
    tenant = register(client)
    capped = _bot(client, tenant, tmp_path, monthly_token_limit=1)
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: _ask(live_url, capped), range(10))]
    assert statuses.count(200) == 1 and statuses.count(402) == 9, statuses
    # Every reservation was settled or given back: the counter is exactly what was spent.
    assert _month_counter(db_session, capped["id"]) == _history_tokens(db_session, capped["id"])


@pytest.mark.parametrize("limit", [0])
def test_a_zero_limit_stops_the_chatbot_and_members_cannot_create_with_one(
    client, runtime, fake_llm, live_url, tmp_path, limit
):
    tenant = register(client)
    member = add_user(client, tenant, role="member")
    response = client.post(
        "/api/chatbots", json={"name": "X", "monthly_token_limit": 5}, headers=member.headers
    )
    assert response.status_code == 403
    stopped = _bot(client, tenant, tmp_path, monthly_token_limit=limit)
    assert _ask(live_url, stopped).status_code == 402
    assert client.get("/api/chatbots", headers=member.headers).json()["total"] == 1
