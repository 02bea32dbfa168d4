"""Tenant isolation, route by route (OWASP API1): every route of the OpenAPI document that takes
an id is called as tenant B with tenant A's ids, and with A's key on B's chatbot. Each answers
404 (or 401/403 where the contract says so) and A's data is unchanged. A new route with an id
fails here until it is added to the matrix below."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from app.models import Billing, Chatbot, ChatHistory, Document, UsageToken, User
from tests import docgen
from tests.factories import add_user, create_chatbot, register, upload

# Every (method, path) with a path parameter, and the body that gets it past validation, so
# that what answers is the ownership check and not a 422.
UPLOAD = object()
MATRIX: dict[tuple[str, str], Any] = {
    ("GET", "/api/chatbots/{chatbot_id}"): None,
    ("PATCH", "/api/chatbots/{chatbot_id}"): {"name": "Taken over"},
    ("DELETE", "/api/chatbots/{chatbot_id}"): None,
    ("GET", "/api/chatbots/{chatbot_id}/snippet"): None,
    ("POST", "/api/chatbots/{chatbot_id}/rotate_key"): None,
    ("POST", "/api/upload/{chatbot_id}"): UPLOAD,
    ("GET", "/api/chatbots/{chatbot_id}/documents"): None,
    ("GET", "/api/chatbots/{chatbot_id}/documents/{document_id}"): None,
    ("DELETE", "/api/chatbots/{chatbot_id}/documents/{document_id}"): None,
    ("POST", "/api/chatbots/{chatbot_id}/reindex"): None,
    ("POST", "/api/chatbots/{chatbot_id}/demo"): {"question": "Hello?"},
    ("GET", "/api/chatbots/{chatbot_id}/history"): None,
    ("POST", "/api/{customer_id}/{chatbot_id}/query"): {"question": "Hello?"},
    ("GET", "/api/public/{chatbot_id}"): None,
    ("POST", "/api/public/{chatbot_id}/query"): {"question": "Hello?"},
    ("DELETE", "/api/users/{user_id}"): None,
    ("GET", "/api/billing/invoices/{invoice_id}"): None,
    ("GET", "/api/billing/invoices/{invoice_id}/pdf"): None,
    ("POST", "/api/billing/invoices/{invoice_id}/void"): None,
}
# What B may see when it names A's rows: the contract's answer for each kind of route.
EXPECTED = {
    "/api/public/": {401},  # B's key is not A's chatbot's key
    "/api/{customer_id}/": {403},  # a customer_id that is not the token's
}


@pytest.fixture
def two_tenants(client, tmp_path):  # type: ignore[no-untyped-def]
    a, b = register(client), register(client)
    a_bot = create_chatbot(client, a, allowed_origins=["https://a.example.com"])
    b_bot = create_chatbot(client, b)
    doc = upload(client, a, a_bot["id"], docgen.make_txt(tmp_path / "a.txt", "A's secret plan."))
    invoice = client.post("/api/billing/invoices", json={"tokens": 20_000}, headers=a.headers)
    assert invoice.status_code == 201
    member = add_user(client, a, role="member")
    ids = {
        "chatbot_id": a_bot["id"],
        "document_id": doc["id"],
        "invoice_id": invoice.json()["id"],
        "user_id": member.user["id"],
        "customer_id": a.customer_id,
    }
    return a, b, a_bot, b_bot, ids


def _snapshot(db_session, customer_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    db_session.expire_all()
    cid = uuid.UUID(customer_id)
    chatbots = db_session.execute(
        select(Chatbot.id, Chatbot.name, Chatbot.api_key, Chatbot.updated_at).where(
            Chatbot.customer_id == cid
        )
    ).all()
    ids = [row[0] for row in chatbots]
    state = {
        "chatbots": sorted(map(tuple, chatbots)),
        "documents": db_session.scalar(
            select(func.count()).select_from(Document).where(Document.chatbot_id.in_(ids))
        ),
        "history": db_session.scalar(
            select(func.count()).select_from(ChatHistory).where(ChatHistory.chatbot_id.in_(ids))
        ),
        "users": sorted(db_session.scalars(select(User.id).where(User.customer_id == cid)).all()),
        "invoices": sorted(
            map(
                tuple,
                db_session.execute(
                    select(Billing.id, Billing.status).where(Billing.customer_id == cid)
                ).all(),
            )
        ),
        "balance": db_session.scalar(
            select(UsageToken.tokens_remaining).where(UsageToken.customer_id == cid)
        ),
    }
    db_session.commit()
    return state


def test_every_route_with_an_id_is_covered(client):
    spec = client.get("/openapi.json").json()
    routes = {
        (method.upper(), path)
        for path, methods in spec["paths"].items()
        if "{" in path
        for method in methods
    }
    assert routes == set(MATRIX), (
        f"not in the isolation matrix: {sorted(routes - set(MATRIX))}; "
        f"in the matrix but gone: {sorted(set(MATRIX) - routes)}"
    )


def test_tenant_b_cannot_reach_tenant_a_by_id(client, two_tenants, db_session, tmp_path):
    a, b, a_bot, b_bot, ids = two_tenants
    before = _snapshot(db_session, a.customer_id)
    path_file = docgen.make_txt(tmp_path / "b.txt", "B's upload attempt.")
    for (method, template), body in MATRIX.items():
        url = re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], template)
        headers = dict(b.headers)
        if template.startswith("/api/public/"):
            headers["X-API-Key"] = b_bot["api_key"]
        kwargs: dict[str, Any] = {"headers": headers}
        if body is UPLOAD:
            kwargs["files"] = {"file": ("b.txt", path_file.read_bytes(), "text/plain")}
        elif body is not None:
            kwargs["json"] = body
        response = client.request(method, url, **kwargs)
        expected = next(
            (codes for prefix, codes in EXPECTED.items() if template.startswith(prefix)), {404}
        )
        assert response.status_code in expected, (method, template, response.text)
        assert a_bot["api_key"] not in response.text and "secret plan" not in response.text
    # With its own customer_id in the path, A's chatbot is simply not found.
    own = client.post(
        f"/api/{b.customer_id}/{a_bot['id']}/query", json={"question": "Hi?"}, headers=b.headers
    )
    assert own.status_code == 404
    assert _snapshot(db_session, a.customer_id) == before


def test_a_key_works_only_for_its_own_chatbot(client, two_tenants, db_session):
    a, b, a_bot, b_bot, _ = two_tenants
    before = _snapshot(db_session, b.customer_id)
    for method, path, body in (
        ("GET", f"/api/public/{b_bot['id']}", None),
        ("POST", f"/api/public/{b_bot['id']}/query", {"question": "Hi?"}),
    ):
        response = client.request(method, path, json=body, headers={"X-API-Key": a_bot["api_key"]})
        assert response.status_code == 401, (method, path)
        assert response.json()["code"] == "invalid_api_key"
    assert _snapshot(db_session, b.customer_id) == before


def test_lists_show_only_the_callers_rows(client, two_tenants):
    a, b, a_bot, _, ids = two_tenants
    for path in ("/api/chatbots", "/api/users", "/api/billing/invoices", "/api/usage"):
        response = client.get(path, headers=b.headers)
        assert response.status_code == 200, path
        for value in (ids["chatbot_id"], ids["invoice_id"], ids["user_id"], a.customer_id):
            assert value not in response.text, (path, value)
