"""Paying invoices: the provider's signed webhook and the operator's CLI, each exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import select

from app.models import Billing, BillingEvent, TokenCredit
from tests.billing.conftest import (
    WEBHOOK_SECRET,
    balance,
    credits_for,
    order,
    paid_event,
    run_cli,
    signed,
)
from tests.factories import register


def _post(client, raw: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.post("/api/billing/webhook", content=raw, headers=headers)


def _event_ids(db_session) -> set[str]:  # type: ignore[no-untyped-def]
    db_session.expire_all()
    ids = set(db_session.scalars(select(BillingEvent.id)).all())
    db_session.commit()
    return ids


def test_webhook_pays_once_and_replays_change_nothing(client, webhook_secret, db_session):
    tenant = register(client)
    invoice = order(client, tenant, tokens=40_000)
    before = balance(db_session, tenant.customer_id)
    event = paid_event(invoice, amount=invoice["amount"], currency="USD")
    raw, headers = signed(event)
    first = _post(client, raw, headers)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "received": True,
        "event_id": event["id"],
        "outcome": "paid",
        "invoice_number": invoice["invoice_number"],
    }
    assert balance(db_session, tenant.customer_id) == before + 40_000
    got = client.get(f"/api/billing/invoices/{invoice['id']}", headers=tenant.headers).json()
    assert got["status"] == "paid" and got["paid_at"] is not None
    row = db_session.get(Billing, uuid.UUID(invoice["id"]))
    assert row.paid_via == f"webhook:{event['id']}"
    credit = db_session.scalar(
        select(TokenCredit).where(TokenCredit.invoice_id == uuid.UUID(invoice["id"]))
    )
    assert credit.kind == "invoice" and credit.tokens == 40_000

    replay = _post(client, raw, headers)  # the same event again
    assert replay.status_code == 200 and replay.json()["outcome"] == "duplicate"
    raw2, headers2 = signed(paid_event(invoice))  # another event paying the same invoice
    second = _post(client, raw2, headers2)
    assert second.status_code == 200 and second.json()["outcome"] == "already_paid"
    assert balance(db_session, tenant.customer_id) == before + 40_000
    assert credits_for(db_session, invoice["id"]) == 1


def test_bad_stale_or_missing_signatures_change_nothing(client, webhook_secret, db_session):
    tenant = register(client)
    invoice = order(client, tenant)
    before = balance(db_session, tenant.customer_id)
    event = paid_event(invoice)
    raw, good = signed(event)
    cases = {
        "wrong secret": signed(event, secret="whsec_other")[1],
        "stale": signed(event, at=int(time.time()) - 301)[1],
        "from the future": signed(event, at=int(time.time()) + 301)[1],
        "missing": {"Content-Type": "application/json"},
        "garbage": {"Billing-Signature": "t=abc,v1=zz"},
        "no v1": {"Billing-Signature": good["Billing-Signature"].split(",")[0]},
    }
    for name, headers in cases.items():
        response = _post(client, raw, headers)
        assert response.status_code == 400, name
        assert response.json()["code"] == "invalid_signature", name
    # A body changed after signing.
    tampered = raw.replace(b"invoice.paid", b"invoice.paix")
    assert _post(client, tampered, good).status_code == 400
    assert balance(db_session, tenant.customer_id) == before
    assert event["id"] not in _event_ids(db_session)
    got = client.get(f"/api/billing/invoices/{invoice['id']}", headers=tenant.headers).json()
    assert got["status"] == "pending"


def test_webhook_refuses_mismatched_unknown_and_unconfigured(
    client, webhook_secret, settings, monkeypatch, db_session
):
    tenant = register(client)
    invoice = order(client, tenant)
    before = balance(db_session, tenant.customer_id)
    mismatch = paid_event(invoice, amount="1.00", currency="USD")
    response = _post(client, *signed(mismatch))
    assert response.status_code == 409 and response.json()["code"] == "payment_mismatch"
    unknown = paid_event({"invoice_number": "INV-1999-000001"})
    assert _post(client, *signed(unknown)).status_code == 404
    not_json = b"not json"
    from app.billing.webhook import sign

    headers = {"Billing-Signature": sign(WEBHOOK_SECRET, int(time.time()), not_json)}
    invalid = _post(client, not_json, headers)
    assert invalid.status_code == 422 and invalid.json()["code"] == "validation_error"
    other = {"id": "evt_other_type", "type": "customer.updated", "data": {}}
    ignored = _post(client, *signed(other))
    assert ignored.status_code == 200 and ignored.json()["outcome"] == "ignored"
    # Refused events are not recorded: the provider's retry can still succeed.
    assert not {mismatch["id"], unknown["id"]} & _event_ids(db_session)
    assert balance(db_session, tenant.customer_id) == before

    too_big = _post(client, b"x" * (64 * 1024 + 1), {"Billing-Signature": "t=1,v1=0"})
    assert too_big.status_code == 413
    monkeypatch.setattr(settings, "BILLING_WEBHOOK_SECRET", None)
    unconfigured = _post(client, *signed(paid_event(invoice)))
    assert unconfigured.status_code == 503


def test_paying_concurrently_from_cli_and_webhook_credits_once(
    client, live_url, webhook_secret, db_session
):
    tenant = register(client)
    invoice = order(client, tenant, tokens=70_000)
    before = balance(db_session, tenant.customer_id)
    start = threading.Barrier(6)

    def by_cli(_: int) -> str:
        start.wait()
        return run_cli("invoices", "mark-paid", invoice["invoice_number"], "--json").stdout

    def by_webhook(_: int) -> int:
        raw, headers = signed(paid_event(invoice))
        start.wait()
        response = httpx.post(
            f"{live_url}/api/billing/webhook", content=raw, headers=headers, timeout=60
        )
        assert response.status_code == 200, response.text
        return response.json()["outcome"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        cli_runs = [pool.submit(by_cli, i) for i in range(3)]
        hooks = [pool.submit(by_webhook, i) for i in range(3)]
        outputs = [f.result() for f in cli_runs]
        outcomes = [f.result() for f in hooks]
    credited = sum('"credited": true' in out for out in outputs) + outcomes.count("paid")
    assert credited == 1, (outputs, outcomes)
    assert balance(db_session, tenant.customer_id) == before + 70_000
    assert credits_for(db_session, invoice["id"]) == 1
