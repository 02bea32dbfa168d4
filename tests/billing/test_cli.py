"""The operator's CLI, run as `python -m app.cli` child processes against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from app.cli import cli
from app.models import Chatbot, Document, DocumentStatus, TokenCredit
from tests import docgen
from tests.billing.conftest import ROOT, balance, credits_for, order, run_cli
from tests.factories import create_chatbot, login, register, upload, wait_for_document

COMMANDS = [
    [],
    ["customers"],
    ["customers", "list"],
    ["tokens"],
    ["tokens", "grant"],
    ["invoices"],
    ["invoices", "list"],
    ["invoices", "mark-paid"],
    ["invoices", "void"],
    ["users"],
    ["users", "create-admin"],
    ["chatbots"],
    ["chatbots", "reindex"],
    ["queue"],
    ["queue", "status"],
    ["queue", "retry"],
    ["reservations"],
    ["reservations", "sweep"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--help" in result.output


def test_customers_list_and_token_grants(client, db_session):
    tenant = register(client)
    create_chatbot(client, tenant)
    listed = json.loads(run_cli("customers", "list", "--json").stdout)
    mine = next(c for c in listed if c["id"] == tenant.customer_id)
    assert mine["contact_email"] == tenant.customer["contact_email"]
    assert mine["tokens_remaining"] == balance(db_session, tenant.customer_id)
    assert mine["chatbots"] == 1 and mine["tokens_used"] == 0

    before = balance(db_session, tenant.customer_id)
    email = tenant.customer["contact_email"].upper()  # found case-insensitively
    granted = json.loads(
        run_cli("tokens", "grant", email, "25000", "--reason", "outage credit", "--json").stdout
    )
    assert granted["balance"] == before + 25_000
    assert balance(db_session, tenant.customer_id) == before + 25_000
    credit = db_session.get(TokenCredit, uuid.UUID(granted["credit_id"]))
    assert (credit.kind, credit.reason, credit.tokens) == ("grant", "outage credit", 25_000)

    missing = run_cli("tokens", "grant", "nobody@example.invalid", "5", "--reason", "x", check=1)
    assert missing.stderr.strip().count("\n") == 0 and missing.stderr.startswith("error: ")
    assert run_cli("tokens", "grant", tenant.customer_id, "5", check=2).returncode == 2
    assert run_cli("tokens", "grant", tenant.customer_id, "-5", "--reason", "x", check=2)
    blank = run_cli("tokens", "grant", tenant.customer_id, "5", "--reason", "  ", check=1)
    assert "reason" in blank.stderr
    assert balance(db_session, tenant.customer_id) == before + 25_000


def test_invoices_list_mark_paid_and_void(client, db_session):
    tenant = register(client)
    paid, voided = order(client, tenant, tokens=30_000), order(client, tenant)
    listed = json.loads(
        run_cli("invoices", "list", "--customer", tenant.customer_id, "--json").stdout
    )
    assert listed["total"] == 2
    assert {i["invoice_number"] for i in listed["items"]} == {
        paid["invoice_number"],
        voided["invoice_number"],
    }
    before = balance(db_session, tenant.customer_id)
    first = run_cli("invoices", "mark-paid", paid["invoice_number"])
    assert "credited 30,000 tokens" in first.stdout
    again = run_cli("invoices", "mark-paid", paid["invoice_number"], "--json")
    assert json.loads(again.stdout)["credited"] is False
    assert balance(db_session, tenant.customer_id) == before + 30_000
    assert credits_for(db_session, paid["id"]) == 1

    run_cli("invoices", "void", voided["invoice_number"])
    status = client.get(f"/api/billing/invoices/{voided['id']}", headers=tenant.headers).json()
    assert status["status"] == "void"
    refused = run_cli("invoices", "mark-paid", voided["invoice_number"], check=1)
    assert "voided" in refused.stderr and balance(db_session, tenant.customer_id) == before + 30_000
    assert "only a pending" in run_cli("invoices", "void", paid["invoice_number"], check=1).stderr
    assert run_cli("invoices", "mark-paid", "INV-1999-000404", check=1).stderr.startswith("error:")
    assert run_cli("invoices", "list", "--status", "late", check=1).returncode == 1
    by_status = json.loads(run_cli("invoices", "list", "--status", "void", "--json").stdout)
    assert voided["invoice_number"] in {i["invoice_number"] for i in by_status["items"]}


def test_create_admin_for_a_customer(client):
    tenant = register(client)
    username = f"ops_{uuid.uuid4().hex[:8]}"
    created = json.loads(
        run_cli(
            "users",
            "create-admin",
            tenant.customer_id,
            username,
            "--password",
            "another-long-pass",
            "--json",
        ).stdout
    )
    assert created["customer_id"] == tenant.customer_id
    token = login(client, username, "another-long-pass")
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["role"] == "admin" and me["customer"]["id"] == tenant.customer_id
    taken = run_cli(
        "users",
        "create-admin",
        tenant.customer_id,
        username,
        "--password",
        "another-long-pass",
        check=1,
    )
    assert "taken" in taken.stderr
    weak = run_cli(
        "users", "create-admin", tenant.customer_id, "ops2", "--password", "short", check=1
    )
    assert "password" in weak.stderr


def test_reindex_from_the_cli_rebuilds_the_collection(client, runtime, tmp_path, db_session):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    doc = upload(client, tenant, chatbot["id"], docgen.make_txt(tmp_path / "a.txt", "Rebuild me."))
    first = wait_for_document(client, tenant, chatbot["id"], doc["id"])
    out = json.loads(run_cli("chatbots", "reindex", chatbot["id"], "--json").stdout)
    assert out == {"chatbot_id": chatbot["id"], "documents_queued": 1}
    again = wait_for_document(client, tenant, chatbot["id"], doc["id"])
    assert again["status"] == "ready" and again["chunk_count"] == first["chunk_count"]
    db_session.expire_all()
    assert db_session.get(Chatbot, uuid.UUID(chatbot["id"])).rebuild_pending is False
    assert runtime.store.count(uuid.UUID(chatbot["id"])) == first["chunk_count"]
    assert run_cli("chatbots", "reindex", str(uuid.uuid4()), check=1).stderr.startswith("error:")
    assert "UUID" in run_cli("chatbots", "reindex", "not-an-id", check=1).stderr


def test_queue_status_and_retry(client, paused_workers, tmp_path, db_session):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    doc = upload(client, tenant, chatbot["id"], docgen.make_txt(tmp_path / "q.txt", "Queued."))
    db_session.execute(
        update(Document)
        .where(Document.id == uuid.UUID(doc["id"]))
        .values(status=DocumentStatus.failed, error="The file is damaged.", attempts=3)
    )
    db_session.commit()
    status = json.loads(run_cli("queue", "status", "--json").stdout)
    assert status["counts"]["failed"] >= 1 and status["pending_deletions"] >= 0
    failed = {f["id"]: f for f in status["failed"]}
    assert failed[doc["id"]]["error"] == "The file is damaged."
    assert failed[doc["id"]]["filename"] == "q.txt"
    human = run_cli("queue", "status").stdout
    assert f"failed {doc['id']} q.txt: The file is damaged." in human

    retried = json.loads(run_cli("queue", "retry", doc["id"], "--json").stdout)
    assert retried == {"queued": 1}
    db_session.expire_all()
    row = db_session.get(Document, uuid.UUID(doc["id"]))
    assert (row.status, row.error, row.attempts) == (DocumentStatus.queued, None, 0)
    assert json.loads(run_cli("queue", "status", "--json").stdout)["oldest_queued_seconds"] >= 0
    assert run_cli("queue", "retry", check=1).returncode == 1
    assert run_cli("queue", "retry", "nope", check=1).returncode == 1
    again = run_cli("queue", "retry", doc["id"])  # not failed any more: nothing to do
    assert "0 document(s)" in again.stdout and "not failed" in again.stderr
    assert db_session.scalar(select(Document.status).where(Document.id == row.id)) == "queued"


def test_cli_reports_a_database_it_cannot_reach_in_one_line():
    env = {**os.environ, "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/none"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "customers", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: the database is unavailable (OperationalError)"


def test_sweep_gives_back_reservations_their_request_never_settled(client, db_session):
    from datetime import timedelta

    from app.models import TokenReservation, UsageToken
    from app.models.base import utcnow

    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    customer_id = uuid.UUID(tenant.customer_id)
    before = balance(db_session, tenant.customer_id)
    # A reservation taken by a process that then died: the balance is down by it.
    db_session.add(
        TokenReservation(
            id=uuid.uuid4(),
            customer_id=customer_id,
            chatbot_id=uuid.UUID(chatbot["id"]),
            month=utcnow().date().replace(day=1),
            tokens=1234,
            created_at=utcnow() - timedelta(hours=2),
        )
    )
    db_session.execute(
        update(UsageToken)
        .where(UsageToken.customer_id == customer_id)
        .values(tokens_remaining=UsageToken.tokens_remaining - 1234)
    )
    db_session.commit()
    assert balance(db_session, tenant.customer_id) == before - 1234
    swept = json.loads(run_cli("reservations", "sweep", "--json").stdout)
    assert swept["reservations"] >= 1 and swept["tokens"] >= 1234
    assert balance(db_session, tenant.customer_id) == before
    db_session.expire_all()
    left = db_session.scalar(
        select(TokenReservation.id).where(TokenReservation.customer_id == customer_id)
    )
    assert left is None
    assert run_cli("reservations", "sweep", "--older-than", "5", check=2).returncode == 2
