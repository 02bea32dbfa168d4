"""Helpers for the billing tests: a tenant with a funded chatbot, invoices, signed events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.billing.webhook import sign
from app.models import TokenCredit, UsageToken

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_test_" + "x" * 24


def balance(db_session, customer_id: str) -> int:  # type: ignore[no-untyped-def]
    db_session.expire_all()
    value = db_session.scalar(
        select(UsageToken.tokens_remaining).where(UsageToken.customer_id == uuid.UUID(customer_id))
    )
    db_session.commit()
    return int(value)


def credits_for(db_session, invoice_id: str) -> int:  # type: ignore[no-untyped-def]
    db_session.expire_all()
    count = db_session.scalar(
        select(func.count())
        .select_from(TokenCredit)
        .where(TokenCredit.invoice_id == uuid.UUID(invoice_id))
    )
    db_session.commit()
    return int(count)


def order(client, tenant, tokens: int = 20_000, expect: int = 201) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = client.post("/api/billing/invoices", json={"tokens": tokens}, headers=tenant.headers)
    assert response.status_code == expect, response.text
    return dict(response.json())


def signed(
    body: dict[str, Any], *, secret: str = WEBHOOK_SECRET, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    stamp = int(time.time()) if at is None else at
    return raw, {"Billing-Signature": sign(secret, stamp, raw), "Content-Type": "application/json"}


def paid_event(invoice: dict[str, Any], event_id: str | None = None, **data: Any) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "type": "invoice.paid",
        "data": {"invoice_number": invoice["invoice_number"], **data},
    }


@pytest.fixture
def webhook_secret(settings, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(settings, "BILLING_WEBHOOK_SECRET", WEBHOOK_SECRET)
    return WEBHOOK_SECRET


def run_cli(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    """`python -m app.cli ...` in a child process against the test database."""
    env = {
        **os.environ,
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check is not None:
        assert result.returncode == check, (result.returncode, result.stdout, result.stderr)
    return result
