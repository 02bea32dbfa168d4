"""Fair claims: one tenant's backlog never holds up another's, and no tenant takes more than
INGEST_MAX_PER_CUSTOMER of the workers."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select

from app.core.db import get_database
from app.ingest import queue
from app.ingest.worker import IngestWorker
from app.models import Chatbot, Customer, Document, DocumentStatus
from tests import docgen
from tests.factories import Tenant, create_chatbot, register, upload


def _worker(runtime, name: str) -> IngestWorker:  # type: ignore[no-untyped-def]
    return IngestWorker(
        runtime.settings, get_database(), runtime.embedder, runtime.store, runtime.sandbox, name
    )


def _upload(client, tenant: Tenant, bot: dict, folder: Path, count: int) -> list[uuid.UUID]:  # type: ignore[no-untyped-def]
    return [
        uuid.UUID(
            upload(
                client,
                tenant,
                bot["id"],
                docgen.make_txt(folder / f"{tenant.username}-{i}.txt", f"{tenant.username} {i}."),
            )["id"]
        )
        for i in range(count)
    ]


def _delete(client, tenant: Tenant, *bots: dict) -> None:  # type: ignore[no-untyped-def]
    """Leave nothing queued or claimed for other tests' workers."""
    for bot in bots:
        assert (
            client.delete(f"/api/chatbots/{bot['id']}", headers=tenant.headers).status_code == 204
        )


def test_a_tenants_backlog_does_not_hold_up_another(client, paused_workers, tmp_path, db_session):
    runtime = paused_workers
    a, b = register(client), register(client)
    bot_a, bot_b = create_chatbot(client, a), create_chatbot(client, b)
    backlog = _upload(client, a, bot_a, tmp_path, 50)
    late = _upload(client, b, bot_b, tmp_path, 1)[0]
    worker = _worker(runtime, "fair")
    claimed = []
    for _ in range(3):
        claim = worker.claim()
        assert claim is not None
        claimed.append(claim.document_id)
        worker.process(claim)
    # Neither was served yet: the oldest document first; then B, served longest ago (never),
    # before A's 49 others; then A again.
    assert claimed == [backlog[0], late, backlog[1]]
    assert db_session.get(Document, late).status == DocumentStatus.ready
    customer_a, customer_b = uuid.UUID(a.customer_id), uuid.UUID(b.customer_id)
    served = {
        c.id: c.last_ingest_at
        for c in db_session.scalars(
            select(Customer).where(Customer.id.in_([customer_a, customer_b]))
        )
    }
    assert served[customer_a] > served[customer_b]
    _delete(client, a, bot_a)
    _delete(client, b, bot_b)


def test_a_customer_using_its_share_of_workers_waits(
    client, paused_workers, tmp_path, monkeypatch, db_session
):
    runtime = paused_workers
    monkeypatch.setattr(runtime.settings, "INGEST_MAX_PER_CUSTOMER", 1)
    a, b = register(client), register(client)
    bot_a, bot_b = create_chatbot(client, a), create_chatbot(client, b)
    docs_a = _upload(client, a, bot_a, tmp_path, 2)
    docs_b = _upload(client, b, bot_b, tmp_path, 2)
    worker = _worker(runtime, "capped")
    first = worker.claim()
    assert first is not None and first.document_id == docs_a[0]
    second = worker.claim()
    assert second is not None and second.document_id == docs_b[0]
    # A was served longest ago, but its one document is still processing (and so is B's):
    # nobody's turn, although both have documents queued.
    assert worker.claim() is None
    assert db_session.get(Document, docs_a[1]).status == DocumentStatus.queued
    # A's slot frees up: its next document goes.
    assert queue.complete(get_database(), first.document_id, worker.name, 0, {})
    third = worker.claim()
    assert third is not None and third.document_id == docs_a[1]
    _delete(client, a, bot_a)
    _delete(client, b, bot_b)


def test_concurrent_claims_never_exceed_a_customers_share(
    client, paused_workers, tmp_path, monkeypatch, db_session
):
    runtime = paused_workers
    monkeypatch.setattr(runtime.settings, "INGEST_MAX_PER_CUSTOMER", 1)
    tenants = [register(client) for _ in range(2)]
    bots = [create_chatbot(client, t) for t in tenants]
    for tenant, bot in zip(tenants, bots, strict=True):
        _upload(client, tenant, bot, tmp_path, 3)
    workers = [_worker(runtime, f"racer-{i}") for i in range(4)]
    start = threading.Barrier(len(workers))

    def race(worker: IngestWorker) -> queue.Claim | None:
        start.wait(30)
        return worker.claim()

    with ThreadPoolExecutor(len(workers)) as pool:
        claims = [c for c in pool.map(race, workers) if c is not None]
    assert claims, "nobody claimed anything"
    assert max(Counter(c.customer_id for c in claims).values()) == 1, claims
    assert len({c.document_id for c in claims}) == len(claims)
    processing = db_session.execute(
        select(Chatbot.customer_id, func.count())
        .join(Document, Document.chatbot_id == Chatbot.id)
        .where(
            Chatbot.id.in_([uuid.UUID(b["id"]) for b in bots]),
            Document.status == DocumentStatus.processing,
        )
        .group_by(Chatbot.customer_id)
    ).all()
    assert processing and all(count == 1 for _, count in processing)
    for tenant, bot in zip(tenants, bots, strict=True):
        _delete(client, tenant, bot)
