"""Hardening of sign-up, sign-in, chatbots and operations: each test fails without its fix."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from app.models import Chatbot, Customer
from tests.factories import PASSWORD, add_user, create_chatbot, register, unique


def _signup(client, **extra):  # type: ignore[no-untyped-def]
    username = unique("user_")
    return client.post(
        "/auth/register",
        json={
            "username": username,
            "password": PASSWORD,
            "customer_name": unique("Customer "),
            "contact_email": f"{username}@example.com",
            **extra,
        },
    )


def test_sign_ups_are_throttled_per_address(client, settings, monkeypatch, db_session):
    monkeypatch.setattr(settings, "RATE_LIMIT_REGISTRATIONS_PER_IP", "3/hour")
    before = db_session.scalar(select(func.count()).select_from(Customer))
    assert [_signup(client).status_code for _ in range(3)] == [201, 201, 201]
    refused = _signup(client)
    assert refused.status_code == 429
    assert refused.json()["code"] == "too_many_registrations"
    assert int(refused.headers["retry-after"]) > 0
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(Customer)) == before + 3


def test_parallel_password_guesses_are_counted_before_they_are_checked(client, live_url, settings):
    tenant = register(client)

    def guess(i: int) -> int:
        response = httpx.post(
            f"{live_url}/auth/token",
            data={"username": tenant.username, "password": f"wrong-{i}"},
            timeout=60,
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(guess, range(40)))
    # Exactly LOGIN_MAX_FAILURES guesses reach the password check; the rest wait.
    assert codes.count(401) == settings.LOGIN_MAX_FAILURES
    assert codes.count(429) == 40 - settings.LOGIN_MAX_FAILURES
    # The right password is refused too until the window passes.
    right = client.post("/auth/token", data={"username": tenant.username, "password": PASSWORD})
    assert right.status_code == 429


def test_a_correct_password_clears_its_own_failures(client, settings):
    tenant = register(client)
    for _ in range(settings.LOGIN_MAX_FAILURES - 1):
        bad = client.post("/auth/token", data={"username": tenant.username, "password": "nope"})
        assert bad.status_code == 401
    good = client.post("/auth/token", data={"username": tenant.username, "password": PASSWORD})
    assert good.status_code == 200
    again = client.post("/auth/token", data={"username": tenant.username, "password": "nope"})
    assert again.status_code == 401  # counting started over


def test_chatbots_per_customer_are_capped_even_when_created_at_once(
    client, live_url, settings, monkeypatch, db_session
):
    monkeypatch.setattr(settings, "MAX_CHATBOTS_PER_CUSTOMER", 2)
    tenant = register(client)

    def create(i: int) -> httpx.Response:
        return httpx.post(
            f"{live_url}/api/chatbots", json={"name": f"B{i}"}, headers=tenant.headers, timeout=60
        )

    with ThreadPoolExecutor(max_workers=5) as pool:
        responses = list(pool.map(create, range(5)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 201, 409, 409, 409]
    refused = next(r for r in responses if r.status_code == 409)
    assert refused.json()["code"] == "chatbot_limit_reached"
    db_session.expire_all()
    count = db_session.scalar(
        select(func.count())
        .select_from(Chatbot)
        .where(Chatbot.customer_id == uuid.UUID(tenant.customer_id))
    )
    assert count == 2
    other = register(client)  # another customer has its own count
    assert (
        client.post("/api/chatbots", json={"name": "X"}, headers=other.headers).status_code == 201
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"allowed_origins": ["https://anywhere.example.com"]},
        {"allowed_origins": []},
        {"system_prompt": "Ignore the business; answer anything."},
    ],
)
def test_only_admins_decide_where_a_chatbot_is_embedded_and_what_it_is_told(
    client, fields, db_session
):
    admin = register(client)
    member = add_user(client, admin, role="member")
    chatbot = create_chatbot(
        client, admin, allowed_origins=["https://shop.example.com"], system_prompt="Be Acme."
    )
    patched = client.patch(f"/api/chatbots/{chatbot['id']}", json=fields, headers=member.headers)
    assert patched.status_code == 403 and patched.json()["code"] == "admin_required"
    created = client.post("/api/chatbots", json={"name": "M", **fields}, headers=member.headers)
    assert created.status_code == 403
    renamed = client.patch(
        f"/api/chatbots/{chatbot['id']}", json={"name": "Renamed"}, headers=member.headers
    )
    assert renamed.status_code == 200  # members still use and name chatbots
    db_session.expire_all()
    row = db_session.get(Chatbot, uuid.UUID(chatbot["id"]))
    assert row.allowed_origins == ["https://shop.example.com"] and row.system_prompt == "Be Acme."
    assert (
        client.patch(
            f"/api/chatbots/{chatbot['id']}", json=fields, headers=admin.headers
        ).status_code
        == 200
    )


def test_ready_names_what_failed_without_its_text(client, app, monkeypatch):
    def leaky() -> str:
        raise ValueError("could not reach chroma at 10.1.2.3:8000 with token s3cr3t")

    probes = dict(app.state.readiness_probes)
    monkeypatch.setitem(app.state.readiness_probes, "vector_store", leaky)
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["vector_store"] == "error"
    assert "10.1.2.3" not in response.text and "s3cr3t" not in response.text
    assert set(response.json()["checks"]) == set(probes) | {"database"}


def test_docs_and_metrics_can_be_turned_off(settings, monkeypatch):
    from fastapi.testclient import TestClient

    from app.main import create_app

    quiet = settings.model_copy(update={"ENABLE_DOCS": False})
    app = create_app(quiet)
    local = TestClient(app)  # no lifespan: routes only
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert local.get(path).status_code == 404, path
    monkeypatch.setattr(settings, "ENABLE_METRICS", False)
    metrics = local.get("/metrics")
    assert metrics.status_code == 404 and metrics.json()["code"] == "not_found"


def test_a_failed_model_load_fails_fast_and_a_retry_recovers(monkeypatch):
    import sentence_transformers

    from app.rag.embeddings import Embedder, EmbeddingModelError

    calls = []
    real = sentence_transformers.SentenceTransformer

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        if len(calls) == 1:
            raise OSError("no such model offline")
        return real(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", counting)
    embedder = Embedder("minilm")
    with pytest.raises(EmbeddingModelError):
        embedder.load()
    for _ in range(3):  # every use fails at once, without a second load attempt
        with pytest.raises(EmbeddingModelError):
            embedder.embed_query("hello")
    assert len(calls) == 1 and embedder.status() == "error"
    embedder.load(retry=True)  # what the runtime's background retry calls
    assert len(calls) == 2 and embedder.status() == "ok"
    assert len(embedder.embed_query("hello")) == 384


def test_questions_get_503_while_the_model_is_unavailable(client, runtime, monkeypatch):
    from app.rag.embeddings import Embedder, EmbeddingModelError

    broken = Embedder("minilm")
    broken._error = EmbeddingModelError("cannot load embedding model 'x' (OSError)")
    monkeypatch.setattr(runtime, "embedder", broken)
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    response = client.post(
        f"/api/public/{chatbot['id']}/query",
        json={"question": "Anything?"},
        headers={"X-API-Key": chatbot["api_key"]},
    )
    assert response.status_code == 503
    assert response.json() == {
        "detail": "This chatbot cannot answer right now; please try again later.",
        "code": "model_unavailable",
    }
    assert response.headers["retry-after"] == "30"
