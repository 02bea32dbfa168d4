"""The query path over real HTTP: retrieval, a loopback LLM, streaming, metering, limits."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import event, func, select, update

from app.core.db import get_database
from app.models import Chatbot, ChatHistory, Customer, UsageToken
from tests.factories import add_user, create_chatbot, register
from tests.fake_llm import prompt_tokens


def _public(live_url: str, chatbot: dict, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{live_url}/api/public/{chatbot['id']}/query",
        json=body,
        headers={"X-API-Key": chatbot["api_key"], **headers},
        timeout=30,
    )


def _usage(db_session, customer_id: str) -> SimpleNamespace:  # type: ignore[no-untyped-def]
    """A snapshot of the balance row (not the live ORM object)."""
    db_session.expire_all()
    row = db_session.scalar(
        select(UsageToken).where(UsageToken.customer_id == uuid.UUID(customer_id))
    )
    db_session.commit()
    return SimpleNamespace(
        tokens_used=row.tokens_used,
        tokens_remaining=row.tokens_remaining,
        input_tokens_used=row.input_tokens_used,
        output_tokens_used=row.output_tokens_used,
    )


def _history_total(db_session, customer_id: str) -> int:  # type: ignore[no-untyped-def]
    return int(
        db_session.scalar(
            select(func.coalesce(func.sum(ChatHistory.input_tokens + ChatHistory.output_tokens), 0))
            .join(Chatbot, Chatbot.id == ChatHistory.chatbot_id)
            .where(Chatbot.customer_id == uuid.UUID(customer_id), ChatHistory.is_demo.is_(False))
        )
    )


def _events(response: httpx.Response) -> list[tuple[str, object]]:
    events = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        name = lines[0].removeprefix("event: ")
        data = json.loads(lines[1].removeprefix("data: "))
        events.append((name, data))
    return events


def test_answer_with_sources_usage_and_history(bot, fake_llm, live_url, db_session):
    tenant, chatbot, doc = bot
    before = _usage(db_session, tenant.customer_id)
    response = _public(live_url, chatbot, {"question": "When is support open?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "llm"
    assert body["answer"].startswith("Answer:")
    source = body["sources"][0]
    assert source["document_id"] == doc["id"] and source["filename"] == "faq.txt"
    assert source["chunk_index"] == 0 and "Monday to Friday" in source["text"]
    assert -1 <= source["score"] <= 1
    sent = fake_llm.requests[-1]
    assert sent["model"] == "accounts/fireworks/models/qwen2p5-coder-32b-instruct"
    expected_input = prompt_tokens(sent["messages"])
    assert body["usage"]["input_tokens"] == expected_input
    assert body["usage"]["output_tokens"] == len(body["answer"].split())
    assert body["usage"]["total_tokens"] == expected_input + body["usage"]["output_tokens"]

    row = db_session.get(ChatHistory, uuid.UUID(body["message_id"]))
    assert row.answer == body["answer"] and row.user_id is None
    assert row.input_tokens == expected_input and row.mode == "llm"
    assert row.session_id == body["session_id"] and row.sources[0]["document_id"] == doc["id"]
    after = _usage(db_session, tenant.customer_id)
    total = body["usage"]["total_tokens"]
    assert after.tokens_used == before.tokens_used + total
    assert after.tokens_remaining == before.tokens_remaining - total
    assert after.input_tokens_used == before.input_tokens_used + expected_input
    assert _history_total(db_session, tenant.customer_id) == after.tokens_used

    usage = httpx.get(f"{live_url}/api/usage", headers=tenant.headers).json()
    assert usage["tokens_used"] == after.tokens_used
    assert usage["tokens_remaining"] == after.tokens_remaining


def test_prompt_carries_passages_and_previous_turn(bot, fake_llm, live_url):
    _, chatbot, _ = bot
    first = _public(
        live_url, chatbot, {"question": "How long is the warranty?", "session_id": "s-1"}
    )
    assert first.status_code == 200
    second = _public(live_url, chatbot, {"question": "And the motor power?", "session_id": "s-1"})
    assert second.status_code == 200
    messages = fake_llm.requests[-1]["messages"]
    assert messages[0]["role"] == "system"
    assert "You are Acme's support bot." in messages[0]["content"]
    assert "untrusted" in messages[0]["content"]
    assert {"role": "user", "content": "How long is the warranty?"} in messages
    assert {"role": "assistant", "content": first.json()["answer"]} in messages
    last = messages[-1]["content"]
    assert "<context>" in last and "</context>" in last
    assert "1200 watt motor" in last and last.rstrip().endswith("And the motor power?")
    other = _public(live_url, chatbot, {"question": "And the motor power?", "session_id": "s-2"})
    assert other.status_code == 200
    assert "How long is the warranty?" not in json.dumps(fake_llm.requests[-1]["messages"])


@pytest.mark.parametrize("how", ["body", "accept"])
def test_streaming_events_in_order_and_equal_to_stored_answer(
    bot, fake_llm, live_url, db_session, how
):
    tenant, chatbot, doc = bot
    fake_llm.set_reply("Support is open on weekdays from nine to five, see [1].")
    body = {"question": "When is support open?", "stream": how == "body"}
    headers = {"Accept": "text/event-stream"} if how == "accept" else {}
    response = _public(live_url, chatbot, body, **headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert "no-cache" in response.headers["cache-control"]
    events = _events(response)
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done"
    assert set(names[1:-1]) == {"token"} and len(names) > 3
    assert events[0][1][0]["document_id"] == doc["id"]
    text = "".join(data["text"] for name, data in events if name == "token")
    done = events[-1][1]
    row = db_session.get(ChatHistory, uuid.UUID(done["message_id"]))
    assert text == row.answer == "Support is open on weekdays from nine to five, see [1]."
    assert done["usage"]["output_tokens"] == row.output_tokens == len(text.split())
    assert done["usage"]["input_tokens"] == row.input_tokens > 0
    assert (
        _history_total(db_session, tenant.customer_id)
        == _usage(db_session, tenant.customer_id).tokens_used
    )


@pytest.mark.parametrize("failure", ["status-500", "timeout"])
def test_upstream_failure_is_503_and_charges_nothing(bot, fake_llm, live_url, db_session, failure):
    tenant, chatbot, _ = bot
    before = _usage(db_session, tenant.customer_id)
    rows_before = db_session.scalar(
        select(func.count()).where(ChatHistory.chatbot_id == uuid.UUID(chatbot["id"]))
    )
    if failure == "status-500":
        fake_llm.fail_next(10, status=500)
    else:
        fake_llm.delay_seconds = 3.0
    response = _public(live_url, chatbot, {"question": "When is support open?"})
    assert response.status_code == 503
    assert response.json()["code"] == "llm_unavailable"
    assert response.headers["retry-after"] == "5"
    after = _usage(db_session, tenant.customer_id)
    assert (after.tokens_used, after.tokens_remaining) == (
        before.tokens_used,
        before.tokens_remaining,
    )
    rows_after = db_session.scalar(
        select(func.count()).where(ChatHistory.chatbot_id == uuid.UUID(chatbot["id"]))
    )
    assert rows_after == rows_before
    fake_llm.delay_seconds = 0.0
    fake_llm.reset()
    streamed = _public(live_url, chatbot, {"question": "Hello?", "stream": True})
    assert streamed.status_code == 200


def test_streaming_upstream_failure_sends_error_event(bot, fake_llm, live_url, db_session):
    tenant, chatbot, _ = bot
    before = _usage(db_session, tenant.customer_id)
    fake_llm.fail_next(10, status=502)
    response = _public(live_url, chatbot, {"question": "When is support open?", "stream": True})
    events = _events(response)
    assert [name for name, _ in events] == ["sources", "error"]
    assert events[-1][1] == {
        "detail": "The language model is unavailable right now; nothing was charged. Retry later.",
        "code": "llm_unavailable",
    }
    after = _usage(db_session, tenant.customer_id)
    assert after.tokens_remaining == before.tokens_remaining
    assert after.tokens_used == before.tokens_used


def test_client_disconnect_stops_generation(bot, fake_llm, live_url, db_session):
    tenant, chatbot, _ = bot
    fake_llm.set_reply(" ".join(f"word{i}" for i in range(200)))
    fake_llm.token_delay_seconds = 0.05
    with httpx.stream(
        "POST",
        f"{live_url}/api/public/{chatbot['id']}/query",
        json={"question": "Tell me everything", "stream": True, "session_id": "gone"},
        headers={"X-API-Key": chatbot["api_key"]},
        timeout=30,
    ) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("event: token"):
                seen += 1
                if seen == 3:
                    break
    assert fake_llm.wait_for_disconnects(1, timeout=10)
    deadline = time.monotonic() + 10
    row = None
    while time.monotonic() < deadline:
        db_session.expire_all()
        row = db_session.scalar(
            select(ChatHistory).where(
                ChatHistory.chatbot_id == uuid.UUID(chatbot["id"]),
                ChatHistory.session_id == "gone",
            )
        )
        if row is not None:
            break
        time.sleep(0.1)
    assert row is not None and row.interrupted is True
    assert 0 < len(row.answer.split()) < 200
    assert (
        _history_total(db_session, tenant.customer_id)
        == _usage(db_session, tenant.customer_id).tokens_used
    )


def test_heartbeat_while_the_llm_is_slow(bot, fake_llm, live_url, runtime, monkeypatch):
    _, chatbot, _ = bot
    monkeypatch.setattr(runtime.settings, "SSE_HEARTBEAT_SECONDS", 0.05)
    release = fake_llm.hold_stream_after(0)  # the LLM holds its first token until we see one
    lines: list[str] = []
    with httpx.stream(
        "POST",
        f"{live_url}/api/public/{chatbot['id']}/query",
        json={"question": "Slow one?", "stream": True},
        headers={"X-API-Key": chatbot["api_key"]},
        timeout=90,
    ) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line == ": keep-alive":
                release.set()
    assert ": keep-alive" in lines
    assert lines.index(": keep-alive") < lines.index("event: token")
    assert [line for line in lines if line.startswith("event: ")][-1] == "event: done"


def test_wrong_or_rotated_key_is_401(bot, live_url, client):
    tenant, chatbot, _ = bot
    wrong = httpx.post(
        f"{live_url}/api/public/{chatbot['id']}/query",
        json={"question": "Hi"},
        headers={"X-API-Key": "cbk_wrong"},
    )
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_api_key"
    missing = httpx.post(f"{live_url}/api/public/{chatbot['id']}/query", json={"question": "Hi"})
    assert missing.status_code == 401
    rotated = client.post(f"/api/chatbots/{chatbot['id']}/rotate_key", headers=tenant.headers)
    old = _public(live_url, chatbot, {"question": "Hi"})
    assert old.status_code == 401
    new = _public(live_url, {**chatbot, "api_key": rotated.json()["api_key"]}, {"question": "Hi"})
    assert new.status_code == 200


def test_null_session_id_starts_a_session(bot, live_url):
    _, chatbot, _ = bot
    response = _public(live_url, chatbot, {"question": "Hi?", "session_id": None})
    assert response.status_code == 200
    assert len(response.json()["session_id"]) == 32


def test_a_new_session_reads_no_history_and_a_follow_up_does(bot, fake_llm, live_url):
    _, chatbot, _ = bot
    fake_llm.set_reply("Nine to five.")
    reads: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "chat_history" in statement:
            reads.append(statement)

    engine = get_database().engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        first = _public(live_url, chatbot, {"question": "When is support open?"})
        assert first.status_code == 200 and first.json()["mode"] == "llm"
        assert reads == []  # the server made the session id: nothing to read
        session_id = first.json()["session_id"]
        again = _public(live_url, chatbot, {"question": "And on Sunday?", "session_id": session_id})
        assert again.status_code == 200 and again.json()["session_id"] == session_id
        assert len(reads) == 1
    finally:
        event.remove(engine, "before_cursor_execute", note)
    # The follow-up's prompt carried the first turn.
    assert {"role": "assistant", "content": "Nine to five."} in fake_llm.requests[-1]["messages"]


def test_unknown_chatbot_is_404(live_url):
    response = httpx.post(
        f"{live_url}/api/public/{uuid.uuid4()}/query",
        json={"question": "Hi"},
        headers={"X-API-Key": "cbk_x"},
    )
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_origin_checks_and_preflight(client, live_url):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant, allowed_origins=["https://shop.example.com"])
    good = _public(live_url, chatbot, {"question": "Hi"}, Origin="https://shop.example.com")
    assert good.status_code == 200
    assert good.headers["access-control-allow-origin"] == "https://shop.example.com"
    bad = _public(live_url, chatbot, {"question": "Hi"}, Origin="https://evil.example.net")
    assert bad.status_code == 403 and bad.json()["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in bad.headers
    url = f"{live_url}/api/public/{chatbot['id']}/query"
    preflight_headers = {"Access-Control-Request-Method": "POST"}
    ok = httpx.options(url, headers={**preflight_headers, "Origin": "https://shop.example.com"})
    assert ok.status_code == 204
    assert "X-API-Key" in ok.headers["access-control-allow-headers"]
    denied = httpx.options(url, headers={**preflight_headers, "Origin": "https://evil.example.net"})
    assert denied.status_code == 403
    assert "access-control-allow-origin" not in denied.headers
    # No Origin (a server-side caller) is allowed.
    assert _public(live_url, chatbot, {"question": "Hi"}).status_code == 200
    # An allowed website can read later errors too.
    wrong_key = httpx.post(
        url,
        json={"question": "Hi"},
        headers={"X-API-Key": "cbk_wrong", "Origin": "https://shop.example.com"},
    )
    assert wrong_key.status_code == 401
    assert wrong_key.headers["access-control-allow-origin"] == "https://shop.example.com"
    echoed = httpx.options(
        url,
        headers={
            **preflight_headers,
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Headers": "content-type, x-api-key, x-request-id",
        },
    )
    assert "x-request-id" in echoed.headers["access-control-allow-headers"]


def test_customer_query_checks_customer_and_ownership(bot, fake_llm, client, live_url):
    tenant, chatbot, _ = bot
    other = register(client)
    url = f"{live_url}/api/{tenant.customer_id}/{chatbot['id']}/query"
    own = httpx.post(url, json={"question": "When is support open?"}, headers=tenant.headers)
    assert own.status_code == 200 and own.json()["mode"] == "llm"
    foreign = httpx.post(url, json={"question": "Hi"}, headers=other.headers)
    assert foreign.status_code == 403
    as_self = httpx.post(
        f"{live_url}/api/{other.customer_id}/{chatbot['id']}/query",
        json={"question": "Hi"},
        headers=other.headers,
    )
    assert as_self.status_code == 404
    assert httpx.post(url, json={"question": "Hi"}).status_code == 401


def test_a_deleted_users_token_is_refused_by_the_question_routes(
    bot, fake_llm, client, live_url, db_session
):  # type: ignore[no-untyped-def]
    tenant, chatbot, _ = bot
    member = add_user(client, tenant)
    url = f"{live_url}/api/{tenant.customer_id}/{chatbot['id']}/query"
    asked = httpx.post(url, json={"question": "When is support open?"}, headers=member.headers)
    assert asked.status_code == 200 and asked.json()["mode"] == "llm"
    deleted = client.delete(f"/api/users/{member.user['id']}", headers=tenant.headers)
    assert deleted.status_code == 204
    before = _usage(db_session, tenant.customer["id"])
    for path in (url, f"{live_url}/api/chatbots/{chatbot['id']}/demo"):
        response = httpx.post(path, json={"question": "Hi"}, headers=member.headers)
        assert response.status_code == 401, (path, response.text)
        body = response.json()
        assert body["code"] == "not_authenticated"
        assert body["detail"] == "The token's user no longer exists; sign in again."
    # The owner's own question still goes through; the refused ones charged nothing.
    assert _usage(db_session, tenant.customer["id"]) == before
    mine = httpx.post(url, json={"question": "When is support open?"}, headers=tenant.headers)
    assert mine.status_code == 200


def test_concurrent_queries_never_overspend(
    bot, fake_llm, live_url, db_session, runtime, monkeypatch
):
    tenant, chatbot, _ = bot
    # Small answers, so a reservation (prompt + LLM_MAX_TOKENS) is close to the real cost.
    monkeypatch.setattr(runtime.settings, "LLM_MAX_TOKENS", 40)
    probe = _public(live_url, chatbot, {"question": "Question 0 about returns?"})
    assert probe.status_code == 200
    balance = 5 * (probe.json()["usage"]["input_tokens"] + 40)
    with db_session.begin():
        db_session.execute(
            update(UsageToken)
            .where(UsageToken.customer_id == uuid.UUID(tenant.customer_id))
            .values(tokens_remaining=balance)
        )
    with ThreadPoolExecutor(20) as pool:
        responses = list(
            pool.map(
                lambda i: _public(live_url, chatbot, {"question": f"Question {i} about returns?"}),
                range(20),
            )
        )
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 402}, codes
    assert codes.count(200) >= 1 and codes.count(402) >= 10, codes
    assert all(r.json()["code"] == "insufficient_tokens" for r in responses if r.status_code == 402)
    usage = _usage(db_session, tenant.customer_id)
    assert usage.tokens_remaining >= 0
    assert _history_total(db_session, tenant.customer_id) == usage.tokens_used
    answered = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    assert usage.tokens_remaining == balance - answered


def test_no_balance_is_402(bot, live_url, db_session, fake_llm):
    tenant, chatbot, _ = bot
    with db_session.begin():
        db_session.execute(
            update(UsageToken)
            .where(UsageToken.customer_id == uuid.UUID(tenant.customer_id))
            .values(tokens_remaining=10)
        )
    response = _public(live_url, chatbot, {"question": "When is support open?"})
    assert response.status_code == 402 and response.json()["code"] == "insufficient_tokens"
    assert _usage(db_session, tenant.customer_id).tokens_remaining == 10
    assert fake_llm.requests == []


def test_demo_lets_exactly_ten_through(bot, fake_llm, live_url, db_session):
    tenant, chatbot, _ = bot
    before = _usage(db_session, tenant.customer_id)
    url = f"{live_url}/api/chatbots/{chatbot['id']}/demo"
    with ThreadPoolExecutor(15) as pool:
        responses = list(
            pool.map(
                lambda i: httpx.post(
                    url, json={"question": f"Demo {i}?"}, headers=tenant.headers, timeout=30
                ),
                range(15),
            )
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 10 + [429] * 5
    limited = [r for r in responses if r.status_code == 429]
    assert all(r.json()["code"] == "demo_limit_reached" for r in limited)
    assert all(r.json()["detail"].startswith("This chatbot has used its 10") for r in limited)
    assert all("retry-after" in r.headers for r in limited)
    remaining = sorted(
        r.json()["demo_messages_remaining"] for r in responses if r.status_code == 200
    )
    assert remaining == list(range(10))
    db_session.expire_all()
    assert db_session.get(Chatbot, uuid.UUID(chatbot["id"])).demo_message_count == 10
    demo_rows = db_session.scalars(
        select(ChatHistory).where(
            ChatHistory.chatbot_id == uuid.UUID(chatbot["id"]), ChatHistory.is_demo.is_(True)
        )
    ).all()
    assert len(demo_rows) == 10 and all(r.input_tokens > 0 for r in demo_rows)
    assert str(demo_rows[0].user_id) == tenant.user["id"]
    after = _usage(db_session, tenant.customer_id)
    assert (after.tokens_used, after.tokens_remaining) == (
        before.tokens_used,
        before.tokens_remaining,
    )


def test_failed_demo_message_does_not_count(bot, fake_llm, live_url, db_session):
    tenant, chatbot, _ = bot
    fake_llm.fail_next(10, status=500)
    url = f"{live_url}/api/chatbots/{chatbot['id']}/demo"
    response = httpx.post(url, json={"question": "Demo?"}, headers=tenant.headers, timeout=30)
    assert response.status_code == 503
    db_session.expire_all()
    assert db_session.get(Chatbot, uuid.UUID(chatbot["id"])).demo_message_count == 0
    assert db_session.get(Customer, uuid.UUID(tenant.customer_id)).demo_messages_used == 0


def test_extractive_mode_without_llm_key(bot, live_url, db_session, runtime):
    tenant, chatbot, doc = bot
    assert runtime.llm.configured is False
    response = _public(live_url, chatbot, {"question": "What is the return policy?"})
    assert response.status_code == 200
    body = response.json()
    assert body["mode"] == "extractive"
    assert "30 days" in body["answer"] and "faq.txt" in body["answer"]
    assert body["sources"][0]["document_id"] == doc["id"]
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    row = db_session.get(ChatHistory, uuid.UUID(body["message_id"]))
    assert row.mode == "extractive" and row.output_tokens == body["usage"]["output_tokens"]
    assert (
        _history_total(db_session, tenant.customer_id)
        == _usage(db_session, tenant.customer_id).tokens_used
    )
    streamed = _public(live_url, chatbot, {"question": "Return policy?", "stream": True})
    events = _events(streamed)
    text = "".join(d["text"] for n, d in events if n == "token")
    stored = db_session.get(ChatHistory, uuid.UUID(events[-1][1]["message_id"]))
    assert text == stored.answer and "30 days" in text


def test_fallback_without_documents_skips_the_llm(client, fake_llm, live_url, db_session, settings):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    response = _public(live_url, chatbot, {"question": "Anything?"})
    assert response.status_code == 200
    body = response.json()
    assert body["mode"] == "fallback" and body["answer"] == settings.FALLBACK_MESSAGE
    assert body["sources"] == [] and body["usage"]["total_tokens"] == 0
    assert fake_llm.requests == []


class FrozenClock:
    """Stands in for the `time` module of the rate limiter's storage: the test moves time."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def limiter_clock(monkeypatch):  # type: ignore[no-untyped-def]
    import limits.storage.memory
    import limits.strategies

    import app.core.ratelimit

    clock = FrozenClock()
    for module in (limits.storage.memory, limits.strategies, app.core.ratelimit):
        monkeypatch.setattr(module, "time", clock)
    return clock


def test_public_rate_limit_and_burst(client, live_url, settings, limiter_clock):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    with ThreadPoolExecutor(20) as pool:
        burst = list(pool.map(lambda i: _public(live_url, chatbot, {"question": "Hi?"}), range(20)))
    assert [r.status_code for r in burst] == [200] * 20  # a burst of 20 is normal use
    allowed = int(settings.RATE_LIMIT_PUBLIC_PER_CLIENT.split("/")[0])
    assert settings.RATE_LIMIT_PUBLIC_PER_CLIENT.endswith("/minute")
    codes = [_public(live_url, chatbot, {"question": "Hi?"}).status_code for _ in range(allowed)]
    # The clock stands still: exactly `allowed` answers in the window, then 429s.
    assert codes == [200] * (allowed - 20) + [429] * 20
    limited = _public(live_url, chatbot, {"question": "Hi?"})
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) == 60
    limiter_clock.now += 30
    assert int(_public(live_url, chatbot, {"question": "Hi?"}).headers["retry-after"]) == 30
    limiter_clock.now += 31  # the window has moved past the first requests
    assert _public(live_url, chatbot, {"question": "Hi?"}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"question": ""},
        {"question": "   "},
        {"question": "x" * 10_001},  # the schema's hard cap; QUESTION_MAX_CHARS is below it
        {"question": "nul\x00here"},
        {"question": "ok", "session_id": "bad id!"},
        {"question": "ok", "session_id": "s" * 65},
        {},
    ],
)
def test_invalid_questions_are_422(client, live_url, body):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    response = _public(live_url, chatbot, body)
    assert response.status_code == 422 and response.json()["code"] == "validation_error"


def test_embedding_model_change_requires_reindex(bot, live_url, runtime, client):
    tenant, chatbot, _ = bot
    chatbot_id = uuid.UUID(chatbot["id"])
    runtime.store.delete_chatbot(chatbot_id)
    from app.rag.vector_store import ChunkRecord

    runtime.store.add(
        chatbot_id,
        uuid.UUID(tenant.customer_id),
        "some/other-model",
        3,
        [ChunkRecord("x:0", "old", [1.0, 0.0, 0.0], {"document_id": "x", "chunk_index": 0})],
    )
    response = _public(live_url, chatbot, {"question": "Anything?"})
    assert response.status_code == 409
    assert response.json()["code"] == "embedding_model_mismatch"
    # Visitors are told little; the owner gets the model names and the way out.
    assert "other-model" not in response.json()["detail"]
    owner = httpx.post(
        f"{live_url}/api/{tenant.customer_id}/{chatbot['id']}/query",
        json={"question": "Anything?"},
        headers=tenant.headers,
    )
    assert owner.status_code == 409
    assert "some/other-model" in owner.json()["detail"] and "reindex" in owner.json()["detail"]
    assert (
        client.post(f"/api/chatbots/{chatbot['id']}/reindex", headers=tenant.headers).status_code
        == 202
    )


def test_history_lists_sessions_and_hides_other_tenants(bot, fake_llm, live_url, client):
    tenant, chatbot, _ = bot
    for question, session in (("One?", "a"), ("Two?", "a"), ("Three?", "b")):
        assert (
            _public(live_url, chatbot, {"question": question, "session_id": session}).status_code
            == 200
        )
    url = f"/api/chatbots/{chatbot['id']}/history"
    everything = client.get(url, headers=tenant.headers).json()
    assert everything["total"] == 3
    assert [i["question"] for i in everything["items"]] == ["Three?", "Two?", "One?"]
    only_a = client.get(f"{url}?session_id=a", headers=tenant.headers).json()
    assert only_a["total"] == 2 and {i["session_id"] for i in only_a["items"]} == {"a"}
    item = only_a["items"][0]
    assert item["input_tokens"] > 0 and item["sources"] and item["user_id"] is None
    other = register(client)
    assert client.get(url, headers=other.headers).status_code == 404
    nul = client.get(f"{url}?session_id=a%00b", headers=tenant.headers)
    assert nul.status_code == 422
