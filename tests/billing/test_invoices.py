"""Ordering token packs: prices, numbering under concurrency, rights, voiding, overdue, PDF."""

from __future__ import annotations

import io
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from pypdf import PdfReader
from sqlalchemy import select, update

from app.billing.invoices import price
from app.models import Billing
from tests.billing.conftest import order
from tests.factories import add_user, register

NUMBER = re.compile(r"^INV-(\d{4})-(\d{6})$")


def test_order_is_a_pending_invoice_at_the_configured_price(client, db_session):
    tenant = register(client)
    body = order(client, tenant, tokens=250_000)
    assert NUMBER.match(body["invoice_number"])
    assert body["amount"] == "125.00" and body["currency"] == "USD"
    assert body["tokens"] == 250_000 and body["unit_price"] == "0.50"
    assert body["status"] == "pending" and body["paid_at"] is None
    issued = datetime.fromisoformat(body["issued_at"])
    due = datetime.fromisoformat(body["due_date"])
    assert due - issued == timedelta(days=30)
    assert body["invoice_number"].startswith(f"INV-{issued.year}-")
    row = db_session.get(Billing, uuid.UUID(body["id"]))
    assert row.amount == Decimal("125.00") and row.customer_id == uuid.UUID(tenant.customer_id)
    assert row.status == "pending"


@pytest.mark.parametrize(
    ("tokens", "per_1k", "amount"),
    [
        (12_345, "0.50", "6.17"),  # 6.1725
        (10_010, "0.50", "5.00"),  # 5.005: a tie goes to the even cent
        (10_030, "0.50", "5.02"),  # 5.015
        (10_050, "0.50", "5.02"),  # 5.025
        (10_000, "0.3333", "3.33"),
        (33_333, "0.0015", "0.05"),  # 0.0499995
    ],
)
def test_amounts_are_rounded_half_to_even(client, settings, monkeypatch, tokens, per_1k, amount):
    assert price(tokens, Decimal(per_1k)) == Decimal(amount)
    monkeypatch.setattr(settings, "PRICE_PER_1K_TOKENS", Decimal(per_1k))
    body = order(client, register(client), tokens=tokens)
    assert body["amount"] == amount


def test_pack_size_limits_and_bad_bodies(client, settings):
    tenant = register(client)
    for tokens in (settings.INVOICE_MIN_TOKENS - 1, settings.INVOICE_MAX_TOKENS + 1):
        refused = order(client, tenant, tokens=tokens, expect=422)
        assert refused["code"] == "validation_error" and "token pack" in refused["detail"]
        assert refused["errors"][0]["loc"] == ["body", "tokens"]
    for body in ({}, {"tokens": "many"}, {"tokens": 0}, {"tokens": 1.5}):
        response = client.post("/api/billing/invoices", json=body, headers=tenant.headers)
        assert response.status_code == 422, body
    listed = client.get("/api/billing/invoices", headers=tenant.headers).json()
    assert listed["total"] == 0


def test_fifty_concurrent_orders_get_fifty_gap_free_numbers(client, live_url, db_session):
    tenants = [register(client) for _ in range(5)]

    def place(i: int) -> dict:
        response = httpx.post(
            f"{live_url}/api/billing/invoices",
            json={"tokens": 10_000 + i},
            headers=tenants[i % 5].headers,
            timeout=60,
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    with ThreadPoolExecutor(max_workers=25) as pool:
        placed = list(pool.map(place, range(50)))
    numbers = sorted(int(NUMBER.match(p["invoice_number"]).group(2)) for p in placed)
    assert numbers == list(range(numbers[0], numbers[0] + 50))  # distinct and gap-free
    years = {NUMBER.match(p["invoice_number"]).group(1) for p in placed}
    assert len(years) == 1
    db_session.expire_all()
    stored = db_session.scalars(
        select(Billing.invoice_number).where(Billing.id.in_([uuid.UUID(p["id"]) for p in placed]))
    ).all()
    assert sorted(stored) == sorted(p["invoice_number"] for p in placed)
    for tenant in tenants:  # each sees its own ten, no one else's
        mine = client.get("/api/billing/invoices?limit=200", headers=tenant.headers).json()
        assert mine["total"] == 10
        assert {i["id"] for i in mine["items"]} <= {p["id"] for p in placed}


def test_members_read_admins_order_and_void_others_see_nothing(client):
    tenant = register(client)
    member = add_user(client, tenant, role="member")
    invoice = order(client, tenant)
    refused = client.post("/api/billing/invoices", json={"tokens": 20_000}, headers=member.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "admin_required"
    listed = client.get("/api/billing/invoices", headers=member.headers)
    assert listed.status_code == 200 and [i["id"] for i in listed.json()["items"]] == [
        invoice["id"]
    ]
    got = client.get(f"/api/billing/invoices/{invoice['id']}", headers=member.headers)
    assert got.status_code == 200 and got.json() == invoice
    assert (
        client.get(f"/api/billing/invoices/{invoice['id']}/pdf", headers=member.headers).status_code
        == 200
    )
    voiding = client.post(f"/api/billing/invoices/{invoice['id']}/void", headers=member.headers)
    assert voiding.status_code == 403

    other = register(client)
    for method, path in (
        ("GET", f"/api/billing/invoices/{invoice['id']}"),
        ("GET", f"/api/billing/invoices/{invoice['id']}/pdf"),
        ("POST", f"/api/billing/invoices/{invoice['id']}/void"),
        ("GET", f"/api/billing/invoices/{uuid.uuid4()}"),
    ):
        response = client.request(method, path, headers=other.headers)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "Invoice not found.", "code": "not_found"}
    assert client.get("/api/billing/invoices", headers=other.headers).json()["total"] == 0
    after = client.get(f"/api/billing/invoices/{invoice['id']}", headers=tenant.headers).json()
    assert after["status"] == "pending"


def test_void_only_a_pending_invoice(client, db_session):
    tenant = register(client)
    invoice = order(client, tenant)
    voided = client.post(f"/api/billing/invoices/{invoice['id']}/void", headers=tenant.headers)
    assert voided.status_code == 200
    assert voided.json()["status"] == "void" and voided.json()["voided_at"] is not None
    again = client.post(f"/api/billing/invoices/{invoice['id']}/void", headers=tenant.headers)
    assert again.status_code == 409 and again.json()["code"] == "invoice_not_pending"
    db_session.expire_all()
    assert db_session.get(Billing, uuid.UUID(invoice["id"])).status == "void"


def test_overdue_is_derived_from_the_due_date(client, db_session):
    tenant = register(client)
    late, current = order(client, tenant), order(client, tenant)
    db_session.execute(
        update(Billing)
        .where(Billing.id == uuid.UUID(late["id"]))
        .values(due_date=datetime.now().astimezone() - timedelta(days=1))
    )
    db_session.commit()
    got = client.get(f"/api/billing/invoices/{late['id']}", headers=tenant.headers).json()
    assert got["status"] == "overdue"
    assert db_session.get(Billing, uuid.UUID(late["id"])).status == "pending"  # not stored

    def ids(status: str) -> list[str]:
        response = client.get(f"/api/billing/invoices?status={status}", headers=tenant.headers)
        assert response.status_code == 200
        return [i["id"] for i in response.json()["items"]]

    assert ids("overdue") == [late["id"]]
    assert ids("pending") == [current["id"]]
    assert ids("paid") == [] and ids("void") == []
    bad = client.get("/api/billing/invoices?status=late", headers=tenant.headers)
    assert bad.status_code == 422


def test_invoice_pdf_reads_back_with_number_and_amount(client):
    tenant = register(client, customer_name="Zürich Blenders AG")
    invoice = order(client, tenant, tokens=123_457)
    response = client.get(f"/api/billing/invoices/{invoice['id']}/pdf", headers=tenant.headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(response.content))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    assert invoice["invoice_number"] in text
    assert f"{invoice['amount']} USD" in text and invoice["amount"] == "61.73"
    assert "Zürich Blenders AG" in text and tenant.customer["contact_email"] in text
    assert "123,457 tokens" in text and "PENDING" in text
