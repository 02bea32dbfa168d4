"""The durable queue: leases, crashed workers, concurrent workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.core.db import get_database
from app.ingest import queue
from app.ingest.worker import IngestWorker
from app.models import Document, DocumentStatus, PendingDeletion
from app.models.base import utcnow
from app.rag.vector_store import VectorStore
from tests import docgen
from tests.conftest import ROOT
from tests.factories import create_chatbot, register, upload, wait_for_document


def _worker(runtime, name: str) -> IngestWorker:  # type: ignore[no-untyped-def]
    return IngestWorker(
        runtime.settings, get_database(), runtime.embedder, runtime.store, runtime.sandbox, name
    )


def _drain_queue(worker: IngestWorker) -> None:
    while worker.run_once():
        pass


def test_two_workers_never_process_the_same_document(client, paused_workers, tmp_path, db_session):
    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    ids = {
        upload(
            client, tenant, bot["id"], docgen.make_txt(tmp_path / f"{i}.txt", f"Queue item {i}.")
        )["id"]
        for i in range(12)
    }
    first, second = _worker(runtime, "worker-a"), _worker(runtime, "worker-b")
    threads = [threading.Thread(target=_drain_queue, args=(w,)) for w in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    rows = db_session.scalars(
        select(Document).where(Document.chatbot_id == uuid.UUID(bot["id"]))
    ).all()
    assert {str(r.id) for r in rows} == ids
    assert {r.status for r in rows} == {DocumentStatus.ready}
    # The last lease holder finished each row; one claim each means no row was shared.
    assert {r.lease_owner for r in rows} <= {"worker-a", "worker-b"}
    assert {r.attempts for r in rows} == {1}
    assert all(r.lease_owner in ("worker-a", "worker-b") for r in rows)


def test_expired_lease_is_claimed_again(client, paused_workers, tmp_path, db_session):
    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    doc = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "l.txt", "Leased text."))
    doc_id = uuid.UUID(doc["id"])
    settings = runtime.settings
    claim = queue.claim_next(
        get_database(), "crashed", settings.INGEST_LEASE_SECONDS, 3, max_per_customer=2
    )
    assert claim is not None and claim.document_id == doc_id
    # While the lease holds, nobody else gets it.
    assert (
        queue.claim_next(
            get_database(), "other", settings.INGEST_LEASE_SECONDS, 3, max_per_customer=2
        )
        is None
    )
    with get_database().session() as session:
        session.execute(
            update(Document)
            .where(Document.id == doc_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    rescuer = _worker(runtime, "rescuer")
    assert rescuer.run_once() is True
    row = db_session.get(Document, doc_id)
    assert row.status == DocumentStatus.ready and row.attempts == 2
    assert row.lease_owner == "rescuer"
    # The crashed worker's late progress report is refused: the job is not its own anymore.
    assert not queue.heartbeat(get_database(), doc_id, "crashed", 0.5, 60)


def test_worker_dying_too_often_ends_failed(client, paused_workers, tmp_path, db_session):
    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    doc = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "d.txt", "Doomed text."))
    doc_id = uuid.UUID(doc["id"])
    max_attempts = runtime.settings.INGEST_MAX_ATTEMPTS
    with get_database().session() as session:
        session.execute(
            update(Document)
            .where(Document.id == doc_id)
            .values(
                status=DocumentStatus.processing,
                attempts=max_attempts,
                lease_owner="dead",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    janitor = _worker(runtime, "janitor")
    assert janitor.claim() is None
    body = wait_for_document(client, tenant, bot["id"], doc["id"], timeout=10)
    assert body["status"] == "failed"
    assert "interrupted" in body["error"]
    assert db_session.get(Document, doc_id).lease_owner is None
    # What the dead workers wrote is queued for deletion with the failure...
    pending = select(PendingDeletion).where(PendingDeletion.document_id == doc_id)
    assert [p.chatbot_id for p in db_session.scalars(pending)] == [uuid.UUID(bot["id"])]
    # ...and the idle worker's sweep deletes those vectors.
    assert janitor.run_once() is True
    db_session.expire_all()
    assert db_session.scalars(pending).all() == []


def test_killed_worker_process_leaves_a_row_another_worker_completes(
    client, paused_workers, settings, tmp_path, db_session, chroma_server
):
    """Standalone workers share a Chroma server (CHROMA_URL), as on several machines."""
    runtime = paused_workers
    shared_store = VectorStore(url=chroma_server)
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    text = "\n\n".join(
        f"Section {i}: the harbour master logs ship number {i} with its cargo and crew. " * 6
        for i in range(240)
    )
    doc = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "long.txt", text))
    doc_id = uuid.UUID(doc["id"])
    env = {
        **os.environ,
        "INGEST_LEASE_SECONDS": "5",
        "EMBEDDING_BATCH_SIZE": "8",
        "LOG_LEVEL": "WARNING",
        "CHROMA_URL": chroma_server,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.ingest", "--concurrency", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            db_session.expire_all()
            row = db_session.get(Document, doc_id)
            if row.status == DocumentStatus.processing and row.progress > 0:
                break
            assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        assert row.status == DocumentStatus.processing and 0 < row.progress < 1, row.progress
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    db_session.expire_all()
    dead = db_session.get(Document, doc_id)
    assert dead.status == DocumentStatus.processing and dead.attempts == 1
    killed_owner = dead.lease_owner

    rescuer = IngestWorker(
        runtime.settings, get_database(), runtime.embedder, shared_store, runtime.sandbox, "rescuer"
    )
    deadline = time.monotonic() + 30
    while not rescuer.run_once():
        assert time.monotonic() < deadline, "the expired lease was never claimed again"
        time.sleep(0.5)
    db_session.expire_all()
    done = db_session.get(Document, doc_id)
    assert done.status == DocumentStatus.ready
    assert done.attempts == 2 and done.lease_owner == "rescuer" != killed_owner
    # No vectors were written twice: exactly one per chunk.
    assert shared_store.count(uuid.UUID(bot["id"]), doc_id) == done.chunk_count
    assert shared_store.stored_model(uuid.UUID(bot["id"])) == runtime.embedder.model_name


def test_transient_failure_is_retried_after_a_pause(client, paused_workers, tmp_path, db_session):
    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    doc = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "t.txt", "Transient."))
    doc_id = uuid.UUID(doc["id"])
    db = get_database()
    claim = queue.claim_next(db, "flaky", 60, 3, max_per_customer=2)
    assert claim is not None and claim.document_id == doc_id
    status = queue.fail(db, doc_id, "flaky", "Chroma was restarting.", retry=True, max_attempts=3)
    assert status == DocumentStatus.queued
    row = db_session.get(Document, doc_id)
    assert row.error == "Chroma was restarting." and row.lease_expires_at > utcnow()
    # Not claimable until the pause is over.
    assert queue.claim_next(db, "eager", 60, 3, max_per_customer=2) is None
    with db.session() as session:
        session.execute(
            update(Document)
            .where(Document.id == doc_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert _worker(runtime, "patient").run_once() is True
    db_session.expire_all()
    done = db_session.get(Document, doc_id)
    assert done.status == DocumentStatus.ready and done.error is None and done.attempts == 2


def test_reindex_drops_the_collection_inside_the_first_claim_and_survives_a_failing_store(
    client, paused_workers, tmp_path, db_session
):
    from app.models import Chatbot

    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    chatbot_id = uuid.UUID(bot["id"])
    for i in range(2):
        upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / f"r{i}.txt", f"Rebuild {i}."))
    _drain_queue(_worker(runtime, "worker-r"))
    stored = runtime.store.count(chatbot_id)
    assert stored >= 2
    assert (
        client.post(f"/api/chatbots/{bot['id']}/reindex", headers=tenant.headers).status_code == 202
    )
    db_session.expire_all()
    assert db_session.get(Chatbot, chatbot_id).rebuild_pending is True
    assert runtime.store.count(chatbot_id) == stored  # nothing dropped by the request itself

    def unavailable(_: uuid.UUID) -> None:
        raise ConnectionError("vector store down")

    db = get_database()
    with pytest.raises(ConnectionError):
        queue.claim_next(db, "worker-x", 60, 3, max_per_customer=2, rebuild=unavailable)
    db_session.expire_all()
    rows = db_session.scalars(select(Document).where(Document.chatbot_id == chatbot_id)).all()
    assert {r.status for r in rows} == {DocumentStatus.queued}  # the claim was rolled back
    assert db_session.get(Chatbot, chatbot_id).rebuild_pending is True  # and the request kept

    dropped: list[uuid.UUID] = []
    first = queue.claim_next(db, "worker-y", 60, 3, max_per_customer=2, rebuild=dropped.append)
    second = queue.claim_next(db, "worker-y", 60, 3, max_per_customer=2, rebuild=dropped.append)
    assert first is not None and second is not None
    assert {first.chatbot_id, second.chatbot_id} == {chatbot_id}
    assert dropped == [chatbot_id]  # once, by the first claim only
    db_session.expire_all()
    assert db_session.get(Chatbot, chatbot_id).rebuild_pending is False
    # Leave no claimed rows behind for other tests' workers.
    assert client.delete(f"/api/chatbots/{bot['id']}", headers=tenant.headers).status_code == 204
